"""Residual Tuning for DiTs (experimental): scale each block's identity path, ``x + F(x)`` -> ``rho * x + F(x)``.

A DiT has no long skips; every block is residual. The factor reaches a block through ComfyUI's
``patches_replace["dit"]`` replace patches, which receive the block's input ``args["img"]`` and
``extra["original_block"]``: ``out = block(args); out["img"] -= (1 - rho) * args["img"]`` gives
``rho * x + F(x)`` without copying block code.

Every block normalises its input before ``F`` (LayerNorm, then modulation), and the output head
normalises again, so a global scale of the stream cancels: what ``rho`` changes is how the blocks'
contributions are weighted against each other. With factors ``rho_l`` the final stream is
``x_L = (prod_l rho_l) x_0 + sum_l (prod_{k>l} rho_k) F_l(x_l)``: ``rho < 1`` discounts the input
embedding and the early blocks geometrically against the late ones, ``rho > 1`` the reverse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .patch import _is_compiling, apply_model_wrapper, traced_scalars
from .schedule import SkipTuningError, validate_rho


@dataclass(frozen=True)
class ResidualLayout:
    architecture: str
    # patches_replace["dit"] keys of the residual blocks, input to output
    block_keys: tuple


def _flux_layout(network) -> ResidualLayout | None:
    double = getattr(network, "double_blocks", None)
    single = getattr(network, "single_blocks", None)
    if double is None or single is None:
        return None
    keys = tuple(("double_block", i) for i in range(len(double))) + tuple(
        ("single_block", i) for i in range(len(single))
    )
    return ResidualLayout("Flux", keys)


def _mmdit_layout(network) -> ResidualLayout | None:
    blocks = getattr(network, "joint_blocks", None)
    if blocks is None:
        return None
    return ResidualLayout("SD3", tuple(("double_block", i) for i in range(len(blocks))))


# ComfyUI's DiT classes (matched along the class hierarchy, so Flux Fill/Kontext and SD3.5's wrapper are
# included) whose forward hands each block to patches_replace["dit"] with the image stream as args["img"]
# (Flux's single-stream blocks carry the text tokens in that stream too).
_DITS = {
    "Flux": _flux_layout,  # comfy/ldm/flux/model.py: Flux.1 dev/schnell, Fill, Kontext
    "MMDiT": _mmdit_layout,  # comfy/ldm/modules/diffusionmodules/mmdit.py: SD3, SD3.5
}
SUPPORTED_DITS = "Flux.1 (dev, schnell, Fill, Kontext) and SD3/SD3.5"


def find_residual_layout(network) -> ResidualLayout | None:
    """The network's residual blocks as replace-patch keys, or None where Residual Tuning does not apply."""
    if network is None:
        return None
    for cls in type(network).__mro__:
        layout_of = _DITS.get(cls.__name__)
        if layout_of is not None:
            return layout_of(network)
    return None


def validate_start_fraction(value, name: str = "start_fraction") -> float:
    """The fraction of the depth, from the input side, left untouched: a number in [0, 1)."""
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        raise SkipTuningError(f"{name} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= fraction < 1.0:
        raise SkipTuningError(f"{name} must be in [0, 1), got {value!r}")
    return fraction


def block_factors(n_blocks: int, rho_first: float, rho_last: float, start_fraction: float = 0.0) -> tuple:
    """One factor per block: 1 before ``start_fraction`` of the depth, then linear from ``rho_first``
    (the first tuned block) to ``rho_last`` (the last block)."""
    if n_blocks < 1:
        raise SkipTuningError("a DiT needs at least one block")
    rho_first = validate_rho(rho_first, "rho_first")
    rho_last = validate_rho(rho_last, "rho_last")
    start_fraction = validate_start_fraction(start_fraction)
    first = math.floor(start_fraction * n_blocks + 1e-9)  # the front end's preview computes the same
    tuned = n_blocks - first
    factors = [1.0] * first
    for i in range(tuned):
        position = i / (tuned - 1) if tuned > 1 else 0.0
        factors.append(rho_first + (rho_last - rho_first) * position)
    return tuple(factors)


def make_residual_replace_patch(rho: float, previous=None, traced_removed=None):
    """A ``patches_replace["dit"]`` block patch giving ``rho * x + F(x)``; ``previous`` held the slot before.

    The identity share is taken before the block runs: Flux's single-stream blocks add to their
    input in place, so ``args["img"]`` may hold the output afterwards. ``traced_removed``: ``1 - rho``
    as a tensor (``traced_scalars``), what the patch reads when torch.compile traces it; it then always
    subtracts, so every factor traces the same graph (patch.py); without it a traced call reads the
    Python float (a constant of that graph). Run eagerly it multiplies by the Python float, and rho 1
    returns the block's output untouched.
    """
    removed = 1.0 - float(rho)
    if traced_removed is None:
        traced_removed = removed

    def residual_tuning_replace_patch(args, extra):
        compiling = _is_compiling()
        if not compiling and removed == 0.0:
            return previous(args, extra) if previous is not None else extra["original_block"](args)
        # Out of place; by a float (eager) or a float32 scalar (traced): the dtype stays.
        identity_share = args["img"] * (traced_removed if compiling else removed)
        out = previous(args, extra) if previous is not None else extra["original_block"](args)
        return {**out, "img": out["img"] - identity_share}

    return residual_tuning_replace_patch


def with_residual_replace_patches(transformer_options: dict, block_keys: Sequence, rhos: Sequence[float],
                                  traced_removed: Sequence | None = None) -> dict:
    """A copy of ``transformer_options`` whose ``patches_replace["dit"]`` scales the identity path of
    ``block_keys[i]`` by ``rhos[i]``, wrapping the patch that held each slot. Factors of 1 add nothing,
    unless ``traced_removed`` (per block, the tensor a compiled patch reads) is given: then every slot
    gets a patch, so that a graph that dropped its guards on ``transformer_options`` finds the same
    patches in every call."""
    if len(block_keys) != len(rhos):
        raise ValueError(f"{len(rhos)} factors for {len(block_keys)} blocks")
    patches_replace = dict(transformer_options.get("patches_replace", {}))
    dit = dict(patches_replace.get("dit", {}))
    for index, (key, rho) in enumerate(zip(block_keys, rhos)):
        if float(rho) != 1.0 or traced_removed is not None:
            dit[key] = make_residual_replace_patch(rho, dit.get(key),
                                                   None if traced_removed is None else traced_removed[index])
    patches_replace["dit"] = dit
    return {**transformer_options, "patches_replace": patches_replace}


def make_residual_replace_wrapper(block_keys: Sequence, rhos: Sequence[float], sigma_range=None):
    """ComfyUI ``APPLY_MODEL`` wrapper that adds the residual replace patches to one model call's
    ``transformer_options`` copy, wrapping whatever holds each slot then (registered before or after),
    so nothing is stored on the model. Outside ``sigma_range`` (and for a node whose factors are all 1)
    every slot gets a patch of factor 1: the block's own output when run eagerly, the same graph with
    other inputs when traced (patch.py)."""
    if len(block_keys) != len(rhos):
        raise ValueError(f"{len(rhos)} factors for {len(block_keys)} blocks")
    keys = tuple(block_keys)
    factors = tuple(float(rho) for rho in rhos)
    neutral = (1.0,) * len(factors)
    traced = traced_scalars([1.0 - rho for rho in factors])
    traced_neutral = traced_scalars([0.0] * len(factors))
    return apply_model_wrapper(lambda options, control: with_residual_replace_patches(options, keys, factors, traced),
                               any(rho != 1.0 for rho in factors), sigma_range,
                               lambda options, control: with_residual_replace_patches(options, keys, neutral,
                                                                                      traced_neutral))

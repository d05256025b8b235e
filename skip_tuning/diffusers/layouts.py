"""Where each diffusers model class keeps its long skips, its residual blocks and its timestep convention.

The one place to touch for the next diffusers class. Classes are recognised by their structure and
their class names along the MRO (subclasses and run-time class swaps such as HiDiffusion's keep
working), so nothing here imports diffusers.

Skips are numbered as everywhere else in the project: 0 = the deepest skip (consumed first),
``n_skips - 1`` = the first, highest-resolution one.

* U-Nets (``UNet2DConditionModel``, ``UNet2DModel``, ``UNetSpatioTemporalConditionModel``,
  ``UNetMotionModel``, ``UNet3DConditionModel``): the model walks ``up_blocks`` deepest first and hands
  each the last ``len(resnets)`` down-path residuals as ``res_hidden_states_tuple``; resnet ``j`` pops
  ``res_hidden_states_tuple[-(j + 1)]``. So element ``k`` of an up block's tuple of ``R`` is consumed by
  resnet ``R - 1 - k`` and is skip ``offset + R - 1 - k``, ``offset`` = resnets of the up blocks before.
* ``HunyuanDiT2DModel``: blocks ``0 .. num_layers // 2 - 2`` push their outputs, blocks after
  ``num_layers // 2`` pop one each as their ``skip`` argument (block ``num_layers // 2 + 1`` gets the
  deepest), the same wiring as ComfyUI's HunyuanDiT.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from torch import nn

# diffusers' up blocks whose resnets each pop one skip from ``res_hidden_states_tuple``
# take the tuple under this name; the K-diffusion upscaler's K*UpBlock2D concatenate only its last element.
SKIP_TUPLE_ARGUMENT = "res_hidden_states_tuple"
_ONE_SKIP_PER_BLOCK = {"KUpBlock2D", "KCrossAttnUpBlock2D"}

UNET_CLASSES = (
    "UNet2DConditionModel (SD1.x, SD2.x, SDXL), UNet2DModel, UNetSpatioTemporalConditionModel (SVD), "
    "UNetMotionModel (AnimateDiff), UNet3DConditionModel"
)
U_VIT_CLASSES = "HunyuanDiT2DModel"
RESIDUAL_CLASSES = "FluxTransformer2DModel (Flux.1) and SD3Transformer2DModel (SD3/SD3.5)"


@dataclass(frozen=True)
class SkipSite:
    """A module whose forward receives skips: ``argument`` (positional index ``position``, self not
    counted) carries skip ``skip_indices[0]``, or with ``carries_tuple`` a tuple whose element k is skip
    ``skip_indices[k]``."""

    module: nn.Module
    argument: str
    position: int
    skip_indices: tuple
    carries_tuple: bool


@dataclass(frozen=True)
class DiffusersSkipLayout:
    architecture: str  # the model's class name, for messages
    n_skips: int
    sites: tuple


@dataclass(frozen=True)
class ResidualSite:
    """A residual block: each stream is (input argument, its positional index, index in the output tuple);
    the block returns ``input + F(...)`` for it, whose identity part Residual Tuning scales."""

    module: nn.Module
    streams: tuple


@dataclass(frozen=True)
class DiffusersResidualLayout:
    architecture: str
    sites: tuple  # input to output, the order of ComfyUI's Residual Tuning node


def _class_names(module) -> set:
    return {cls.__name__ for cls in type(module).__mro__}


def unwrap(model):
    """The module under a ``torch.compile`` wrapper (hooks go on the original's submodules)."""
    return getattr(model, "_orig_mod", model)


def argument_position(module: nn.Module, name: str) -> int | None:
    """Index of ``name`` among the positional parameters of ``module``'s class forward (self not counted)."""
    try:
        parameters = list(inspect.signature(type(module).forward).parameters)
    except (TypeError, ValueError):
        return None
    return parameters.index(name) - 1 if name in parameters else None


def _down_residual_count(model) -> int:
    """Residuals the down path pushes: conv_in's output, then every resnet and downsampler of every down block."""
    count = 1
    for block in model.down_blocks:
        count += len(getattr(block, "resnets", ()))
        count += len(getattr(block, "downsamplers", None) or ())
    return count


def _unet_layout(model) -> DiffusersSkipLayout | None:
    up_blocks = getattr(model, "up_blocks", None)
    down_blocks = getattr(model, "down_blocks", None)
    if not isinstance(up_blocks, nn.ModuleList) or not isinstance(down_blocks, nn.ModuleList) or not up_blocks:
        return None
    sites = []
    offset = 0
    for block in up_blocks:
        position = argument_position(block, SKIP_TUPLE_ARGUMENT)
        resnets = getattr(block, "resnets", None)
        if position is None or not isinstance(resnets, nn.ModuleList) or _class_names(block) & _ONE_SKIP_PER_BLOCK:
            return None
        count = len(resnets)
        sites.append(SkipSite(block, SKIP_TUPLE_ARGUMENT, position,
                              tuple(offset + count - 1 - k for k in range(count)), carries_tuple=True))
        offset += count
    if offset != _down_residual_count(model):
        return None  # wired differently from the up/down blocks described above
    return DiffusersSkipLayout(type(model).__name__, offset, tuple(sites))


def _hunyuan_dit_layout(model) -> DiffusersSkipLayout | None:
    if "HunyuanDiT2DModel" not in _class_names(model):
        return None
    blocks = getattr(model, "blocks", None)
    depth = getattr(getattr(model, "config", None), "num_layers", None)
    if not isinstance(blocks, nn.ModuleList) or not isinstance(depth, int) or depth != len(blocks):
        return None
    first_popping = depth // 2 + 1
    n_pushed = max(depth // 2 - 1, 0)
    takes_skip = [getattr(block, "skip_linear", None) is not None for block in blocks]
    n_skips = depth - first_popping
    if takes_skip != [index >= first_popping for index in range(depth)] or n_skips < 1 or n_skips != n_pushed:
        return None
    sites = []
    for skip_index in range(n_skips):
        block = blocks[first_popping + skip_index]
        position = argument_position(block, "skip")
        if position is None:
            return None
        sites.append(SkipSite(block, "skip", position, (skip_index,), carries_tuple=False))
    return DiffusersSkipLayout(type(model).__name__, n_skips, tuple(sites))


def find_skip_layout(model) -> DiffusersSkipLayout | None:
    """The model's long skips, or None for models without them (Flux, SD3, PixArt, ...)."""
    model = unwrap(model)
    if not isinstance(model, nn.Module):
        return None
    return _unet_layout(model) or _hunyuan_dit_layout(model)


def _blocks(module, name: str) -> list:
    blocks = getattr(module, name, None)
    return list(blocks) if isinstance(blocks, nn.ModuleList) else []


def _residual_sites(blocks, streams) -> list:
    """Sites for ``blocks``; streams named by argument, their positions read from each block's forward."""
    sites = []
    for block in blocks:
        resolved = []
        for argument, output_index in streams:
            position = argument_position(block, argument)
            if position is None:
                return []
            resolved.append((argument, position, output_index))
        sites.append(ResidualSite(block, tuple(resolved)))
    return sites


# diffusers' blocks return (encoder_hidden_states, hidden_states). ComfyUI's Residual Tuning scales the
# image stream of Flux's double blocks and SD3's joint blocks, and the whole (text + image) stream of
# Flux's single blocks, which diffusers splits into the two outputs again.
_IMAGE_STREAM = (("hidden_states", 1),)
_BOTH_STREAMS = (("hidden_states", 1), ("encoder_hidden_states", 0))


def find_residual_layout(model) -> DiffusersResidualLayout | None:
    """The DiT's residual blocks, input to output, or None where Residual Tuning does not apply."""
    model = unwrap(model)
    names = _class_names(model)
    if "FluxTransformer2DModel" in names:
        double = _residual_sites(_blocks(model, "transformer_blocks"), _IMAGE_STREAM)
        single = _residual_sites(_blocks(model, "single_transformer_blocks"), _BOTH_STREAMS)
        sites = double + single
    elif "SD3Transformer2DModel" in names:
        sites = _residual_sites(_blocks(model, "transformer_blocks"), _IMAGE_STREAM)
    else:
        return None
    return DiffusersResidualLayout(type(model).__name__, tuple(sites)) if sites else None


# The timestep each model's forward receives, for start/end:
# flow models get sigma (FluxPipeline passes t / 1000) or sigma * num_train_timesteps (SD3's pipeline passes t).
FLOW_TIMESTEP_IS_SIGMA = "sigma"
FLOW_TIMESTEP_IS_SCHEDULER_T = "scheduler t"


def flow_timestep_convention(model) -> str | None:
    names = _class_names(unwrap(model))
    if "FluxTransformer2DModel" in names:
        return FLOW_TIMESTEP_IS_SIGMA
    if "SD3Transformer2DModel" in names:
        return FLOW_TIMESTEP_IS_SCHEDULER_T
    return None


def is_edm_unet(model) -> bool:
    """SVD's U-Net, whose pipeline feeds EDM's c_noise = 0.25 * ln(sigma)."""
    return "UNetSpatioTemporalConditionModel" in _class_names(unwrap(model))


def image_tokens(model, hidden_states) -> int | None:
    """The image tokens a flow transformer sees (its pipelines compute the dynamic shift from them)."""
    shape = getattr(hidden_states, "shape", None)
    if shape is None:
        return None
    if len(shape) == 3:  # Flux: packed [B, tokens, C]
        return int(shape[1])
    if len(shape) == 4:  # SD3: latents [B, C, H, W], patchified inside
        patch = int(getattr(getattr(unwrap(model), "config", None), "patch_size", 1) or 1)
        return (int(shape[2]) // patch) * (int(shape[3]) // patch)
    return None

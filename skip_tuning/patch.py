"""The output-block patch shared by ComfyUI and Forge.

Both hosts call ``patch(h, hsp, transformer_options) -> (h, hsp)`` right before
``cat([h, hsp], dim=1)`` with ``transformer_options["block"] == ("output", i)``.
The patch is a closure: ``ModelPatcher.clone()`` deep-copies callable objects but keeps
functions, and offloading never touches what a closure holds.

Under torch.compile the patch must not let a graph freeze a number that ComfyUI's
TorchCompileModel leaves unguarded. Since December 2025 (PR #11317) that node drops every
guard whose source names ``transformer_options``; whatever a graph read through it (this
patch, its closure, the block index when the patch is traced as a frame of its own) is
baked into the graph and replayed for other blocks and for other models of the same
network. So the traced path reads every factor and bound as a tensor (a graph input,
fetched afresh at each call), branches on none of them, and the argument is not named
``transformer_options``, which keeps dynamo's guard on the block index.

The replace patches (U-ViT skips here, Residual Tuning in ``residual``) reach the network the same way,
through ``transformer_options["patches_replace"]``, where a graph also freezes which slots hold a patch.
Their APPLY_MODEL wrapper therefore puts a patch in every slot on every call (factor 1 outside the window
or where the node leaves a block alone), and each patch reads tensors when traced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable

import torch

# Where the ControlNet snapshot wrapper leaves the residuals the host is about to add to the skips.
CONTROL_OUTPUTS_KEY = "skip_tuning_control_outputs"

OutputBlockPatch = Callable[[torch.Tensor, torch.Tensor, dict], tuple]

# True while dynamo traces (a constant in the graph). torch before 2.3 lacks it; no ComfyUI that drops
# guards runs on such a torch, and there the float path is guarded as any closure is.
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or (lambda: False)


class SamplingWindow:
    """Where in sampling tuning is active: the noise levels (sigma_low, sigma_high), and the ComfyUI
    start/end percents (0 = first step) they were read from on a model's ``model_sampling``, if any.

    A ModelSampling node placed after the tuning node swaps the model's ``model_sampling``, so the
    levels are resolved again for the ``model_sampling`` each model call uses (:meth:`resolve`, run by
    :meth:`apply_model_wrapper`); until then they are the ones given. ``sigmas`` feeds the eager path;
    ``traced_sigmas`` is the same pair as a tensor updated in place, which a compiled graph reads as
    an input at every call.
    """

    def __init__(self, sigmas: tuple[float, float], percents: tuple[float, float] | None = None):
        self.percents = None if percents is None else (float(percents[0]), float(percents[1]))  # None: fixed
        self.sigmas = (float(sigmas[0]), float(sigmas[1]))
        with torch.inference_mode(False):  # a normal tensor: resolve() may update it in or out of inference mode
            self.traced_sigmas = torch.tensor(self.sigmas, dtype=torch.float64)
        self._resolved_for = None

    @classmethod
    def open(cls) -> SamplingWindow:
        """The whole of sampling (what a patch without a window holds, so that every patch traces alike)."""
        return cls((-math.inf, math.inf))

    def resolve(self, model_sampling) -> None:
        """Set the levels from ``model_sampling.percent_to_sigma`` (ComfyUI's), once per model_sampling."""
        if self.percents is None or model_sampling is self._resolved_for:
            return
        start, end = self.percents
        self.sigmas = (float(model_sampling.percent_to_sigma(end)), float(model_sampling.percent_to_sigma(start)))
        with torch.inference_mode(False):
            self.traced_sigmas.copy_(torch.tensor(self.sigmas, dtype=torch.float64))
        self._resolved_for = model_sampling

    def apply_model_wrapper(self, executor, *args, **kwargs):
        """ComfyUI ``APPLY_MODEL`` wrapper: resolves the window on the model the call runs (its
        ``model_sampling`` has every object patch applied), then runs the call unchanged."""
        model_sampling = getattr(executor.class_obj, "model_sampling", None)
        if model_sampling is not None:
            self.resolve(model_sampling)
        return executor(*args, **kwargs)


def as_sampling_window(sigma_range) -> SamplingWindow:
    """``sigma_range`` as a :class:`SamplingWindow`: itself, fixed levels, or the whole of sampling (None)."""
    if isinstance(sigma_range, SamplingWindow):
        return sigma_range
    if sigma_range is None:
        return SamplingWindow.open()
    return SamplingWindow(sigma_range)


def make_output_block_patch(
    rhos: Sequence[float],
    sigma_range: tuple[float, float] | SamplingWindow | None = None,
    scale_control: bool = True,
) -> OutputBlockPatch:
    """Build the patch that multiplies the skip of output block ``i`` by ``rhos[i]``.

    ``sigma_range`` = (sigma_low, sigma_high), or a :class:`SamplingWindow` whose levels may change
    between calls: outside it the skip is left alone.
    The gate is a tensor comparison and a ``torch.where``, so torch.compile sees no
    Python branch on sigma. Run eagerly, the factor is a Python float: the product is the
    same bits as ``hsp * rho`` in every dtype, on every device, and rho 1 returns the very
    tensors it got. Traced, it is a float32 scalar tensor, which the kernels read as the
    same float32 opmath value, and the gate is always in the graph (open when there is no
    window), so one graph serves every factor and window (module docstring).
    ``scale_control=False`` keeps ControlNet's residual (already added by the host)
    at full strength; it needs ``control_snapshot_wrapper`` registered on the model.
    """
    factors = tuple(float(rho) for rho in rhos)
    n_skips = len(factors)
    window = as_sampling_window(sigma_range)
    gated = sigma_range is not None
    with torch.inference_mode(False):  # normal tensors wherever the node runs: a graph's guards see one kind
        traced_factors = tuple(torch.tensor(rho, dtype=torch.float32) for rho in factors)
        traced_keeps = tuple(torch.tensor(1.0 - rho, dtype=torch.float32) for rho in factors)

    def skip_tuning_output_block_patch(h, hsp, options):
        # ``options`` is the host's transformer_options; its name keeps the block guard (module docstring).
        block = options.get("block")
        if not block or block[0] != "output" or not 0 <= block[1] < n_skips:
            return h, hsp
        index = block[1]
        if _is_compiling():
            rho, keep, bounds = traced_factors[index], traced_keeps[index], window.traced_sigmas
        else:
            rho = factors[index]
            if rho == 1.0:
                return h, hsp
            keep, bounds = 1.0 - rho, window.sigmas if gated else None

        control = None
        if not scale_control:
            residuals = options.get(CONTROL_OUTPUTS_KEY)
            if residuals and index < len(residuals):
                # The host pops residuals from the end, so block i received residuals[-1 - i].
                control = residuals[len(residuals) - 1 - index]
                if control is not None and control.shape != hsp.shape:
                    control = None  # the host could not add it either (it only warns)

        # Out of place: hsp may be the very tensor h (U-Nets without a middle block),
        # and other patches may still hold it.
        scaled = hsp * rho
        if control is not None:
            # hsp already holds skip + residual: rho * (skip + residual) + (1 - rho) * residual.
            scaled = scaled + control.to(hsp.dtype) * keep

        sigmas = options.get("sigmas") if bounds is not None else None
        if sigmas is not None:
            sigma = sigmas.reshape(-1)[0]
            if torch.is_tensor(bounds):
                bounds = bounds.to(sigma.dtype)  # rounded as a Python bound is when compared with sigma
            active = (sigma >= bounds[0]) & (sigma <= bounds[1])
            scaled = torch.where(active, scaled, hsp)
        return h, scaled

    return skip_tuning_output_block_patch


def control_snapshot_wrapper(executor, x, timesteps, context, y, control, transformer_options, *args, **kwargs):
    """Diffusion-model wrapper that records ControlNet's output residuals for the patch.

    ComfyUI adds each residual to its skip in place and pops it before output patches run,
    so the list is copied (references only) before the forward pass begins, and dropped after.
    """
    residuals = control.get("output") if isinstance(control, dict) else None
    transformer_options[CONTROL_OUTPUTS_KEY] = list(residuals) if residuals else None
    try:
        return executor(x, timesteps, context, y, control, transformer_options, *args, **kwargs)
    finally:
        transformer_options.pop(CONTROL_OUTPUTS_KEY, None)


def traced_scalars(values: Sequence[float]) -> tuple:
    """``values`` as float32 scalar tensors for a patch's traced path, a distinct tensor each.

    A compiled graph takes them as inputs, read afresh at every call (module docstring). Distinct,
    because dynamo merges the sources of one tensor object into one graph input and, its guard
    dropped, would replay that input for every slot of a later call whose tensors differ.
    """
    with torch.inference_mode(False):  # normal tensors wherever the node runs: a graph's guards see one kind
        return tuple(torch.tensor(float(value), dtype=torch.float32) for value in values)


def make_skip_replace_patch(rho: float, previous=None, control_residual: torch.Tensor | None = None,
                            traced: tuple | None = None):
    """A ``patches_replace["dit"]`` block patch that scales ``args["skip"]`` by ``rho``, then runs the block.

    ``previous`` is the patch that held the slot before (a slot holds one): it runs with the
    scaled skip, so both take effect. ``control_residual``: the ControlNet residual the host
    already added to the skip, kept at full strength (``rho * (skip + r) + (1 - rho) * r``).
    ``traced``: (rho, 1 - rho) as tensors (:func:`traced_scalars`), what the patch reads when
    torch.compile traces it; it then always multiplies, so every factor traces the same graph.
    Without them a traced call reads the Python floats (constants of that graph). Run eagerly it
    multiplies by the Python float, and rho 1 passes the skip on untouched.
    """
    factor = float(rho)
    traced_factor, traced_keep = traced if traced is not None else (factor, 1.0 - factor)

    def skip_tuning_replace_patch(args, extra):
        skip = args.get("skip")
        compiling = _is_compiling()
        if skip is not None and (compiling or factor != 1.0):
            rho_now, keep = (traced_factor, traced_keep) if compiling else (factor, 1.0 - factor)
            scaled = skip * rho_now  # out of place; by a float (eager) or a float32 scalar: the dtype stays
            if control_residual is not None and control_residual.shape == skip.shape:
                scaled = scaled + control_residual.to(skip.dtype) * keep
            args = {**args, "skip": scaled}
        if previous is not None:
            return previous(args, extra)
        return extra["original_block"](args)

    return skip_tuning_replace_patch


def with_skip_replace_patches(
    transformer_options: dict,
    replace_keys: Sequence,
    rhos: Sequence[float],
    control_residuals: Sequence[torch.Tensor] | None = None,
    traced: Sequence[tuple] | None = None,
) -> dict:
    """A copy of ``transformer_options`` whose ``patches_replace["dit"]`` scales the skip of
    ``replace_keys[i]``'s block by ``rhos[i]``, wrapping the patch that held each slot.

    ``control_residuals`` (ControlNet's ``"output"`` list, popped from the end by the network, so
    skip i receives ``control_residuals[-1 - i]``) are kept at full strength when given.
    ``traced``: per skip, the tensors :func:`make_skip_replace_patch` reads when compiled; with them
    every slot gets a patch, factors of 1 too, so that a graph that dropped its guards on
    ``transformer_options`` finds the same patches in every call (without them a factor of 1 adds none).
    """
    if len(replace_keys) != len(rhos):
        raise ValueError(f"{len(rhos)} factors for {len(replace_keys)} skips")
    patches_replace = dict(transformer_options.get("patches_replace", {}))
    dit = dict(patches_replace.get("dit", {}))
    residuals = list(control_residuals or ())
    for index, (key, rho) in enumerate(zip(replace_keys, rhos)):
        if rho == 1.0 and traced is None:
            continue
        residual = residuals[len(residuals) - 1 - index] if index < len(residuals) else None
        dit[key] = make_skip_replace_patch(rho, dit.get(key), residual, None if traced is None else traced[index])
    patches_replace["dit"] = dit
    return {**transformer_options, "patches_replace": patches_replace}


def make_skip_replace_wrapper(
    replace_keys: Sequence,
    rhos: Sequence[float],
    sigma_range: tuple[float, float] | SamplingWindow | None = None,
    scale_control: bool = True,
):
    """ComfyUI ``APPLY_MODEL`` wrapper that tunes a U-ViT's skips for the one model call it wraps.

    The replace patches (:func:`with_skip_replace_patches`) go into a copy of this call's
    ``transformer_options``, wrapping whatever patch holds each slot at that moment (registered
    before or after Skip Tuning), so nothing is stored on the model and no other patch is
    dropped. The wrapper sees the noise level, which the replace patches do not: outside
    ``sigma_range`` (and for a node whose factors are all 1) every slot gets a patch of factor 1,
    which passes the skip on untouched when run eagerly and, traced, is the same graph with
    other inputs (module docstring).
    """
    if len(replace_keys) != len(rhos):
        raise ValueError(f"{len(rhos)} factors for {len(replace_keys)} skips")
    keys = tuple(replace_keys)
    factors = tuple(float(rho) for rho in rhos)
    neutral = (1.0,) * len(factors)
    traced = _traced_pairs(factors)
    traced_neutral = _traced_pairs(neutral)

    def residuals_of(control):
        return control.get("output") if not scale_control and isinstance(control, dict) else None

    def tune(transformer_options, control):
        return with_skip_replace_patches(transformer_options, keys, factors, residuals_of(control), traced)

    def untuned(transformer_options, control):
        return with_skip_replace_patches(transformer_options, keys, neutral, residuals_of(control), traced_neutral)

    return apply_model_wrapper(tune, any(rho != 1.0 for rho in factors), sigma_range, untuned)


def _traced_pairs(factors: Sequence[float]) -> tuple:
    scalars = traced_scalars([value for rho in factors for value in (rho, 1.0 - rho)])
    return tuple(zip(scalars[0::2], scalars[1::2]))


def apply_model_wrapper(tune, tuned: bool, sigma_range=None, untuned=None):
    """A ComfyUI ``APPLY_MODEL`` wrapper that runs one model call with ``tune(transformer_options, control)``,
    a tuned copy of that call's options, when ``tuned`` and the call's noise level is inside ``sigma_range``
    (a :class:`SamplingWindow` is resolved on the called model first); any other call runs with
    ``untuned(transformer_options, control)`` when given, else with the options as they are."""
    window = None if sigma_range is None else as_sampling_window(sigma_range)

    def skip_tuning_apply_model_wrapper(executor, x, t, c_concat, c_crossattn, control, transformer_options,
                                        *args, **kwargs):
        if window is not None and tuned:
            # ComfyUI's executor carries the model it calls; a bare callable (tests, other hosts) has none.
            model_sampling = getattr(getattr(executor, "class_obj", None), "model_sampling", None)
            if model_sampling is not None:
                window.resolve(model_sampling)
        if tuned and in_sigma_window(None if window is None else window.sigmas, t, transformer_options):
            transformer_options = tune(transformer_options, control)
        elif untuned is not None:
            transformer_options = untuned(transformer_options, control)
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, *args, **kwargs)

    return skip_tuning_apply_model_wrapper


def in_sigma_window(window, t, transformer_options) -> bool:
    # Outside the diffusion model (which torch.compile may compile), so a Python comparison is fine here.
    if window is None:
        return True
    sigmas = transformer_options.get("sigmas", t)
    sigma = float(sigmas.reshape(-1)[0]) if torch.is_tensor(sigmas) else float(sigmas)
    return window[0] <= sigma <= window[1]

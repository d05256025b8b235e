"""Skip Tuning and Residual Tuning on diffusers models: forward hooks that a handle removes again.

PyTorch's own module hooks (``register_forward_pre_hook(..., with_kwargs=True)``), not diffusers'
``HookRegistry``: removing a torch hook leaves the module exactly as it was, while a registry keeps its
``_diffusers_hook`` attribute and an instance-level ``forward`` after its last hook is gone. Torch hooks
also run around whatever diffusers' registry hooks (layerwise casting, group offloading, caches) or
accelerate's offload hooks put in place of ``forward``, so the order in which they are applied does
not matter. The factors are Python floats and every product is out of place: the dtype stays, and a
skip that other code still holds is never changed.

Under torch.compile a hook that dynamo traces reads its factors as float32 tensors instead: graph inputs,
fetched through the hook at every call, so blocks and calls share a graph rather than one per factor, and a
graph whose hooks were removed is not replayed. Hooks attached after a graph was compiled are another
matter: dynamo does not guard module hooks by default
(``torch._dynamo.config.skip_nnmodule_hook_guards``), so that graph never runs them; the adapter warns
where it sees a compiled model (docs/diffusers.md: torch.compile).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Callable

import torch
from torch import nn

from .. import (
    SUPPORTED_DITS,
    SkipTuningError,
    block_factors,
    resolve_rhos,
    validate_percent_window,
    validate_rho,
    validate_start_fraction,
)
from ..patch import _is_compiling, traced_scalars
from .layouts import (
    RESIDUAL_CLASSES,
    U_VIT_CLASSES,
    UNET_CLASSES,
    ResidualSite,
    SkipSite,
    argument_position,
    find_residual_layout,
    find_skip_layout,
    unwrap,
)
from .noise_window import NoiseWindow

logger = logging.getLogger("skip_tuning")


class TuningHandle:
    """The hooks one ``apply_*`` call attached. ``remove()`` detaches them (idempotent); used as a
    context manager it removes them on exit. Two handles on one model multiply their factors."""

    def __init__(self, model: nn.Module, architecture: str, rhos: Sequence[float], hooks: list):
        self.model = model
        self.architecture = architecture
        self.rhos = tuple(rhos)  # per skip, deepest first (Skip Tuning); per block, input first (Residual)
        self._hooks = hooks

    @property
    def attached(self) -> bool:
        return bool(self._hooks)

    def remove(self) -> None:
        while self._hooks:
            self._hooks.pop().remove()

    def __enter__(self) -> TuningHandle:
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "removed"
        return f"<TuningHandle {self.architecture} rhos={list(self.rhos)} {state}>"


def _hook_changes_recompile() -> bool:
    """Whether compiled graphs notice module hooks attached after they were traced: only with
    ``torch._dynamo.config.skip_nnmodule_hook_guards`` off (torch's default is on)."""
    dynamo_config = sys.modules.get("torch._dynamo.config")  # not loaded: nothing was compiled
    return dynamo_config is None or not getattr(dynamo_config, "skip_nnmodule_hook_guards", True)


def _compiled_as_a_whole(target, model: nn.Module, pipeline) -> bool:
    """Whether ``model`` itself runs compiled: given or held by the pipeline as a ``torch.compile`` wrapper,
    or compiled in place (``model.compile()``). Regional compilation compiles blocks, not the model."""
    holders = [target] + [getattr(pipeline, name, None) for name in ("unet", "transformer") if pipeline is not None]
    wrapped = any(getattr(holder, "_orig_mod", None) is model for holder in holders)
    return wrapped or getattr(model, "_compiled_call_impl", None) is not None


def _warn_if_compiled(target, model: nn.Module, pipeline, name: str) -> None:
    if _compiled_as_a_whole(target, model, pipeline) and not _hook_changes_recompile():
        logger.warning(
            "%s: %s is compiled; a graph compiled before the hooks were attached does not run them (torch does "
            "not guard module hooks by default). Call torch.compiler.reset() before the next compiled call, or "
            "set torch._dynamo.config.skip_nnmodule_hook_guards = False before compiling, or attach before "
            "compiling (docs/diffusers.md: torch.compile).", name, type(model).__name__)


def resolve_model(target, attributes: Sequence[str]):
    """(model, pipeline or None) for a model, a pipeline, or a wrapper exposing its pipeline as ``.pipe``."""
    if isinstance(target, nn.Module):
        return unwrap(target), None
    for pipeline in (target, getattr(target, "pipe", None)):
        if pipeline is None:
            continue
        for name in attributes:
            model = getattr(pipeline, name, None)
            if isinstance(model, nn.Module):
                return unwrap(model), pipeline
    raise SkipTuningError(
        f"{type(target).__name__} is neither a diffusers model nor a pipeline with a {' or '.join(attributes)}"
    )


def _noise_window(start: float, end: float, model, pipeline, scheduler) -> NoiseWindow | None:
    if start <= 0.0 and end >= 1.0:
        return None
    if scheduler is not None:
        return NoiseWindow(start, end, model, lambda: scheduler)
    # The pipeline's scheduler at call time; a bare model has none (noise_window's documented defaults).
    return NoiseWindow(start, end, model, lambda: getattr(pipeline, "scheduler", None))


class _CallGate:
    """Whether the model call in progress lies in the window; set by a pre-hook on the model."""

    def __init__(self, window: NoiseWindow, model: nn.Module):
        self.window = window
        self.timestep_position = argument_position(model, "timestep")
        self.active = True

    def before_model_call(self, module, args, kwargs):
        position = self.timestep_position
        timestep = kwargs.get("timestep", args[position] if position is not None and len(args) > position else None)
        hidden_states = kwargs.get("hidden_states", kwargs.get("sample", args[0] if args else None))
        self.active = self.window.is_active(timestep, hidden_states)


def _attach(model: nn.Module, window: NoiseWindow | None, hook_makers: list) -> list:
    """Register the model's gate (when there is a window) and ``hook_makers`` (each: gate -> handle).
    Nothing is attached when there are no hooks to make; on an error every hook made so far is removed."""
    handles = []
    if not hook_makers:
        return handles
    try:
        gate = None
        if window is not None:
            gate = _CallGate(window, model)
            handles.append(model.register_forward_pre_hook(gate.before_model_call, with_kwargs=True))
        for make in hook_makers:
            handles.append(make(gate))
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    return handles


def _selected(active, tuned: torch.Tensor, untouched: torch.Tensor) -> torch.Tensor:
    """``tuned`` where the call is in the window; a gate tensor picks exactly one of the two, bit for bit."""
    if active is True:
        return tuned
    return torch.where(active.to(tuned.device, non_blocking=True), tuned, untouched)


def _scaled(tensor: torch.Tensor, rho: float, traced_rho: torch.Tensor, compiling: bool, active) -> torch.Tensor:
    if compiling:  # a graph input, whatever the factor (module docstring)
        return _selected(active, tensor * traced_rho, tensor)
    return tensor if rho == 1.0 else _selected(active, tensor * rho, tensor)


def _skip_hook_maker(site: SkipSite, factors: tuple, architecture: str) -> Callable:
    warned = []
    traced_factors = traced_scalars(factors)

    def make(gate):
        def skip_tuning_pre_hook(module, args, kwargs):
            in_kwargs = site.argument in kwargs
            if in_kwargs:
                value = kwargs[site.argument]
            elif len(args) > site.position:
                value = args[site.position]
            else:
                return None
            active = True if gate is None else gate.active
            if active is False or value is None:
                return None
            if site.carries_tuple:
                if not isinstance(value, (tuple, list)) or len(value) != len(factors):
                    if not warned:
                        warned.append(True)
                        logger.warning(
                            "Skip Tuning: a %s up block got %s skips where %d were expected; it is wired "
                            "differently, so its skips are left unscaled", architecture,
                            len(value) if isinstance(value, (tuple, list)) else type(value).__name__, len(factors))
                    return None
                compiling = _is_compiling()
                scaled = tuple(_scaled(skip, rho, traced, compiling, active)
                               for skip, rho, traced in zip(value, factors, traced_factors))
            else:
                scaled = _scaled(value, factors[0], traced_factors[0], _is_compiling(), active)
            if in_kwargs:
                return args, {**kwargs, site.argument: scaled}
            return (*args[:site.position], scaled, *args[site.position + 1:]), kwargs

        return site.module.register_forward_pre_hook(skip_tuning_pre_hook, with_kwargs=True)

    return make


def _residual_hook_maker(site: ResidualSite, rho: float) -> Callable:
    removed = 1.0 - rho
    (traced_removed,) = traced_scalars((removed,))

    def make(gate):
        def residual_tuning_hook(module, args, kwargs, output):
            active = True if gate is None else gate.active
            if active is False or not isinstance(output, tuple):
                return None
            outputs = list(output)
            compiling = _is_compiling()
            for argument, position, index in site.streams:
                identity = kwargs.get(argument, args[position] if len(args) > position else None)
                out = outputs[index]
                # A cache hook (First Block Cache) that skips the block returns its input object as is.
                if identity is None or out is None or out is identity:
                    continue
                # These blocks never change their inputs in place (diffusers' source), so the input still
                # holds x: out = x + F(x) -> rho * x + F(x).
                share = identity.to(out.device) * (traced_removed if compiling else removed)
                outputs[index] = _selected(active, out - share, out)
            return tuple(outputs)

        return site.module.register_forward_hook(residual_tuning_hook, with_kwargs=True)

    return make


def _per_skip_factors(rho_per_skip):
    if rho_per_skip is None:
        return ""
    if isinstance(rho_per_skip, str):
        return rho_per_skip
    try:
        return tuple(rho_per_skip)
    except TypeError:
        raise SkipTuningError(
            f"rho_per_skip must be a sequence of numbers or a comma-separated string, got {rho_per_skip!r}"
        ) from None


def apply_skip_tuning(model_or_pipeline, rho_bottom: float = 1.0, rho_top: float = 1.0, *, rho_per_skip=None,
                      start: float = 0.0, end: float = 1.0, scheduler=None) -> TuningHandle:
    """Scale the long skips of a U-Net or U-ViT: skip i (0 = deepest) by
    ``rho_bottom + (rho_top - rho_bottom) * i / (N - 1)``, or by ``rho_per_skip[i]``.

    ``start``/``end``: fractions of the noise schedule (0 = pure noise), ComfyUI's convention, judged on
    the timestep of each model call with ``scheduler`` (default: the pipeline's, read at every call).
    Every value is checked before anything is attached; bad ones raise :class:`SkipTuningError`.
    """
    rho_bottom = validate_rho(rho_bottom, "rho_bottom")
    rho_top = validate_rho(rho_top, "rho_top")
    start, end = validate_percent_window(start, end, ("start", "end"))
    explicit = _per_skip_factors(rho_per_skip)
    model, pipeline = resolve_model(model_or_pipeline, ("unet", "transformer"))
    layout = find_skip_layout(model)
    if layout is None:
        raise SkipTuningError(
            f"{type(model).__name__} has no long skip connections that Skip Tuning can scale (supported: "
            f"{UNET_CLASSES}; {U_VIT_CLASSES}). For {RESIDUAL_CLASSES} use apply_residual_tuning."
        )
    rhos = resolve_rhos(layout.n_skips, rho_bottom, rho_top, explicit)
    makers = []
    for site in layout.sites:
        factors = tuple(rhos[index] for index in site.skip_indices)
        if any(rho != 1.0 for rho in factors):
            makers.append(_skip_hook_maker(site, factors, layout.architecture))
    hooks = _attach(model, _noise_window(start, end, model, pipeline, scheduler), makers)
    if hooks:
        _warn_if_compiled(model_or_pipeline, model, pipeline, "Skip Tuning")
    logger.info("Skip Tuning: %s, %d long skips, rho bottom to top = [%s]%s", layout.architecture, layout.n_skips,
                ", ".join(f"{rho:.4g}" for rho in rhos), "" if (start, end) == (0.0, 1.0) else
                f", active from {start:g} to {end:g} of the noise schedule")
    return TuningHandle(model, layout.architecture, rhos, hooks)


def apply_residual_tuning(model_or_pipeline, rho_first: float, rho_last: float, *, start_depth: float = 0.0,
                          start: float = 0.0, end: float = 1.0, scheduler=None) -> TuningHandle:
    """Experimental: every block of a Flux or SD3 transformer computes ``rho_l * x + F_l(x)``, with the
    factors of ComfyUI's Residual Tuning node (``block_factors``: 1 for the first ``start_depth`` of the
    blocks, then linear from ``rho_first`` to ``rho_last``; Flux's double blocks, then its single blocks)."""
    rho_first = validate_rho(rho_first, "rho_first")
    rho_last = validate_rho(rho_last, "rho_last")
    start_depth = validate_start_fraction(start_depth, "start_depth")
    start, end = validate_percent_window(start, end, ("start", "end"))
    model, pipeline = resolve_model(model_or_pipeline, ("transformer", "unet"))
    layout = find_residual_layout(model)
    if layout is None:
        raise SkipTuningError(
            f"{type(model).__name__} is not a DiT Residual Tuning supports ({SUPPORTED_DITS}: {RESIDUAL_CLASSES}). "
            f"For U-Nets and {U_VIT_CLASSES} use apply_skip_tuning."
        )
    rhos = block_factors(len(layout.sites), rho_first, rho_last, start_depth)
    makers = [_residual_hook_maker(site, rho) for site, rho in zip(layout.sites, rhos) if rho != 1.0]
    hooks = _attach(model, _noise_window(start, end, model, pipeline, scheduler), makers)
    if hooks:
        _warn_if_compiled(model_or_pipeline, model, pipeline, "Residual Tuning")
    logger.info("Residual Tuning: %s, %d blocks, rho first to last = [%s]", layout.architecture, len(rhos),
                ", ".join(f"{rho:.4g}" for rho in rhos))
    return TuningHandle(model, layout.architecture, rhos, hooks)

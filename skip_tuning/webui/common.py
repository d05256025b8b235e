"""What every webui host shares: the script's parameters (positional or dict args, X/Y/Z overrides), the
infotext entries, once-per-generation warnings and the start/end window on the pass's sampling progress."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, Callable

from .. import SkipTuningError
from ..infotext import INFOTEXT_KEYS, WebuiParams, encode_infotext, make_params


class _FormatFirst(logging.Filter):
    """Hand the handlers a record whose message is already formatted.

    SD.Next's UI-log handler (the ring buffer behind ``/sdapi/v1/log``) replaces ``record.msg`` with the
    formatted text but keeps ``record.args``: formatting that record again raises inside the handler's
    ``except``, so the UI never shows it, and every handler after it (the console, once SD.Next's traceback
    printer has moved the console handler to the end) drops it in its filter.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = record.getMessage(), None
        return True


logger = logging.getLogger("skip_tuning")
logger.addFilter(_FormatFirst())

TITLE = "Skip Tuning"

# The script's arguments in ui() order: API users pass them positionally, so only append.
ARG_NAMES = ("enabled", "rho_bottom", "rho_top", "start", "end", "hires_passes")
_DEFAULTS = asdict(WebuiParams())

# Attributes set on the processing object ``p``.
P_PARAMS = "skip_tuning_params"
P_WARNED = "skip_tuning_warned"
XYZ_ENABLED = "skip_tuning_xyz_enabled"  # per-cell overrides written by the X/Y/Z plot axes
XYZ_RHO_BOTTOM = "skip_tuning_xyz_rho_bottom"
XYZ_RHO_TOP = "skip_tuning_xyz_rho_top"

NO_LONG_SKIPS = ("this model has no U-Net long skips (SD3, Flux and other DiT models are not supported); "
                 "nothing is changed")

REFINER_TUNED = "its steps are tuned too"
REFINER_UNTUNED = "the refiner's steps run without Skip Tuning"


# ---------------------------------------------------------------------------------------------
# Parameters: positional or dict script args, X/Y/Z overrides


def params_from_args(args: Sequence[Any]) -> WebuiParams:
    """The script's args as validated parameters.

    Positional (ui() order; missing or None entries take the defaults), or a single dict with
    named keys (the API's dict form), where ``enabled`` defaults to True.
    """
    if args and isinstance(args[0], Mapping):
        values = dict(args[0])
        unknown = sorted(set(values) - set(ARG_NAMES))
        if unknown:
            raise SkipTuningError(f"unknown key(s) {', '.join(map(repr, unknown))}; use {', '.join(ARG_NAMES)}")
        values.setdefault("enabled", True)
    else:
        values = {name: value for name, value in zip(ARG_NAMES, args)}
    merged = dict(_DEFAULTS)
    merged.update({name: value for name, value in values.items() if value is not None})
    return make_params(**merged)


def apply_xyz_overrides(p, params: WebuiParams) -> WebuiParams:
    """Apply the X/Y/Z plot's per-cell values; a rho axis turns Skip Tuning on for its cells."""
    enabled = getattr(p, XYZ_ENABLED, None)
    bottom = getattr(p, XYZ_RHO_BOTTOM, None)
    top = getattr(p, XYZ_RHO_TOP, None)
    if enabled is None and bottom is None and top is None:
        return params
    values = asdict(params)
    if bottom is not None:
        values["rho_bottom"] = bottom
    if top is not None:
        values["rho_top"] = top
    values["enabled"] = enabled if enabled is not None else True
    return make_params(**values)


def resolve_params(p, args: Sequence[Any]) -> WebuiParams:
    """Parameters for ``p``; invalid ones switch Skip Tuning off with an error in the log."""
    try:
        return apply_xyz_overrides(p, params_from_args(args))
    except SkipTuningError as error:
        logger.error("Skip Tuning is off for this generation: %s", error)
        return WebuiParams(enabled=False)


def write_infotext(p, params: WebuiParams) -> None:
    """Replace our keys in p.extra_generation_params (X/Y/Z cells share that dict)."""
    extra = getattr(p, "extra_generation_params", None)
    if extra is None:
        extra = p.extra_generation_params = {}
    for key in INFOTEXT_KEYS:
        extra.pop(key, None)
    extra.update(encode_infotext(params))


def drop_infotext(p) -> None:
    extra = getattr(p, "extra_generation_params", None) or {}
    for key in INFOTEXT_KEYS:
        extra.pop(key, None)


def warn(p, message: str) -> None:
    """Log ``message`` once per generation."""
    warned = getattr(p, P_WARNED, None)
    if warned is None:
        warned = set()
        try:
            setattr(p, P_WARNED, warned)
        except AttributeError:
            pass
    if message not in warned:
        warned.add(message)
        logger.warning("Skip Tuning: %s", message)


def warn_refiner(p, refiner_tuned: bool) -> None:
    """Say what happens to a refiner's steps, as seen in the real webuis (tests/test_webui_real.py).

    A1111 (1.9 and 1.10 alike) reuses the loaded model for a same-architecture refiner and loads its
    weights into the hooked U-Net; Forge and reForge load an unpatched one.
    """
    if getattr(p, "refiner_checkpoint_info", None) is None:
        return
    if refiner_tuned:
        warn(p, "a refiner of the same architecture is loaded into the tuned U-Net (with the default checkpoint "
                f"cache of 1), so {REFINER_TUNED}; any other refiner's steps run without Skip Tuning")
    else:
        warn(p, f"{REFINER_UNTUNED} on this webui")


# ---------------------------------------------------------------------------------------------
# The start/end window: the pass's sampling progress


def sampling_progress(p, state=None) -> float | None:
    """How far the current pass is, 0 (first step) to 1; None when unknown.

    A1111/Forge: the sampler's CFG denoiser counts its calls (``step``) against ``total_steps`` (which
    counts both calls of second-order samplers). Otherwise ``shared.state``: SD.Next resets it for every
    pipeline call and counts the finished steps there, learning the pass's step count only when the
    first step ends (0 of 0 is the first step).
    """
    denoiser = getattr(getattr(p, "sampler", None), "model_wrap_cfg", None)
    step = getattr(denoiser, "step", None)
    total = getattr(denoiser, "total_steps", None)
    if not isinstance(step, int) or not total:
        step = getattr(state, "sampling_step", None)
        total = getattr(state, "sampling_steps", None)
    if not isinstance(step, int):
        return None
    if not total:
        return 0.0 if step == 0 and total == 0 else None
    return min(max(step / total, 0.0), 1.0)


def in_window(progress: float | None, start: float, end: float) -> bool:
    """start <= progress < end (end = 1 includes the last step); an unknown progress is inside."""
    if progress is None:
        return True
    return start <= progress and (progress < end or end >= 1.0)


def webui_state():
    """The webui's ``shared.state``, or None outside a webui."""
    try:
        from modules import shared

        return shared.state
    except Exception:  # outside a webui, or an unusual host
        return None


def progress_gate(p, start: float, end: float) -> Callable[[], bool]:
    """``is_active()`` for fractions start..end of the pass's sampling."""
    state = webui_state()

    def is_active() -> bool:
        return in_window(sampling_progress(p, state), start, end)

    return is_active

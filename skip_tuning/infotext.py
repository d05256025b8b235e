"""The A1111/Forge script's parameters and their infotext codec (pure Python, no webui imports).

An image's infotext ("parameters" text) gets the Skip Tuning keys only when Skip Tuning was on::

    Skip Tuning: True, Skip Tuning rho_bottom: 0.8, Skip Tuning rho_top: 1

Start/end (percent of sampling) and the hires-fix passes are written only when they differ from
their defaults. Reading pasted parameters back gives the full set, defaults filled in, and text
without any Skip Tuning key decodes to "off".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .schedule import (
    DEFAULT_RHO_BOTTOM,
    DEFAULT_RHO_TOP,
    SkipTuningError,
    validate_percent_window,
    validate_rho,
)

PASSES_BOTH = "Both passes"
PASSES_FIRST = "First pass only"
PASSES_HIRES = "Hires pass only"
HIRES_PASS_CHOICES = (PASSES_BOTH, PASSES_FIRST, PASSES_HIRES)

_PASS_ALIASES = {
    "both": PASSES_BOTH,
    "both passes": PASSES_BOTH,
    "first": PASSES_FIRST,
    "first pass": PASSES_FIRST,
    "first pass only": PASSES_FIRST,
    "second": PASSES_HIRES,
    "second pass": PASSES_HIRES,
    "second pass only": PASSES_HIRES,
    "hires": PASSES_HIRES,
    "hires pass": PASSES_HIRES,
    "hires pass only": PASSES_HIRES,
}

DEFAULT_START = 0.0  # percent of sampling
DEFAULT_END = 100.0

KEY_ENABLED = "Skip Tuning"
KEY_RHO_BOTTOM = "Skip Tuning rho_bottom"
KEY_RHO_TOP = "Skip Tuning rho_top"
KEY_START = "Skip Tuning start"
KEY_END = "Skip Tuning end"
KEY_PASSES = "Skip Tuning passes"
INFOTEXT_KEYS = (KEY_ENABLED, KEY_RHO_BOTTOM, KEY_RHO_TOP, KEY_START, KEY_END, KEY_PASSES)

_TRUE = {"true", "on", "yes", "1", "enabled"}
_FALSE = {"false", "off", "no", "0", "disabled", "none", ""}


@dataclass(frozen=True)
class WebuiParams:
    """What the webui script applies: start/end in percent of the pass's sampling steps."""

    enabled: bool = False
    rho_bottom: float = DEFAULT_RHO_BOTTOM
    rho_top: float = DEFAULT_RHO_TOP
    start: float = DEFAULT_START
    end: float = DEFAULT_END
    hires_passes: str = PASSES_BOTH

    @property
    def window(self) -> tuple[float, float]:
        """(start, end) as fractions of sampling, 0 to 1."""
        return self.start / 100.0, self.end / 100.0

    @property
    def whole_sampling(self) -> bool:
        return self.start <= DEFAULT_START and self.end >= DEFAULT_END

    def applies_to_pass(self, is_hires_pass: bool) -> bool:
        """Whether this pass is tuned; without hires fix the only pass is the first pass."""
        if self.hires_passes == PASSES_FIRST:
            return not is_hires_pass
        if self.hires_passes == PASSES_HIRES:
            return bool(is_hires_pass)
        return True


def parse_bool(value: Any, name: str = "enabled") -> bool:
    """True/False from a bool, 0/1, or text such as "True", "off", "yes"."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise SkipTuningError(f"{name} must be true or false, got {value!r}")


def normalize_passes(value: Any) -> str:
    """One of HIRES_PASS_CHOICES from its label or a short name (both / first / second or hires)."""
    if isinstance(value, str):
        text = " ".join(value.strip().lower().replace("_", " ").replace("-", " ").split())
        if text in _PASS_ALIASES:
            return _PASS_ALIASES[text]
    raise SkipTuningError(
        f"hires_passes must be one of {', '.join(repr(c) for c in HIRES_PASS_CHOICES)} "
        f"(or both / first / second), got {value!r}"
    )


def make_params(
    enabled: Any = False,
    rho_bottom: Any = DEFAULT_RHO_BOTTOM,
    rho_top: Any = DEFAULT_RHO_TOP,
    start: Any = DEFAULT_START,
    end: Any = DEFAULT_END,
    hires_passes: Any = PASSES_BOTH,
) -> WebuiParams:
    """Validated parameters; raises SkipTuningError naming the offending value."""
    bottom = validate_rho(rho_bottom, "rho_bottom")
    top = validate_rho(rho_top, "rho_top")
    for name, value in (("start", start), ("end", end)):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise SkipTuningError(f"{name} must be a percentage between 0 and 100, got {value!r}")
    try:
        start_pct, end_pct = float(start), float(end)
    except ValueError:
        raise SkipTuningError(f"start and end must be percentages between 0 and 100, got {start!r}, {end!r}") from None
    try:
        validate_percent_window(start_pct / 100.0, end_pct / 100.0)
    except SkipTuningError:
        raise SkipTuningError(
            f"start and end must be percentages with 0 <= start <= end <= 100, got {start!r} and {end!r}"
        ) from None
    return WebuiParams(
        enabled=parse_bool(enabled),
        rho_bottom=bottom,
        rho_top=top,
        start=start_pct,
        end=end_pct,
        hires_passes=normalize_passes(hires_passes),
    )


def format_number(value: float) -> str:
    """Shortest text that reads back as the same float: 0.8, 1, 0.85, 0.7000000000000001."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if text in ("", "-0"):
        text = "0"
    return text if float(text) == value else repr(float(value))


def encode_infotext(params: WebuiParams) -> dict[str, str]:
    """The infotext entries for ``params``: empty when Skip Tuning is off."""
    if not params.enabled:
        return {}
    fields = {
        KEY_ENABLED: "True",
        KEY_RHO_BOTTOM: format_number(params.rho_bottom),
        KEY_RHO_TOP: format_number(params.rho_top),
    }
    if params.start != DEFAULT_START:
        fields[KEY_START] = format_number(params.start)
    if params.end != DEFAULT_END:
        fields[KEY_END] = format_number(params.end)
    if params.hires_passes != PASSES_BOTH:
        fields[KEY_PASSES] = params.hires_passes
    return fields


def _lenient(parse, value, default):
    if value is None:
        return default
    try:
        return parse(value)
    except (SkipTuningError, TypeError, ValueError):
        return default


def _percent(value) -> float:
    if isinstance(value, str):
        value = value.strip().rstrip("%")
    percent = float(value)
    if not (math.isfinite(percent) and 0.0 <= percent <= 100.0):
        raise ValueError(percent)
    return percent


def decode_infotext(fields: Mapping[str, Any]) -> WebuiParams:
    """Parameters from parsed infotext (key -> text). No Skip Tuning key: off.

    Pasting must never fail, so a value that does not parse falls back to its default.
    """
    if not any(key in fields for key in INFOTEXT_KEYS):
        return WebuiParams(enabled=False)
    start = _lenient(_percent, fields.get(KEY_START), DEFAULT_START)
    end = _lenient(_percent, fields.get(KEY_END), DEFAULT_END)
    if start > end:
        start, end = DEFAULT_START, DEFAULT_END
    return WebuiParams(
        enabled=_lenient(parse_bool, fields.get(KEY_ENABLED), True),
        rho_bottom=_lenient(lambda v: validate_rho(v, "rho_bottom"), fields.get(KEY_RHO_BOTTOM), DEFAULT_RHO_BOTTOM),
        rho_top=_lenient(lambda v: validate_rho(v, "rho_top"), fields.get(KEY_RHO_TOP), DEFAULT_RHO_TOP),
        start=start,
        end=end,
        hires_passes=_lenient(normalize_passes, fields.get(KEY_PASSES), PASSES_BOTH),
    )


def paste_values(fields: Mapping[str, Any]) -> dict[str, str]:
    """Entries to merge into pasted parameters so every Skip Tuning control gets a value.

    Without Skip Tuning keys only the on/off key is set ("False"), which turns it off and
    leaves the sliders alone; with them, every key is set, defaults included.
    """
    params = decode_infotext(fields)
    if not any(key in fields for key in INFOTEXT_KEYS):
        return {KEY_ENABLED: "False"}
    return {
        KEY_ENABLED: "True" if params.enabled else "False",
        KEY_RHO_BOTTOM: format_number(params.rho_bottom),
        KEY_RHO_TOP: format_number(params.rho_top),
        KEY_START: format_number(params.start),
        KEY_END: format_number(params.end),
        KEY_PASSES: params.hires_passes,
    }

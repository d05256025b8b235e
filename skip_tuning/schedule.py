"""The Skip-Tuning rho schedule and the validation of its parameters.

Output block ``i`` (0 = deepest skip, ``n - 1`` = the first, highest-resolution
skip) multiplies its skip by ``rho_bottom + (rho_top - rho_bottom) * i / (n - 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

RHO_MIN = 0.0
RHO_MAX = 2.0

# Defaults every host shows (ComfyUI node, A1111/Forge script): one place to change them.
# 1.0, off: no other value lost on none of the project's three models (docs/results.md: presets). Weaker
# skips (0.6-0.9) helped every model at few unguided steps, but 0.9 cost 0.1-0.6 FD on both U-Nets and
# 1.2 FD on the U-ViT in guided 10-step cells, and 1.2 (the U-Nets' best with guidance) cost the U-ViT
# 3-5 FD. The user picks the value for the sampling at hand (presets table, Skip Tuning Compare).
DEFAULT_RHO_BOTTOM = 1.0
DEFAULT_RHO_TOP = 1.0


class SkipTuningError(ValueError):
    """A parameter that cannot be applied; raised before sampling starts."""


def validate_rho(value: float, name: str = "rho") -> float:
    """Return ``value`` as a float, or raise if it is not a finite rho in range."""
    if isinstance(value, bool):
        raise SkipTuningError(f"{name} must be a number, got {value!r}")
    try:
        rho = float(value)
    except (TypeError, ValueError):
        raise SkipTuningError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(rho):
        raise SkipTuningError(f"{name} must be finite, got {value!r}")
    if not RHO_MIN <= rho <= RHO_MAX:
        raise SkipTuningError(f"{name} must be between {RHO_MIN} and {RHO_MAX}, got {rho}")
    return rho


def validate_percent_window(
    start_percent: float, end_percent: float, names: tuple[str, str] = ("start_percent", "end_percent")
) -> tuple[float, float]:
    """Check the part of sampling (0 = first step, 1 = last) where tuning is active; ``names`` for messages."""
    bounds = []
    for name, value in zip(names, (start_percent, end_percent)):
        if isinstance(value, bool):
            raise SkipTuningError(f"{name} must be a number, got {value!r}")
        try:
            percent = float(value)
        except (TypeError, ValueError):
            raise SkipTuningError(f"{name} must be a number, got {value!r}") from None
        if not (math.isfinite(percent) and 0.0 <= percent <= 1.0):
            raise SkipTuningError(f"{name} must be between 0 and 1, got {value!r}")
        bounds.append(percent)
    start, end = bounds
    if start > end:
        raise SkipTuningError(f"{names[0]} ({start}) must not be after {names[1]} ({end})")
    return start, end


def rho_schedule(n_skips: int, rho_bottom: float, rho_top: float = 1.0) -> tuple[float, ...]:
    """The per-block factors, index 0 = deepest skip; one skip uses rho_bottom."""
    if isinstance(n_skips, bool) or not isinstance(n_skips, int) or n_skips < 1:
        raise SkipTuningError(f"the model must have at least one long skip, got {n_skips!r}")
    bottom = validate_rho(rho_bottom, "rho_bottom")
    top = validate_rho(rho_top, "rho_top")
    if n_skips == 1:
        return (bottom,)
    last = n_skips - 1
    # The top skip gets rho_top exactly (the sum can be one ulp off), so rho_top = 1 leaves it untouched.
    return tuple(bottom + (top - bottom) * i / last if i < last else top for i in range(n_skips))


def parse_rho_list(text: str, name: str = "rho_per_skip") -> tuple[float, ...]:
    """Parse "0.8, 0.85, 1" into floats; an empty string gives an empty tuple."""
    if not isinstance(text, str):
        raise SkipTuningError(f"{name} must be a comma-separated list of numbers, got {text!r}")
    body = text.strip()
    if len(body) >= 2 and (body[0], body[-1]) in (("[", "]"), ("(", ")")):
        body = body[1:-1]  # a pasted Python/JSON list
    items = [item.strip() for item in body.replace(";", ",").split(",")]
    if items == [""]:
        return ()
    if "" in items:
        raise SkipTuningError(f"{name} has an empty entry: {text!r}")
    return tuple(validate_rho(item, f"{name} entry {k + 1}") for k, item in enumerate(items))


def resolve_rhos(
    n_skips: int,
    rho_bottom: float,
    rho_top: float = 1.0,
    rho_per_skip: str | Sequence[float] = "",
) -> tuple[float, ...]:
    """The factors a model with ``n_skips`` skips gets: an explicit list, else the schedule.

    rho_bottom and rho_top are validated even when the list overrides them.
    """
    validate_rho(rho_bottom, "rho_bottom")
    validate_rho(rho_top, "rho_top")
    explicit = parse_rho_list(rho_per_skip) if isinstance(rho_per_skip, str) else tuple(
        validate_rho(value, f"rho_per_skip entry {k + 1}") for k, value in enumerate(rho_per_skip)
    )
    if not explicit:
        return rho_schedule(n_skips, rho_bottom, rho_top)
    if len(explicit) != n_skips:
        raise SkipTuningError(
            f"rho_per_skip has {len(explicit)} values but this model has {n_skips} long skips; "
            f"give {n_skips} values, bottom (deepest) to top"
        )
    return explicit

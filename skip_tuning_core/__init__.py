"""Host-free core of Skip Tuning: the rho schedule, validation and the skip-scaling patch.

Imports torch only, never a host (ComfyUI, A1111, Forge), so every adapter and the tests share it.
"""

from .hooks import SkipScalingHooks
from .patch import CONTROL_OUTPUTS_KEY, control_snapshot_wrapper, make_output_block_patch
from .schedule import (
    DEFAULT_RHO_BOTTOM,
    DEFAULT_RHO_TOP,
    RHO_MAX,
    RHO_MIN,
    SkipTuningError,
    parse_rho_list,
    resolve_rhos,
    rho_schedule,
    validate_percent_window,
    validate_rho,
)
from .unet import count_long_skips, skip_channel_plan

__all__ = [
    "CONTROL_OUTPUTS_KEY",
    "DEFAULT_RHO_BOTTOM",
    "DEFAULT_RHO_TOP",
    "RHO_MAX",
    "RHO_MIN",
    "SkipScalingHooks",
    "SkipTuningError",
    "control_snapshot_wrapper",
    "count_long_skips",
    "make_output_block_patch",
    "parse_rho_list",
    "resolve_rhos",
    "rho_schedule",
    "skip_channel_plan",
    "validate_percent_window",
    "validate_rho",
]

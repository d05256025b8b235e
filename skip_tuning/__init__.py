"""Host-free core of Skip Tuning: the rho schedule, validation and the skip-scaling patch.

Imports torch only, never a host (ComfyUI, A1111, Forge), so every adapter and the tests share it.
"""

from .hooks import SkipScalingHooks
from .layouts import (
    DIT_REPLACE_PATCH,
    KNOWN_SKIP_COUNTS,
    OUTPUT_BLOCK_PATCH,
    SkipLayout,
    find_skip_layout,
)
from .patch import (
    CONTROL_OUTPUTS_KEY,
    SamplingWindow,
    control_snapshot_wrapper,
    make_output_block_patch,
    make_skip_replace_patch,
    make_skip_replace_wrapper,
    with_skip_replace_patches,
)
from .residual import (
    SUPPORTED_DITS,
    ResidualLayout,
    block_factors,
    find_residual_layout,
    make_residual_replace_patch,
    make_residual_replace_wrapper,
    validate_start_fraction,
    with_residual_replace_patches,
)
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
    "DIT_REPLACE_PATCH",
    "KNOWN_SKIP_COUNTS",
    "OUTPUT_BLOCK_PATCH",
    "ResidualLayout",
    "RHO_MAX",
    "RHO_MIN",
    "SUPPORTED_DITS",
    "SamplingWindow",
    "SkipLayout",
    "SkipScalingHooks",
    "SkipTuningError",
    "block_factors",
    "control_snapshot_wrapper",
    "count_long_skips",
    "find_residual_layout",
    "find_skip_layout",
    "make_output_block_patch",
    "make_residual_replace_patch",
    "make_residual_replace_wrapper",
    "make_skip_replace_patch",
    "make_skip_replace_wrapper",
    "parse_rho_list",
    "resolve_rhos",
    "rho_schedule",
    "skip_channel_plan",
    "validate_percent_window",
    "validate_rho",
    "validate_start_fraction",
    "with_residual_replace_patches",
    "with_skip_replace_patches",
]

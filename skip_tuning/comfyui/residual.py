"""What the Residual Tuning node (experimental) does: Skip-Tuning's idea on a DiT's per-block residuals.

A thin adapter over the core's ``residual``; the node class is in ``nodes``. The
evidence behind it and its limits are in docs/results.md (Residual Tuning on a DiT). Nothing from
ComfyUI is imported at module level.
"""

from __future__ import annotations

import logging

from .. import (
    SUPPORTED_DITS,
    block_factors,
    find_residual_layout,
    make_residual_replace_wrapper,
    validate_percent_window,
    validate_rho,
    validate_start_fraction,
)
from .adapter import (
    check_skip_tuning_inputs,
    describe_model,
    diffusion_model_of,
    model_wrapper_type,
    sampling_window,
)

logger = logging.getLogger("skip_tuning")

RESIDUAL_WRAPPER_KEY = "skip_tuning_residual_replace"
DEFAULT_RHO_FIRST = 0.99  # on Flux.1 (57 blocks) the input keeps 0.75, as 0.96 -> 1 on the tested 12-block DiT
DEFAULT_RHO_LAST = 1.0


def check_residual_inputs(rho_first=None, rho_last=None, start_percent=None, end_percent=None) -> None:
    """Raise for a value that cannot work with any model; None (an input fed by a link) is checked later,
    by ``apply_residual_tuning``."""
    for name, value in (("rho_first", rho_first), ("rho_last", rho_last)):
        if value is not None:
            validate_rho(value, name)
    check_skip_tuning_inputs(start_percent=start_percent, end_percent=end_percent)


def apply_residual_tuning(model, rho_first, rho_last, start_depth=0.0, start_percent=0.0, end_percent=1.0):
    """A clone of ``model`` whose DiT blocks compute ``rho_l * x + F_l(x)``, or ``model`` itself where
    Residual Tuning does not apply. Every value is checked first, so bad API input fails before sampling."""
    rho_first = validate_rho(rho_first, "rho_first")
    rho_last = validate_rho(rho_last, "rho_last")
    start_depth = validate_start_fraction(start_depth, "start_depth")
    start_percent, end_percent = validate_percent_window(start_percent, end_percent)

    layout = find_residual_layout(diffusion_model_of(model))
    if layout is None:
        logger.warning(
            "Residual Tuning: %s is not a supported DiT (%s); the model is passed through unchanged.",
            describe_model(model), SUPPORTED_DITS,
        )
        return model
    wrapper_type = model_wrapper_type(model, "APPLY_MODEL")
    if wrapper_type is None:
        logger.warning("Residual Tuning: this ComfyUI has no model wrappers; the model is passed through unchanged. "
                       "Update ComfyUI.")
        return model
    rhos = block_factors(len(layout.block_keys), rho_first, rho_last, start_depth)
    sigma_range = sampling_window(model, start_percent, end_percent)
    patched = model.clone()
    patched.add_wrapper_with_key(wrapper_type, RESIDUAL_WRAPPER_KEY,
                                 make_residual_replace_wrapper(layout.block_keys, rhos, sigma_range))
    logger.info("Residual Tuning: %s (%s), %d blocks, rho first to last = [%s]", describe_model(model),
                layout.architecture, len(rhos), ", ".join(f"{rho:.4g}" for rho in rhos))
    return patched

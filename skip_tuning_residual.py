"""ComfyUI node for Residual Tuning (experimental): Skip-Tuning's idea on a DiT's per-block residuals.

A thin adapter over ``skip_tuning_core.residual``; the evidence behind it and its limits are in the
README (Results: Residual Tuning on a DiT). Nothing from ComfyUI is imported at module level.
"""

from __future__ import annotations

import logging

from .skip_tuning_core import (
    RHO_MAX,
    RHO_MIN,
    SUPPORTED_DITS,
    block_factors,
    find_residual_layout,
    make_residual_replace_wrapper,
    validate_percent_window,
    validate_rho,
    validate_start_fraction,
)
from .skip_tuning_nodes import describe_model, diffusion_model_of, model_wrapper_type, sigma_window

logger = logging.getLogger("skip_tuning")

RESIDUAL_WRAPPER_KEY = "skip_tuning_residual_replace"
DEFAULT_RHO_FIRST = 0.99  # on Flux.1 (57 blocks) the input keeps 0.75, as 0.96 -> 1 on the tested 12-block DiT
DEFAULT_RHO_LAST = 1.0


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
    sigma_range = sigma_window(model, start_percent, end_percent)
    patched = model.clone()
    patched.add_wrapper_with_key(wrapper_type, RESIDUAL_WRAPPER_KEY,
                                 make_residual_replace_wrapper(layout.block_keys, rhos, sigma_range))
    logger.info("Residual Tuning: %s (%s), %d blocks, rho first to last = [%s]", describe_model(model),
                layout.architecture, len(rhos), ", ".join(f"{rho:.4g}" for rho in rhos))
    return patched


def _rho_options(default: float, tooltip: str) -> dict:
    return {"default": default, "min": RHO_MIN, "max": RHO_MAX, "step": 0.005, "display": "slider",
            "tooltip": tooltip}


class ResidualTuning:
    DESCRIPTION = (
        "Experimental. Scales the identity path of every block of a DiT (" + SUPPORTED_DITS + "): a block "
        "computes rho * x + F(x) instead of x + F(x), rho going linearly from rho_first (first block) to "
        "rho_last (last block). The factors compound over the blocks, so values stay close to 1. On the "
        "project's small Flux-type model it helped Euler and Euler a at 4-10 unguided steps, not at 25, and "
        "not DPM++ 2M or guided sampling (README: Residual Tuning on a DiT); compare with the same seed "
        "before keeping it."
    )
    CATEGORY = "model_patches/dit"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("A copy of the model whose blocks' identity paths are scaled while sampling.",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The DiT to tune (" + SUPPORTED_DITS + "); other models pass "
                                               "through unchanged with a warning."}),
                "rho_first": ("FLOAT", _rho_options(DEFAULT_RHO_FIRST, (
                    "Factor on the identity path of the first tuned block. Below 1 discounts the input "
                    "embedding and the early blocks against the later ones; 1 = off."))),
                "rho_last": ("FLOAT", _rho_options(DEFAULT_RHO_LAST, (
                    "Factor on the identity path of the last block; blocks between are interpolated."))),
                "start_depth": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 0.95, "step": 0.05,
                    "tooltip": "Fraction of the blocks, from the input side, left untouched (0 = tune all)."}),
                "start_percent": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                    "tooltip": "Where in sampling tuning starts: 0 = the first step (highest noise)."}),
                "end_percent": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                    "tooltip": "Where in sampling tuning ends: 1 = the last step."}),
            },
        }

    def patch(self, model, rho_first, rho_last, start_depth, start_percent, end_percent):
        return (apply_residual_tuning(model, rho_first, rho_last, start_depth, start_percent, end_percent),)


NODE_CLASS_MAPPINGS = {"ResidualTuning": ResidualTuning}
NODE_DISPLAY_NAME_MAPPINGS = {"ResidualTuning": "Residual Tuning (experimental)"}

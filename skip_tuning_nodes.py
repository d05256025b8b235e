"""ComfyUI nodes for Skip Tuning: a thin adapter over ``skip_tuning_core``.

Classic (V1) node API, which every ComfyUI release since 2023 loads. Nothing from ComfyUI
is imported at module level, so the repository imports without a host (tests, A1111).
"""

from __future__ import annotations

import logging

from .skip_tuning_core import (
    CONTROL_OUTPUTS_KEY,
    DEFAULT_RHO_BOTTOM,
    DEFAULT_RHO_TOP,
    KNOWN_SKIP_COUNTS,
    OUTPUT_BLOCK_PATCH,
    RHO_MAX,
    RHO_MIN,
    SkipTuningError,
    control_snapshot_wrapper,
    find_skip_layout,
    make_output_block_patch,
    make_skip_replace_wrapper,
    parse_rho_list,
    resolve_rhos,
    validate_percent_window,
    validate_rho,
)

logger = logging.getLogger("skip_tuning")

CATEGORY = "model_patches/unet"
CONTROL_WRAPPER_KEY = "skip_tuning_control_snapshot"
SKIP_REPLACE_WRAPPER_KEY = "skip_tuning_skip_replace"

__all__ = [
    "CONTROL_OUTPUTS_KEY",
    "NODE_CLASS_MAPPINGS",
    "NODE_DISPLAY_NAME_MAPPINGS",
    "SkipTuning",
    "SkipTuningAdvanced",
    "SkipTuningError",
    "apply_skip_tuning",
    "diffusion_model_of",
]

def _rho_options(default: float, tooltip: str) -> dict:
    return {"default": default, "min": RHO_MIN, "max": RHO_MAX, "step": 0.01, "display": "slider", "tooltip": tooltip}


_PERCENT_OPTIONS = {"min": 0.0, "max": 1.0, "step": 0.001}

_MODEL_TOOLTIP = (
    "The diffusion model to tune. Models with long skips are tuned: U-Nets (SD1.x, SD2.x, SDXL, SSD-1B, SVD, "
    "KOALA, ...) and U-ViTs (HunyuanDiT, Hunyuan3D 2.1); other models (Flux, SD3, PixArt, ...) pass through "
    "unchanged with a warning."
)
_RHO_BOTTOM_TOOLTIP = (
    "Factor for the deepest skip connection. Lower than 1 weakens the skip and leans on the backbone; "
    "the paper uses values below 1 with ODE samplers at low step counts. Higher than 1 strengthens it, "
    "which guided sampling on some models prefers (README: presets). 1 = off, the default: the best value "
    "depends on the model and the sampling, so compare with the same seed (Skip Tuning Compare)."
)
_RHO_TOP_TOOLTIP = (
    "Factor for the highest-resolution skip (the first one). Skips in between get factors "
    "interpolated linearly from rho_bottom to rho_top. Usually 1."
)
_OUTPUT_TOOLTIP = "A copy of the model whose skip connections are scaled while sampling."


def _model_and_rho_inputs() -> dict:
    return {
        "model": ("MODEL", {"tooltip": _MODEL_TOOLTIP}),
        "rho_bottom": ("FLOAT", _rho_options(DEFAULT_RHO_BOTTOM, _RHO_BOTTOM_TOOLTIP)),
        "rho_top": ("FLOAT", _rho_options(DEFAULT_RHO_TOP, _RHO_TOP_TOOLTIP)),
    }


def _model_object(model, name: str):
    """``model.get_model_object(name)`` (which sees object patches), else the attribute on the BaseModel."""
    get_object = getattr(model, "get_model_object", None)
    if get_object is not None:
        try:
            return get_object(name)
        except AttributeError:
            pass
    return getattr(getattr(model, "model", None), name, None)


def diffusion_model_of(model):
    """The model's denoiser network (``UNetModel`` for U-Nets), or None."""
    return _model_object(model, "diffusion_model")


def model_sampling_of(model):
    return _model_object(model, "model_sampling")


def describe_model(model) -> str:
    """Names for the log: the ComfyUI model type and its network class, e.g. "Flux (Flux)"."""
    base = getattr(model, "model", model)
    network = diffusion_model_of(model)
    name = type(base).__name__
    if network is not None and type(network).__name__ != name:
        name = f"{name} ({type(network).__name__})"
    return name


def sigma_window(model, start_percent: float, end_percent: float):
    """(sigma_low, sigma_high) for the part of sampling that is tuned; None for all of it."""
    if start_percent <= 0.0 and end_percent >= 1.0:
        return None
    model_sampling = model_sampling_of(model)
    sigma_high = float(model_sampling.percent_to_sigma(start_percent))
    sigma_low = float(model_sampling.percent_to_sigma(end_percent))
    return sigma_low, sigma_high


def model_wrapper_type(model, name: str):
    """ComfyUI's wrapper type ``name`` (DIFFUSION_MODEL, APPLY_MODEL), or None on builds without
    model wrappers (before 2024-12)."""
    if not callable(getattr(model, "add_wrapper_with_key", None)):
        return None
    try:
        from comfy.patcher_extension import WrappersMP
    except ImportError:
        return None
    return getattr(WrappersMP, name, None)


def _has_wrapper(model, wrapper_type, key, wrapper) -> bool:
    wrappers = getattr(model, "wrappers", None)
    if not isinstance(wrappers, dict):
        return False
    return wrapper in wrappers.get(wrapper_type, {}).get(key, ())


def _as_bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise SkipTuningError(f"{name} must be true or false, got {value!r}")


def apply_skip_tuning(model, rho_bottom, rho_top, start_percent=0.0, end_percent=1.0, rho_per_skip="",
                      scale_controlnet=True):
    """Return a clone of ``model`` whose long skips are scaled, or ``model`` itself when it has none.

    Every parameter is checked first, so a bad value sent through the API fails here, before sampling.
    """
    rho_bottom = validate_rho(rho_bottom, "rho_bottom")
    rho_top = validate_rho(rho_top, "rho_top")
    start_percent, end_percent = validate_percent_window(start_percent, end_percent)
    if rho_per_skip is None:
        rho_per_skip = ""
    if isinstance(rho_per_skip, str):
        explicit = parse_rho_list(rho_per_skip)
    elif isinstance(rho_per_skip, (list, tuple)):
        explicit = tuple(validate_rho(value, f"rho_per_skip entry {k + 1}") for k, value in enumerate(rho_per_skip))
    else:
        raise SkipTuningError(f"rho_per_skip must be a comma-separated list of numbers, got {rho_per_skip!r}")
    scale_controlnet = _as_bool(scale_controlnet, "scale_controlnet")

    layout = find_skip_layout(diffusion_model_of(model))
    if layout is None:
        logger.warning(
            "Skip Tuning: %s has no long skip connections (U-Net or U-ViT), so there is nothing to scale; "
            "the model is passed through unchanged.",
            describe_model(model),
        )
        return model

    rhos = resolve_rhos(layout.n_skips, rho_bottom, rho_top, explicit)
    sigma_range = sigma_window(model, start_percent, end_percent)
    if layout.mechanism == OUTPUT_BLOCK_PATCH:
        patched = _patch_output_blocks(model, rhos, sigma_range, scale_controlnet)
    else:
        patched = _patch_skip_blocks(model, layout, rhos, sigma_range, scale_controlnet)
        if patched is None:
            return model
    logger.info(
        "Skip Tuning: %s (%s), %d long skips, rho bottom to top = [%s]%s",
        describe_model(model), layout.architecture, layout.n_skips, ", ".join(f"{rho:.4g}" for rho in rhos),
        "" if sigma_range is None else f", active for sigma in [{sigma_range[0]:.4g}, {sigma_range[1]:.4g}]",
    )
    return patched


def _patch_output_blocks(model, rhos, sigma_range, scale_controlnet):
    """U-Nets: the core's output-block patch on a clone."""
    patched = model.clone()
    snapshot = False
    if not scale_controlnet and any(rho != 1.0 for rho in rhos):
        wrapper_type = model_wrapper_type(patched, "DIFFUSION_MODEL")
        if wrapper_type is None:
            logger.warning(
                "Skip Tuning: this ComfyUI has no model wrappers, so scale_controlnet=false is not available; "
                "ControlNet residuals are scaled together with the skips. Update ComfyUI to keep them unscaled."
            )
        else:
            if not _has_wrapper(patched, wrapper_type, CONTROL_WRAPPER_KEY, control_snapshot_wrapper):
                patched.add_wrapper_with_key(wrapper_type, CONTROL_WRAPPER_KEY, control_snapshot_wrapper)
            snapshot = True
    patched.set_model_output_block_patch(
        make_output_block_patch(rhos, sigma_range=sigma_range, scale_control=not snapshot)
    )
    return patched


def _patch_skip_blocks(model, layout, rhos, sigma_range, scale_controlnet):
    """U-ViTs: an APPLY_MODEL wrapper on a clone that adds the skip replace patches per model call
    (the only place that sees the noise level); None when this ComfyUI has no model wrappers."""
    wrapper_type = model_wrapper_type(model, "APPLY_MODEL")
    if wrapper_type is None:
        logger.warning(
            "Skip Tuning: this ComfyUI has no model wrappers, which %s needs; the model is passed through "
            "unchanged. Update ComfyUI.", layout.architecture,
        )
        return None
    patched = model.clone()
    patched.add_wrapper_with_key(
        wrapper_type, SKIP_REPLACE_WRAPPER_KEY,
        make_skip_replace_wrapper(layout.replace_keys, rhos, sigma_range, scale_control=scale_controlnet),
    )
    return patched


class SkipTuning:
    DESCRIPTION = (
        "Skip-Tuning (Ma et al., ICML 2024): scales the long skip connections of U-Nets (SD1.x, SDXL, ...) and "
        "U-ViTs (HunyuanDiT, Hunyuan3D 2.1), the deepest by rho_bottom, the highest-resolution by rho_top, the "
        "ones between linearly interpolated. Training-free, no extra cost per step; aimed at better images at "
        "low step counts. Models without long skips (Flux, SD3, ...) pass through unchanged."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = (_OUTPUT_TOOLTIP,)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": _model_and_rho_inputs()}

    def patch(self, model, rho_bottom, rho_top):
        return (apply_skip_tuning(model, rho_bottom, rho_top),)


class SkipTuningAdvanced:
    DESCRIPTION = (
        "Skip Tuning with a sampling window, per-skip factors and ControlNet control. Tuning is active from "
        "start_percent to end_percent of sampling (judged on the current noise level, so it works with any "
        "sampler and step count); rho_per_skip overrides the interpolation with one factor per skip, bottom "
        "to top."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = (_OUTPUT_TOOLTIP,)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **_model_and_rho_inputs(),
                "start_percent": ("FLOAT", {
                    "default": 0.0, **_PERCENT_OPTIONS,
                    "tooltip": "Where in sampling tuning starts: 0 = the first step (highest noise).",
                }),
                "end_percent": ("FLOAT", {
                    "default": 1.0, **_PERCENT_OPTIONS,
                    "tooltip": "Where in sampling tuning ends: 1 = the last step. Outside the window the "
                               "skips are left as they are.",
                }),
            },
            "optional": {
                "rho_per_skip": ("STRING", {
                    "default": "", "multiline": False,
                    "tooltip": "Optional: one factor per long skip, comma-separated, deepest first "
                               "(" + KNOWN_SKIP_COUNTS + "). Overrides rho_bottom and "
                               "rho_top. Leave empty to interpolate.",
                }),
                "scale_controlnet": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "ComfyUI adds ControlNet residuals to the skips before they are scaled. On: "
                               "the residuals are scaled with them. Off: only the model's own skip is scaled "
                               "and ControlNet keeps its full strength.",
                }),
            },
        }

    def patch(self, model, rho_bottom, rho_top, start_percent, end_percent, rho_per_skip="", scale_controlnet=True):
        return (apply_skip_tuning(model, rho_bottom, rho_top, start_percent, end_percent, rho_per_skip,
                                  scale_controlnet),)


NODE_CLASS_MAPPINGS = {
    "SkipTuning": SkipTuning,
    "SkipTuningAdvanced": SkipTuningAdvanced,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "SkipTuning": "Skip Tuning",
    "SkipTuningAdvanced": "Skip Tuning (Advanced)",
}

"""What the Skip Tuning nodes do in ComfyUI: a thin adapter over the core (``skip_tuning``).

The node classes themselves (ComfyUI's V3 schema) are in ``nodes``, which only
ComfyUI imports. Nothing from ComfyUI is imported here at module level, so this module imports
without a host (tests, A1111).
"""

from __future__ import annotations

import logging

from .. import (
    CONTROL_OUTPUTS_KEY,
    OUTPUT_BLOCK_PATCH,
    SamplingWindow,
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

CONTROL_WRAPPER_KEY = "skip_tuning_control_snapshot"
SKIP_REPLACE_WRAPPER_KEY = "skip_tuning_skip_replace"
SAMPLING_WINDOW_WRAPPER_KEY = "skip_tuning_sampling_window"

__all__ = [
    "CONTROL_OUTPUTS_KEY",
    "SkipTuningError",
    "apply_skip_tuning",
    "check_skip_tuning_inputs",
    "diffusion_model_of",
    "sigma_window",
]


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


def sampling_window(model, start_percent: float, end_percent: float):
    """The tuned part of sampling for the patches: :func:`sigma_window`'s levels, read again on the
    model_sampling of each model call (a ModelSampling node may come after this one); None for all of it."""
    sigma_range = sigma_window(model, start_percent, end_percent)
    return None if sigma_range is None else SamplingWindow(sigma_range, (start_percent, end_percent))


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


def parse_rho_per_skip(rho_per_skip) -> tuple:
    """The per-skip factors, deepest first: text such as "0.8, 0.9, 1" (the widget) or a list (API clients);
    empty or None for none."""
    if rho_per_skip is None:
        return ()
    if isinstance(rho_per_skip, str):
        return parse_rho_list(rho_per_skip)
    if isinstance(rho_per_skip, (list, tuple)):
        return tuple(validate_rho(value, f"rho_per_skip entry {k + 1}") for k, value in enumerate(rho_per_skip))
    raise SkipTuningError(f"rho_per_skip must be a comma-separated list of numbers, got {rho_per_skip!r}")


def check_skip_tuning_inputs(rho_bottom=None, rho_top=None, start_percent=None, end_percent=None,
                             rho_per_skip=None) -> None:
    """Raise for any value that cannot work with any model; what is not known yet (an input fed by a link)
    is None and skipped. ComfyUI runs this when a prompt is queued; ``apply_skip_tuning`` checks every
    value again, with the model, when the node runs."""
    for name, value in (("rho_bottom", rho_bottom), ("rho_top", rho_top)):
        if value is not None:
            validate_rho(value, name)
    if start_percent is not None or end_percent is not None:
        validate_percent_window(0.0 if start_percent is None else start_percent,
                                1.0 if end_percent is None else end_percent)
    parse_rho_per_skip(rho_per_skip)


def apply_skip_tuning(model, rho_bottom, rho_top, start_percent=0.0, end_percent=1.0, rho_per_skip="",
                      scale_controlnet=True):
    """Return a clone of ``model`` whose long skips are scaled, or ``model`` itself when it has none.

    Every parameter is checked first, so a bad value sent through the API fails here, before sampling.
    """
    rho_bottom = validate_rho(rho_bottom, "rho_bottom")
    rho_top = validate_rho(rho_top, "rho_top")
    start_percent, end_percent = validate_percent_window(start_percent, end_percent)
    explicit = parse_rho_per_skip(rho_per_skip)
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
    sigma_range = sampling_window(model, start_percent, end_percent)
    if layout.mechanism == OUTPUT_BLOCK_PATCH:
        patched = _patch_output_blocks(model, rhos, sigma_range, scale_controlnet)
    else:
        patched = _patch_skip_blocks(model, layout, rhos, sigma_range, scale_controlnet)
        if patched is None:
            return model
    logger.info(
        "Skip Tuning: %s (%s), %d long skips, rho bottom to top = [%s]%s",
        describe_model(model), layout.architecture, layout.n_skips, ", ".join(f"{rho:.4g}" for rho in rhos),
        "" if sigma_range is None else
        f", active for sigma in [{sigma_range.sigmas[0]:.4g}, {sigma_range.sigmas[1]:.4g}] on this model_sampling",
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
    window_wrapper_type = model_wrapper_type(patched, "APPLY_MODEL")
    if sigma_range is not None and window_wrapper_type is not None:  # else the levels read when the node ran
        patched.add_wrapper_with_key(window_wrapper_type, SAMPLING_WINDOW_WRAPPER_KEY, sigma_range.apply_model_wrapper)
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

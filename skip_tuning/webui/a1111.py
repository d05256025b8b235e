"""A1111 (ldm/sgm U-Nets): forward pre-hooks on ``diffusion_model.output_blocks`` (the core's
``SkipScalingHooks``) that scale the trailing skip channels of each decoder block's input.

``process_before_every_sampling`` arms the pass by wrapping the pass's sampler; the hooks are attached when
that sampler call starts, on the U-Net loaded at that moment, and removed in a ``finally`` when it ends
(interrupts and skips end there too). Nothing stays attached between passes, so hires fix with another
checkpoint gets the right U-Net and its own channel plan. A1111 1.9 and older never call
``process_before_every_sampling``: there the hooks are attached from ``process_batch`` (first pass) and
``before_hr`` (hires pass) and removed afterwards.
"""

from __future__ import annotations

from .. import SkipScalingHooks, count_long_skips, rho_schedule
from ..infotext import WebuiParams
from .common import NO_LONG_SKIPS, drop_infotext, logger, progress_gate, warn, warn_refiner

_LIVE_HOOKS: list = []  # hook sets attached by this module and not yet removed
_SAMPLER_METHODS = ("sample", "sample_img2img")
_MISSING = object()
_WRAPPER_MARK = "_skip_tuning_pass"
SD_UNET_ACTIVE = ("an SD U-Net replacement (TensorRT or similar) is active and bypasses the output blocks; "
                  "nothing is changed")


def remove_all_hooks() -> int:
    """Remove every hook this module attached (the backstop); returns how many sets there were."""
    count = 0
    while _LIVE_HOOKS:
        _LIVE_HOOKS.pop().remove()
        count += 1
    return count


def _active_sd_unet():
    """A1111's active SdUnet (TensorRT and the like), which bypasses the output blocks."""
    try:
        from modules import sd_unet
    except Exception:
        return None
    return getattr(sd_unet, "current_unet", None)


def _diffusion_model(p):
    model = getattr(getattr(p, "sd_model", None), "model", None)
    return getattr(model, "diffusion_model", None)


def attach_hooks(p, params: WebuiParams):
    """Hooks on the U-Net loaded now; None when there is nothing to do (with a warning if unsupported)."""
    diffusion_model = _diffusion_model(p)
    n_skips = count_long_skips(diffusion_model)
    if n_skips is None:
        warn(p, NO_LONG_SKIPS)
        drop_infotext(p)
        return None
    rhos = rho_schedule(n_skips, params.rho_bottom, params.rho_top)
    if all(rho == 1.0 for rho in rhos):
        return None
    for live in list(_LIVE_HOOKS):  # left over on this U-Net by an earlier, aborted pass
        if live.output_blocks is diffusion_model.output_blocks:
            live.remove()
            _LIVE_HOOKS.remove(live)
    gate = None if params.whole_sampling else progress_gate(p, *params.window)
    try:
        hooks = SkipScalingHooks(diffusion_model, rhos, is_active=gate)
    except ValueError as error:
        warn(p, f"cannot read this U-Net's skip channels ({error}); nothing is changed")
        drop_infotext(p)
        return None
    hooks.install()
    _LIVE_HOOKS.append(hooks)
    return hooks


def _detach(hooks) -> None:
    if hooks is None:
        return
    hooks.remove()
    if hooks in _LIVE_HOOKS:
        _LIVE_HOOKS.remove(hooks)


def unwrap_sampler(sampler) -> None:
    """Undo arm_pass on ``sampler`` (restores whatever instance attribute was there)."""
    for name in _SAMPLER_METHODS:
        current = getattr(sampler, "__dict__", {}).get(name)
        if current is not None and getattr(current, _WRAPPER_MARK, None) is not None:
            saved = getattr(current, _WRAPPER_MARK)["saved"]
            if saved is _MISSING:
                delattr(sampler, name)
            else:
                setattr(sampler, name, saved)


def arm_pass(p, params: WebuiParams) -> bool:
    """Make the pass's sampler call run with the hooks attached; False when nothing will happen."""
    if _active_sd_unet() is not None:
        warn(p, SD_UNET_ACTIVE)
        drop_infotext(p)
        return False

    sampler = getattr(p, "sampler", None)
    if (sampler is None or not hasattr(sampler, "__dict__")
            or not any(callable(getattr(sampler, name, None)) for name in _SAMPLER_METHODS)):
        # No sampler to wrap (unusual host flow): attach now; postprocess_batch/postprocess remove them.
        return attach_hooks(p, params) is not None

    unwrap_sampler(sampler)  # armed twice in one pass: the last call wins
    state = {"spent": False}
    for name in _SAMPLER_METHODS:
        original = getattr(sampler, name, None)
        if not callable(original):
            continue
        saved = sampler.__dict__.get(name, _MISSING)

        def run_pass(*args, _original=original, **kwargs):
            if state["spent"]:  # still reachable through someone else's wrapper: act as the original
                return _original(*args, **kwargs)
            state["spent"] = True
            unwrap_sampler(sampler)  # a nested sample() -> sample_img2img() call must not hook twice
            hooks = None
            try:
                try:
                    hooks = attach_hooks(p, params)
                except Exception:  # never let Skip Tuning stop a generation
                    logger.exception("Skip Tuning: could not attach its hooks; this pass runs without it")
                return _original(*args, **kwargs)
            finally:
                _detach(hooks)

        setattr(run_pass, _WRAPPER_MARK, {"saved": saved})
        setattr(sampler, name, run_pass)
    return True


def host_calls_before_every_sampling() -> bool:
    """A1111 1.10+, Forge and reForge call process_before_every_sampling; A1111 1.9 and older never do."""
    try:
        from modules import scripts
    except Exception:  # outside a webui
        return True
    return hasattr(scripts.ScriptRunner, "process_before_every_sampling")


def attach_legacy_pass(p, params: WebuiParams, is_hr_pass: bool) -> None:
    """Older A1111: hooks attached from process_batch (first pass) or before_hr (hires pass) on.

    Those hosts create the txt2img sampler inside ``p.sample()``, after the last script callback
    before sampling, so there is no sampler call to wrap: the hooks stay until the next pass
    replaces them or postprocess_batch removes them (the VAE decode in between does not use them).
    """
    remove_all_hooks()
    if not params.enabled or not params.applies_to_pass(is_hr_pass):
        return
    warn_refiner(p, refiner_tuned=True)
    if _active_sd_unet() is not None:
        warn(p, SD_UNET_ACTIVE)
        drop_infotext(p)
        return
    attach_hooks(p, params)


def cleanup(p) -> None:
    """Backstop: drop any hooks still attached and un-arm the sampler."""
    remove_all_hooks()
    sampler = getattr(p, "sampler", None)
    if sampler is not None:
        unwrap_sampler(sampler)

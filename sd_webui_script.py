"""Skip Tuning for Automatic1111, Forge and reForge: the Script class and its two host adapters.

* A1111 (ldm/sgm U-Nets): forward pre-hooks on ``diffusion_model.output_blocks`` (the core's
  ``SkipScalingHooks``) that scale the trailing skip channels of each decoder block's input.
  ``process_before_every_sampling`` arms the pass by wrapping the pass's sampler; the hooks are
  attached when that sampler call starts, on the U-Net loaded at that moment, and removed in a
  ``finally`` when it ends (interrupts and skips end there too). Nothing stays attached between
  passes, so hires fix with another checkpoint gets the right U-Net and its own channel plan.
  A1111 1.9 and older never call ``process_before_every_sampling``: there the hooks are attached
  from ``process_batch`` (first pass) and ``before_hr`` (hires pass) and removed afterwards.
* Forge / reForge (ComfyUI-derived patcher): the core's output-block patch, the one the ComfyUI
  node uses, on a clone of ``p.sd_model.forge_objects.unet``; Forge resets ``forge_objects``
  before every pass, so nothing outlives the pass there either.

Start/end follow the pass's sampling progress (the denoiser's step / total steps), the same on
both hosts. This file imports neither gradio nor ``modules.*`` at import time, so it loads
without a webui; the package's own modules are imported here, at import time, because A1111
keeps the extension folder on sys.path only while it loads ``scripts/``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, Callable

from skip_tuning_core import (
    SkipScalingHooks,
    SkipTuningError,
    count_long_skips,
    make_output_block_patch,
    rho_schedule,
    validate_rho,
)
from skip_tuning_core.infotext import (
    HIRES_PASS_CHOICES,
    INFOTEXT_KEYS,
    KEY_ENABLED,
    KEY_END,
    KEY_PASSES,
    KEY_RHO_BOTTOM,
    KEY_RHO_TOP,
    KEY_START,
    PASSES_BOTH,
    WebuiParams,
    encode_infotext,
    make_params,
    parse_bool,
    paste_values,
)

logger = logging.getLogger("skip_tuning")

TITLE = "Skip Tuning"

# The script's arguments in ui() order: API users pass them positionally, so only append.
ARG_NAMES = ("enabled", "rho_bottom", "rho_top", "start", "end", "hires_passes")
_DEFAULTS = asdict(WebuiParams())

# Labels double as keys in ui-config.json: keep them stable.
LABEL_RHO_BOTTOM = "rho_bottom (deepest skip)"
LABEL_RHO_TOP = "rho_top (highest-resolution skip)"
LABEL_START = "Start at (% of sampling)"
LABEL_END = "End at (% of sampling)"
LABEL_PASSES = "Hires fix passes"

# Attributes set on the processing object ``p``.
P_PARAMS = "skip_tuning_params"
P_WARNED = "skip_tuning_warned"
XYZ_ENABLED = "skip_tuning_xyz_enabled"  # per-cell overrides written by the X/Y/Z plot axes
XYZ_RHO_BOTTOM = "skip_tuning_xyz_rho_bottom"
XYZ_RHO_TOP = "skip_tuning_xyz_rho_top"

XYZ_LABEL_PREFIX = "[Skip Tuning] "
XYZ_LABEL_RHO_BOTTOM = XYZ_LABEL_PREFIX + "rho_bottom"
XYZ_LABEL_RHO_TOP = XYZ_LABEL_PREFIX + "rho_top"
XYZ_LABEL_ENABLED = XYZ_LABEL_PREFIX + "On/Off"


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


def _warn(p, message: str) -> None:
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


def _drop_infotext(p) -> None:
    extra = getattr(p, "extra_generation_params", None) or {}
    for key in INFOTEXT_KEYS:
        extra.pop(key, None)


# ---------------------------------------------------------------------------------------------
# The start/end window: the pass's sampling progress


def sampling_progress(p, state=None) -> float | None:
    """How far the current pass is, 0 (first step) to 1, from the sampler's CFG denoiser.

    The denoiser counts its calls (``step``) against ``total_steps`` (which counts both calls of
    second-order samplers); ``shared.state`` is the fallback. None when neither is known.
    """
    denoiser = getattr(getattr(p, "sampler", None), "model_wrap_cfg", None)
    step = getattr(denoiser, "step", None)
    total = getattr(denoiser, "total_steps", None)
    if not isinstance(step, int) or not total:
        step = getattr(state, "sampling_step", None)
        total = getattr(state, "sampling_steps", None)
    if not isinstance(step, int) or not total:
        return None
    return min(max(step / total, 0.0), 1.0)


def progress_gate(p, start: float, end: float) -> Callable[[], bool]:
    """``is_active()`` for fractions start..end: start <= progress < end (end = 1 includes the last step)."""
    try:
        from modules import shared

        state = shared.state
    except Exception:  # outside a webui, or an unusual host
        state = None

    def is_active() -> bool:
        progress = sampling_progress(p, state)
        if progress is None:
            return True
        return start <= progress and (progress < end or end >= 1.0)

    return is_active


# ---------------------------------------------------------------------------------------------
# A1111: pre-hooks on the U-Net's output blocks, attached for the duration of one sampler call

_LIVE_HOOKS: list = []  # hook sets attached by this module and not yet removed
_SAMPLER_METHODS = ("sample", "sample_img2img")
_MISSING = object()
_WRAPPER_MARK = "_skip_tuning_pass"


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


def _attach_hooks(p, params: WebuiParams):
    """Hooks on the U-Net loaded now; None when there is nothing to do (with a warning if unsupported)."""
    diffusion_model = _diffusion_model(p)
    n_skips = count_long_skips(diffusion_model)
    if n_skips is None:
        _warn(p, "this model has no U-Net long skips (SD3, Flux and other DiT models are not supported); "
                 "nothing is changed")
        _drop_infotext(p)
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
        _warn(p, f"cannot read this U-Net's skip channels ({error}); nothing is changed")
        _drop_infotext(p)
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
    """Undo arm_a1111_pass on ``sampler`` (restores whatever instance attribute was there)."""
    for name in _SAMPLER_METHODS:
        current = getattr(sampler, "__dict__", {}).get(name)
        if current is not None and getattr(current, _WRAPPER_MARK, None) is not None:
            saved = getattr(current, _WRAPPER_MARK)["saved"]
            if saved is _MISSING:
                delattr(sampler, name)
            else:
                setattr(sampler, name, saved)


def arm_a1111_pass(p, params: WebuiParams) -> bool:
    """Make the pass's sampler call run with the hooks attached; False when nothing will happen."""
    if _active_sd_unet() is not None:
        _warn(p, "an SD U-Net replacement (TensorRT or similar) is active and bypasses the output blocks; "
                 "nothing is changed")
        _drop_infotext(p)
        return False

    sampler = getattr(p, "sampler", None)
    if (sampler is None or not hasattr(sampler, "__dict__")
            or not any(callable(getattr(sampler, name, None)) for name in _SAMPLER_METHODS)):
        # No sampler to wrap (unusual host flow): attach now; postprocess_batch/postprocess remove them.
        return _attach_hooks(p, params) is not None

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
                    hooks = _attach_hooks(p, params)
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


REFINER_TUNED = "its steps are tuned too"
REFINER_UNTUNED = "the refiner's steps run without Skip Tuning"


def _warn_refiner(p, refiner_tuned: bool) -> None:
    """Say what happens to a refiner's steps, as seen in the real webuis (tests/test_webui_real.py).

    A1111 (1.9 and 1.10 alike) reuses the loaded model for a same-architecture refiner and loads its
    weights into the hooked U-Net; Forge and reForge load an unpatched one.
    """
    if getattr(p, "refiner_checkpoint_info", None) is None:
        return
    if refiner_tuned:
        _warn(p, "a refiner of the same architecture is loaded into the tuned U-Net (with the default checkpoint "
                 f"cache of 1), so {REFINER_TUNED}; any other refiner's steps run without Skip Tuning")
    else:
        _warn(p, f"{REFINER_UNTUNED} on this webui")


def attach_legacy_pass(p, params: WebuiParams, is_hr_pass: bool) -> None:
    """Older A1111: hooks attached from process_batch (first pass) or before_hr (hires pass) on.

    Those hosts create the txt2img sampler inside ``p.sample()``, after the last script callback
    before sampling, so there is no sampler call to wrap: the hooks stay until the next pass
    replaces them or postprocess_batch removes them (the VAE decode in between does not use them).
    """
    remove_all_hooks()
    if not params.enabled or not params.applies_to_pass(is_hr_pass):
        return
    _warn_refiner(p, refiner_tuned=True)
    if _active_sd_unet() is not None:
        _warn(p, "an SD U-Net replacement (TensorRT or similar) is active and bypasses the output blocks; "
                 "nothing is changed")
        _drop_infotext(p)
        return
    _attach_hooks(p, params)


def cleanup_a1111(p) -> None:
    """Backstop: drop any hooks still attached and un-arm the sampler."""
    remove_all_hooks()
    sampler = getattr(p, "sampler", None)
    if sampler is not None:
        unwrap_sampler(sampler)


# ---------------------------------------------------------------------------------------------
# Forge / reForge: the core's output-block patch on a clone of the U-Net patcher

_PATCH_MARK = "skip_tuning_patch"


def forge_unet_patcher(p):
    """Forge's (and reForge's) U-Net patcher for this pass, or None on A1111."""
    return getattr(getattr(getattr(p, "sd_model", None), "forge_objects", None), "unet", None)


def _has_skip_tuning_patch(unet_patcher) -> bool:
    options = getattr(unet_patcher, "model_options", None) or {}
    patches = options.get("transformer_options", {}).get("patches", {}).get("output_block_patch", [])
    return any(getattr(patch, _PATCH_MARK, False) for patch in patches)


def _gated(patch, is_active: Callable[[], bool]):
    def skip_tuning_windowed_patch(h, hsp, transformer_options):
        if not is_active():
            return h, hsp
        return patch(h, hsp, transformer_options)

    return skip_tuning_windowed_patch


def apply_forge(p, params: WebuiParams, unet_patcher) -> bool:
    """Clone the patcher, add the output-block patch, assign the clone back (once per pass)."""
    diffusion_model = getattr(getattr(unet_patcher, "model", None), "diffusion_model", None)
    n_skips = count_long_skips(diffusion_model)
    if n_skips is None:
        _warn(p, "this model has no U-Net long skips (SD3, Flux and other DiT models are not supported); "
                 "nothing is changed")
        _drop_infotext(p)
        return False
    rhos = rho_schedule(n_skips, params.rho_bottom, params.rho_top)
    if all(rho == 1.0 for rho in rhos):
        return False
    if _has_skip_tuning_patch(unet_patcher):  # called again in the same pass
        return True
    patch = make_output_block_patch(rhos)
    if not params.whole_sampling:
        patch = _gated(patch, progress_gate(p, *params.window))
    setattr(patch, _PATCH_MARK, True)
    clone = unet_patcher.clone()
    clone.set_model_output_block_patch(patch)
    p.sd_model.forge_objects.unet = clone
    return True


# ---------------------------------------------------------------------------------------------
# The Script (its base class comes from the webui at run time: see script_class)


class SkipTuningScriptLogic:
    """Everything the Script does; ``script_class()`` mixes it into ``modules.scripts.Script``."""

    def title(self):
        return TITLE

    def show(self, is_img2img):
        from modules import scripts

        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        """The accordion. No side effects beyond this instance: the API calls it for defaults."""
        import gradio as gr

        try:
            from modules.ui_components import InputAccordion
        except ImportError:  # webuis older than A1111 1.7
            InputAccordion = None

        defaults = WebuiParams()

        def controls():
            rho_bottom = gr.Slider(
                minimum=0.0, maximum=2.0, step=0.01, value=defaults.rho_bottom, label=LABEL_RHO_BOTTOM,
                elem_id=self.elem_id("rho_bottom"),
            )
            rho_top = gr.Slider(
                minimum=0.0, maximum=2.0, step=0.01, value=defaults.rho_top, label=LABEL_RHO_TOP,
                elem_id=self.elem_id("rho_top"),
            )
            with gr.Accordion("Advanced", open=False, elem_id=self.elem_id("advanced")):
                with gr.Row():
                    start = gr.Slider(
                        minimum=0, maximum=100, step=1, value=defaults.start, label=LABEL_START,
                        elem_id=self.elem_id("start"),
                    )
                    end = gr.Slider(
                        minimum=0, maximum=100, step=1, value=defaults.end, label=LABEL_END,
                        elem_id=self.elem_id("end"),
                    )
                passes = gr.Radio(
                    choices=list(HIRES_PASS_CHOICES), value=PASSES_BOTH, label=LABEL_PASSES,
                    elem_id=self.elem_id("hires_passes"),
                )
            return rho_bottom, rho_top, start, end, passes

        if InputAccordion is not None:
            with InputAccordion(False, label=TITLE, elem_id=self.elem_id("enabled")) as enabled:
                rho_bottom, rho_top, start, end, passes = controls()
        else:
            with gr.Accordion(TITLE, open=False, elem_id=self.elem_id("accordion")):
                enabled = gr.Checkbox(value=False, label="Enable", elem_id=self.elem_id("enabled"))
                rho_bottom, rho_top, start, end, passes = controls()

        components = [enabled, rho_bottom, rho_top, start, end, passes]
        keys = [KEY_ENABLED, KEY_RHO_BOTTOM, KEY_RHO_TOP, KEY_START, KEY_END, KEY_PASSES]
        self.infotext_fields = list(zip(components, keys))
        self.paste_field_names = list(keys)
        return components

    def process(self, p, *args):
        remove_all_hooks()  # anything an aborted earlier generation left behind
        params = resolve_params(p, args)
        setattr(p, P_PARAMS, params)
        write_infotext(p, params)

    @staticmethod
    def _params(p, args) -> WebuiParams:
        params = getattr(p, P_PARAMS, None)
        return resolve_params(p, args) if params is None else params  # None: process() did not run for p

    def process_before_every_sampling(self, p, *args, **kwargs):
        params = self._params(p, args)
        if not params.enabled or not params.applies_to_pass(bool(getattr(p, "is_hr_pass", False))):
            return
        unet_patcher = forge_unet_patcher(p)
        _warn_refiner(p, refiner_tuned=unet_patcher is None)
        if unet_patcher is not None:
            apply_forge(p, params, unet_patcher)
        else:
            arm_a1111_pass(p, params)

    def process_batch(self, p, *args, **kwargs):
        if not host_calls_before_every_sampling():
            attach_legacy_pass(p, self._params(p, args), is_hr_pass=False)

    def before_hr(self, p, *args):
        if not host_calls_before_every_sampling():
            attach_legacy_pass(p, self._params(p, args), is_hr_pass=True)

    def postprocess_batch(self, p, *args, **kwargs):
        cleanup_a1111(p)

    def postprocess(self, p, processed, *args):
        cleanup_a1111(p)


_SCRIPT_CLASSES: dict = {}


def script_class():
    """The webui Script class (one per ``modules.scripts.Script`` base, so reloads reuse it)."""
    from modules import scripts

    base = scripts.Script
    cls = _SCRIPT_CLASSES.get(base)
    if cls is None:
        cls = type(
            "SkipTuningScript",
            (SkipTuningScriptLogic, base),
            {"__doc__": "Skip Tuning: scale the U-Net's long skips (Ma et al., ICML 2024).", "__module__": __name__},
        )
        _SCRIPT_CLASSES[base] = cls
    return cls


# ---------------------------------------------------------------------------------------------
# Callbacks: X/Y/Z plot axes and infotext pasting (registered by scripts/skip_tuning.py)


def on_infotext_pasted(infotext: str, params: dict) -> None:
    """Give every Skip Tuning control a value: off when the text has no Skip Tuning keys."""
    params.update(paste_values(params))


def _xyz_apply(attribute: str):
    def apply(p, x, xs):
        setattr(p, attribute, round(float(x), 8))

    return apply


def _xyz_confirm_rho(name: str):
    def confirm(p, xs):
        for x in xs:
            try:
                validate_rho(x, name)
            except SkipTuningError as error:
                raise RuntimeError(f"Skip Tuning: {error}") from None

    return confirm


def _xyz_apply_enabled(p, x, xs):
    setattr(p, XYZ_ENABLED, parse_bool(x, "Skip Tuning on/off"))


def _xyz_confirm_enabled(p, xs):
    for x in xs:
        try:
            parse_bool(x, "Skip Tuning on/off")
        except SkipTuningError as error:
            raise RuntimeError(str(error)) from None


def find_xyz_module():
    """The loaded X/Y/Z plot script's module (A1111, Forge and reForge load it as "xyz_grid.py")."""
    from modules import scripts

    for data in getattr(scripts, "scripts_data", []):
        module = getattr(data, "module", None)
        if data.script_class.__module__ == "xyz_grid.py" and hasattr(module, "AxisOption"):
            return module
    return None


def register_xyz_axes() -> bool:
    """Add the rho_bottom, rho_top and on/off axes to the X/Y/Z plot, once."""
    xyz = find_xyz_module()
    if xyz is None:
        return False
    if any(getattr(option, "label", "").startswith(XYZ_LABEL_PREFIX) for option in xyz.axis_options):
        return True
    xyz.axis_options.extend([
        xyz.AxisOption(XYZ_LABEL_RHO_BOTTOM, float, _xyz_apply(XYZ_RHO_BOTTOM), confirm=_xyz_confirm_rho("rho_bottom")),
        xyz.AxisOption(XYZ_LABEL_RHO_TOP, float, _xyz_apply(XYZ_RHO_TOP), confirm=_xyz_confirm_rho("rho_top")),
        xyz.AxisOption(XYZ_LABEL_ENABLED, str, _xyz_apply_enabled, confirm=_xyz_confirm_enabled,
                       choices=lambda: ["On", "Off"]),
    ])
    return True


def register_callbacks() -> None:
    """Called by scripts/skip_tuning.py on every (re)load; the webui clears callbacks before reloading."""
    from modules import script_callbacks

    # The webui loads its own scripts/xyz_grid.py before extensions, so the axes can be added now:
    # with --nowebui the API builds the script UIs (where X/Y/Z copies its axis list) before any
    # before_ui callback runs. before_ui stays as the fallback for a host that loads X/Y/Z later.
    register_xyz_axes()
    script_callbacks.on_before_ui(register_xyz_axes)
    script_callbacks.on_infotext_pasted(on_infotext_pasted)


__all__ = [
    "ARG_NAMES",
    "TITLE",
    "SkipTuningScriptLogic",
    "apply_forge",
    "arm_a1111_pass",
    "params_from_args",
    "register_callbacks",
    "register_xyz_axes",
    "remove_all_hooks",
    "script_class",
]

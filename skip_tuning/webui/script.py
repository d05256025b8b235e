"""Skip Tuning for Automatic1111, Forge, reForge and SD.Next: the Script class, which hands each generation to
the host's module in this package.

* A1111 (ldm/sgm U-Nets, ``a1111``): pre-hooks on ``diffusion_model.output_blocks``, attached for the duration of
  each pass's sampler call (A1111 1.9 and older: from process_batch/before_hr).
* Forge / reForge (``forge``): the core's output-block patch on a clone of ``p.sd_model.forge_objects.unet``,
  per pass.
* SD.Next (diffusers pipelines, ``sdnext``): the diffusers adapter's hooks on ``shared.sd_model``'s U-Net for
  the generation, switched per pass and window by a pre-hook.

The host is recognised at run time: SD.Next by ``modules.shared.native``, Forge by ``p.sd_model.forge_objects``,
A1111 by everything else. Start/end follow the pass's sampling progress on every host. This module imports neither
gradio nor ``modules.*`` at import time, so it loads without a webui; the package's own modules are imported
here, at import time, because A1111 keeps the extension folder on sys.path only while it loads ``scripts/``.
"""

from __future__ import annotations

from ..infotext import (
    HIRES_PASS_CHOICES,
    KEY_ENABLED,
    KEY_END,
    KEY_PASSES,
    KEY_RHO_BOTTOM,
    KEY_RHO_TOP,
    KEY_START,
    PASSES_BOTH,
    WebuiParams,
    paste_values,
)
from . import a1111, forge, sdnext, xyz
from .common import (
    ARG_NAMES,
    P_PARAMS,
    TITLE,
    resolve_params,
    warn_refiner,
    write_infotext,
)

# Labels double as keys in ui-config.json: keep them stable.
LABEL_RHO_BOTTOM = "rho_bottom (deepest skip)"
LABEL_RHO_TOP = "rho_top (highest-resolution skip)"
LABEL_START = "Start at (% of sampling)"
LABEL_END = "End at (% of sampling)"
LABEL_PASSES = "Hires fix passes"


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
        a1111.remove_all_hooks()  # anything an aborted earlier generation left behind
        params = resolve_params(p, args)
        setattr(p, P_PARAMS, params)
        write_infotext(p, params)
        if sdnext.is_sdnext():
            sdnext.start_generation(p)

    @staticmethod
    def _params(p, args) -> WebuiParams:
        params = getattr(p, P_PARAMS, None)
        return resolve_params(p, args) if params is None else params  # None: process() did not run for p

    def process_before_every_sampling(self, p, *args, **kwargs):
        """A1111 1.10+, Forge, reForge: before each pass's sampling (SD.Next never calls it)."""
        params = self._params(p, args)
        if not params.enabled or not params.applies_to_pass(bool(getattr(p, "is_hr_pass", False))):
            return
        unet_patcher = forge.unet_patcher(p)
        warn_refiner(p, refiner_tuned=unet_patcher is None)
        if unet_patcher is not None:
            forge.apply(p, params, unet_patcher)
        else:
            a1111.arm_pass(p, params)

    def process_batch(self, p, *args, **kwargs):
        if sdnext.is_sdnext():  # which has no process_before_every_sampling either
            sdnext.start_batch(p, self._params(p, args))
        elif not a1111.host_calls_before_every_sampling():  # A1111 1.9 and older
            a1111.attach_legacy_pass(p, self._params(p, args), is_hr_pass=False)

    def before_hr(self, p, *args):
        """A1111 only (SD.Next never calls it)."""
        if not a1111.host_calls_before_every_sampling():
            a1111.attach_legacy_pass(p, self._params(p, args), is_hr_pass=True)

    def postprocess_batch(self, p, *args, **kwargs):
        a1111.cleanup(p)

    def postprocess(self, p, processed, *args):
        a1111.cleanup(p)
        sdnext.end_generation(p)


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


def on_infotext_pasted(infotext: str, params: dict) -> None:
    """Give every Skip Tuning control a value: off when the text has no Skip Tuning keys."""
    params.update(paste_values(params))


def register_callbacks() -> None:
    """Called by scripts/skip_tuning.py on every (re)load; the webui clears callbacks before reloading."""
    from modules import script_callbacks

    # The webui loads its own scripts/xyz_grid.py before extensions, so the axes can be added now:
    # with --nowebui the API builds the script UIs (where X/Y/Z copies its axis list) before any
    # before_ui callback runs. before_ui stays as the fallback for a host that loads X/Y/Z later.
    xyz.register_axes()
    script_callbacks.on_before_ui(xyz.register_axes)
    script_callbacks.on_infotext_pasted(on_infotext_pasted)
    if sdnext.is_sdnext():
        sdnext.route_logging()
        script_callbacks.on_before_process(sdnext.on_before_or_after_process)
        script_callbacks.on_after_process(sdnext.on_before_or_after_process)


__all__ = ["ARG_NAMES", "TITLE", "SkipTuningScriptLogic", "register_callbacks", "script_class"]

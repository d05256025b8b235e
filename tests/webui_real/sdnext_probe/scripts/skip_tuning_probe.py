"""A test helper that tests/webui_real/setup_webui.py installs into SD.Next next to Skip Tuning (never shipped).

``GET /skip-tuning-probe/state`` answers ``{"model_loaded", "hooks", "calls"}``:

* ``hooks``: forward hooks and pre-hooks on every module of the loaded model's and refiner's U-Net, the
  probe's own not counted (nothing else hooks them in this setup, so anything left is Skip Tuning's);
* ``calls``: the last generation's U-Net calls in order, each ``{"model": "model" | "refiner", "hr": p.is_hr_pass,
  "tuned": whether other pre-hooks sat on the up blocks during the call}``; not recorded for a U-Net under
  ``torch.compile`` (its graphs would keep the probe's hooks: torch does not guard module hooks);
* ``compiled``: per U-Net, whether it is a ``torch.compile`` wrapper, and ``graphs``: the graphs dynamo has
  compiled in this process.

The always-on script "Skip Tuning probe" takes one argument, a U-Net call number k (0: never): the batch's
k-th call raises a KeyError, which SD.Next's processing does not catch, so the generation ends with an error.
"""

import gradio as gr
import torch._dynamo.utils
from modules import script_callbacks, scripts_manager, shared
from modules.modeldata import model_data

_OWN_HOOK_IDS = set()
_HANDLES = []
CALLS = []


def _unets():
    models = {"model": model_data.sd_model, "refiner": model_data.sd_refiner}
    unets = {name: getattr(model, "unet", None) for name, model in models.items()}
    return {name: unet for name, unet in unets.items() if unet is not None}  # a compiled one has no truth value


def _foreign_hooks(modules) -> int:
    return sum(1 for module in modules for hooks in (module._forward_pre_hooks, module._forward_hooks)
               for key in hooks if key not in _OWN_HOOK_IDS)


def _own(handle):
    _OWN_HOOK_IDS.add(handle.id)
    _HANDLES.append(handle)


def _clear(*_args):
    while _HANDLES:
        handle = _HANDLES.pop()
        handle.remove()
        _OWN_HOOK_IDS.discard(handle.id)


class SkipTuningProbe(scripts_manager.Script):
    def title(self):
        return "Skip Tuning probe"

    def show(self, is_img2img):
        return scripts_manager.AlwaysVisible

    def ui(self, is_img2img):
        return [gr.Number(value=0, label="Fail at U-Net call", precision=0)]

    def process(self, p, *args):
        _clear()
        CALLS.clear()

    def process_batch(self, p, fail_at=0, *args, **kwargs):
        """Watch the U-Nets loaded now (p.init may have loaded another model since process)."""
        _clear()
        if p.enable_hr:
            _ = shared.sd_refiner  # load a configured refiner now, so that its U-Net can be watched too
        for name, unet in _unets().items():
            if hasattr(unet, "_orig_mod"):
                continue

            def record(module, args, _name=name, _unet=unet):
                CALLS.append({"model": _name, "hr": bool(getattr(p, "is_hr_pass", False)),
                              "tuned": _foreign_hooks(_unet.up_blocks) > 0})

            _own(unet.up_blocks[0].register_forward_pre_hook(record, prepend=True))
        if fail_at and int(fail_at) > 0:
            unet = _unets()["model"]
            count = [0]

            def fail(module, args):
                count[0] += 1
                if count[0] == int(fail_at):
                    raise KeyError("Skip Tuning probe: the failure this request asked for")

            _own(unet.register_forward_pre_hook(fail))


def _state():
    return {"model_loaded": model_data.sd_model is not None,
            "hooks": {name: _foreign_hooks(list(unet.modules())) for name, unet in _unets().items()},
            "calls": list(CALLS),
            "compiled": {name: hasattr(unet, "_orig_mod") for name, unet in _unets().items()},
            "graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"]}


def _add_route(demo, app):
    app.add_api_route("/skip-tuning-probe/state", _state, methods=["GET"])


script_callbacks.on_after_process(_clear)
script_callbacks.on_app_started(_add_route)

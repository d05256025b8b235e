"""The Skip Tuning script's wiring, run against a STAND-IN of the A1111 webui API (tests/webui_stub).

The stand-in is not the webui: it reimplements the few contracts the script relies on (script
loading and the alwayson runner of modules/scripts.py, process_images/txt2img/img2img/hires fix
of modules/processing.py with A1111 1.10's call order, the sampler's CFG denoiser step counter
and interrupt exception, infotext parsing/pasting/"Send to", the X/Y/Z plot's axis registry,
the API's positional script args) plus a fake gradio that records components. The U-Nets are
real: small ldm UNetModels from PyPI.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("ldm.modules.diffusionmodules.openaimodel", reason="stable-diffusion-sdkit (ldm) is not installed")

import webui_stub  # noqa: E402
from webui_stub import unets  # noqa: E402

from skip_tuning import DEFAULT_RHO_BOTTOM, DEFAULT_RHO_TOP, rho_schedule, skip_channel_plan  # noqa: E402
from skip_tuning.webui import a1111, common  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SCRIPT_FILE = REPO / "scripts" / "skip_tuning.py"
XYZ_FILE = Path(webui_stub.STUB_DIR) / "xyz_grid.py"
IMPL = "skip_tuning.webui.script"  # the module scripts/skip_tuning.py imports the Script class from


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Webui:
    """The stand-in, loaded like the webui loads extensions, with a txt2img and an img2img tab."""

    def __init__(self):
        from modules import infotext_utils, processing, script_callbacks, scripts, sd_unet, shared

        self.scripts, self.processing, self.shared = scripts, processing, shared
        self.callbacks, self.infotext, self.sd_unet = script_callbacks, infotext_utils, sd_unet
        self.reload()

    def reload(self, api_only=False):
        """What "Reload UI" does: clear, load scripts/*.py again, run before_ui, build both tabs.

        ``api_only``: the --nowebui order, where the API builds the tabs before before_ui runs.
        """
        self.scripts.load_scripts([str(XYZ_FILE), str(SCRIPT_FILE)])
        if not api_only:
            self.callbacks.before_ui_callback()
        self.txt2img = self.scripts.ScriptRunner(is_img2img=False)
        self.txt2img.setup_ui()
        self.img2img = self.scripts.ScriptRunner(is_img2img=True)
        self.img2img.setup_ui()
        if api_only:
            self.callbacks.before_ui_callback()
        self.impl = sys.modules[IMPL]
        self.xyz = next(d.module for d in self.scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py")

    def ours(self, runner):
        return runner.script("Skip Tuning")

    def controls(self, runner):
        script = self.ours(runner)
        return runner.inputs[script.args_from:script.args_to]

    def args(self, runner, *values, xyz=None):
        """Script args as the UI sends them: defaults everywhere, ours replaced positionally."""
        args = runner.default_args()
        script = self.ours(runner)
        args[script.args_from:script.args_from + len(values)] = list(values)
        if xyz is not None:
            plot = runner.script("X/Y/Z plot")
            args[0] = runner.selectable_scripts.index(plot) + 1
            args[plot.args_from:plot.args_to] = xyz
        return args

    def txt2img_p(self, model, *values, **kwargs):
        args = kwargs.pop("script_args", None) or self.args(self.txt2img, *values)
        return self.processing.StableDiffusionProcessingTxt2Img(
            sd_model=self.processing.SdModel(model), scripts=self.txt2img, script_args=args, **kwargs)

    def img2img_p(self, model, *values, **kwargs):
        return self.processing.StableDiffusionProcessingImg2Img(
            sd_model=self.processing.SdModel(model), scripts=self.img2img,
            script_args=self.args(self.img2img, *values), **kwargs)


@pytest.fixture(scope="module")
def webui():
    with webui_stub.activate():
        try:
            yield Webui()
        finally:
            sys.modules.pop(IMPL, None)


@pytest.fixture(autouse=True)
def clean_state(webui):
    webui.shared.state.reset()
    webui.processing.step_callbacks.clear()
    webui.scripts.reported_errors.clear()
    webui.sd_unet.current_unet = None
    yield
    webui.processing.step_callbacks.clear()
    assert not a1111._LIVE_HOOKS, "hooks left attached"


@pytest.fixture(scope="module")
def sd1():
    return unets.tiny_unet("sd1", seed=3)


@pytest.fixture(scope="module")
def six():
    return unets.tiny_unet("six", seed=4)


def probe(model, p=None):
    """SkipProbe tagged with (is_hr_pass, denoiser step) of the pass running now."""
    def tag():
        sampler = getattr(p, "sampler", None)
        return (bool(getattr(p, "is_hr_pass", False)), getattr(getattr(sampler, "model_wrap_cfg", None), "step", None))

    return unets.SkipProbe(model, skip_channel_plan(model), tag=tag if p is not None else None)


def factors_by_block(records):
    by_block = {}
    for record in records:
        by_block.setdefault(record["block"], set()).add(round(record["factor"], 6))
    return by_block


# ---------------------------------------------------------------------------------------------
# Loading, UI


def test_importable_without_a_webui():
    """The webui package imports neither gradio nor modules.* at import time."""
    code = textwrap.dedent("""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("gradio", "modules"):
                    raise ImportError("no webui here: " + name)
        sys.meta_path.insert(0, Block())
        import skip_tuning.webui.script as script
        assert script.TITLE == "Skip Tuning"
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_scripts_file_exposes_exactly_one_script(webui):
    ours = [d for d in webui.scripts.scripts_data if d.path == str(SCRIPT_FILE)]
    assert len(ours) == 1
    cls = ours[0].script_class
    assert cls.__name__ == "SkipTuningScript" and cls.__module__ == IMPL
    assert issubclass(cls, webui.scripts.Script)
    assert webui.ours(webui.txt2img).alwayson and webui.ours(webui.img2img).alwayson


def test_ui_components_order_defaults_labels_and_ids(webui):
    import gradio as gr
    from modules.ui_components import InputAccordion

    tabs = {}
    for name, runner in (("txt2img", webui.txt2img), ("img2img", webui.img2img)):
        enabled, rho_bottom, rho_top, start, end, passes = controls = webui.controls(runner)
        assert isinstance(enabled, InputAccordion) and enabled.value is False and enabled.label == "Skip Tuning"
        for slider, value in ((rho_bottom, DEFAULT_RHO_BOTTOM), (rho_top, DEFAULT_RHO_TOP)):
            assert isinstance(slider, gr.Slider)
            assert (slider.minimum, slider.maximum, slider.step, slider.value) == (0.0, 2.0, 0.01, value)
        assert (start.minimum, start.maximum, start.value) == (0, 100, 0) and end.value == 100
        assert isinstance(passes, gr.Radio) and passes.value == "Both passes"
        assert passes.choices == ["Both passes", "First pass only", "Hires pass only"]
        assert all(enabled in c.ancestors() for c in controls[1:])  # everything inside the accordion
        advanced = [b for b in start.ancestors() if isinstance(b, gr.Accordion) and b.label == "Advanced"]
        assert advanced and advanced[0] in end.ancestors() and advanced[0] in passes.ancestors()
        assert advanced[0] not in rho_bottom.ancestors()
        ids = [c.elem_id for c in controls]
        assert len(set(ids)) == 6 and all(i.startswith(f"script_{name}_skip_tuning_") for i in ids)
        tabs[name] = controls
    assert [c.label for c in tabs["txt2img"]] == [c.label for c in tabs["img2img"]]
    assert webui.impl.ARG_NAMES == ("enabled", "rho_bottom", "rho_top", "start", "end", "hires_passes")


def test_ui_has_no_side_effects(webui):
    script = webui.ours(webui.txt2img)
    before = (list(webui.callbacks.callbacks_before_ui), list(webui.callbacks.callbacks_infotext_pasted),
              [o.label for o in webui.xyz.axis_options], list(webui.scripts.scripts_data))
    again = script.ui(False)
    assert [c.value for c in again] == [c.value for c in webui.controls(webui.txt2img)]
    after = (list(webui.callbacks.callbacks_before_ui), list(webui.callbacks.callbacks_infotext_pasted),
             [o.label for o in webui.xyz.axis_options], list(webui.scripts.scripts_data))
    assert after == before
    assert a1111._LIVE_HOOKS == []


# ---------------------------------------------------------------------------------------------
# Hooking through a whole generation


def test_generation_tunes_every_step_and_detaches(webui, sd1):
    p = webui.txt2img_p(sd1, True, 0.7, 0.9, steps=3)
    spy = probe(sd1, p)
    try:
        processed = webui.processing.process_images(p)
    finally:
        spy.remove()
    rhos = rho_schedule(12, 0.7, 0.9)
    by_block = factors_by_block(spy.records)
    assert by_block == {i: {round(rho, 6)} for i, rho in enumerate(rhos)}
    assert all(r["backbone_untouched"] for r in spy.records)
    assert len(spy.records) == 12 * 3
    assert unets.hook_count(sd1) == 0 and "sample" not in vars(p.sampler) and not webui.scripts.reported_errors
    assert "Skip Tuning: True, Skip Tuning rho_bottom: 0.7, Skip Tuning rho_top: 0.9" in processed.info


def test_disabled_changes_nothing_and_writes_no_infotext(webui, sd1):
    p = webui.txt2img_p(sd1, False, 0.5, 0.5, steps=2)
    spy = probe(sd1, p)
    try:
        processed = webui.processing.process_images(p)
    finally:
        spy.remove()
    assert {r["factor"] for r in spy.records} == {1.0}
    assert "Skip Tuning" not in processed.info


def test_window_follows_the_sampling_progress(webui, sd1):
    p = webui.txt2img_p(sd1, True, 0.5, 0.5, 20, 60, steps=5)
    spy = probe(sd1, p)
    try:
        processed = webui.processing.process_images(p)
    finally:
        spy.remove()
    tuned_steps = sorted({r["tag"][1] for r in spy.records if r["factor"] != 1.0})
    assert tuned_steps == [1, 2]  # 20% <= step/5 < 60%
    assert all(r["factor"] == pytest.approx(0.5) for r in spy.records if r["factor"] != 1.0)
    assert "Skip Tuning start: 20, Skip Tuning end: 60" in processed.info


@pytest.mark.parametrize("passes,tuned", [
    ("Both passes", {False, True}), ("First pass only", {False}), ("Hires pass only", {True}),
])
def test_hires_passes_and_a_checkpoint_switch(webui, sd1, six, passes, tuned):
    """The hires pass loads another checkpoint (6 skips): its U-Net is resolved and planned afresh."""
    p = webui.txt2img_p(sd1, True, 0.6, 1.0, 0, 100, passes, steps=2, enable_hr=True,
                        hr_checkpoint=webui.processing.SdModel(six))
    first, second = probe(sd1, p), probe(six, p)
    try:
        webui.processing.process_images(p)
    finally:
        first.remove()
        second.remove()
    assert {r["tag"][0] for r in first.records} == {False} and {r["tag"][0] for r in second.records} == {True}
    tuned_passes = {r["tag"][0] for r in first.records + second.records if r["factor"] != 1.0}
    assert tuned_passes == tuned
    if True in tuned:
        assert factors_by_block(second.records) == {i: {round(r, 6)} for i, r in enumerate(rho_schedule(6, 0.6))}
    if False in tuned:
        assert factors_by_block(first.records)[0] == {0.6}
    assert unets.hook_count(sd1) == 0 and unets.hook_count(six) == 0


@pytest.mark.parametrize("passes,tuned", [
    ("Both passes", {False, True}), ("First pass only", {False}), ("Hires pass only", {True}),
])
def test_a1111_before_1_10_tunes_from_process_batch_and_before_hr(webui, sd1, six, passes, tuned, monkeypatch):
    """A1111 1.9 and older never call process_before_every_sampling: the same passes are tuned anyway."""
    monkeypatch.delattr(webui.scripts.ScriptRunner, "process_before_every_sampling")
    p = webui.txt2img_p(sd1, True, 0.6, 1.0, 0, 100, passes, steps=2, enable_hr=True,
                        hr_checkpoint=webui.processing.SdModel(six))
    first, second = probe(sd1, p), probe(six, p)
    try:
        processed = webui.processing.process_images(p)
    finally:
        first.remove()
        second.remove()
    tuned_passes = {r["tag"][0] for r in first.records + second.records if r["factor"] != 1.0}
    assert tuned_passes == tuned
    assert all(r["factor"] == pytest.approx(0.6) for r in first.records + second.records
               if r["factor"] != 1.0 and r["block"] == 0)
    assert unets.hook_count(sd1) == 0 and unets.hook_count(six) == 0 and not webui.scripts.reported_errors
    assert "Skip Tuning: True" in processed.info


def test_a1111_before_1_10_window_and_img2img(webui, sd1, monkeypatch):
    monkeypatch.delattr(webui.scripts.ScriptRunner, "process_before_every_sampling")
    p = webui.txt2img_p(sd1, True, 0.5, 0.5, 20, 60, steps=5)
    spy = probe(sd1, p)
    try:
        webui.processing.process_images(p)
        assert sorted({r["tag"][1] for r in spy.records if r["factor"] != 1.0}) == [1, 2]
        spy.records.clear()
        webui.processing.process_images(webui.img2img_p(sd1, True, 0.8, 1.0, steps=2, n_iter=2))
    finally:
        spy.remove()
    assert len([r for r in spy.records if r["block"] == 0 and r["factor"] == pytest.approx(0.8)]) == 2 * 2
    assert unets.hook_count(sd1) == 0


def test_a1111_before_1_10_announces_a_tuned_refiner(webui, sd1, monkeypatch, caplog):
    """A1111 1.9.4 loads a same-architecture refiner into the hooked U-Net (tests/test_webui_real.py): its steps
    are tuned, and the warning says so."""
    monkeypatch.delattr(webui.scripts.ScriptRunner, "process_before_every_sampling")
    p = webui.txt2img_p(sd1, True, 0.8, 1.0, steps=1)
    p.refiner_checkpoint_info = object()
    with caplog.at_level(logging.WARNING, logger="skip_tuning"):
        webui.processing.process_images(p)
    assert [r for r in caplog.records if common.REFINER_TUNED in r.getMessage()]


def test_img2img_batches_reuse_the_sampler(webui, sd1):
    p = webui.img2img_p(sd1, True, 0.8, 1.0, steps=2, n_iter=3)
    spy = probe(sd1, p)
    try:
        processed = webui.processing.process_images(p)
    finally:
        spy.remove()
    assert len(processed.images) == 3
    assert len([r for r in spy.records if r["block"] == 0 and r["factor"] == pytest.approx(0.8)]) == 3 * 2
    assert not [name for name in ("sample", "sample_img2img") if name in vars(p.sampler)]


@pytest.mark.parametrize("how", ["exception", "interrupt", "skip"])
def test_no_hook_survives_a_failing_interrupted_or_skipped_pass(webui, sd1, how):
    p = webui.txt2img_p(sd1, True, 0.8, 1.0, steps=4)
    seen = []

    def at_step(p, sampler, step):
        seen.append(unets.hook_count(sd1))
        if step == 1:
            if how == "exception":
                raise RuntimeError("sampler failed")
            setattr(webui.shared.state, "interrupted" if how == "interrupt" else "skipped", True)

    webui.processing.step_callbacks.append(at_step)
    if how == "exception":
        with pytest.raises(RuntimeError, match="sampler failed"):
            webui.processing.process_images(p)  # postprocess never runs: the finally must do it
    else:
        webui.processing.process_images(p)
    assert seen[0] == 11  # attached while sampling (rho_top = 1 needs no hook)
    assert unets.hook_count(sd1) == 0
    assert not [name for name in ("sample", "sample_img2img") if name in vars(p.sampler)]


def test_nothing_is_attached_between_arming_and_sampling(webui, sd1):
    """process_before_every_sampling only arms the pass; a pass that never samples leaves nothing."""
    p = webui.txt2img_p(sd1, True, 0.8, 0.9)
    script = webui.ours(webui.txt2img)
    args = p.script_args[script.args_from:script.args_to]
    script.process(p, *args)
    p.init()
    p.sampler = webui.processing.KDiffusionSampler(p)
    script.process_before_every_sampling(p, *args)
    script.process_before_every_sampling(p, *args)  # twice: still one wrapper
    assert unets.hook_count(sd1) == 0 and "sample" in vars(p.sampler)
    script.postprocess(p, None, *args)
    assert "sample" not in vars(p.sampler) and "sample_img2img" not in vars(p.sampler)


def test_without_a_sampler_hooks_attach_at_once_and_postprocess_removes_them(webui, sd1, caplog):
    """A host flow with no p.sampler to wrap; also: what happens to a refiner's steps is announced."""
    p = webui.txt2img_p(sd1, True, 0.8, 0.9)
    p.refiner_checkpoint_info = object()
    script = webui.ours(webui.txt2img)
    args = p.script_args[script.args_from:script.args_to]
    script.process(p, *args)
    with caplog.at_level(logging.WARNING, logger="skip_tuning"):
        script.process_before_every_sampling(p, *args)
    assert unets.hook_count(sd1) == 12
    assert [r for r in caplog.records if "refiner of the same architecture" in r.getMessage()]
    script.postprocess_batch(p, *args, images=None, batch_number=0)
    assert unets.hook_count(sd1) == 0


def test_leftovers_of_an_aborted_run_are_removed_by_the_next_generation(webui, sd1):
    p = webui.txt2img_p(sd1, True, 0.8, 0.9)
    leftover = a1111.attach_hooks(p, common.params_from_args([True, 0.8, 0.9]))
    assert leftover is not None and unets.hook_count(sd1) == 12
    webui.processing.process_images(webui.txt2img_p(sd1, False, steps=1))
    assert unets.hook_count(sd1) == 0


def test_unsupported_models_warn_once_and_do_nothing(webui, sd1, caplog):
    class NoSkips(torch.nn.Module):  # SD3/Flux-like: no output blocks
        def forward(self, x, timesteps=None, context=None, **kwargs):
            return x * 0.5

    p = webui.txt2img_p(NoSkips(), True, 0.8, 1.0, steps=2, n_iter=2)
    with caplog.at_level(logging.WARNING, logger="skip_tuning"):
        processed = webui.processing.process_images(p)
    assert len([r for r in caplog.records if "no U-Net long skips" in r.getMessage()]) == 1
    assert "Skip Tuning" not in processed.info and not webui.scripts.reported_errors

    caplog.clear()
    webui.sd_unet.current_unet = object()  # TensorRT's SdUnet
    p = webui.txt2img_p(sd1, True, 0.8, 1.0, steps=2)
    spy = probe(sd1, p)
    try:
        with caplog.at_level(logging.WARNING, logger="skip_tuning"):
            processed = webui.processing.process_images(p)
    finally:
        spy.remove()
    assert len([r for r in caplog.records if "TensorRT" in r.getMessage()]) == 1
    assert {r["factor"] for r in spy.records} == {1.0} and "Skip Tuning" not in processed.info


# ---------------------------------------------------------------------------------------------
# Infotext, paste, "Send to"


def test_infotext_round_trip_through_paste(webui, sd1):
    p = webui.txt2img_p(sd1, True, 0.85, 0.95, 10, 90, "First pass only", steps=1)
    info = webui.processing.process_images(p).info
    assert "Skip Tuning passes: First pass only" in info
    fields = webui.txt2img.infotext_fields
    ours = [(c, k) for c, k in fields if c in webui.controls(webui.txt2img)]
    assert len(ours) == 6 and all(isinstance(k, str) for _, k in ours)  # named keys: "Send to" can copy them
    assert webui.infotext.paste(ours, info) == [True, 0.85, 0.95, 10.0, 90.0, "First pass only"]

    # Defaults are not written, and come back when pasted.
    info = webui.processing.process_images(webui.txt2img_p(sd1, True, 0.7, steps=1)).info
    assert "Skip Tuning start" not in info and "Skip Tuning passes" not in info
    assert webui.infotext.paste(ours, info) == [True, 0.7, 1.0, 0.0, 100.0, "Both passes"]

    # An image without Skip Tuning turns it off and leaves the sliders alone.
    plain = "a prompt\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512"
    assert webui.infotext.paste(ours, plain) == [False, None, None, None, None, None]


def test_send_to_img2img_carries_the_controls(webui):
    source, target = webui.controls(webui.txt2img), webui.controls(webui.img2img)
    values = dict(zip(source, [True, 0.66, 0.99, 5.0, 95.0, "Hires pass only"]))
    sent = webui.infotext.send_to(webui.txt2img.infotext_fields, webui.img2img.infotext_fields,
                                  webui.txt2img.paste_field_names, values)
    assert [sent[c] for c in target] == [True, 0.66, 0.99, 5.0, 95.0, "Hires pass only"]


# ---------------------------------------------------------------------------------------------
# X/Y/Z plot


def test_xyz_axes_are_registered_once_and_again_after_reload(webui):
    labels = [o.label for o in webui.xyz.axis_options if o.label.startswith("[Skip Tuning]")]
    assert labels == ["[Skip Tuning] rho_bottom", "[Skip Tuning] rho_top", "[Skip Tuning] On/Off"]
    webui.callbacks.before_ui_callback()  # a second before_ui adds nothing
    assert [o.label for o in webui.xyz.axis_options].count("[Skip Tuning] rho_bottom") == 1
    old = webui.xyz
    webui.reload()  # "Reload UI": a fresh xyz_grid.py module; the axes are there again, once
    assert webui.xyz is not old
    assert [o.label for o in webui.xyz.axis_options].count("[Skip Tuning] rho_bottom") == 1
    assert len(webui.callbacks.callbacks_before_ui) == 1 and len(webui.callbacks.callbacks_infotext_pasted) == 1


def test_xyz_steps_by_rho_bottom_is_scoped_to_each_cell(webui, sd1):
    """Steps 2,3 x rho_bottom 1.0,0.9,0.8 with Skip Tuning off in the UI: the axis turns it on per cell."""
    xyz = ["Steps", "2,3", "[Skip Tuning] rho_bottom", "1.0,0.9,0.8"]
    p = webui.txt2img_p(sd1, script_args=webui.args(webui.txt2img, False, xyz=xyz))
    spy = probe(sd1, p)
    try:
        cells = webui.txt2img.run(p, *p.script_args)
    finally:
        spy.remove()
    assert [(x, y) for (x, y), _, _ in cells] == [(2, 1.0), (3, 1.0), (2, 0.9), (3, 0.9), (2, 0.8), (3, 0.8)]
    for (steps, rho_bottom), cell, processed in cells:
        assert f"Skip Tuning rho_bottom: {rho_bottom:g}" in processed.info
        assert f"Steps: {steps}" in processed.info
        assert cell.skip_tuning_params.rho_bottom == rho_bottom
    assert not hasattr(p, "skip_tuning_xyz_rho_bottom")  # the overrides stayed in the cells' copies
    block0 = [r["factor"] for r in spy.records if r["block"] == 0]
    assert block0 == [1.0] * 5 + [pytest.approx(0.9)] * 5 + [pytest.approx(0.8)] * 5


def test_xyz_axes_exist_in_api_only_mode(webui, sd1):
    """--nowebui builds the X/Y/Z dropdowns before before_ui callbacks: the axes must already be there."""
    try:
        webui.reload(api_only=True)
        plot = webui.txt2img.script("X/Y/Z plot")
        offered = webui.txt2img.inputs[plot.args_from].choices
        assert [label for label in offered if label.startswith("[Skip Tuning]")] == [
            "[Skip Tuning] rho_bottom", "[Skip Tuning] rho_top", "[Skip Tuning] On/Off"]
        xyz = ["[Skip Tuning] rho_bottom", "0.8", "Nothing", ""]
        p = webui.txt2img_p(sd1, script_args=webui.args(webui.txt2img, False, xyz=xyz), steps=1)
        ((_, cell, processed),) = webui.txt2img.run(p, *p.script_args)
        assert cell.skip_tuning_params.rho_bottom == 0.8 and "Skip Tuning rho_bottom: 0.8" in processed.info
    finally:
        webui.reload()


def test_xyz_on_off_axis_and_value_check(webui, sd1):
    xyz = ["[Skip Tuning] On/Off", "On,Off", "Nothing", ""]
    p = webui.txt2img_p(sd1, script_args=webui.args(webui.txt2img, True, 0.7, xyz=xyz), steps=1)
    cells = webui.txt2img.run(p, *p.script_args)
    (_, on, on_result), (_, off, off_result) = cells
    assert "Skip Tuning rho_bottom: 0.7" in on_result.info and "Skip Tuning" not in off_result.info
    bad = ["[Skip Tuning] rho_top", "1.0,3.0", "Nothing", ""]
    p = webui.txt2img_p(sd1, script_args=webui.args(webui.txt2img, True, xyz=bad), steps=1)
    with pytest.raises(RuntimeError, match="rho_top"):
        webui.txt2img.run(p, *p.script_args)


# ---------------------------------------------------------------------------------------------
# API


def test_api_positional_args(webui, sd1):
    args = webui.txt2img.api_args({"Skip Tuning": {"args": [True, 0.75]}})  # shorter than ui(): defaults fill in
    p = webui.txt2img_p(sd1, script_args=args, steps=1)
    processed = webui.processing.process_images(p)
    assert p.skip_tuning_params.rho_bottom == 0.75 and p.skip_tuning_params.rho_top == DEFAULT_RHO_TOP
    assert "Skip Tuning rho_bottom: 0.75" in processed.info


def test_api_dict_args(webui, sd1):
    named = {"rho_bottom": 0.6, "start": 25, "hires_passes": "first"}
    args = webui.txt2img.api_args({"skip tuning": {"args": [named]}})
    p = webui.txt2img_p(sd1, script_args=args, steps=1)
    processed = webui.processing.process_images(p)
    params = p.skip_tuning_params
    assert (params.enabled, params.rho_bottom, params.start) == (True, 0.6, 25.0)
    assert params.hires_passes == "First pass only"
    assert "Skip Tuning start: 25" in processed.info

    args = webui.txt2img.api_args({"Skip Tuning": {"args": [{"enabled": False, "rho_bottom": 0.6}]}})
    p = webui.txt2img_p(sd1, script_args=args, steps=1)
    assert "Skip Tuning" not in webui.processing.process_images(p).info


def test_api_bad_args_switch_it_off_with_an_error(webui, sd1, caplog):
    for given in ([{"rho_botom": 0.6}], [True, 5.0], [True, 0.8, 1.0, 70, 20]):
        args = webui.txt2img.api_args({"Skip Tuning": {"args": given}})
        p = webui.txt2img_p(sd1, script_args=args, steps=1)
        with caplog.at_level(logging.ERROR, logger="skip_tuning"):
            processed = webui.processing.process_images(p)
        assert "Skip Tuning" not in processed.info
        assert p.skip_tuning_params.enabled is False
    assert len([r for r in caplog.records if "Skip Tuning is off" in r.getMessage()]) == 3

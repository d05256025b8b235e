"""The SD.Next path of the Skip Tuning script, run against a STAND-IN of SD.Next (tests/webui_stub/sdnext).

The stand-in is not SD.Next: it reimplements the contracts the script relies on (the alwayson runner,
process_images' order with before/after_process callbacks around it, postprocess skipped after an
interrupt or error, per-pipeline-call step counting, hires and refiner passes, the detailer's nested
process_images_inner). The U-Nets are real diffusers UNet2DConditionModels and the hooks are the
diffusers adapter's (skip_tuning.diffusers); the real SD.Next runs in tests/test_webui_real_sdnext.py.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers is not installed")

import webui_stub  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402

from skip_tuning.diffusers import apply_skip_tuning  # noqa: E402
from skip_tuning.webui import common, sdnext  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SCRIPT_FILE = REPO / "scripts" / "skip_tuning.py"
IMPL = "skip_tuning.webui.script"
N_ARGS = 6


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_unet(seed: int) -> UNet2DConditionModel:
    """SD's block types at toy width: 6 long skips (3 up blocks of 2 resnets)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8,
    )
    for parameter in unet.parameters():  # no zero-initialised output layers: every skip must matter
        torch.nn.init.normal_(parameter, std=0.1)
    return unet.eval()


def hook_count(unet) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in unet.modules())


class CallTracer:
    """Per U-Net call: (is_hr_pass, whether pre-hooks other than ours sat on the up blocks)."""

    def __init__(self, unet, p_of_call):
        self.unet, self.calls = unet, []
        self.handle = unet.up_blocks[0].register_forward_pre_hook(self._record, prepend=True)
        self.own = {self.handle.id}
        self.p_of_call = p_of_call

    def _record(self, module, args):
        foreign = sum(1 for block in self.unet.up_blocks for key in block._forward_pre_hooks if key not in self.own)
        self.calls.append((bool(getattr(self.p_of_call(), "is_hr_pass", False)), foreign > 0))

    def remove(self):
        self.handle.remove()


class SdNext:
    """The stand-in, with Skip Tuning loaded as SD.Next loads extension scripts."""

    def __init__(self):
        from modules import processing, script_callbacks, scripts, shared

        self.processing, self.shared, self.scripts, self.callbacks = processing, shared, scripts, script_callbacks
        scripts.load_scripts([str(SCRIPT_FILE)])
        self.runner = scripts.ScriptRunner(N_ARGS)
        self.impl = sys.modules[IMPL]

    def p(self, *values, **kwargs):
        return self.processing.StableDiffusionProcessing(scripts=self.runner, script_args=[0, *values], **kwargs)

    def load(self, unet, refiner=None):
        self.shared.sd_model = self.processing.Pipeline(unet)
        self.shared.sd_refiner = None if refiner is None else self.processing.Pipeline(refiner, "refiner")


@pytest.fixture(scope="module")
def host():
    logger = common.logger
    saved = logger.handlers, logger.propagate, logger.level  # loading routes it to SD.Next's logger
    with webui_stub.activate(webui_stub.SDNEXT_DIR):
        try:
            yield SdNext()
        finally:
            sys.modules.pop(IMPL, None)
            sdnext.remove_all()
            logger.handlers, logger.propagate = saved[:2]
            logger.setLevel(saved[2])


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def warnings_logged():
    """Skip Tuning's log records (SD.Next's routing keeps them from the root logger, where caplog listens)."""
    handler = Records()
    common.logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        common.logger.removeHandler(handler)


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(3)


@pytest.fixture(autouse=True)
def clean_state(host, unet):
    host.shared.state.reset()
    host.processing.step_callbacks.clear()
    host.scripts.reported_errors.clear()
    host.load(unet)
    yield
    host.processing.step_callbacks.clear()
    assert not sdnext._LIVE, "tuning left attached"
    assert hook_count(unet) == 0
    assert not host.scripts.reported_errors


def run(host, p, unet):
    tracer = CallTracer(unet, lambda: p)
    try:
        processed = host.processing.process_images(p)
    finally:
        tracer.remove()
    return processed, tracer.calls


def reference(host, p_kwargs, unet, rho_bottom, rho_top):
    """The same generation with the adapter applied for all of it, by hand, and no script."""
    host.load(unet)
    plain = host.processing.StableDiffusionProcessing(scripts=host.runner, script_args=[0, False], **p_kwargs)
    with apply_skip_tuning(unet, rho_bottom, rho_top):
        return host.processing.process_images(plain).images


def test_loaded_as_sdnext_with_its_callbacks(host):
    assert sdnext.is_sdnext()
    assert [d.script_class.__name__ for d in host.scripts.scripts_data] == ["SkipTuningScript"]
    assert sdnext.on_before_or_after_process in host.callbacks.callbacks_before_process
    assert sdnext.on_before_or_after_process in host.callbacks.callbacks_after_process
    from modules.logger import log

    assert common.logger.handlers is log.handlers and not common.logger.propagate


def test_generation_equals_the_adapter_and_detaches(host, unet):
    processed, calls = run(host, host.p(True, 0.7, 0.9, steps=3), unet)
    assert calls == [(False, True)] * 3
    assert "Skip Tuning: True, Skip Tuning rho_bottom: 0.7, Skip Tuning rho_top: 0.9" in processed.info
    expected = reference(host, {"steps": 3}, unet, 0.7, 0.9)
    assert all(torch.equal(a, b) for a, b in zip(processed.images, expected))


def test_rho_1_and_off_are_the_plain_model_bit_for_bit(host, unet):
    plain = host.processing.process_images(host.p(False, 0.5, 0.5)).images[0]
    for values in ((True, 1.0, 1.0), (False, 0.7, 0.9)):
        processed, calls = run(host, host.p(*values), unet)
        assert torch.equal(processed.images[0], plain) and not any(tuned for _, tuned in calls)
    assert "Skip Tuning rho" not in host.processing.process_images(host.p(False, 0.7)).info


@pytest.mark.parametrize("passes,tuned", [
    ("Both passes", [True] * 4), ("First pass only", [True, True, False, False]),
    ("Hires pass only", [False, False, True, True]),
])
def test_hires_pass_choices(host, unet, passes, tuned):
    _, calls = run(host, host.p(True, 0.8, 1.0, 0, 100, passes, enable_hr=True), unet)
    assert calls == [(hr, on) for hr, on in zip([False, False, True, True], tuned)]


def test_window_counts_the_steps_of_each_pass(host, unet):
    """25-75%: steps 1 and 2 of 4; step 1 of the 2 hires steps (each pipeline call counts anew)."""
    _, calls = run(host, host.p(True, 0.8, 1.0, 25, 75, steps=4, enable_hr=True, hr_steps=2), unet)
    assert [on for _, on in calls] == [False, True, True, False, False, True]


def test_each_batch_tunes_the_model_loaded_for_it(host, unet):
    """p.init loads another model after process: the batches tune that one, the old one stays untouched."""
    other = tiny_unet(4)
    p = host.p(True, 0.8, 1.0, n_iter=2, model_on_init=host.processing.Pipeline(other))
    old, new = CallTracer(unet, lambda: p), CallTracer(other, lambda: p)
    try:
        host.processing.process_images(p)
    finally:
        old.remove()
        new.remove()
    assert old.calls == [] and new.calls == [(False, True)] * 4
    assert hook_count(other) == 0


def test_refiner_steps_are_not_tuned_and_a_warning_says_so(host, unet, warnings_logged):
    refiner = tiny_unet(5)
    host.load(unet, refiner)
    p = host.p(True, 0.8, 1.0, enable_hr=True, hr_steps=1, refiner_steps=2, refiner_start=0.5)
    base, ref = CallTracer(unet, lambda: p), CallTracer(refiner, lambda: p)
    try:
        host.processing.process_images(p)
    finally:
        base.remove()
        ref.remove()
    assert [on for _, on in base.calls] == [True] * 3 and [on for _, on in ref.calls] == [False] * 2
    assert [r for r in warnings_logged if common.REFINER_UNTUNED in r.getMessage()]
    assert hook_count(refiner) == 0


def test_a_compiled_unet_model_compile(host, unet):
    """SD.Next's model compile puts ``torch.compile(unet)`` into the pipeline; dynamo does not guard module hooks,
    so its graphs would ignore hooks added later. Tuned calls run the wrapper eagerly: every generation equals the
    uncompiled one bit for bit (dynamo's "eager" backend here, so that compiled plain calls are exact too; the real
    tier runs inductor), a changed rho and a window take effect, tuned runs add no graph, nothing stays attached."""
    from torch._dynamo.utils import counters

    runs = [(False,), (True, 0.7, 0.9), (True, 0.6, 0.9), (True, 0.7, 0.9, 34, 100), (False,)]

    def generate(*args):
        host.shared.state.reset()
        return host.processing.process_images(host.p(*args, steps=3)).images

    uncompiled = [generate(*args) for args in runs]
    assert len({tuple(images[0].flatten().tolist()) for images in uncompiled}) == 4
    compiled = torch.compile(unet, backend="eager")
    host.load(compiled)
    counters.clear()
    got = [generate(*runs[0])]
    graphs = counters["stats"]["unique_graphs"]
    got += [generate(*args) for args in runs[1:]]
    assert graphs > 0 and counters["stats"]["unique_graphs"] == graphs
    assert all(torch.equal(a, b) for images, expected in zip(got, uncompiled) for a, b in zip(images, expected))
    assert not compiled._forward_pre_hooks and not compiled._forward_hooks


def sdnext_log_views():
    """What SD.Next shows so far: (console, log file, the UI's log view), as the stand-in records them."""
    from modules import logger

    return logger.console_stream.getvalue(), logger.file_stream.getvalue(), "\n".join(logger.log.buffer)


@pytest.mark.parametrize("after_traceback", [False, True], ids=["fresh", "after-a-host-traceback"])
def test_warnings_and_errors_reach_the_console_the_log_file_and_the_ui_log(host, unet, after_traceback):
    """SD.Next's UI-log handler keeps a record's args after replacing its message, and its traceback printer moves
    the console handler behind that one (both reproduced by the stand-in): every view must still show ours."""
    from modules.logger import log

    if after_traceback:
        log.traceback(RuntimeError("a host error"))
    host.processing.process_images(host.p(True, -1.0, 1.0, steps=1))
    host.load(unet, tiny_unet(5))
    host.processing.process_images(host.p(True, 0.8, 1.0, enable_hr=True, hr_steps=1, refiner_steps=1,
                                          refiner_start=0.5))
    for view in sdnext_log_views():
        assert "Skip Tuning is off for this generation: rho_bottom" in view
        assert common.REFINER_UNTUNED in view


@pytest.mark.parametrize("how", ["interrupt", "runtime-error", "key-error"])
def test_nothing_survives_an_interrupt_or_an_error(host, unet, how):
    """postprocess does not run after any of these: the after_process callback removes the hooks."""
    seen = []

    def at_step(p, step):
        seen.append(hook_count(unet))
        if step == 1:
            if how == "interrupt":
                host.shared.state.interrupted = True
            else:
                raise (RuntimeError if how == "runtime-error" else KeyError)("failed mid-sampling")

    host.processing.step_callbacks.append(at_step)
    if how == "key-error":  # SD.Next does not catch it: the generation ends with the error
        with pytest.raises(KeyError):
            host.processing.process_images(host.p(True, 0.8, 1.0, steps=4))
    else:
        host.processing.process_images(host.p(True, 0.8, 1.0, steps=4))
    assert seen[0] > 0 and hook_count(unet) == 0


def test_the_detailers_nested_passes_run_tuned_and_leave_the_batch_tuned(host, unet):
    p = host.p(True, 0.8, 1.0, n_iter=2, detailer=True)
    _, calls = run(host, p, unet)
    assert calls == [(False, True)] * 8  # per batch: 2 steps, then the detailer's 2 steps


def test_leftovers_are_removed_by_the_next_generation(host, unet):
    p = host.p(True, 0.8, 1.0)
    sdnext.start_batch(p, common.params_from_args([True, 0.8, 1.0]))  # attached, never sampled, never ended
    assert hook_count(unet) > 0
    host.processing.process_images(host.p(False))
    assert hook_count(unet) == 0


def test_models_without_long_skips_warn_and_change_nothing(host, unet, warnings_logged):
    class FluxLike(torch.nn.Module):  # a transformer without long skips
        def forward(self, sample, timestep, encoder_hidden_states=None):
            return type("Out", (), {"sample": sample * 0.5})()

    host.shared.sd_model = host.processing.Pipeline(FluxLike())
    processed = host.processing.process_images(host.p(True, 0.8, 1.0, n_iter=2))
    assert len([r for r in warnings_logged if "no U-Net long skips" in r.getMessage()]) == 1
    assert "Skip Tuning" not in processed.info and not sdnext._LIVE


def test_freeu_composes_with_skip_tuning(host, unet):
    """SD.Next enables FreeU on the pipeline after scripts.process: rho 1 leaves FreeU's output as it is, and
    the tuned output is FreeU's filter applied to the scaled skips (the adapter's hooks run before the block)."""
    unet.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    try:
        freeu = host.processing.process_images(host.p(False)).images[0]
        assert torch.equal(host.processing.process_images(host.p(True, 1.0, 1.0)).images[0], freeu)
        tuned = host.processing.process_images(host.p(True, 0.7, 0.9)).images[0]
        assert torch.equal(tuned, reference(host, {}, unet, 0.7, 0.9)[0]) and not torch.equal(tuned, freeu)
        assert torch.equal(host.processing.process_images(host.p(False)).images[0], freeu)
    finally:
        unet.disable_freeu()

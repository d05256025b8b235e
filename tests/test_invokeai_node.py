"""The InvokeAI node's host-free part (skip_tuning/invokeai/tuning.py) and the root entry point's InvokeAI branch,
without InvokeAI. The node itself runs in a real InvokeAI: tests/test_invokeai_real.py.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import comfy_helpers
import diffusers_helpers as h
import pytest
import torch

from skip_tuning import SkipTuningError, rho_schedule
from skip_tuning.invokeai.tuning import (
    InvocationTuning,
    check_base,
    check_rho_per_skip,
    check_window,
    forward_messages,
)


class Sink:
    """Stands in for InvokeAI's ``context.logger`` (debug/info/warning/error with one message)."""

    def __init__(self):
        self.records = []

    def __getattr__(self, level):
        if level not in ("debug", "info", "warning", "error"):
            raise AttributeError(level)
        return lambda message: self.records.append((level, message))


# --- field checks (run by the node's pydantic validators) ----------------------------------------------------


@pytest.mark.parametrize("text", ["", "0.8", " 0.8, 0.9 ,1", "[1, 1.2]", "0;2"])
def test_rho_per_skip_accepts_a_list_of_rhos_and_keeps_the_text(text):
    assert check_rho_per_skip(text) == text


@pytest.mark.parametrize("text, message", [("0.8, x", "entry 2 must be a number"), ("0.8,,1", "empty entry"),
                                           ("2.5", "between 0.0 and 2.0"), ("nan", "finite")])
def test_rho_per_skip_refuses_bad_entries(text, message):
    with pytest.raises(SkipTuningError, match=message):
        check_rho_per_skip(text)


def test_the_window_is_named_as_the_node_names_it():
    check_window(0.0, 1.0)
    check_window(0.3, 0.3)
    with pytest.raises(SkipTuningError, match=r"skip_tuning_start \(0.7\) must not be after skip_tuning_end"):
        check_window(0.7, 0.3)


class Base:  # InvokeAI's BaseModelType is a str Enum; the check reads its value
    def __init__(self, value):
        self.value = value


@pytest.mark.parametrize("base", ["sd-1", "sd-2", "sdxl", "sdxl-refiner", Base("sd-1")])
def test_unets_with_long_skips_pass(base):
    check_base(base)


@pytest.mark.parametrize("base", ["flux", "sd-3", "flux2", Base("cogview4")])
def test_models_without_long_skips_are_refused_by_name(base):
    with pytest.raises(SkipTuningError, match=r"U-Net \(SD1.x, SD2.x, SDXL, SDXL Refiner\).*Use the core Denoise"):
        check_base(base)


# --- one invocation's tuning ------------------------------------------------------------------------------------


def test_the_invocation_tunes_every_skip_exactly_and_removes_its_hooks():
    unet = h.sd1_unet()
    plain = h.run(unet, "sd1")
    tuning = InvocationTuning(0.8, 1.0, "", 0.0, 1.0)
    with tuning:
        handle = tuning.apply(unet, scheduler=None)
        assert tuning.reached and handle.attached
        with h.unet_skip_probe(unet) as calls:
            tuned = h.run(unet, "sd1")
        for (pushed, received), rho in zip(h.received_skips(calls[0]), rho_schedule(12, 0.8, 1.0)):
            assert torch.equal(received, pushed * rho)
    assert not handle.attached
    assert not torch.equal(tuned, plain)
    assert torch.equal(h.run(unet, "sd1"), plain)


def test_rho_1_attaches_nothing():
    unet = h.sd1_unet()
    with InvocationTuning(1.0, 1.0, "", 0.0, 1.0) as tuning:
        assert not tuning.apply(unet, scheduler=None).attached


def test_an_error_inside_the_invocation_removes_the_hooks():
    unet = h.sd1_unet()
    plain = h.run(unet, "sd1")
    tuning = InvocationTuning(0.5, 1.0, "", 0.0, 1.0)
    with pytest.raises(RuntimeError, match="cancelled"), tuning:
        tuning.apply(unet, scheduler=None)
        raise RuntimeError("cancelled")
    assert tuning.handles == []
    assert torch.equal(h.run(unet, "sd1"), plain)


def test_a_per_skip_list_of_the_wrong_length_names_the_skip_count():
    tuning = InvocationTuning(1.0, 1.0, "0.8, 0.9", 0.0, 1.0)
    with pytest.raises(SkipTuningError, match="2 values but this model has 12 long skips"):
        tuning.apply(h.sd1_unet(), scheduler=None)
    assert not tuning.reached


def test_the_window_follows_the_scheduler_it_is_given():
    unet = h.sd1_unet()
    plain = {t: h.run(unet, "sd1", timestep=torch.tensor([t])) for t in (999.0, 100.0)}
    scheduler = {"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 1000}
    with InvocationTuning(0.5, 1.0, "", 0.5, 1.0) as tuning:
        tuning.apply(unet, scheduler)
        # Timestep 999 is the first half of the schedule: outside; 100 is inside.
        assert torch.equal(h.run(unet, "sd1", timestep=torch.tensor([999.0])), plain[999.0])
        assert not torch.equal(h.run(unet, "sd1", timestep=torch.tensor([100.0])), plain[100.0])


# --- messages reach InvokeAI's logger ----------------------------------------------------------------------------


def test_the_adapters_warning_reaches_invokeais_logger_and_the_handler_goes_afterwards():
    logger = logging.getLogger("skip_tuning")
    handlers, level = list(logger.handlers), logger.level
    sink = Sink()
    unet = h.sd1_unet()
    with forward_messages(sink), InvocationTuning(0.8, 1.0, "", 0.0, 1.0) as tuning:
        tuning.apply(unet, scheduler=None)
        block = unet.up_blocks[0]
        hidden = torch.zeros(1, 16, 2, 2)
        with pytest.raises(IndexError):  # one skip where 3 are due: the block itself then fails on its own
            block(hidden, res_hidden_states_tuple=(hidden,), temb=torch.zeros(1, 32))
    assert ("info", sink.records[0][1]) == sink.records[0] and "12 long skips" in sink.records[0][1]
    warnings = [message for level_name, message in sink.records if level_name == "warning"]
    assert len(warnings) == 1 and "got 1 skips where 3 were expected" in warnings[0]
    assert logger.handlers == handlers and logger.level == level
    logger.warning("after the invocation")
    assert len(sink.records) == 2


def test_errors_are_forwarded_as_errors():
    sink = Sink()
    with forward_messages(sink):
        logging.getLogger("skip_tuning").critical("broken")
        logging.getLogger("skip_tuning").debug("not forwarded")
    assert sink.records == [("error", "broken")]


# --- the root entry point ----------------------------------------------------------------------------------------


def run_fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=comfy_helpers.TESTS_DIR, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "COMFYUI_PATH": ""})


def test_without_invokeai_the_pack_imports_nothing_of_it():
    result = run_fresh("import sys, comfy_helpers; pack = comfy_helpers.load_pack(); "
                       "print(sorted(m for m in sys.modules if 'invokeai' in m))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_under_invokeai_the_pack_imports_its_node_module():
    # InvokeAI's core invocations are imported before custom nodes: its baseinvocation module is the sign. With
    # an empty stand-in for it, the branch is taken and the node module's first InvokeAI import is what fails.
    result = run_fresh("import sys, types, comfy_helpers; "
                       "sys.modules['invokeai.app.invocations.baseinvocation'] = types.ModuleType('stand_in'); "
                       "comfy_helpers.load_pack()")
    assert result.returncode != 0
    assert "skip_tuning/invokeai/nodes.py" in result.stderr and "ImportError: cannot import name" in result.stderr

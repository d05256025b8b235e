"""The ComfyUI node definitions and the node function, without ComfyUI (a stub model patcher).

The stub has no ``get_model_object`` and no wrappers, like ComfyUI builds from mid-2024.
The same behaviour inside a real ComfyUI is covered by test_comfyui_integration.py.
"""

import copy
import logging
import math
import runpy
from types import SimpleNamespace

import comfy_helpers
import pytest
import torch
from torch import nn

pack = comfy_helpers.load_pack()
nodes = pack.skip_tuning_nodes


class FakeUNet(nn.Module):
    def __init__(self, n_skips, middle=True):
        super().__init__()
        self.input_blocks = nn.ModuleList(nn.Identity() for _ in range(n_skips))
        self.output_blocks = nn.ModuleList(nn.Identity() for _ in range(n_skips))
        self.middle_block = nn.Identity() if middle else None


class FakeSampling:
    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return 10.0 * (1.0 - percent)


class StubPatcher:
    """The parts of ModelPatcher the node uses, as they were before get_model_object and wrappers."""

    def __init__(self, network):
        self.model = SimpleNamespace(diffusion_model=network, model_sampling=FakeSampling())
        self.patches = []

    def clone(self):
        other = StubPatcher(self.model.diffusion_model)
        other.model = self.model
        other.patches = list(self.patches)
        return other

    def set_model_output_block_patch(self, patch):
        self.patches.append(patch)


class WrapperStubPatcher(StubPatcher):
    def __init__(self, network):
        super().__init__(network)
        self.wrappers = {}

    def clone(self):
        other = WrapperStubPatcher(self.model.diffusion_model)
        other.model = self.model
        other.patches = list(self.patches)
        other.wrappers = copy.deepcopy(self.wrappers)
        return other

    def add_wrapper_with_key(self, wrapper_type, key, wrapper):
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)


def run_patch(patched, index, hsp, sigma=None, **extra):
    to = {"block": ("output", index), **extra}
    if sigma is not None:
        to["sigmas"] = torch.tensor([sigma])
    h = torch.zeros_like(hsp)
    for patch in patched.patches:
        h, hsp = patch(h, hsp, to)
    return hsp


# --- definitions ---------------------------------------------------------------------------------------------


def test_mappings_and_entry_point():
    assert {"SkipTuning", "SkipTuningAdvanced"} <= set(pack.NODE_CLASS_MAPPINGS)
    assert pack.NODE_CLASS_MAPPINGS["SkipTuning"] is nodes.SkipTuning
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["SkipTuning"] == "Skip Tuning"
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["SkipTuningAdvanced"] == "Skip Tuning (Advanced)"
    assert pack.WEB_DIRECTORY == "./js"


def test_entry_point_imported_as_a_plain_module_registers_nothing():
    namespace = runpy.run_path(str(comfy_helpers.REPO_ROOT / "__init__.py"))
    assert namespace["NODE_CLASS_MAPPINGS"] == {}
    assert namespace["WEB_DIRECTORY"] == "./js"


@pytest.mark.parametrize("cls", [nodes.SkipTuning, nodes.SkipTuningAdvanced])
def test_node_metadata(cls):
    assert cls.CATEGORY == "model_patches/unet"
    assert cls.RETURN_TYPES == ("MODEL",)
    assert len(cls.OUTPUT_TOOLTIPS) == 1
    assert callable(getattr(cls, cls.FUNCTION))
    assert len(cls.DESCRIPTION) > 80
    inputs = cls.INPUT_TYPES()
    for section in inputs.values():
        for name, spec in section.items():
            assert len(spec) == 2 and spec[1].get("tooltip"), f"{cls.__name__}.{name} has no tooltip"
    required = inputs["required"]
    assert list(required)[:3] == ["model", "rho_bottom", "rho_top"]
    for name, default in (("rho_bottom", nodes.DEFAULT_RHO_BOTTOM), ("rho_top", nodes.DEFAULT_RHO_TOP)):
        kind, spec = required[name]
        assert kind == "FLOAT"
        assert (spec["min"], spec["max"], spec["step"], spec["default"], spec["display"]) == (
            0.0, 2.0, 0.01, default, "slider")


def test_advanced_inputs():
    inputs = nodes.SkipTuningAdvanced.INPUT_TYPES()
    required, optional = inputs["required"], inputs["optional"]
    assert required["start_percent"][1]["default"] == 0.0 and required["end_percent"][1]["default"] == 1.0
    for name in ("start_percent", "end_percent"):
        assert required[name][0] == "FLOAT"
        assert (required[name][1]["min"], required[name][1]["max"]) == (0.0, 1.0)
    assert optional["rho_per_skip"][0] == "STRING" and optional["rho_per_skip"][1]["default"] == ""
    assert optional["scale_controlnet"][0] == "BOOLEAN" and optional["scale_controlnet"][1]["default"] is True


# --- behaviour -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [12, 9, 6, 1])
def test_simple_node_applies_the_formula(n):
    base = StubPatcher(FakeUNet(n))
    (patched,) = nodes.SkipTuning().patch(base, 0.6, 1.1)
    assert patched is not base and base.patches == [], "the input model must not change"
    assert len(patched.patches) == 1
    for i in range(n):
        rho = 0.6 if n == 1 else 0.6 + (1.1 - 0.6) * i / (n - 1)
        hsp = torch.randn(1, 4, 2, 2)
        out = run_patch(patched, i, hsp.clone(), sigma=5.0)
        assert torch.allclose(out, hsp * rho, rtol=1e-6, atol=0), i


def test_advanced_per_skip_list_and_window():
    base = StubPatcher(FakeUNet(6))
    (patched,) = nodes.SkipTuningAdvanced().patch(base, 0.8, 1.0, 0.2, 0.6, "0.5, 0.6, 0.7, 0.8, 0.9, 1.0", True)
    hsp = torch.ones(1, 4, 2, 2)
    # FakeSampling: start 0.2 -> sigma 8, end 0.6 -> sigma 4.
    assert torch.equal(run_patch(patched, 1, hsp, sigma=6.0), hsp * 0.6)
    assert torch.equal(run_patch(patched, 1, hsp, sigma=8.0), hsp * 0.6)
    assert torch.equal(run_patch(patched, 1, hsp, sigma=9.0), hsp)
    assert torch.equal(run_patch(patched, 1, hsp, sigma=3.9), hsp)


def test_full_window_has_no_gate():
    (patched,) = nodes.SkipTuningAdvanced().patch(StubPatcher(FakeUNet(2)), 0.5, 1.0, 0.0, 1.0)
    hsp = torch.ones(1, 1, 1, 1)
    for sigma in (1e12, 5.0, 0.0):
        assert torch.equal(run_patch(patched, 0, hsp, sigma=sigma), hsp * 0.5)


def test_sigma_window_helper():
    model = StubPatcher(FakeUNet(2))
    assert nodes.sigma_window(model, 0.0, 1.0) is None
    assert nodes.sigma_window(model, 0.25, 0.75) == (2.5, 7.5)
    assert nodes.sigma_window(model, 0.0, 0.5) == (5.0, 999999999.9)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"rho_bottom": math.nan}, "rho_bottom must be finite"),
    ({"rho_top": math.inf}, "rho_top must be finite"),
    ({"rho_bottom": -0.5}, "rho_bottom must be between 0.0 and 2.0"),
    ({"rho_top": 2.5}, "rho_top must be between 0.0 and 2.0"),
    ({"start_percent": 0.7, "end_percent": 0.3}, "must not be after end_percent"),
    ({"end_percent": math.nan}, "end_percent must be between 0 and 1"),
    ({"rho_per_skip": "0.8, 0.9"}, "rho_per_skip has 2 values but this model has 9 long skips"),
    ({"rho_per_skip": "0.8, x"}, "rho_per_skip entry 2 must be a number"),
    ({"scale_controlnet": "no"}, "scale_controlnet must be true or false"),
    ({"rho_per_skip": 0.8}, "rho_per_skip must be a comma-separated list"),
    ({"rho_per_skip": [0.8] * 8 + [float("nan")]}, "rho_per_skip entry 9 must be finite"),
])
def test_bad_values_raise_before_sampling(kwargs, fragment):
    arguments = {"rho_bottom": 0.8, "rho_top": 1.0, "start_percent": 0.0, "end_percent": 1.0,
                 "rho_per_skip": "", "scale_controlnet": True, **kwargs}
    base = StubPatcher(FakeUNet(9))
    with pytest.raises(ValueError) as info:
        nodes.SkipTuningAdvanced().patch(base, **arguments)
    assert isinstance(info.value, nodes.SkipTuningError)
    assert fragment in str(info.value)
    assert base.patches == []


def test_bad_values_raise_even_for_models_without_skips():
    with pytest.raises(nodes.SkipTuningError, match="rho_bottom must be finite"):
        nodes.SkipTuning().patch(StubPatcher(nn.Linear(2, 2)), math.nan, 1.0)


def test_models_without_long_skips_pass_through(caplog):
    base = StubPatcher(nn.Linear(2, 2))
    with caplog.at_level(logging.WARNING, logger="skip_tuning"):
        (result,) = nodes.SkipTuningAdvanced().patch(base, 0.5, 1.0, 0.0, 1.0, "1,1,1", False)
    assert result is base and base.patches == []
    assert any("SimpleNamespace (Linear) has no long skip connections (U-Net or U-ViT)" in record.message
               for record in caplog.records)


def test_scale_controlnet_false_without_wrappers_warns_and_scales(caplog):
    base = StubPatcher(FakeUNet(3))
    with caplog.at_level(logging.WARNING, logger="skip_tuning"):
        (patched,) = nodes.SkipTuningAdvanced().patch(base, 0.5, 1.0, 0.0, 1.0, "", False)
    assert any("scale_controlnet=false is not available" in record.message for record in caplog.records)
    hsp = torch.ones(1, 2, 2, 2)
    residuals = [torch.ones_like(hsp)] * 3
    out = run_patch(patched, 0, hsp, **{nodes.CONTROL_OUTPUTS_KEY: residuals})
    assert torch.equal(out, hsp * 0.5), "falls back to scaling the residual with the skip"


def test_scale_controlnet_false_registers_the_snapshot_wrapper_once(monkeypatch):
    monkeypatch.setattr(nodes, "model_wrapper_type", lambda model, name: name.lower())
    base = WrapperStubPatcher(FakeUNet(3))
    node = nodes.SkipTuningAdvanced()
    (first,) = node.patch(base, 0.5, 1.0, 0.0, 1.0, "", False)
    (second,) = node.patch(first, 0.7, 1.0, 0.0, 1.0, "", False)
    assert base.wrappers == {}
    assert first.wrappers["diffusion_model"][nodes.CONTROL_WRAPPER_KEY] == [nodes.control_snapshot_wrapper]
    assert second.wrappers["diffusion_model"][nodes.CONTROL_WRAPPER_KEY] == [nodes.control_snapshot_wrapper]
    (on,) = node.patch(base, 0.5, 1.0, 0.0, 1.0, "", True)
    (neutral,) = node.patch(base, 1.0, 1.0, 0.0, 1.0, "", False)
    assert on.wrappers == {} and neutral.wrappers == {}, "the wrapper is only added when it is needed"

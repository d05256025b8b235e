"""The pack's entry point, the nodes' V3 schema, and what the nodes do (with a stub model patcher).

The entry-point and behaviour tests need no ComfyUI: the stub has no ``get_model_object`` and no
wrappers, like ComfyUI builds from mid-2024, and ``apply_skip_tuning`` is what the nodes execute.
The schema tests read the nodes as a real ComfyUI does (skipped without one). The same behaviour
inside a real ComfyUI is covered by test_comfyui_integration.py.
"""

import asyncio
import copy
import logging
import math
import os
import runpy
import subprocess
import sys
from types import SimpleNamespace

import comfy_helpers
import pytest
import torch
from torch import nn

from skip_tuning import DEFAULT_RHO_BOTTOM, DEFAULT_RHO_TOP

pack = comfy_helpers.load_pack()
nodes = pack.skip_tuning.comfyui.adapter


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


# --- entry point ---------------------------------------------------------------------------------------------


def test_entry_point_is_the_v3_extension_and_needs_no_comfyui_to_import():
    assert asyncio.iscoroutinefunction(pack.comfy_entrypoint)
    assert pack.WEB_DIRECTORY == "./js"
    # ComfyUI reads V1 mappings first and would then never call comfy_entrypoint.
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS") and not hasattr(pack, "NODE_DISPLAY_NAME_MAPPINGS")
    # A fresh interpreter without ComfyUI: the pack and its adapters import, nothing of ComfyUI does.
    code = ("import sys, comfy_helpers; pack = comfy_helpers.load_pack(); "
            "assert callable(pack.skip_tuning.comfyui.adapter.apply_skip_tuning) and callable(pack.comfy_entrypoint); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('comfy', 'comfy_api', 'nodes')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=comfy_helpers.TESTS_DIR, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "COMFYUI_PATH": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_entry_point_imported_as_a_plain_module_imports_nothing():
    namespace = runpy.run_path(str(comfy_helpers.REPO_ROOT / "__init__.py"))
    assert "NODE_CLASS_MAPPINGS" not in namespace and "skip_tuning" not in namespace
    assert namespace["WEB_DIRECTORY"] == "./js"


# --- the V3 schema, inside a real ComfyUI ----------------------------------------------------------------------

NODE_IDS = ["SkipTuning", "SkipTuningAdvanced", "SkipTuningCompare", "ResidualTuning"]
DISPLAY_NAMES = ["Skip Tuning", "Skip Tuning (Advanced)", "Skip Tuning Compare", "Residual Tuning (experimental)"]


@pytest.fixture(scope="module")
def node_info(comfy_nodes):
    """What ComfyUI's /object_info serves for each node (its V1 view of the V3 schema), by node id."""
    extension = asyncio.run(pack.comfy_entrypoint())
    listed = asyncio.run(extension.get_node_list())
    assert [node.GET_SCHEMA().node_id for node in listed] == NODE_IDS
    assert listed == comfy_nodes.NODES
    return {node.GET_SCHEMA().node_id: node.GET_NODE_INFO_V1() for node in listed}


def builtin_category(module, node):
    import importlib

    return getattr(importlib.import_module(module), node).CATEGORY


def test_nodes_sit_beside_freeu_and_ksampler_in_this_comfyui(node_info):
    freeu = builtin_category("comfy_extras.nodes_freelunch", "FreeU")
    assert freeu in ("model_patches/unet", "model/patch/unet")  # 0.3.64, 0.33.0
    assert node_info["SkipTuning"]["category"] == node_info["SkipTuningAdvanced"]["category"] == freeu
    assert node_info["ResidualTuning"]["category"] == freeu.rsplit("/", 1)[0] + "/dit"
    assert node_info["SkipTuningCompare"]["category"] == builtin_category("nodes", "KSampler")


def test_names_descriptions_and_outputs(node_info):
    for node_id, display in zip(NODE_IDS, DISPLAY_NAMES):
        info = node_info[node_id]
        assert info["name"] == node_id and info["display_name"] == display
        # The description and the tooltips open over the canvas: one short sentence each (details: node help).
        assert 40 < len(info["description"]) <= 120 and info["description"].count(". ") == 0, node_id
        for section in info["input"].values():
            for name, (kind, options) in section.items():
                assert options.get("tooltip") or kind in ("CONDITIONING", "VAE", "COMBO") or name == "cfg", \
                    f"{node_id}.{name} has no tooltip"
                tooltip = options.get("tooltip", "")
                assert len(tooltip) <= 110 and tooltip.replace("e.g. ", "").count(". ") == 0, (node_id, tooltip)
    for node_id in ("SkipTuning", "SkipTuningAdvanced", "ResidualTuning"):
        assert node_info[node_id]["output"] == ["MODEL"] and all(node_info[node_id]["output_tooltips"])
    # Saved workflows link the Compare outputs by index and show these names.
    assert node_info["SkipTuningCompare"]["output"] == ["IMAGE", "IMAGE", "IMAGE"]
    assert node_info["SkipTuningCompare"]["output_name"] == ["grid", "images", "differences"]
    assert [node_info[node_id]["experimental"] for node_id in NODE_IDS] == [False, False, False, True]


def test_inputs_keep_the_names_order_and_defaults_saved_workflows_use(node_info):
    order = {node_id: node_info[node_id]["input_order"] for node_id in NODE_IDS}
    assert order["SkipTuning"] == {"required": ["model", "rho_bottom", "rho_top"]}
    assert order["SkipTuningAdvanced"] == {"required": ["model", "rho_bottom", "rho_top", "start_percent",
                                                        "end_percent"],
                                           "optional": ["rho_per_skip", "scale_controlnet"]}
    assert order["SkipTuningCompare"] == {"required": ["model", "positive", "negative", "latent", "vae", "seed",
                                                       "sampler_name", "scheduler", "cfg", "steps_list",
                                                       "rho_bottom_list", "rho_top"]}
    assert order["ResidualTuning"] == {"required": ["model", "rho_first", "rho_last", "start_depth",
                                                    "start_percent", "end_percent"]}
    for node_id in ("SkipTuning", "SkipTuningAdvanced"):
        required = node_info[node_id]["input"]["required"]
        for name, default in (("rho_bottom", DEFAULT_RHO_BOTTOM), ("rho_top", DEFAULT_RHO_TOP)):
            kind, spec = required[name]
            assert kind == "FLOAT"
            assert (spec["min"], spec["max"], spec["step"], spec["default"], spec["display"]) == (
                0.0, 2.0, 0.01, default, "slider")
    advanced = node_info["SkipTuningAdvanced"]["input"]
    for name, default in (("start_percent", 0.0), ("end_percent", 1.0)):
        kind, spec = advanced["required"][name]
        assert kind == "FLOAT" and (spec["min"], spec["max"], spec["default"]) == (0.0, 1.0, default)
    assert advanced["optional"]["rho_per_skip"][0] == "STRING"
    assert advanced["optional"]["rho_per_skip"][1]["default"] == ""
    assert advanced["optional"]["scale_controlnet"][0] == "BOOLEAN"
    assert advanced["optional"]["scale_controlnet"][1]["default"] is True
    compare = node_info["SkipTuningCompare"]["input"]["required"]
    assert compare["seed"][1]["control_after_generate"] is True
    assert (compare["steps_list"][1]["default"], compare["rho_bottom_list"][1]["default"]) == (
        "4, 8, 16", "1.0, 0.9, 0.8")
    residual = node_info["ResidualTuning"]["input"]["required"]
    assert residual["rho_first"][1]["default"] == 0.99 and residual["rho_last"][1]["default"] == 1.0


def test_search_aliases_where_this_comfyui_has_them(node_info, comfy_nodes):
    import dataclasses

    from comfy_api.latest import io

    if "search_aliases" not in {field.name for field in dataclasses.fields(io.Schema)}:
        assert all(not node_info[node_id].get("search_aliases") for node_id in NODE_IDS)
        pytest.skip("this ComfyUI has no search aliases (added after 0.3.64)")
    aliases = {node_id: comfy_nodes.NODES[k].GET_SCHEMA().search_aliases for k, node_id in enumerate(NODE_IDS)}
    assert {"freeu", "skip connection", "few steps"} <= set(aliases["SkipTuning"])
    assert {"freeu", "skip connection", "sampling window"} <= set(aliases["SkipTuningAdvanced"])
    assert "xy plot" in aliases["SkipTuningCompare"] and "dit" in aliases["ResidualTuning"]


@pytest.mark.parametrize("node_id, inputs, fragment", [
    ("SkipTuning", {"rho_bottom": math.nan, "rho_top": 1.0}, "rho_bottom must be finite"),
    ("SkipTuning", {"rho_bottom": 0.8, "rho_top": 2.5}, "rho_top must be between 0.0 and 2.0"),
    ("SkipTuningAdvanced", {"start_percent": 0.9, "end_percent": 0.1}, "must not be after end_percent"),
    ("SkipTuningAdvanced", {"end_percent": math.nan}, "end_percent must be between 0 and 1"),
    ("SkipTuningAdvanced", {"rho_per_skip": "0.8, x"}, "rho_per_skip entry 2 must be a number"),
    ("SkipTuningCompare", {"steps_list": "4, eight"}, "entry 2 ('eight') is not a whole number"),
    ("SkipTuningCompare", {"rho_top": math.inf}, "rho_top must be finite"),
    ("ResidualTuning", {"rho_first": -0.1}, "rho_first must be between 0.0 and 2.0"),
    ("ResidualTuning", {"start_percent": 0.5, "end_percent": 0.2}, "must not be after end_percent"),
])
def test_validation_names_the_problem_before_anything_runs(comfy_nodes, node_id, inputs, fragment):
    node = comfy_nodes.NODES[NODE_IDS.index(node_id)]
    message = node.validate_inputs(**inputs)
    assert isinstance(message, str) and fragment in message


def test_validation_accepts_good_and_linked_values(comfy_nodes):
    by_id = dict(zip(NODE_IDS, comfy_nodes.NODES))
    assert by_id["SkipTuning"].validate_inputs(rho_bottom=0.8, rho_top=1.0) is True
    assert by_id["SkipTuning"].validate_inputs() is True  # both fed by links: checked when the node runs
    assert by_id["SkipTuningAdvanced"].validate_inputs(0.8, 1.0, 0.2, 0.8, "0.5, 1, 1") is True
    assert by_id["SkipTuningAdvanced"].validate_inputs(start_percent=0.5) is True
    assert by_id["SkipTuningCompare"].validate_inputs(steps_list="4, 8", rho_bottom_list="1, 0.5", rho_top=1.0) is True
    assert by_id["ResidualTuning"].validate_inputs(0.99, 1.0, 0.0, 1.0) is True


# --- behaviour -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [12, 9, 6, 1])
def test_simple_node_applies_the_formula(n):
    base = StubPatcher(FakeUNet(n))
    patched = nodes.apply_skip_tuning(base, 0.6, 1.1)
    assert patched is not base and base.patches == [], "the input model must not change"
    assert len(patched.patches) == 1
    for i in range(n):
        rho = 0.6 if n == 1 else 0.6 + (1.1 - 0.6) * i / (n - 1)
        hsp = torch.randn(1, 4, 2, 2)
        out = run_patch(patched, i, hsp.clone(), sigma=5.0)
        assert torch.allclose(out, hsp * rho, rtol=1e-6, atol=0), i


def test_advanced_per_skip_list_and_window():
    base = StubPatcher(FakeUNet(6))
    patched = nodes.apply_skip_tuning(base, 0.8, 1.0, 0.2, 0.6, "0.5, 0.6, 0.7, 0.8, 0.9, 1.0", True)
    hsp = torch.ones(1, 4, 2, 2)
    # FakeSampling: start 0.2 -> sigma 8, end 0.6 -> sigma 4.
    assert torch.equal(run_patch(patched, 1, hsp, sigma=6.0), hsp * 0.6)
    assert torch.equal(run_patch(patched, 1, hsp, sigma=8.0), hsp * 0.6)
    assert torch.equal(run_patch(patched, 1, hsp, sigma=9.0), hsp)
    assert torch.equal(run_patch(patched, 1, hsp, sigma=3.9), hsp)


def test_full_window_has_no_gate():
    patched = nodes.apply_skip_tuning(StubPatcher(FakeUNet(2)), 0.5, 1.0, 0.0, 1.0)
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
        nodes.apply_skip_tuning(base, **arguments)
    assert isinstance(info.value, nodes.SkipTuningError)
    assert fragment in str(info.value)
    assert base.patches == []


def test_bad_values_raise_even_for_models_without_skips():
    with pytest.raises(nodes.SkipTuningError, match="rho_bottom must be finite"):
        nodes.apply_skip_tuning(StubPatcher(nn.Linear(2, 2)), math.nan, 1.0)


def test_models_without_long_skips_pass_through(caplog):
    base = StubPatcher(nn.Linear(2, 2))
    with caplog.at_level(logging.WARNING, logger="skip_tuning"):
        result = nodes.apply_skip_tuning(base, 0.5, 1.0, 0.0, 1.0, "1,1,1", False)
    assert result is base and base.patches == []
    assert any("SimpleNamespace (Linear) has no long skip connections (U-Net or U-ViT)" in record.message
               for record in caplog.records)


def test_scale_controlnet_false_without_wrappers_warns_and_scales(caplog):
    base = StubPatcher(FakeUNet(3))
    with caplog.at_level(logging.WARNING, logger="skip_tuning"):
        patched = nodes.apply_skip_tuning(base, 0.5, 1.0, 0.0, 1.0, "", False)
    assert any("scale_controlnet=false is not available" in record.message for record in caplog.records)
    hsp = torch.ones(1, 2, 2, 2)
    residuals = [torch.ones_like(hsp)] * 3
    out = run_patch(patched, 0, hsp, **{nodes.CONTROL_OUTPUTS_KEY: residuals})
    assert torch.equal(out, hsp * 0.5), "falls back to scaling the residual with the skip"


def test_scale_controlnet_false_registers_the_snapshot_wrapper_once(monkeypatch):
    monkeypatch.setattr(nodes, "model_wrapper_type", lambda model, name: name.lower())
    base = WrapperStubPatcher(FakeUNet(3))
    first = nodes.apply_skip_tuning(base, 0.5, 1.0, 0.0, 1.0, "", False)
    second = nodes.apply_skip_tuning(first, 0.7, 1.0, 0.0, 1.0, "", False)
    assert base.wrappers == {}
    assert first.wrappers["diffusion_model"][nodes.CONTROL_WRAPPER_KEY] == [nodes.control_snapshot_wrapper]
    assert second.wrappers["diffusion_model"][nodes.CONTROL_WRAPPER_KEY] == [nodes.control_snapshot_wrapper]
    on = nodes.apply_skip_tuning(base, 0.5, 1.0, 0.0, 1.0, "", True)
    neutral = nodes.apply_skip_tuning(base, 1.0, 1.0, 0.0, 1.0, "", False)
    assert on.wrappers == {} and neutral.wrappers == {}, "the wrapper is only added when it is needed"

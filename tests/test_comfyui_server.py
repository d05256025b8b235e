"""ComfyUI's own server (main.py --cpu) with the extension in custom_nodes.

One server for the session (fixture ``comfyui_server`` in conftest.py). The graphs use the
test-only nodes of tests/comfy_test_nodes, so no weights file is needed.
"""

import math
import time

import pytest

from skip_tuning import DEFAULT_RHO_BOTTOM, DEFAULT_RHO_TOP

pytestmark = [pytest.mark.comfyui, pytest.mark.comfyui_server]


def graph(model_node="SkipTuning", model_inputs=None, kind="sd1", steps=3, dtype="float32"):
    """Tiny model -> [Skip Tuning node] -> KSampler -> latent stats."""
    for_model = "hunyuan_dit" if kind == "hunyuan_dit" else "unet"
    nodes = {
        "1": {"class_type": "SkipTuningTestTinyModel", "inputs": {"kind": kind, "dtype": dtype, "seed": 0}},
        "3": {"class_type": "SkipTuningTestConditioning", "inputs": {"seed": 1, "for_model": for_model}},
        "4": {"class_type": "SkipTuningTestConditioning", "inputs": {"seed": 2, "for_model": for_model}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0] if model_node else ["1", 0], "seed": 0, "steps": steps, "cfg": 3.0,
            "sampler_name": "euler", "scheduler": "simple", "positive": ["3", 0], "negative": ["4", 0],
            "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "SkipTuningTestLatentStats", "inputs": {"samples": ["6", 0]}},
    }
    if model_node:
        nodes["2"] = {"class_type": model_node, "inputs": {"model": ["1", 0], **(model_inputs or {})}}
    return nodes


def stats(entry):
    assert entry["status"]["status_str"] == "success", entry["status"]
    return entry["outputs"]["7"]["skip_tuning_stats"][0]


def execution_error(entry):
    assert entry["status"]["status_str"] == "error", entry["status"]
    errors = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    assert len(errors) == 1
    executed = {node for event, data in entry["status"]["messages"] if event == "executed" for node in [data]}
    return errors[0], executed


def test_object_info_lists_the_nodes_beside_freeu_with_sliders(comfyui_server):
    info = comfyui_server.get_json("/object_info")
    nodes = {"SkipTuning": "Skip Tuning", "SkipTuningAdvanced": "Skip Tuning (Advanced)",
             "SkipTuningCompare": "Skip Tuning Compare", "ResidualTuning": "Residual Tuning (experimental)"}
    missing = set(nodes) - set(info)
    assert not missing, f"{missing} missing; server log:\n{comfyui_server.log()[-3000:]}"
    freeu = info["FreeU"]["category"]
    for name, display in nodes.items():
        node = info[name]
        assert node["display_name"] == display
        assert node["python_module"] == "custom_nodes.skip-tuning"
        assert node["experimental"] is (name == "ResidualTuning")
        if "search_aliases" in info["FreeU"]:  # ComfyUIs with search aliases (after 0.3.64)
            assert node["search_aliases"], name
    for name in ("SkipTuning", "SkipTuningAdvanced"):
        node = info[name]
        assert node["category"] == freeu, "beside FreeU (0.3.64: model_patches/unet, 0.33.0: model/patch/unet)"
        assert node["output"] == ["MODEL"]
        assert "Skip-Tuning" in node["description"] or "Skip Tuning" in node["description"]
        required = node["input"]["required"]
        for rho, default in (("rho_bottom", DEFAULT_RHO_BOTTOM), ("rho_top", DEFAULT_RHO_TOP)):
            kind, options = required[rho]
            assert kind == "FLOAT"
            assert options["display"] == "slider"
            assert (options["min"], options["max"], options["step"], options["default"]) == (0.0, 2.0, 0.01, default)
            assert options["tooltip"]
        assert required["model"][1]["tooltip"]
    if "search_aliases" in info["FreeU"]:
        assert "freeu" in info["SkipTuning"]["search_aliases"]
    assert info["ResidualTuning"]["category"] == freeu.rsplit("/", 1)[0] + "/dit"
    assert info["SkipTuningCompare"]["category"] == info["KSampler"]["category"]
    advanced = info["SkipTuningAdvanced"]["input"]
    assert {"start_percent", "end_percent"} <= set(advanced["required"])
    assert {"rho_per_skip", "scale_controlnet"} <= set(advanced["optional"])
    failures = [line for line in comfyui_server.log().splitlines()
                if ("Cannot import" in line or "IMPORT FAILED" in line or "comfy_entrypoint" in line)
                and "skip" in line]
    assert failures == []


def test_prompt_through_the_node_runs_to_completion(comfyui_server):
    plain = stats(comfyui_server.run_prompt(graph(model_node=None)))
    tuned = stats(comfyui_server.run_prompt(graph(model_inputs={"rho_bottom": 0.7, "rho_top": 1.0})))
    neutral = stats(comfyui_server.run_prompt(graph(model_inputs={"rho_bottom": 1.0, "rho_top": 1.0})))
    for result in (plain, tuned, neutral):
        assert result["shape"] == [1, 4, 8, 8] and result["finite"]
    assert neutral["values"] == plain["values"], "rho = 1 reproduces the unpatched sample"
    assert tuned["values"] != plain["values"]


def test_prompt_with_a_hunyuan_dit_type_model(comfyui_server):
    plain = stats(comfyui_server.run_prompt(graph(model_node=None, kind="hunyuan_dit")))
    tuned = stats(comfyui_server.run_prompt(graph(model_inputs={"rho_bottom": 0.7, "rho_top": 1.0},
                                                  kind="hunyuan_dit")))
    neutral = stats(comfyui_server.run_prompt(graph(model_inputs={"rho_bottom": 1.0, "rho_top": 1.0},
                                                    kind="hunyuan_dit")))
    for result in (plain, tuned, neutral):
        assert result["shape"] == [1, 4, 8, 8] and result["finite"]
    assert neutral["values"] == plain["values"] and tuned["values"] != plain["values"]
    assert "(HunyuanDiT), 19 long skips" in comfyui_server.log()
    inputs = {"rho_bottom": 0.8, "rho_top": 1.0, "start_percent": 0.0, "end_percent": 1.0, "rho_per_skip": "1, 1"}
    error, _ = execution_error(comfyui_server.run_prompt(graph("SkipTuningAdvanced", inputs, kind="hunyuan_dit")))
    assert "this model has 19 long skips" in error["exception_message"]


def test_advanced_node_in_a_prompt(comfyui_server):
    inputs = {"rho_bottom": 0.8, "rho_top": 1.0, "start_percent": 0.2, "end_percent": 0.8,
              "rho_per_skip": "0.6, 0.7, 0.8, 0.9, 1.0, 1.0", "scale_controlnet": False}
    result = stats(comfyui_server.run_prompt(graph("SkipTuningAdvanced", inputs, kind="sdxs", dtype="bfloat16")))
    assert result["finite"]
    # Optional inputs may be left out by API clients.
    inputs = {"rho_bottom": 0.8, "rho_top": 1.0, "start_percent": 0.0, "end_percent": 1.0}
    assert stats(comfyui_server.run_prompt(graph("SkipTuningAdvanced", inputs, kind="sdxl")))["finite"]


def test_model_without_long_skips_passes_through(comfyui_server, comfyui_path):
    if "class Flux(" not in (comfyui_path / "comfy" / "supported_models.py").read_text():
        pytest.skip("this ComfyUI predates Flux (2024-08)")
    result = stats(comfyui_server.run_prompt(graph(model_inputs={"rho_bottom": 0.7, "rho_top": 1.0}, kind="flux")))
    assert result["shape"] == [1, 16, 8, 8] and result["finite"]
    assert "Flux" in comfyui_server.log() and "passed through unchanged" in comfyui_server.log()


@pytest.mark.parametrize("node, inputs, fragment", [
    ("SkipTuning", {"rho_bottom": math.nan, "rho_top": 1.0}, "rho_bottom must be finite"),
    ("SkipTuningAdvanced", {"rho_bottom": 0.8, "rho_top": 1.0, "start_percent": 0.9, "end_percent": 0.1},
     "must not be after end_percent"),
    ("SkipTuningAdvanced", {"rho_bottom": 0.8, "rho_top": 1.0, "start_percent": 0.0, "end_percent": 1.0,
                            "rho_per_skip": "0.8, 0.9, x"}, "rho_per_skip entry 3 must be a number"),
    ("SkipTuning", {"rho_bottom": 5.0, "rho_top": 1.0}, "rho_bottom must be between 0.0 and 2.0"),
    ("SkipTuning", {"rho_bottom": 0.8, "rho_top": -1.0}, "rho_top must be between 0.0 and 2.0"),
    ("SkipTuning", {"rho_bottom": math.inf, "rho_top": 1.0}, "rho_bottom must be finite"),
])
def test_bad_values_are_rejected_when_queued(comfyui_server, node, inputs, fragment):
    """The node's validate_inputs: the prompt is refused (HTTP 400) with the reason on the node."""
    status, body = comfyui_server.queue_prompt(graph(node, inputs))
    assert status == 400, body
    details = [error["details"] for error in body["node_errors"]["2"]["errors"]]
    assert details and all(fragment in detail for detail in details), details


def test_a_per_skip_list_that_does_not_fit_the_model_fails_before_sampling(comfyui_server):
    """The skip count is known only once the model is loaded: the node stops the prompt before KSampler."""
    inputs = {"rho_bottom": 0.8, "rho_top": 1.0, "start_percent": 0.0, "end_percent": 1.0,
              "rho_per_skip": "0.8, 0.9, 1.0"}
    error, executed = execution_error(comfyui_server.run_prompt(graph("SkipTuningAdvanced", inputs)))
    assert error["node_type"] == "SkipTuningAdvanced" and error["node_id"] == "2"
    assert "this model has 12 long skips" in error["exception_message"]
    assert "6" not in {data.get("node") for data in executed}, "KSampler must not run"


def test_warnings_reach_the_console_after_a_host_traceback(comfyui_server, comfyui_path):
    """A failed prompt makes ComfyUI print a traceback; the pack's later warnings still reach its console."""
    if "class Flux(" not in (comfyui_path / "comfy" / "supported_models.py").read_text():
        pytest.skip("this ComfyUI predates Flux (2024-08)")
    inputs = {"rho_bottom": 0.8, "rho_top": 1.0, "start_percent": 0.0, "end_percent": 1.0,
              "rho_per_skip": "0.7, 0.9"}
    execution_error(comfyui_server.run_prompt(graph("SkipTuningAdvanced", inputs)))
    after_traceback = len(comfyui_server.log())
    assert "Traceback" in comfyui_server.log()[:after_traceback]
    # A rho no other test uses, so ComfyUI's cache cannot skip the node.
    stats(comfyui_server.run_prompt(graph(model_inputs={"rho_bottom": 0.63, "rho_top": 1.0}, kind="flux")))
    assert "passed through unchanged" in comfyui_server.log()[after_traceback:]


def wait_for(condition, timeout, what, server):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen in {timeout} s:\n{server.log()[-3000:]}")
        time.sleep(0.05)


def test_cancel_stops_a_compare_sweep_within_a_step(comfyui_server, tmp_path):
    """POST /interrupt (the front end's Cancel) during a long sweep: at most one more model call starts,
    and the prompt ends as interrupted. Every model call is logged to a file by a test node."""
    calls = tmp_path / "model_calls.txt"
    calls.touch()
    nodes = {
        "1": {"class_type": "SkipTuningTestTinyModel", "inputs": {"kind": "koala", "dtype": "float32", "seed": 0}},
        "2": {"class_type": "SkipTuningTestCallLog", "inputs": {"model": ["1", 0], "path": str(calls)}},
        "3": {"class_type": "SkipTuningTestConditioning", "inputs": {"seed": 1}},
        "4": {"class_type": "SkipTuningTestConditioning", "inputs": {"seed": 2}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "SkipTuningTestVAE", "inputs": {}},
        "7": {"class_type": "SkipTuningCompare", "inputs": {
            "model": ["2", 0], "positive": ["3", 0], "negative": ["4", 0], "latent": ["5", 0], "vae": ["6", 0],
            "seed": 0, "sampler_name": "euler", "scheduler": "normal", "cfg": 2.0,
            "steps_list": "400, 400", "rho_bottom_list": "1.0, 0.8, 0.6", "rho_top": 1.0}},  # 2400 model calls
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
    }

    def count():
        return len(calls.read_text().splitlines())

    status, body = comfyui_server.queue_prompt(nodes)
    assert status == 200, body
    prompt_id = body["prompt_id"]
    try:
        wait_for(lambda: count() >= 5, 300, "the sweep's fifth model call", comfyui_server)
        status, _ = comfyui_server.request("POST", "/interrupt", {"prompt_id": prompt_id})
        assert status == 200
        at_interrupt = count()
        wait_for(lambda: comfyui_server.get_json(f"/history/{prompt_id}").get(prompt_id), 60,
                 "the end of the interrupted prompt", comfyui_server)
    finally:
        comfyui_server.request("POST", "/interrupt", {"prompt_id": prompt_id})  # never leave it running
    entry = comfyui_server.get_json(f"/history/{prompt_id}")[prompt_id]
    events = [event for event, _ in entry["status"]["messages"]]
    assert entry["status"]["status_str"] == "error" and "execution_interrupted" in events, entry["status"]
    assert count() - at_interrupt <= 1, f"{count() - at_interrupt} model calls after the interrupt"
    assert count() < 100, "the sweep ran on"

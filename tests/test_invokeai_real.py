"""The InvokeAI node in a real InvokeAI 6.14.2, over its HTTP API and in its workflow editor.

One server for the module: InvokeAI from PyPI in its own venv (tests/invokeai_real/setup_invokeai.py), started
headless on the CPU on 127.0.0.1 with a fresh root, the pack cloned into ``ROOT/nodes/`` and a tiny random-weight
SD1 diffusers folder installed through its model importer. Graphs are 64x64, 4 steps. A test-only node
(tests/invokeai_test_nodes) picks the denoise path of a run (``USE_MODULAR_DENOISE``), so both paths run on it.

Proven: the node registers with every input of the core denoise; rho 1 gives the core node's image bit for bit and
rho 0.8 changes it, on both paths; the core denoise afterwards gives its first image again (nothing left on the
shared U-Net), also after a failed run (hooks attached, then an error) and a cancelled one; a queue batch of two
seeds; FreeU on the same U-Net stacks; on both paths, a tiny SDXL model (9 skips), an inpaint under a denoise
mask (the kept latents are the init latents bit for bit, tuned or not), a ControlNet, a T2I-Adapter and a LoRA
(each installed through the importer): rho 1 is the core image, rho 0.8 changes it, the core afterwards is
unchanged; bad input is refused when queued; a non-U-Net model is refused with a clear message; the error reaches
the failed queue item and InvokeAI's log; the Custom Nodes install clones the pack, loads it and imports the
example workflow.

Skips with the reason when the venv is missing (under CI=true that fails, tests/conftest.py).
"""

from __future__ import annotations

import json
import re
import time

import pytest
from invokeai_real.server import (
    PACK,
    REPO_ROOT,
    SETUP,
    InvokeAIServer,
    invokeai_venv,
    missing_requirement,
    working_tree_snapshot,
)
from invokeai_real.setup_invokeai import EXTRAS

NODE = "skip_tuning_denoise_latents"
TITLE = "Denoise - SD1.5, SDXL + Skip Tuning"
CORE = "denoise_latents"
TEST_NODES = REPO_ROOT / "tests" / "invokeai_test_nodes"
EXAMPLE_WORKFLOW = REPO_ROOT / "skip_tuning" / "invokeai" / "workflows" / "skip_tuning_txt2img.json"
TUNING_INPUTS = ("rho_bottom", "rho_top", "rho_per_skip", "skip_tuning_start", "skip_tuning_end")


@pytest.fixture(scope="session")
def invokeai(tmp_path_factory):
    """The running server, its tiny SD1 model installed: ``(server, model identifier)``."""
    reason = missing_requirement()
    if reason:
        pytest.skip(reason)
    import subprocess

    work = tmp_path_factory.mktemp("invokeai")
    model = work / "tiny-sd1"
    subprocess.run([str(invokeai_venv() / "bin" / "python"), str(SETUP), "model", str(model)], check=True,
                   capture_output=True, timeout=600)
    server = InvokeAIServer(work / "root", {"skip_tuning_test_nodes": TEST_NODES})
    started = time.monotonic()
    try:
        server.start(working_tree_snapshot(work / "source"))
        print(f"InvokeAI started in {time.monotonic() - started:.0f} s")
        config = server.install_model(model)
        identifier = {name: config[name] for name in ("key", "hash", "name", "base", "type")}
        server.pack_source = work / "source" / PACK
        server.model_path = model
        yield server, identifier
    finally:
        server.stop()


def txt2img(model: dict, *, node: str = NODE, seed: int = 1, steps: int = 4, modular: bool = False,
            freeu: bool = False, **denoise) -> dict:
    """A txt2img graph (64x64) through ``node``; ``denoise`` sets its inputs (Skip Tuning ones included). An SDXL
    ``model`` gets SDXL's loader and prompt nodes."""
    sdxl = model["base"] == "sdxl"
    nodes = {
        "model": {"type": "sdxl_model_loader" if sdxl else "main_model_loader", "model": model},
        "positive": {"type": "sdxl_compel_prompt" if sdxl else "compel", "prompt": "a red cube on a table"},
        "negative": {"type": "sdxl_compel_prompt" if sdxl else "compel", "prompt": ""},
        "noise": {"type": "noise", "seed": seed, "width": 64, "height": 64, "use_cpu": True},
        "path": {"type": "skip_tuning_test_denoise_path", "modular": modular},
        "denoise": {"type": node, "steps": steps, "cfg_scale": 5.0, "scheduler": "euler", **denoise},
        "decode": {"type": "l2i", "is_intermediate": False},
    }
    edges = [("model", "clip", "positive", "clip"), ("model", "clip", "negative", "clip"),
             ("positive", "conditioning", "denoise", "positive_conditioning"),
             ("negative", "conditioning", "denoise", "negative_conditioning"),
             ("noise", "noise", "path", "noise"), ("path", "latents", "denoise", "noise"),
             ("denoise", "latents", "decode", "latents"), ("model", "vae", "decode", "vae")]
    if sdxl:
        edges += [("model", "clip2", "positive", "clip2"), ("model", "clip2", "negative", "clip2")]
    if freeu:
        nodes["freeu"] = {"type": "freeu", "b1": 1.2, "b2": 1.4, "s1": 0.9, "s2": 0.2}
        edges += [("model", "unet", "freeu", "unet"), ("freeu", "unet", "denoise", "unet")]
    elif "unet" not in denoise:
        edges.append(("model", "unet", "denoise", "unet"))
    graph = {"id": f"skip-tuning-test-{time.monotonic_ns()}", "nodes": {}, "edges": []}
    return extend(graph, nodes, edges)


def extend(graph: dict, nodes: dict, edges: list) -> dict:
    """``graph`` with ``nodes`` added and ``edges`` (source node, field, destination node, field) connected, each
    in place of the edge that fed its destination before."""
    for node_id, fields in nodes.items():
        graph["nodes"][node_id] = {**fields, "id": node_id, "use_cache": False}
    for a, b, c, d in edges:
        destination = {"node_id": c, "field": d}
        graph["edges"] = [edge for edge in graph["edges"] if edge["destination"] != destination]
        graph["edges"].append({"source": {"node_id": a, "field": b}, "destination": destination})
    return graph


def run(server, graph) -> dict:
    (item_id,) = server.enqueue(graph)
    return server.wait(item_id)


def image(server, graph):
    return server.image(run(server, graph), "decode")


def same(a, b) -> bool:
    return a.size == b.size and a.tobytes() == b.tobytes()


@pytest.fixture(scope="session")
def baseline(invokeai):
    """The core denoise's image before any Skip Tuning run, per path: what every later core run must match."""
    server, model = invokeai
    return {modular: image(server, txt2img(model, node=CORE, modular=modular)) for modular in (False, True)}


def assert_core_unchanged(invokeai, baseline, modular=False):
    server, model = invokeai
    assert same(image(server, txt2img(model, node=CORE, modular=modular)), baseline[modular]), \
        "the core denoise changed: something was left on the shared U-Net"


# --- registration ----------------------------------------------------------------------------------------------


def test_node_is_registered_with_every_core_input(invokeai):
    server, _ = invokeai
    schemas = server.get("/openapi.json")["components"]["schemas"]
    ours = schemas["SkipTuningDenoiseLatentsInvocation"]
    core = schemas["DenoiseLatentsInvocation"]
    assert set(core["properties"]) - {"type"} <= set(ours["properties"])
    assert ours["properties"]["type"]["default"] == NODE
    assert ours["title"] == TITLE
    assert ours["classification"] == "beta" and ours["node_pack"] == PACK
    for name in ("rho_bottom", "rho_top"):
        field = ours["properties"][name]
        assert (field["default"], field["minimum"], field["maximum"]) == (1.0, 0.0, 2.0)
        assert "deepest" in field["description"] or "highest-resolution" in field["description"]
    assert ours["properties"]["rho_per_skip"]["default"] == ""
    window = [ours["properties"][name] for name in ("skip_tuning_start", "skip_tuning_end")]
    assert [(field["default"], field["minimum"], field["maximum"]) for field in window] == [(0.0, 0, 1), (1.0, 0, 1)]
    # The model input takes a UNetField only: FLUX and SD3 loaders give a TransformerField, not offered here.
    assert "UNetField" in json.dumps(ours["properties"]["unet"])
    assert "Loaded 2 node packs" in server.log() or f"Loading node pack {PACK}" in server.log()
    assert "Failed to load node pack" not in server.log()


# --- images ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("modular", [False, True], ids=["default_path", "modular_path"])
def test_rho_1_is_the_core_image_and_rho_0_8_changes_it(invokeai, baseline, modular):
    server, model = invokeai
    assert same(image(server, txt2img(model, modular=modular)), baseline[modular])
    assert same(image(server, txt2img(model, modular=modular, rho_per_skip=", ".join(["1"] * 12))),
                baseline[modular])
    tuned = image(server, txt2img(model, modular=modular, rho_bottom=0.8))
    assert not same(tuned, baseline[modular])
    # Deterministic: the same settings give the same tuned image; a window changes it again.
    assert same(image(server, txt2img(model, modular=modular, rho_bottom=0.8)), tuned)
    windowed = image(server, txt2img(model, modular=modular, rho_bottom=0.8, skip_tuning_start=0.5))
    assert not same(windowed, tuned) and not same(windowed, baseline[modular])
    assert_core_unchanged(invokeai, baseline, modular)
    assert f"{'modular' if modular else 'default'}" in server.log()


def test_both_paths_tune_alike(invokeai):
    """The two paths differ inside InvokeAI, not in the tuning: each one's tuned image differs from its own core
    image by the same kind of change, and the tuning line in the log names the same factors."""
    server, model = invokeai
    log_before = len(server.log())
    for modular in (False, True):
        image(server, txt2img(model, modular=modular, rho_bottom=0.9, rho_top=1.1))
    lines = [line for line in server.log()[log_before:].splitlines() if "Skip Tuning: UNet2DConditionModel" in line]
    assert len(lines) == 2 and "12 long skips" in lines[0]
    assert lines[0].split("-->")[-1] == lines[1].split("-->")[-1]


def test_a_batch_of_two_seeds(invokeai, baseline):
    server, model = invokeai
    data = [[{"node_path": "noise", "field_name": "seed", "items": [21, 22]}]]
    tuned_ids = server.enqueue(txt2img(model, rho_bottom=0.8), data)
    core_ids = server.enqueue(txt2img(model, node=CORE), data)
    assert len(tuned_ids) == len(core_ids) == 2
    tuned = [server.image(server.wait(item), "decode") for item in tuned_ids]
    core = [server.image(server.wait(item), "decode") for item in core_ids]
    assert not same(tuned[0], tuned[1]) and not same(core[0], core[1])
    assert not same(tuned[0], core[0]) and not same(tuned[1], core[1])
    assert_core_unchanged(invokeai, baseline)


def test_freeu_on_the_same_unet_stacks(invokeai, baseline):
    server, model = invokeai
    freeu_only = image(server, txt2img(model, node=CORE, freeu=True))
    assert not same(freeu_only, baseline[False])
    assert same(image(server, txt2img(model, freeu=True)), freeu_only)
    both = image(server, txt2img(model, freeu=True, rho_bottom=0.8))
    tuned_only = image(server, txt2img(model, rho_bottom=0.8))
    assert not same(both, freeu_only) and not same(both, tuned_only)
    assert same(image(server, txt2img(model, freeu=True, modular=True)),
                image(server, txt2img(model, node=CORE, freeu=True, modular=True)))
    assert_core_unchanged(invokeai, baseline)


# --- SDXL, inpainting, ControlNet, T2I-Adapter, LoRA ------------------------------------------------------------


@pytest.fixture(scope="session")
def extras(invokeai):
    """A tiny SDXL model and a ControlNet, T2I-Adapter and LoRA for the SD1 one, installed through the importer
    (built by setup_invokeai.py extras): their identifiers by EXTRAS' names."""
    import subprocess

    server, _ = invokeai
    out = server.model_path.parent / "extras"
    subprocess.run([str(invokeai_venv() / "bin" / "python"), str(SETUP), "extras", str(server.model_path), str(out)],
                   check=True, capture_output=True, timeout=600)
    installed = {name: server.install_model(out / path) for name, path in EXTRAS.items()}
    expected = {"sdxl": ("main", "sdxl"), "controlnet": ("controlnet", "sd-1"),
                "t2i_adapter": ("t2i_adapter", "sd-1"), "lora": ("lora", "sd-1")}
    assert {name: (config["type"], config["base"]) for name, config in installed.items()} == expected
    return {name: {field: config[field] for field in ("key", "hash", "name", "base", "type")}
            for name, config in installed.items()}


@pytest.fixture(scope="session")
def pictures(invokeai):
    """Uploaded inputs: a 64x64 image of random pixels (init and control image) and an inpaint mask whose right
    half is white (kept: create_denoise_mask keeps the image where the mask is white) and left half black."""
    import random

    from PIL import Image

    rng = random.Random(0)
    picture = Image.frombytes("RGB", (64, 64), bytes(rng.randrange(256) for _ in range(64 * 64 * 3)))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))
    return {"image": invokeai[0].upload_image(picture), "mask": invokeai[0].upload_image(mask)}


def results(item: dict, node_id: str) -> dict:
    session = item["session"]
    (output,) = (session["results"][name] for name in session["source_prepared_mapping"][node_id])
    return output


PATHS = {"default": False, "modular": True}


def test_sdxl_rho_1_is_the_core_image_and_rho_0_8_changes_it(invokeai, extras):
    server, _ = invokeai
    sdxl = extras["sdxl"]
    log_before = len(server.log())
    for modular in PATHS.values():
        core = image(server, txt2img(sdxl, node=CORE, modular=modular))
        assert same(image(server, txt2img(sdxl, modular=modular)), core)
        tuned = image(server, txt2img(sdxl, modular=modular, rho_bottom=0.8))
        assert not same(tuned, core)
        assert same(image(server, txt2img(sdxl, node=CORE, modular=modular)), core), "the SDXL U-Net kept a hook"
    tuning = [line for line in server.log()[log_before:].splitlines() if "Skip Tuning: UNet2DConditionModel" in line]
    assert len(tuning) == 4 and all("9 long skips" in line for line in tuning), tuning  # rho 1 and 0.8, per path
    # A factor list for the SD1 count fails on SDXL's 9 skips, with the count in the message.
    item = run(server, txt2img(sdxl, rho_per_skip=", ".join(["0.9"] * 12)))
    assert item["status"] == "failed" and "this model has 9 long skips" in item["error_message"]


@pytest.fixture(scope="session")
def init_latents(invokeai, pictures) -> str:
    """The uploaded image encoded once (its tensor's name): InvokeAI's image-to-latents samples the VAE's
    posterior without a seed, so each encode of it differs (much, with random VAE weights)."""
    server, model = invokeai
    graph = extend({"id": f"skip-tuning-test-{time.monotonic_ns()}", "nodes": {}, "edges": []}, {
        "model": {"type": "main_model_loader", "model": model},
        "init": {"type": "i2l", "image": {"image_name": pictures["image"]}, "fp32": True},
    }, [("model", "vae", "init", "vae")])
    return results(run(server, graph), "init")["latents"]["latents_name"]


def inpaint(model: dict, pictures: dict, init_latents: str, **settings) -> dict:
    """img2img from the encoded image (denoising_start 0.5) under the uploaded mask, with hashes of the init and
    the result latents on each side of the mask."""
    graph = txt2img(model, denoising_start=0.5, **settings)
    return extend(graph, {
        "init": {"type": "latents", "latents": {"latents_name": init_latents}},
        "mask": {"type": "create_denoise_mask", "mask": {"image_name": pictures["mask"]}, "fp32": True},
        "init_digest": {"type": "skip_tuning_test_latents_digest"},
        "digest": {"type": "skip_tuning_test_latents_digest"},
    }, [("model", "vae", "mask", "vae"),
        ("init", "latents", "denoise", "latents"), ("mask", "denoise_mask", "denoise", "denoise_mask"),
        ("init", "latents", "init_digest", "latents"), ("mask", "denoise_mask", "init_digest", "mask"),
        ("denoise", "latents", "digest", "latents"), ("mask", "denoise_mask", "digest", "mask")])


def inpainted(server, graph) -> tuple:
    """The image and the latent hashes (init, result) of an inpaint run."""
    item = run(server, graph)
    hashes = [json.loads(results(item, node)["value"]) for node in ("init_digest", "digest")]
    return server.image(item, "decode"), *hashes


@pytest.mark.parametrize("modular", PATHS.values(), ids=PATHS.keys())
def test_inpainting_rho_1_is_the_core_image_and_the_kept_region_stays(invokeai, baseline, pictures, init_latents,
                                                                      modular):
    server, model = invokeai
    core, init, core_latents = inpainted(server, inpaint(model, pictures, init_latents, node=CORE, modular=modular))
    # The mask splits the 8x8 latents in halves; the core keeps the white half's init latents and inpaints the rest.
    assert core_latents["high_count"] == core_latents["low_count"] == 4 * 8 * 4
    assert core_latents["high"] == init["high"] and core_latents["low"] != init["low"]
    image_1, _, latents_1 = inpainted(server, inpaint(model, pictures, init_latents, modular=modular))
    assert same(image_1, core) and latents_1 == core_latents
    tuned, _, tuned_latents = inpainted(server, inpaint(model, pictures, init_latents, modular=modular,
                                                        rho_bottom=0.8))
    assert not same(tuned, core)
    # Tuned, the kept half is still the init latents bit for bit, as the core keeps it; the inpainted half differs.
    assert tuned_latents["high"] == core_latents["high"] and tuned_latents["low"] != core_latents["low"]
    assert_core_unchanged(invokeai, baseline, modular)


def with_addition(graph: dict, kind: str, extras: dict, pictures: dict) -> dict:
    """``graph`` with a ControlNet or T2I-Adapter on the uploaded image feeding the denoise, or the LoRA applied
    to the U-Net and the text encoder (weight 1)."""
    picture = {"image_name": pictures["image"]}
    if kind == "controlnet":
        return extend(graph, {"addition": {"type": "controlnet", "image": picture, "control_model": extras[kind],
                                           "control_weight": 1.0}},
                      [("addition", "control", "denoise", "control")])
    if kind == "t2i_adapter":
        return extend(graph, {"addition": {"type": "t2i_adapter", "image": picture, "t2i_adapter_model": extras[kind],
                                           "weight": 1.0}},
                      [("addition", "t2i_adapter", "denoise", "t2i_adapter")])
    return extend(graph, {"addition": {"type": "lora_loader", "lora": extras[kind], "weight": 1.0}},
                  [("model", "unet", "addition", "unet"), ("model", "clip", "addition", "clip"),
                   ("addition", "unet", "denoise", "unet"), ("addition", "clip", "positive", "clip"),
                   ("addition", "clip", "negative", "clip")])


@pytest.mark.parametrize("kind", ["controlnet", "t2i_adapter", "lora"])
def test_control_adapters_and_lora_stack(invokeai, baseline, extras, pictures, kind):
    server, model = invokeai
    for modular in PATHS.values():
        core = image(server, with_addition(txt2img(model, node=CORE, modular=modular), kind, extras, pictures))
        assert not same(core, baseline[modular]), f"the {kind} changed nothing"
        assert same(image(server, with_addition(txt2img(model, modular=modular), kind, extras, pictures)), core)
        tuned = image(server, with_addition(txt2img(model, modular=modular, rho_bottom=0.8), kind, extras, pictures))
        assert not same(tuned, core) and not same(tuned, baseline[modular])
    assert_core_unchanged(invokeai, baseline)


# --- failures: nothing left behind, the message where the user sees it ----------------------------------------


def test_an_error_after_tuning_was_attached_leaves_the_unet_clean(invokeai, baseline):
    # The default path checks a per-step CFG list against the step count after create_pipeline tuned the U-Net.
    item = run(invokeai[0], txt2img(invokeai[1], rho_bottom=0.8, cfg_scale=[5.0, 5.0]))
    assert item["status"] == "failed" and "cfg_scale" in (item["error_message"] or "") + item["error_traceback"]
    assert_core_unchanged(invokeai, baseline)


def test_a_cancelled_run_leaves_the_unet_clean(invokeai, baseline):
    server, model = invokeai
    marker = "0.7654"
    (item_id,) = server.enqueue(txt2img(model, steps=400, rho_bottom=float(marker)))
    deadline = time.monotonic() + 120
    while f"rho bottom to top = [{marker}" not in server.log():  # the hooks are on: sampling has begun
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.1)
    server.send("PUT", f"/api/v1/queue/default/i/{item_id}/cancel")
    item = server.wait(item_id)
    assert item["status"] == "canceled"
    assert_core_unchanged(invokeai, baseline)


def test_a_skip_tuning_error_reaches_the_queue_item_and_the_log(invokeai, baseline):
    server, model = invokeai
    for modular in (False, True):
        item = run(server, txt2img(model, modular=modular, rho_per_skip="0.8, 0.9"))
        assert item["status"] == "failed"
        assert item["error_type"] == "SkipTuningError"
        message = "rho_per_skip has 2 values but this model has 12 long skips"
        assert message in item["error_message"]
        assert message in server.log()
    assert_core_unchanged(invokeai, baseline)


@pytest.mark.parametrize("fields, message", [
    ({"rho_bottom": 2.5}, "less than or equal to 2"),
    ({"rho_top": -0.1}, "greater than or equal to 0"),
    ({"rho_per_skip": "0.8, x"}, "rho_per_skip entry 2 must be a number"),
    ({"skip_tuning_start": 0.7, "skip_tuning_end": 0.3}, "skip_tuning_start (0.7) must not be after skip_tuning_end"),
])
def test_bad_input_is_refused_when_queued(invokeai, fields, message):
    server, model = invokeai
    status, body = server.request("POST", "/api/v1/queue/default/enqueue_batch",
                                  {"batch": {"graph": txt2img(model, **fields), "runs": 1}, "prepend": False})
    assert status == 422 and message in body.decode(), body[:2000]


def test_a_model_without_long_skips_is_refused(invokeai):
    server, model = invokeai
    flux = {**model, "base": "flux"}
    unet = {"unet": {**flux, "submodel_type": "unet"}, "scheduler": {**flux, "submodel_type": "scheduler"},
            "loras": []}
    item = run(server, txt2img(model, unet=unet, rho_bottom=0.8))
    assert item["status"] == "failed" and item["error_type"] == "SkipTuningError"
    assert "'flux' model" in item["error_message"] and "Use the core Denoise node" in item["error_message"]


# --- install from the Custom Nodes tab ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def custom_nodes_install(invokeai):
    """What the Custom Nodes tab does: the pack (cloned into nodes/ at start) uninstalled, then installed from its
    git source, the way the tab's "Install" button calls the API."""
    server, _ = invokeai
    removed = server.send("DELETE", f"/api/v2/custom_nodes/{PACK}")
    assert removed["success"], removed
    assert "SkipTuningDenoiseLatentsInvocation" not in server.get("/openapi.json")["components"]["schemas"]
    return server.send("POST", "/api/v2/custom_nodes/install", {"source": str(server.pack_source)})


def test_custom_nodes_install_loads_the_pack_and_imports_the_example_workflow(invokeai, custom_nodes_install):
    server, model = invokeai
    installed = custom_nodes_install
    assert installed["success"] and installed["name"] == PACK, installed
    assert installed["workflows_imported"] == 1, installed  # ComfyUI's example_workflows have no "edges"
    packs = {pack["name"]: pack for pack in server.get("/api/v2/custom_nodes/")["node_packs"]}
    assert packs[PACK]["node_types"] == [NODE]
    (listed,) = example_workflows(server)
    assert listed["name"] == json.loads(EXAMPLE_WORKFLOW.read_text())["name"]
    # The reinstalled node runs.
    assert run(server, txt2img(model, rho_bottom=0.8))["status"] == "completed"


def example_workflows(server) -> list:
    workflows = server.get("/api/v1/workflows/?per_page=100")["items"]
    return [workflow for workflow in workflows if f"node-pack:{PACK}" in (workflow.get("tags") or "")]


# --- the workflow editor, in headless Chromium (the project's Playwright set-up, tests/frontend_page.py) -------


@pytest.fixture(scope="session")
def page(invokeai):
    from frontend_page import find_chromium, launch_chromium

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium is needed for the browser tests (CHROMIUM_PATH or chromium on PATH)")
    pytest.importorskip("playwright", reason="Playwright is needed for the browser tests")
    with launch_chromium(chromium) as browser:
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(invokeai[0].url, timeout=180_000)
        page.get_by_label("Workflows", exact=True).first.click()
        yield page


def test_the_node_is_in_the_editors_picker_and_its_fields_render(page):
    new_workflow = page.get_by_text("New Workflow", exact=True).first
    if new_workflow.is_visible():
        new_workflow.click()
    page.get_by_text("Workflow Editor", exact=True).first.click()
    page.get_by_role("button", name="Add Node").first.click()
    page.get_by_placeholder("Search for nodes").fill("skip tuning")
    found = page.get_by_role("listbox").get_by_role("button").filter(has_text=TITLE)
    found.wait_for()  # strict: exactly one entry
    assert "Skip-Tuning (Ma et al., ICML 2024)" in found.inner_text()
    found.click()
    added = page.locator(".react-flow__node.selected")  # the editor selects the node it adds
    added.get_by_text(TITLE, exact=True).wait_for()
    for label in ("Positive Conditioning", "Negative Conditioning", "UNet", "Noise", "Steps", "CFG Scale",
                  "Scheduler", "Skip Tuning: rho bottom", "Skip Tuning: rho top", "Skip Tuning: rho per skip",
                  "Skip Tuning: start", "Skip Tuning: end"):
        assert added.get_by_text(label, exact=True).is_visible(), label


def test_the_example_workflow_loads_and_runs_from_the_ui(invokeai, custom_nodes_install, page):
    server, model = invokeai
    workflow = json.loads(EXAMPLE_WORKFLOW.read_text())
    # The library opens from the workflow's title, "Choose Workflow from Library" while none is loaded.
    title = re.compile(f"^(Choose Workflow from Library|{re.escape(workflow['name'])})$")
    page.get_by_role("button").filter(has_text=title).first.click()
    page.get_by_text("Your Workflows", exact=True).click()
    page.get_by_placeholder("Search by name, description or tags").fill("Skip Tuning")
    page.get_by_role("dialog").get_by_text(workflow["name"], exact=True).first.click()
    confirm = page.get_by_role("button", name="Load", exact=True)
    page.wait_for_timeout(1000)
    if confirm.is_visible():  # "your current workflow has unsaved changes": the node added above
        confirm.click()
    # The form: the Skip Tuning heading and its sliders, with the workflow's values.
    page.get_by_text("Skip Tuning", exact=True).first.wait_for()
    sliders = page.get_by_role("slider")
    assert sliders.count() >= 5
    assert page.get_by_text("Skip Tuning: rho bottom", exact=True).first.is_visible()
    # A new install has its own model ids, so the model is picked in the form, as the workflow's notes say.
    page.get_by_role("combobox").first.click()  # the form's only select: "Select a Model"
    page.get_by_role("option").filter(has_text=model["name"]).first.click()
    for label, value in (("Steps", 4), ("Width", 64), ("Height", 64)):  # the tier's size, typed into the form
        box = page.locator(".form-builder-node-field").filter(has=page.get_by_text(label, exact=True))
        box.get_by_role("spinbutton").fill(str(value))
        box.get_by_role("spinbutton").press("Tab")
    before = max(server.get("/api/v1/queue/default/item_ids")["item_ids"], default=0)
    invoke = page.get_by_role("button", name="Invoke", exact=True)
    deadline = time.monotonic() + 60
    while not invoke.is_enabled():  # enabled once the UI's event connection is up and the graph is complete
        assert time.monotonic() < deadline, ("Invoke stays disabled: no event connection? (InvokeAI 6.14.2 with "
                                             "starlette >= 1.8; setup_invokeai.py pins it below)")
        time.sleep(0.5)
    invoke.click()
    deadline = time.monotonic() + 60
    while not (ids := [i for i in server.get("/api/v1/queue/default/item_ids")["item_ids"] if i > before]):
        assert time.monotonic() < deadline, "the Invoke button queued nothing"
        time.sleep(0.5)
    item = server.wait(ids[0], timeout=600)
    assert item["status"] == "completed", (item.get("error_message"), item.get("error_traceback"))
    (denoise,) = [node for node in item["session"]["graph"]["nodes"].values() if node["type"] == NODE]
    shipped = next(node["data"]["inputs"] for node in workflow["nodes"] if node["data"]["type"] == NODE)
    assert denoise["rho_bottom"] == shipped["rho_bottom"]["value"] != 1.0
    assert denoise["steps"] == 4
    (noise,) = [node for node in item["session"]["graph"]["nodes"].values() if node["type"] == "noise"]
    assert (noise["width"], noise["height"]) == (64, 64)
    assert f"rho bottom to top = [{shipped['rho_bottom']['value']}" in server.log()


def test_the_tier_ran_on_the_version_it_names(invokeai):
    version = invokeai[0].get("/api/v1/app/version")["version"]
    assert version.startswith("6.14.2"), version

"""The Registry archive: what ComfyUI-Manager and ``comfy node install`` users download, and that it works alone.

The tree is laid out as git would commit it (tracked files plus new ones git does not ignore) in a
temporary git repository and packed there by the real comfy-cli (``comfy node pack``, the packing
``comfy node publish`` uploads: git-tracked files minus .comfyignore). The archive must stay under
ARCHIVE_BUDGET and hold everything ComfyUI loads and nothing of the demo, tests or benchmarks. Unzipped
as the only copy of the pack in a fresh ComfyUI's custom_nodes, it must register every node, serve the
front-end extension, the help pages and the example workflows, and run every node of the pack, with the
widget values the example workflows save, in prompts on tiny test models.

Skipped, with the reason, without comfy-cli (.ci/install puts it in .venv-comfy-cli; COMFY_CLI names
another) or git.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import zipfile
from pathlib import Path

import comfy_helpers
import pytest

pytestmark = [pytest.mark.comfyui, pytest.mark.comfyui_server]

ARCHIVE_BUDGET = 512 * 1024  # bytes; the nodes, the core, the front end and the examples pack to ~0.2 MB
PACK = "skip-tuning"
PACK_NODES = ("SkipTuning", "SkipTuningAdvanced", "SkipTuningCompare", "ResidualTuning")
FRONTEND_ONLY_NODES = {"Note", "MarkdownNote"}  # drawn by the front end, never sent to the server
# Never in the archive: the demo and its weights, tests, benchmarks, result plots, the other hosts' folders.
OTHER_HOSTS = ("skip_tuning/webui/", "skip_tuning/diffusers/", "skip_tuning/invokeai/")
LEFT_OUT = ("skip_tuning_demo/", "tests/", "benchmarks/", "docs/", "scripts/", *OTHER_HOSTS)


def find_comfy_cli() -> str | None:
    named = os.environ.get("COMFY_CLI")
    if named:
        if not os.access(named, os.X_OK):
            pytest.fail(f"COMFY_CLI={named} is not an executable", pytrace=False)
        return named
    local = comfy_helpers.REPO_ROOT / ".venv-comfy-cli" / "bin" / "comfy"
    if local.exists():
        return str(local)
    return shutil.which("comfy")


def committed_files() -> list[str]:
    """The repository's files as a commit of the working tree would hold them."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=comfy_helpers.REPO_ROOT, capture_output=True, check=True).stdout.decode()
    return sorted({name for name in listed.split("\0") if name and (comfy_helpers.REPO_ROOT / name).is_file()})


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    comfy = find_comfy_cli()
    if comfy is None:
        pytest.skip("comfy-cli is not installed (bash .ci/install puts it in .venv-comfy-cli; or set COMFY_CLI)")
    if shutil.which("git") is None or not (comfy_helpers.REPO_ROOT / ".git").exists():
        pytest.skip("the archive is packed from git-tracked files: needs git and a git checkout")
    source = tmp_path_factory.mktemp("pack_source")
    for name in committed_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(comfy_helpers.REPO_ROOT / name, source / name)
    for command in (["git", "init", "-q"], ["git", "add", "--force", "--all"]):
        subprocess.run(command, cwd=source, check=True, capture_output=True)
    home = tmp_path_factory.mktemp("comfy_cli_home")  # comfy-cli keeps its config and caches there
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_CACHE_HOME": str(home / "cache")}
    result = subprocess.run([comfy, "--skip-prompt", "node", "pack"], cwd=source, env=env, capture_output=True,
                            text=True, timeout=300, stdin=subprocess.DEVNULL)
    packed = source / "node.zip"
    assert result.returncode == 0 and packed.exists(), result.stdout + result.stderr
    return packed


def test_the_archive_is_lean_and_holds_what_comfyui_loads(archive):
    with zipfile.ZipFile(archive) as packed:
        names = set(packed.namelist())
        unpacked = sum(info.file_size for info in packed.infolist())
    size = archive.stat().st_size
    assert size <= ARCHIVE_BUDGET, f"the archive is {size} bytes, over its budget of {ARCHIVE_BUDGET}"
    assert unpacked <= 2 * ARCHIVE_BUDGET, unpacked
    assert not [name for name in names if name.startswith(LEFT_OUT)]
    tracked = committed_files()
    needed = {"__init__.py", "pyproject.toml", "LICENSE", "README.md"} | {
        name for name in tracked
        if name.startswith(("skip_tuning/", "js/", "example_workflows/")) and not name.startswith(OTHER_HOSTS)}
    assert {"skip_tuning/comfyui/nodes.py", "skip_tuning/schedule.py", "js/skip_tuning.js"} <= needed
    assert needed - names == set(), "missing from the archive"
    assert names - needed == set(), "in the archive but not needed by ComfyUI"


@pytest.fixture(scope="module")
def archive_server(archive, comfyui_path, tmp_path_factory):
    """A ComfyUI whose only copy of the pack is the unzipped archive (plus the test-only nodes)."""
    base = tmp_path_factory.mktemp("comfyui_archive_base")
    installed = base / "custom_nodes" / PACK
    with zipfile.ZipFile(archive) as packed:
        packed.extractall(installed)
    packs = {"skip_tuning_test_nodes": comfy_helpers.TEST_NODES_DIR,
             "skip_tuning_frontend_test_nodes": comfy_helpers.TESTS_DIR / "comfy_test_nodes_frontend"}
    try:
        with comfy_helpers.comfyui_server(comfyui_path, base, packs) as server:
            yield server
    except RuntimeError as error:
        if os.environ.get("SKIP_TUNING_REQUIRE_COMFYUI", "") not in ("", "0"):
            pytest.fail(f"ComfyUI did not start with the archive: {error}", pytrace=False)
        pytest.skip(f"ComfyUI server did not start: {error}")


def test_every_node_and_the_front_end_load_from_the_archive(archive_server):
    info = archive_server.get_json("/object_info")
    for node in PACK_NODES:
        assert node in info, f"{node} missing; server log:\n{archive_server.log()[-3000:]}"
        assert info[node]["python_module"] == f"custom_nodes.{PACK}"
    failed = [line for line in archive_server.log().splitlines()
              if ("IMPORT FAILED" in line or "Cannot import" in line or "comfy_entrypoint" in line) and PACK in line]
    assert failed == []
    for path in ("/extensions/skip-tuning/skip_tuning.js", "/extensions/skip-tuning/skip_tuning_profile.js",
                 *(f"/extensions/skip-tuning/docs/{node}.md" for node in PACK_NODES),
                 *(f"/extensions/skip-tuning/docs/{node}/en.md" for node in PACK_NODES)):
        status, _ = archive_server.request("GET", path)
        assert status == 200, path
    examples = sorted(path.stem for path in (comfy_helpers.REPO_ROOT / "example_workflows").glob("*.json"))
    assert sorted(archive_server.get_json("/api/workflow_templates")[PACK]) == examples
    for name in examples:
        workflow = archive_server.get_json(f"/api/workflow_templates/{PACK}/{urllib.parse.quote(name)}.json")
        types = {node["type"] for node in workflow["nodes"]} - FRONTEND_ONLY_NODES
        assert types <= set(info), (name, types - set(info))


def widget_inputs(node_info: dict, widgets_values: list) -> dict:
    """A saved node's widget values as /prompt inputs, in the order the front end saves them
    (required then optional inputs; a seed with control_after_generate saves its mode after it)."""
    values = iter(widgets_values)
    inputs = {}
    for section in ("required", "optional"):
        for name in node_info["input_order"].get(section, []):
            kind, options = node_info["input"][section][name]
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                inputs[name] = next(values)
                if options.get("control_after_generate"):
                    next(values)
    assert next(values, None) is None, "more saved values than widgets"
    return inputs


def saved_inputs(info: dict, node_type: str) -> list[dict]:
    found = []
    for path in sorted((comfy_helpers.REPO_ROOT / "example_workflows").glob("*.json")):
        for node in json.loads(path.read_text())["nodes"]:
            if node["type"] == node_type:
                found.append(widget_inputs(info[node_type], node["widgets_values"]))
    return found


def stats(entry, node_id):
    assert entry["status"]["status_str"] == "success", entry["status"]
    return entry["outputs"][node_id]["skip_tuning_stats"][0]


def sampled(model_node: dict | None, kind: str = "sd1") -> dict:
    """Tiny model -> [node] -> KSampler -> latent stats."""
    graph = {
        "model": {"class_type": "SkipTuningTestTinyModel", "inputs": {"kind": kind, "dtype": "float32", "seed": 0}},
        "pos": {"class_type": "SkipTuningTestConditioning", "inputs": {"seed": 1}},
        "neg": {"class_type": "SkipTuningTestConditioning", "inputs": {"seed": 2}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": ["node", 0] if model_node else ["model", 0], "seed": 0, "steps": 3, "cfg": 3.0,
            "sampler_name": "euler", "scheduler": "simple", "positive": ["pos", 0], "negative": ["neg", 0],
            "latent_image": ["latent", 0], "denoise": 1.0}},
        "stats": {"class_type": "SkipTuningTestLatentStats", "inputs": {"samples": ["sampler", 0]}},
    }
    if model_node:
        graph["node"] = {**model_node, "inputs": {"model": ["model", 0], **model_node["inputs"]}}
    return graph


def test_every_node_runs_from_the_archive_with_the_examples_saved_values(archive_server):
    info = archive_server.get_json("/object_info")
    plain = stats(archive_server.run_prompt(sampled(None)), "stats")
    for node_type in ("SkipTuning", "SkipTuningAdvanced"):
        examples = saved_inputs(info, node_type)
        assert examples, f"no example workflow uses {node_type}"
        for inputs in examples:
            result = stats(archive_server.run_prompt(sampled({"class_type": node_type, "inputs": inputs})), "stats")
            assert result["finite"] and result["values"] != plain["values"], (node_type, inputs)

    flux_plain = stats(archive_server.run_prompt(sampled(None, kind="flux")), "stats")
    residual = {"class_type": "ResidualTuning", "inputs": {"rho_first": 0.9, "rho_last": 1.0, "start_depth": 0.0,
                                                           "start_percent": 0.0, "end_percent": 1.0}}
    flux_tuned = stats(archive_server.run_prompt(sampled(residual, kind="flux")), "stats")
    assert flux_tuned["finite"] and flux_tuned["values"] != flux_plain["values"]

    (compare_inputs,) = saved_inputs(info, "SkipTuningCompare")
    compare_inputs["steps_list"] = "1, 2"  # the example's grid, on fewer steps
    graph = sampled(None)
    graph["vae"] = {"class_type": "SkipTuningTestVAE", "inputs": {}}
    graph["compare"] = {"class_type": "SkipTuningCompare", "inputs": {
        **compare_inputs, "model": ["model", 0], "positive": ["pos", 0], "negative": ["neg", 0],
        "latent": ["latent", 0], "vae": ["vae", 0]}}
    graph["grid"] = {"class_type": "PreviewImage", "inputs": {"images": ["compare", 0]}}
    entry = archive_server.run_prompt(graph, timeout=600)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert len(entry["outputs"]["grid"]["images"]) == 1

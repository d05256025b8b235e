"""Skip Tuning inside a REAL SD.Next (diffusers pipelines), over its HTTP API.

Needs a checkout made by ``tests/webui_real/setup_webui.py sdnext``, named (os.pathsep-separated, with
any A1111/Forge/reForge checkouts) in SKIP_TUNING_WEBUI_PATHS; without one every test here skips. The
webui is started CPU-only on a loopback port in its own process group and killed (the whole group)
when the tests end, failed or not.

    SKIP_TUNING_WEBUI_PATHS=/path/to/sdnext python3 -m pytest tests/test_webui_real_sdnext.py -m webui_real

The model is a random-weight SD1.5 diffusers folder at 64x64, CFG 1 (one U-Net call per step): the images
mean nothing, but equal pixels mean an unchanged computation, so "off" and "rho 1" are compared bit for bit.
The test probe extension (tests/webui_real/sdnext_probe) reports each U-Net call of the last generation
(pass, and whether Skip Tuning's hooks were on the U-Net) and the hooks left on the U-Nets afterwards.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from webui_real.harness import (
    BAD_ARGS_ERROR,
    BASE,
    REQUEST_TIMEOUT,
    SDNEXT_PROBE,
    TITLE,
    Server,
    Webuis,
    configured_checkouts,
    decode,
)

from skip_tuning.infotext import KEY_ENABLED, KEY_END, KEY_PASSES, KEY_RHO_BOTTOM, KEY_RHO_TOP, KEY_START
from skip_tuning.webui.common import REFINER_UNTUNED

pytest.importorskip("PIL.Image", reason="Pillow is needed to compare the webui's images")

CHECKOUTS = configured_checkouts(sdnext=True)
pytestmark = [
    pytest.mark.webui_real,
    pytest.mark.skipif(not CHECKOUTS, reason="no real SD.Next configured: set SKIP_TUNING_WEBUI_PATHS to a checkout "
                                             "made by tests/webui_real/setup_webui.py sdnext"),
]

ON = [True, 0.8, 1.0]
HIRES = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent Nearest", "hr_resize_mode": 1,
         "hr_second_pass_steps": 2, "hr_denoising_strength": 0.6}
REFINER = {"enable_hr": True, "refiner_steps": 4, "refiner_start": 0.5, "denoising_strength": 0.5,
           "override_settings": {"sd_model_refiner": "Diffusers/skip-tuning-random-sd15-refiner"}}
PROBE = "Skip Tuning probe"
BASE_CALL, HIRES_CALL, REFINER_CALL = ("model", False), ("model", True), ("refiner", False)
COMPILE_TIMEOUT = 3600  # inductor compiling SD1.5's U-Net on a small, busy CPU


@pytest.fixture(scope="module")
def webuis(tmp_path_factory):
    manager = Webuis(tmp_path_factory.mktemp("sdnext-logs"))
    try:
        yield manager
    finally:
        manager.close()


@pytest.fixture(scope="module", params=CHECKOUTS or [None], ids=[c["name"] for c in CHECKOUTS] or ["none"])
def checkout(request):
    return request.param


@pytest.fixture
def sdnext(webuis, checkout) -> Server:
    return webuis.get(checkout)


@pytest.fixture
def image(webuis, checkout):
    """image(args, **fields): pixels of a txt2img, cached per checkout (a cache hit starts no server)."""
    def get(args=None, **fields):
        key = (checkout["name"], json.dumps([args, fields], sort_keys=True))
        if key not in webuis.images:
            webuis.images[key] = webuis.get(checkout).image(args, **fields)
        return webuis.images[key]

    return get


def probe(server: Server) -> dict:
    status, state = server.request(SDNEXT_PROBE)
    assert status == 200, state
    return state


def calls(server: Server) -> list:
    """The last generation's U-Net calls: ((model, is_hr_pass), tuned) each."""
    return [((call["model"], call["hr"]), call["tuned"]) for call in probe(server)["calls"]]


def hooks_left(server: Server) -> dict:
    return probe(server)["hooks"]


def console_since(server: Server, offset: int) -> str:
    """The console output after ``offset``, whitespace collapsed (SD.Next's console wraps long lines)."""
    return " ".join(server.log_text()[offset:].split())


def generate_and_trace(server: Server, args=None, **fields):
    """(pixels, U-Net calls) of one txt2img; asserts that nothing stayed on the U-Nets."""
    pixels = server.image(args, **fields)
    traced = calls(server)
    assert set(hooks_left(server).values()) == {0}
    return pixels, traced


# ---------------------------------------------------------------------------------------------


def test_script_is_listed_with_its_arguments(sdnext):
    status, scripts = sdnext.request("/sdapi/v1/scripts")
    assert status == 200 and "skip tuning" in scripts["txt2img"] and "skip tuning" in scripts["img2img"]
    status, infos = sdnext.request("/sdapi/v1/script-info")
    ours = [info for info in infos if info["name"] == "skip tuning"]
    assert {info["is_img2img"] for info in ours} == {False, True} and all(info["is_alwayson"] for info in ours)
    labels = [arg["label"] for arg in ours[0]["args"]]
    assert labels == [TITLE, "rho_bottom (deepest skip)", "rho_top (highest-resolution skip)",
                      "Start at (% of sampling)", "End at (% of sampling)", "Hires fix passes"]
    assert ours[0]["args"][0]["value"] is False


def test_on_differs_from_off_and_rho_1_is_off(sdnext, image):
    off, traced = generate_and_trace(sdnext)
    assert traced == [(BASE_CALL, False)] * 2
    assert sdnext.image() == off, "the webui is not deterministic: nothing below can be compared"
    on, traced = generate_and_trace(sdnext, ON)
    assert traced == [(BASE_CALL, True)] * 2 and on != off
    assert image([False, 0.8, 1.0]) == off
    assert image([True, 1.0, 1.0]) == off
    assert sdnext.image() == off  # nothing of the tuned generation is left


def test_dict_args_equal_positional(image):
    assert image({"rho_bottom": 0.8, "rho_top": 1.0}) == image(ON)
    assert image({"enabled": True, "rho_bottom": 0.8, "start": 0, "end": 100, "hires_passes": "both"}) == image(ON)


@pytest.mark.parametrize("args", [
    [True, "0.8x"], [True, 2.5], [True, float("nan")], [True, 0.8, 1.0, 70, 20], [{"rho_botom": 0.8}],
], ids=["string", "out-of-range", "nan", "start-after-end", "unknown-key"])
def test_invalid_input_gives_the_untouched_image_and_an_error(sdnext, image, args):
    off = image()
    logged = len(sdnext.log_text())
    body = sdnext.generate(args)
    assert decode(body["images"][0]) == off
    assert BAD_ARGS_ERROR in console_since(sdnext, logged)
    assert "Skip Tuning" not in json.loads(body["info"])["infotexts"][0]


def test_infotext_round_trip(sdnext):
    args = [True, 0.8, 0.9, 25, 75, "First pass only"]
    body = sdnext.generate(args, steps=4)
    status, info = sdnext.request("/sdapi/v1/png-info", {"image": body["images"][0]})
    assert status == 200
    params = info["parameters"]
    assert {key: str(params[key]) for key in (KEY_ENABLED, KEY_RHO_BOTTOM, KEY_RHO_TOP, KEY_START, KEY_END,
                                               KEY_PASSES)} == {
        KEY_ENABLED: "True", KEY_RHO_BOTTOM: "0.8", KEY_RHO_TOP: "0.9", KEY_START: "25", KEY_END: "75",
        KEY_PASSES: "First pass only"}
    pasted = {"enabled": params[KEY_ENABLED] in (True, "True"), "rho_bottom": float(params[KEY_RHO_BOTTOM]),
              "rho_top": float(params[KEY_RHO_TOP]), "start": float(params[KEY_START]),
              "end": float(params[KEY_END]), "hires_passes": params[KEY_PASSES]}
    assert sdnext.image(pasted, steps=4) == decode(body["images"][0])


def test_sampling_window_counts_the_steps_of_each_pass(sdnext, image):
    """25-75% of 4 base steps and of 2 hires steps: steps 1 and 2, and hires step 1."""
    late, traced = generate_and_trace(sdnext, [True, 0.8, 1.0, 25, 75], steps=4, **HIRES)
    assert traced == [(BASE_CALL, False), (BASE_CALL, True), (BASE_CALL, True), (BASE_CALL, False),
                      (HIRES_CALL, False), (HIRES_CALL, True)]
    assert late not in (image(steps=4, **HIRES), image(ON, steps=4, **HIRES))


@pytest.mark.parametrize("passes,base_tuned,hires_tuned", [
    ("Both passes", True, True), ("First pass only", True, False), ("Hires pass only", False, True),
])
def test_hires_fix_pass_choices(sdnext, image, passes, base_tuned, hires_tuned):
    pixels, traced = generate_and_trace(sdnext, [True, 0.8, 1.0, 0, 100, passes], **HIRES)
    assert traced == [(BASE_CALL, base_tuned)] * 2 + [(HIRES_CALL, hires_tuned)] * 2
    off = image(**HIRES)
    assert pixels != off
    assert image([True, 1.0, 1.0, 0, 100, passes], **HIRES) == off


def test_every_batch_is_tuned(sdnext):
    _, traced = generate_and_trace(sdnext, ON, n_iter=2)
    assert traced == [(BASE_CALL, True)] * 4


def test_refiner_steps_are_not_tuned(sdnext):
    """The refiner is another pipeline with its own U-Net: its steps run untuned, as the warning says."""
    logged = len(sdnext.log_text())
    _, traced = generate_and_trace(sdnext, ON, steps=4, **REFINER)
    assert [call for call, _ in traced] == [BASE_CALL] * 4 + [REFINER_CALL] * 2
    assert [tuned for _, tuned in traced] == [True] * 4 + [False] * 2
    assert REFINER_UNTUNED in console_since(sdnext, logged)


def test_img2img(sdnext):
    init = sdnext.generate()["images"][0]
    fields = {"init_images": [init], "denoising_strength": 0.6, "steps": 4}
    off = decode(sdnext.generate(None, "img2img", **fields)["images"][0])
    on = decode(sdnext.generate(ON, "img2img", **fields)["images"][0])
    assert on != off and set(hooks_left(sdnext).values()) == {0}
    assert decode(sdnext.generate([True, 1.0, 1.0], "img2img", **fields)["images"][0]) == off


def test_an_interrupt_leaves_nothing_attached(sdnext, image):
    """SD.Next skips postprocess after an interrupt: the after_process callback removes the hooks."""
    off = image()
    result, during = {}, {}

    def tuned():
        result["status"], result["body"] = sdnext.request("/sdapi/v1/txt2img", {
            **BASE, "steps": 30, "alwayson_scripts": {TITLE: {"args": ON}}})

    thread = threading.Thread(target=tuned)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status, progress = sdnext.request("/sdapi/v1/progress?skip_current_image=true")
        if status == 200 and progress["state"]["sampling_step"] >= 1:
            break
        time.sleep(0.2)
    during.update(hooks_left(sdnext))
    sdnext.request("/sdapi/v1/interrupt", {})
    thread.join(REQUEST_TIMEOUT)
    assert result["status"] == 200
    assert during["model"] > 0  # attached while it sampled
    assert set(hooks_left(sdnext).values()) == {0}  # before any other generation could clean up
    assert sdnext.image() == off


class LogViews:
    """What SD.Next showed since this was made: its console (the server's stdout and stderr), its log file
    (``sdnext.log`` in the checkout) and the UI's log view (``/sdapi/v1/log``, emptied here)."""

    def __init__(self, server: Server, checkout: dict):
        self.server, self.file = server, Path(checkout["path"]) / "sdnext.log"
        self.console_at = len(server.log_text())
        self.file_at = self.file.stat().st_size if self.file.exists() else 0
        status, _ = server.request("/sdapi/v1/log?clear=true")
        assert status == 200

    def all(self) -> dict:
        status, ui_lines = self.server.request("/sdapi/v1/log?lines=100")
        assert status == 200
        with self.file.open("rb") as file:
            file.seek(self.file_at)
            logged = file.read().decode(errors="replace")
        return {"console": console_since(self.server, self.console_at), "sdnext.log": " ".join(logged.split()),
                "/sdapi/v1/log": " ".join(" ".join(ui_lines).split())}


def provoke_messages(server: Server, checkout: dict) -> dict:
    """Skip Tuning's error (rho_bottom -1) and its refiner warning: where each one showed."""
    views = LogViews(server, checkout)
    server.generate([True, -1.0, 1.0])
    server.generate(ON, steps=4, **REFINER)
    shown = views.all()
    return {view: [message for message in (BAD_ARGS_ERROR + ": rho_bottom", REFINER_UNTUNED) if message in text]
            for view, text in shown.items()}


def test_errors_and_warnings_reach_the_console_the_log_file_and_the_ui_log(sdnext, checkout):
    """Also after a host traceback (SD.Next's traceback printer reorders its log handlers)."""
    everywhere = {view: [BAD_ARGS_ERROR + ": rho_bottom", REFINER_UNTUNED]
                  for view in ("console", "sdnext.log", "/sdapi/v1/log")}
    assert provoke_messages(sdnext, checkout) == everywhere
    status, body = sdnext.request("/sdapi/v1/txt2img", {**BASE, "alwayson_scripts": {PROBE: {"args": [1]}}})
    assert status == 500 and "KeyError" in str(body)  # SD.Next prints the traceback
    assert provoke_messages(sdnext, checkout) == everywhere


def test_an_error_mid_generation_leaves_nothing_attached(sdnext, image):
    """The probe raises a KeyError at the second U-Net call, which SD.Next does not catch: the request fails,
    postprocess never runs, and the after_process callback (in process_images' finally) removes the hooks."""
    off = image()
    status, body = sdnext.request("/sdapi/v1/txt2img", {
        **BASE, "steps": 4, "alwayson_scripts": {TITLE: {"args": ON}, PROBE: {"args": [2]}}})
    assert status == 500 and "KeyError" in str(body)
    assert calls(sdnext) == [(BASE_CALL, True)]  # the failing call never reached the up blocks
    assert set(hooks_left(sdnext).values()) == {0}
    assert sdnext.image() == off


def xyz_request(server: Server, axis: str, values: str, skip_tuning_args) -> list:
    """The cell images of SD.Next's X/Y/Z grid over ``axis`` (its label: SD.Next's plot takes labels)."""
    status, infos = server.request("/sdapi/v1/script-info")
    info = next(i for i in infos if i["name"] == "xyz grid script" and not i["is_img2img"])
    labels = [arg["label"] for arg in info["args"]]
    assert axis in info["args"][labels.index("X type")]["choices"]
    args = [arg.get("value") for arg in info["args"]]
    args[labels.index("X type")], args[labels.index("X values")] = axis, values
    args[labels.index("Use text inputs")] = True
    args[labels.index("Include images")] = True
    body = server.generate(skip_tuning_args, script_name="xyz grid script", script_args=args)
    cells = values.count(",") + 1
    assert len(body["images"]) == cells + 1  # the grid, then each cell
    return [decode(b64) for b64 in body["images"][1:]]


def test_xyz_axes_through_the_api(sdnext, image):
    off, on = image(), image(ON)
    assert xyz_request(sdnext, "[Skip Tuning] rho_bottom", "1.0,0.8", [False, 0.8, 1.0]) == [off, on]
    assert xyz_request(sdnext, "[Skip Tuning] On/Off", "On,Off", [False, 0.8, 1.0]) == [on, off]
    assert set(hooks_left(sdnext).values()) == {0}


def set_model_compile(server: Server, targets: list):
    """SD.Next's model compile (Settings -> Model Compile: "Compile Model", backend inductor, its default
    options), applied by reloading the model."""
    status, _ = server.request("/sdapi/v1/options", {"cuda_compile": targets, "cuda_compile_backend": "inductor"})
    assert status == 200
    status, _ = server.request("/sdapi/v1/reload-checkpoint?force=true", {})
    assert status == 204
    assert probe(server)["compiled"]["model"] is bool(targets)


def test_model_compile(sdnext, image):
    """SD.Next's "Compile Model" (torch.compile, inductor, on the CPU): tuned steps run the compiled U-Net
    eagerly (its graphs would ignore hooks added after compiling), plain steps keep the compiled graph."""
    if probe(sdnext)["compiled"]["model"]:  # SD.Next keeps its settings: an aborted run may have left it on
        set_model_compile(sdnext, [])
    off, on, lower = image(), image(ON), image([True, 0.6, 1.0])
    set_model_compile(sdnext, ["Model"])
    try:
        compiled_off = sdnext.image(timeout=COMPILE_TIMEOUT)  # inductor compiles the U-Net in this one
        graphs = probe(sdnext)["graphs"]
        assert graphs > 0  # SD.Next suppresses compile errors (eager fallback): make sure it compiled
        assert sdnext.image(ON) == on and sdnext.image([True, 0.6, 1.0]) == lower
        assert set(hooks_left(sdnext).values()) == {0}
        assert sdnext.image() == compiled_off and probe(sdnext)["graphs"] == graphs  # no stale hooks, no recompile
        mode, size, pixels = compiled_off
        diff = max(abs(a - b) for a, b in zip(pixels, off[2]))
        print(f"compiled plain image vs eager: largest pixel difference {diff}")
        assert (mode, size) == off[:2] and diff <= 2 and compiled_off != on
    finally:
        set_model_compile(sdnext, [])


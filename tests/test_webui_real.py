"""Skip Tuning inside REAL Automatic1111 / Forge / reForge webuis, over their HTTP API.

Needs checkouts made by tests/webui_real/setup_webui.py, named (os.pathsep-separated) in
SKIP_TUNING_WEBUI_PATHS; without them every test here skips. Each checkout is started CPU-only
on a loopback port, with ``--api`` and then with ``--nowebui``, one webui process at a time;
every process is killed (its whole process group) when its tests end, failed or not.

    SKIP_TUNING_WEBUI_PATHS=/path/to/forge python3 -m pytest tests/test_webui_real.py -m webui_real

The model is a random-weight SD1.5 at 64x64, 2 steps, CFG 1 (one U-Net call per step: a step
still takes seconds on a CPU): the images mean nothing, but equal pixels mean an unchanged
computation, so "off" and "rho 1" are compared bit for bit.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import pytest
from webui_real.harness import (
    BAD_ARGS_ERROR,
    BASE,
    REQUEST_TIMEOUT,
    TITLE,
    Server,
    Webuis,
    configured_checkouts,
    decode,
)

from skip_tuning.infotext import KEY_ENABLED, KEY_END, KEY_PASSES, KEY_RHO_BOTTOM, KEY_RHO_TOP, KEY_START
from skip_tuning.webui.common import REFINER_TUNED, REFINER_UNTUNED

PIL = pytest.importorskip("PIL.Image", reason="Pillow is needed to compare the webuis' images")

CHECKOUTS = configured_checkouts(sdnext=False)
pytestmark = [
    pytest.mark.webui_real,
    pytest.mark.skipif(not CHECKOUTS, reason="no real A1111/Forge/reForge configured: set SKIP_TUNING_WEBUI_PATHS to "
                                             "checkouts made by tests/webui_real/setup_webui.py"),
]

HIRES = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "hr_second_pass_steps": 1,
         "denoising_strength": 0.6, "hr_additional_modules": ["Use same choices"]}
ON = [True, 0.8, 1.0]
REFINER = "skip-tuning-random-sd15-refiner"


@pytest.fixture(scope="module")
def webuis(tmp_path_factory):
    manager = Webuis(tmp_path_factory.mktemp("webui-logs"))
    try:
        yield manager
    finally:
        manager.close()


@pytest.fixture(scope="module", params=CHECKOUTS or [None], ids=[c["name"] for c in CHECKOUTS] or ["none"])
def checkout(request):
    return request.param


@pytest.fixture
def webui(webuis, checkout) -> Server:
    return webuis.get(checkout, api_only=False)


@pytest.fixture
def webui_api_only(webuis, checkout) -> Server:
    return webuis.get(checkout, api_only=True)


@pytest.fixture
def image(webuis, checkout):
    """image(args, **fields): pixels of a txt2img, cached per webui (a cache hit starts no server)."""
    def get(args=None, **fields):
        key = (checkout["name"], json.dumps([args, fields], sort_keys=True))
        if key not in webuis.images:
            webuis.images[key] = webuis.get(checkout, api_only=False).image(args, **fields)
        return webuis.images[key]

    return get


def script_info(server: Server, name: str, is_img2img=False) -> dict:
    status, infos = server.request("/sdapi/v1/script-info")
    assert status == 200
    return next(i for i in infos if i["name"] == name.lower() and i["is_img2img"] == is_img2img)


# ---------------------------------------------------------------------------------------------
# With the UI (--api)


def test_script_is_listed_with_its_arguments(webui):
    status, scripts = webui.request("/sdapi/v1/scripts")
    assert status == 200 and "skip tuning" in scripts["txt2img"] and "skip tuning" in scripts["img2img"]
    info = script_info(webui, TITLE)
    assert info["is_alwayson"]
    labels = [arg["label"] for arg in info["args"]]
    assert labels == [TITLE, "rho_bottom (deepest skip)", "rho_top (highest-resolution skip)",
                      "Start at (% of sampling)", "End at (% of sampling)", "Hires fix passes"]
    assert [arg["value"] for arg in info["args"]][0] is False


def test_on_differs_from_off_and_rho_1_is_off(webui, image):
    off = image()
    assert webui.image() == off, "the webui is not deterministic: nothing below can be compared"
    assert image([False, 0.8, 1.0]) == off
    assert image(ON) != off
    assert image([True, 1.0, 1.0]) == off


def test_dict_args_equal_positional(image):
    assert image({"rho_bottom": 0.8, "rho_top": 1.0}) == image(ON)
    assert image({"enabled": True, "rho_bottom": 0.8, "start": 0, "end": 100, "hires_passes": "both"}) == image(ON)


@pytest.mark.parametrize("args", [
    [True, "0.8x"], [True, 2.5], [True, -0.1], [True, float("nan")], [True, 0.8, 1.0, 0, 100, "third pass"],
], ids=["string", "out-of-range", "negative", "nan", "bad-passes"])
def test_invalid_input_gives_the_untouched_image_and_an_error(webui, image, args):
    off = image()
    logged = len(webui.log_text())
    body = webui.generate(args)
    assert decode(body["images"][0]) == off
    assert BAD_ARGS_ERROR in webui.log_text()[logged:]
    assert "Skip Tuning" not in json.loads(body["info"])["infotexts"][0]


def test_hires_fix_pass_choices(image):
    off = image(**HIRES)
    first, both, hires = (image([True, 0.8, 1.0, 0, 100, passes], **HIRES)
                          for passes in ("First pass only", "Both passes", "Hires pass only"))
    assert len({off, first, both, hires}) == 4
    assert image([True, 1.0, 1.0, 0, 100, "Both passes"], **HIRES) == off


def test_sampling_window(image):
    late = image([True, 0.8, 1.0, 50, 100])
    assert late != image() and late != image(ON)
    assert image([True, 0.8, 1.0, 0, 100]) == image(ON)


def test_img2img(webui, image):
    init = base64.b64encode(_png(image())).decode()
    fields = {"init_images": [init], "denoising_strength": 0.6}
    off = decode(webui.generate(None, "img2img", **fields)["images"][0])
    on = decode(webui.generate(ON, "img2img", **fields)["images"][0])
    assert on != off
    assert decode(webui.generate([True, 1.0, 1.0], "img2img", **fields)["images"][0]) == off


def _png(pixels) -> bytes:
    mode, size, data = pixels
    buffer = io.BytesIO()
    PIL.frombytes(mode, size, data).save(buffer, format="PNG")
    return buffer.getvalue()


def test_interrupt_during_a_tuned_generation_then_off_is_off(webui, image):
    off = image()
    result = {}

    def tuned():
        result["status"], result["body"] = webui.request("/sdapi/v1/txt2img", {
            **BASE, "steps": 30, "alwayson_scripts": {TITLE: {"args": ON}}})

    thread = threading.Thread(target=tuned)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status, progress = webui.request("/sdapi/v1/progress?skip_current_image=true")
        if status == 200 and progress["state"]["sampling_step"] >= 1:
            break
        time.sleep(0.2)
    webui.request("/sdapi/v1/interrupt", {})
    thread.join(REQUEST_TIMEOUT)
    assert result["status"] == 200
    assert webui.image() == off


def test_infotext_round_trip(webui, image):
    args = [True, 0.8, 0.9, 25, 75, "First pass only"]
    body = webui.generate(args)
    status, info = webui.request("/sdapi/v1/png-info", {"image": body["images"][0]})
    assert status == 200
    params = info["parameters"]
    assert {key: str(params[key]) for key in (KEY_ENABLED, KEY_RHO_BOTTOM, KEY_RHO_TOP, KEY_START, KEY_END,
                                               KEY_PASSES)} == {
        KEY_ENABLED: "True", KEY_RHO_BOTTOM: "0.8", KEY_RHO_TOP: "0.9", KEY_START: "25", KEY_END: "75",
        KEY_PASSES: "First pass only"}
    pasted = {"enabled": params[KEY_ENABLED] in (True, "True"), "rho_bottom": float(params[KEY_RHO_BOTTOM]),
              "rho_top": float(params[KEY_RHO_TOP]), "start": float(params[KEY_START]),
              "end": float(params[KEY_END]), "hires_passes": params[KEY_PASSES]}
    assert webui.image(pasted) == decode(body["images"][0])


def test_refiner_steps_as_the_warning_says(webui, checkout):
    """A same-architecture refiner for the last 2 of 4 steps: tuned or not, the console warning says which.

    The refiner takes over where the noise level says (the webuis' default): with 4 DPM++ 2M Karras steps, after
    step 1 (sigma 3.2, about 25% done) and before step 2 (sigma 0.45, about 80%), so a window of 0-50% tunes
    every base step and no refiner step. Two refiner steps, because the last step alone (sigma 0.03) moves
    the image by less than a pixel level.
    """
    status, models = webui.request("/sdapi/v1/sd-models")
    if not any(m["model_name"] == REFINER for m in models):
        pytest.skip(f"{REFINER} is not in this checkout")
    refiner = {"steps": 4, "sampler_name": "DPM++ 2M", "scheduler": "Karras", "refiner_checkpoint": REFINER,
               "refiner_switch_at": 0.5}
    logged = len(webui.log_text())
    off = webui.image(**refiner)
    whole = webui.image([True, 0.8, 1.0, 0, 100], **refiner)
    base_only = webui.image([True, 0.8, 1.0, 0, 50], **refiner)  # steps 0 and 1
    assert whole != off and base_only != off
    refiner_steps_tuned = whole != base_only
    print(f"{checkout['name']}: refiner steps tuned: {refiner_steps_tuned}")
    warning = REFINER_TUNED if refiner_steps_tuned else REFINER_UNTUNED
    assert warning in webui.log_text()[logged:], f"refiner steps tuned: {refiner_steps_tuned}"


def test_errors_and_warnings_reach_the_console_after_a_host_traceback(webui):
    """A request the webui fails with a traceback (an unknown hires upscaler), then Skip Tuning's error
    (rho_bottom -1) and its refiner warning: both still in the console (the server's stdout and stderr)."""
    status, models = webui.request("/sdapi/v1/sd-models")
    if not any(m["model_name"] == REFINER for m in models):
        pytest.skip(f"{REFINER} is not in this checkout")
    logged = len(webui.log_text())
    status, body = webui.request("/sdapi/v1/txt2img", {**BASE, **HIRES, "hr_upscaler": "no such upscaler"})
    assert status == 500, (status, body)
    deadline = time.monotonic() + 120  # Forge prints the traceback after it has answered
    while "named no such upscaler" not in webui.log_text()[logged:] and time.monotonic() < deadline:
        time.sleep(1)
    assert "Traceback" in webui.log_text()[logged:] and "named no such upscaler" in webui.log_text()[logged:]
    logged = len(webui.log_text())
    webui.generate([True, -1.0, 1.0])
    webui.generate(ON, steps=4, refiner_checkpoint=REFINER, refiner_switch_at=0.55)
    console = webui.log_text()[logged:]
    assert BAD_ARGS_ERROR + ": rho_bottom" in console
    assert REFINER_TUNED in console or REFINER_UNTUNED in console


# ---------------------------------------------------------------------------------------------
# X/Y/Z plot through the API, with the UI and without it (--nowebui)


def xyz_request(server: Server, axis: str, values: str, skip_tuning_args) -> list:
    """The cell images of an X/Y/Z plot over ``axis`` (index into the plot's own axis list)."""
    info = script_info(server, "x/y/z plot")
    labels = [arg["label"] for arg in info["args"]]
    args = [arg["value"] for arg in info["args"]]
    for label in ("X type", "Y type", "Z type"):  # the API takes the index, script-info gives the label
        index = labels.index(label)
        args[index] = info["args"][index]["choices"].index(args[index])
    x_type = labels.index("X type")
    assert axis in info["args"][x_type]["choices"], info["args"][x_type]["choices"]
    args[x_type] = info["args"][x_type]["choices"].index(axis)
    x_values = labels.index("X values")
    args[x_values] = values
    args[x_values + 1] = values.split(",")  # the dropdown that axes with choices read
    args[next(i for i, label in enumerate(labels) if "sub images" in label.lower())] = True
    body = server.generate(skip_tuning_args, script_name="x/y/z plot", script_args=args)
    cells = values.count(",") + 1
    assert len(body["images"]) == cells + 1  # the grid, then each cell
    return [decode(b64) for b64 in body["images"][1:]]


@pytest.mark.parametrize("api_only", [False, True], ids=["ui", "nowebui"])
def test_xyz_axes_through_the_api(webuis, checkout, image, api_only):
    off, on = image(), image(ON)
    server = webuis.get(checkout, api_only=api_only)
    assert xyz_request(server, "[Skip Tuning] rho_bottom", "1.0,0.8", [False, 0.8, 1.0]) == [off, on]
    assert xyz_request(server, "[Skip Tuning] On/Off", "On,Off", [False, 0.8, 1.0]) == [on, off]


def test_nowebui_lists_the_script_and_tunes(webui_api_only, image):
    assert [arg["label"] for arg in script_info(webui_api_only, TITLE)["args"]][0] == TITLE
    assert webui_api_only.image(ON) == image(ON)

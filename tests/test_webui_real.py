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
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sd_webui_script import REFINER_TUNED, REFINER_UNTUNED
from skip_tuning_core.infotext import KEY_ENABLED, KEY_END, KEY_PASSES, KEY_RHO_BOTTOM, KEY_RHO_TOP, KEY_START

PIL = pytest.importorskip("PIL.Image", reason="Pillow is needed to compare the webuis' images")

CONFIG_FILE = "skip_tuning_webui.json"
START_TIMEOUT = 600
REQUEST_TIMEOUT = 600
TITLE = "Skip Tuning"
BAD_ARGS_ERROR = "Skip Tuning is off for this generation"


def configured_checkouts() -> list[dict]:
    checkouts = []
    for path in filter(None, os.environ.get("SKIP_TUNING_WEBUI_PATHS", "").split(os.pathsep)):
        config_file = Path(path) / CONFIG_FILE
        if not config_file.is_file():
            raise pytest.UsageError(f"SKIP_TUNING_WEBUI_PATHS: {config_file} is missing (run setup_webui.py)")
        config = json.loads(config_file.read_text())
        config["path"] = str(Path(path).resolve())
        checkouts.append(config)
    return checkouts


CHECKOUTS = configured_checkouts()
pytestmark = [
    pytest.mark.webui_real,
    pytest.mark.skipif(not CHECKOUTS, reason="no real webui configured: set SKIP_TUNING_WEBUI_PATHS to checkouts "
                                             "made by tests/webui_real/setup_webui.py"),
]

BASE = {
    "prompt": "a photo of a cat", "negative_prompt": "", "seed": 1234, "steps": 2, "width": 64, "height": 64,
    "cfg_scale": 1, "sampler_name": "Euler", "batch_size": 1, "n_iter": 1, "send_images": True, "save_images": False,
}
HIRES = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "hr_second_pass_steps": 1,
         "denoising_strength": 0.6, "hr_additional_modules": ["Use same choices"]}
ON = [True, 0.8, 1.0]
REFINER = "skip-tuning-random-sd15-refiner"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def decode(image_b64: str):
    """RGB pixels of an API image (not the PNG's text chunks, which hold the infotext; reForge's
    X/Y/Z cells come back as RGBA)."""
    image = PIL.open(io.BytesIO(base64.b64decode(image_b64.split(",", 1)[-1]))).convert("RGB")
    return image.mode, image.size, image.tobytes()


class Server:
    """One running webui: the process (its own process group), its port and its log."""

    def __init__(self, config: dict, api_only: bool, log_path: Path):
        self.config, self.api_only, self.log_path = config, api_only, log_path
        self.port = free_port()
        args = [config["python"], "launch.py", *config["args"], "--port", str(self.port),
                "--nowebui" if api_only else "--api"]
        env = {**os.environ, **config["env"], "PYTHONUNBUFFERED": "1"}
        env.pop("SKIP_TUNING_WEBUI_PATHS", None)
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen(args, cwd=config["path"], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready()
            # reForge's live previews try to download a preview decoder: off for all, they are not tested here
            self.request("/sdapi/v1/options", {"live_previews_enable": False})
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.config['name']} exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                if self.request("/sdapi/v1/sd-models", timeout=5)[0] == 200:  # the UI answers 404 before the API is up
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(2)
        raise RuntimeError(f"{self.config['name']} did not start in {START_TIMEOUT} s:\n{self.log_tail()}")

    def stop(self):
        if self.process.poll() is None:
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    def request(self, path: str, payload=None, timeout: float = REQUEST_TIMEOUT):
        """(status, decoded JSON) of GET (no payload) or POST."""
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def generate(self, args=None, endpoint="txt2img", **fields):
        """The response of one generation; ``args`` are Skip Tuning's (positional list or dict)."""
        payload = {**BASE, **fields}
        if args is not None:
            payload.setdefault("alwayson_scripts", {})[TITLE] = {"args": args if isinstance(args, list) else [args]}
        status, body = self.request(f"/sdapi/v1/{endpoint}", payload)
        assert status == 200, f"HTTP {status}: {body}\n{self.log_tail()}"
        return body

    def image(self, args=None, **fields):
        return decode(self.generate(args, **fields)["images"][0])


class Webuis:
    """At most one webui process at a time (the machine is small); images cached by request."""

    def __init__(self, log_dir: Path):
        self.log_dir, self.server, self.images = log_dir, None, {}

    def get(self, config: dict, api_only: bool) -> Server:
        current = self.server
        if current is not None and current.config is config and current.api_only == api_only:
            return current
        self.close()
        mode = "nowebui" if api_only else "api"
        self.server = Server(config, api_only, self.log_dir / f"{config['name']}-{mode}.log")
        return self.server

    def close(self):
        if self.server is not None:
            server, self.server = self.server, None
            server.stop()


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
    """A same-architecture refiner for the last of 4 steps: tuned or not, the console warning says which."""
    status, models = webui.request("/sdapi/v1/sd-models")
    if not any(m["model_name"] == REFINER for m in models):
        pytest.skip(f"{REFINER} is not in this checkout")
    refiner = {"steps": 4, "refiner_checkpoint": REFINER, "refiner_switch_at": 0.55}
    logged = len(webui.log_text())
    off = webui.image(**refiner)
    whole = webui.image([True, 0.8, 1.0, 0, 100], **refiner)
    base_only = webui.image([True, 0.8, 1.0, 0, 60], **refiner)  # steps 0-2: every base step (refiner from 2 or 3)
    assert whole != off and base_only != off
    refiner_steps_tuned = whole != base_only
    print(f"{checkout['name']}: refiner steps tuned: {refiner_steps_tuned}")
    warning = REFINER_TUNED if refiner_steps_tuned else REFINER_UNTUNED
    assert warning in webui.log_text()[logged:], f"refiner steps tuned: {refiner_steps_tuned}"


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

"""Starting, querying and stopping the real webuis of the test tier (tests/test_webui_real*.py).

A checkout is a folder made by setup_webui.py, named in SKIP_TUNING_WEBUI_PATHS (os.pathsep-separated);
its ``skip_tuning_webui.json`` says how to start it. Each webui runs CPU-only on a loopback port in its own
process group, one at a time (the machine is small), and is killed (the whole group) when its tests end.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CONFIG_FILE = "skip_tuning_webui.json"
START_TIMEOUT = 600
REQUEST_TIMEOUT = 600
TITLE = "Skip Tuning"
BAD_ARGS_ERROR = "Skip Tuning is off for this generation"
SDNEXT = "sdnext"
SDNEXT_PROBE = "/skip-tuning-probe/state"  # tests/webui_real/sdnext_probe

# A random-weight SD1.5 at 64x64, 2 steps, CFG 1 (one U-Net call per step: a step still takes seconds on a CPU).
BASE = {
    "prompt": "a photo of a cat", "negative_prompt": "", "seed": 1234, "steps": 2, "width": 64, "height": 64,
    "cfg_scale": 1, "sampler_name": "Euler", "batch_size": 1, "n_iter": 1, "send_images": True, "save_images": False,
}


def configured_checkouts(sdnext: bool) -> list[dict]:
    """The configured checkouts of SD.Next (``sdnext``) or of the A1111 family (A1111, Forge, reForge)."""
    checkouts = []
    for path in filter(None, os.environ.get("SKIP_TUNING_WEBUI_PATHS", "").split(os.pathsep)):
        config_file = Path(path) / CONFIG_FILE
        if not config_file.is_file():
            raise pytest.UsageError(f"SKIP_TUNING_WEBUI_PATHS: {config_file} is missing (run setup_webui.py)")
        config = json.loads(config_file.read_text())
        config["path"] = str(Path(path).resolve())
        if (config.get("webui") == SDNEXT) == sdnext:
            checkouts.append(config)
    return checkouts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def decode(image_b64: str):
    """RGB pixels of an API image (not the PNG's text chunks, which hold the infotext; reForge's
    X/Y/Z cells come back as RGBA)."""
    import PIL.Image

    image = PIL.Image.open(io.BytesIO(base64.b64decode(image_b64.split(",", 1)[-1]))).convert("RGB")
    return image.mode, image.size, image.tobytes()


class Server:
    """One running webui: the process (its own process group), its port and its log.

    A1111/Forge/reForge start with ``--api`` or ``--nowebui`` (``api_only``) and are ready when the API
    lists the models; SD.Next always serves its API and is ready when the test probe reports the model
    loaded (its server answers while the model still loads).
    """

    def __init__(self, config: dict, api_only: bool, log_path: Path):
        self.config, self.api_only, self.log_path = config, api_only, log_path
        self.sdnext = config.get("webui") == SDNEXT
        self.port = free_port()
        args = [config["python"], "launch.py", *config["args"], "--port", str(self.port)]
        if not self.sdnext:
            args.append("--nowebui" if api_only else "--api")
        env = {**os.environ, **config["env"], "PYTHONUNBUFFERED": "1"}
        env.pop("SKIP_TUNING_WEBUI_PATHS", None)
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen(args, cwd=config["path"], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready()
            if not self.sdnext:
                # reForge's live previews try to download a preview decoder: off for all, they are not tested here
                self.request("/sdapi/v1/options", {"live_previews_enable": False})
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.sdnext:
            status, body = self.request(SDNEXT_PROBE, timeout=5)
            return status == 200 and body["model_loaded"]
        return self.request("/sdapi/v1/sd-models", timeout=5)[0] == 200  # the UI answers 404 before the API is up

    def _wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.config['name']} exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                if self._ready():
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

    def generate(self, args=None, endpoint="txt2img", timeout: float = REQUEST_TIMEOUT, **fields):
        """The response of one generation; ``args`` are Skip Tuning's (positional list or dict)."""
        payload = {**BASE, **fields}
        if args is not None:
            payload.setdefault("alwayson_scripts", {})[TITLE] = {"args": args if isinstance(args, list) else [args]}
        status, body = self.request(f"/sdapi/v1/{endpoint}", payload, timeout)
        assert status == 200, f"HTTP {status}: {body}\n{self.log_tail()}"
        return body

    def image(self, args=None, timeout: float = REQUEST_TIMEOUT, **fields):
        return decode(self.generate(args, timeout=timeout, **fields)["images"][0])


class Webuis:
    """At most one webui process at a time (the machine is small); images cached by request."""

    def __init__(self, log_dir: Path):
        self.log_dir, self.server, self.images = log_dir, None, {}

    def get(self, config: dict, api_only: bool = False) -> Server:
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

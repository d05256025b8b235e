"""A real InvokeAI server for the tests: started headless on the CPU on 127.0.0.1, driven over its HTTP API.

``INVOKEAI_VENV`` (default: .venv-invokeai in the repository root, built by ``setup_invokeai.py venv``) holds
InvokeAI; its ``invokeai-web`` runs with a fresh root in a temporary folder, the pack cloned into ``ROOT/nodes/``
(from a git snapshot of the working tree), and is stopped by its PID.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SETUP = Path(__file__).with_name("setup_invokeai.py")
INVOKEAI_VERSION = "6.14.2"
PACK = "skip-tuning"  # the folder a `git clone` of the repository creates, and so the pack's name
START_TIMEOUT = 600  # seconds: 76 s measured on 2 cores with other work running, 269 s under heavy load


def invokeai_venv() -> Path:
    return Path(os.environ.get("INVOKEAI_VENV") or REPO_ROOT / ".venv-invokeai")


def missing_requirement() -> str | None:
    """Why the real tier cannot run here, or None."""
    venv = invokeai_venv()
    if not (venv / "bin" / "invokeai-web").exists():
        return (f"no InvokeAI in {venv} (set INVOKEAI_VENV, or build it: python3.11 "
                f"tests/invokeai_real/setup_invokeai.py venv)")
    if shutil.which("git") is None:
        return "git is needed to clone the pack into nodes/"
    version = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('invokeai'))"],
                             capture_output=True, text=True).stdout.strip()
    if version != INVOKEAI_VERSION:
        return f"{venv} holds InvokeAI {version or '(none)'}, the tier is written for {INVOKEAI_VERSION}"
    return None


def working_tree_snapshot(dest: Path) -> Path:
    """A git repository at ``dest/skip-tuning`` holding the working tree as it is (tracked and new files that
    git does not ignore), committed, so that it can be cloned like the published repository."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    source = dest / PACK
    for name in filter(None, files):
        path = REPO_ROOT / name
        if path.is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, source / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "-c", "commit.gpgsign=false"]
    for command in (["init", "-q"], ["add", "--all"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run([*git, *command], cwd=source, check=True, capture_output=True)
    return source


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class InvokeAIServer:
    def __init__(self, root: Path, extra_packs: dict[str, Path]):
        self.root = root
        self.extra_packs = extra_packs
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "server.log"
        self.process: subprocess.Popen | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self, pack_source: Path) -> None:
        nodes = self.root / "nodes"
        nodes.mkdir(parents=True)
        subprocess.run(["git", "clone", "-q", str(pack_source), str(nodes / PACK)], check=True, capture_output=True)
        for name, path in self.extra_packs.items():
            shutil.copytree(path, nodes / name)
        # The invocation cache would hand back a repeated node's output: off, so every run really runs.
        (self.root / "invokeai.yaml").write_text("schema_version: 4.0.3\nnode_cache_size: 0\n")
        env = {**os.environ, "INVOKEAI_DEVICE": "cpu", "INVOKEAI_PRECISION": "float32",
               "INVOKEAI_HOST": "127.0.0.1", "INVOKEAI_PORT": str(self.port), "HF_HUB_OFFLINE": "1",
               "PYTHONUNBUFFERED": "1"}
        env.pop("USE_MODULAR_DENOISE", None)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([str(invokeai_venv() / "bin" / "invokeai-web"), "--root", str(self.root)],
                                            cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"InvokeAI exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get("/api/v1/app/version")
                return
            except OSError:
                time.sleep(2)
        raise RuntimeError(f"InvokeAI did not answer within {START_TIMEOUT} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- HTTP -----------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body=None, timeout: float = 60) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def get(self, path: str):
        status, body = self.request("GET", path)
        assert status == 200, (path, status, body[:2000])
        return json.loads(body)

    def send(self, method: str, path: str, body=None):
        status, payload = self.request(method, path, body)
        assert status in (200, 201), (method, path, status, payload[:3000])
        return json.loads(payload) if payload else None

    def upload_image(self, image) -> str:
        """Upload a PIL image as the web UI does; its image name, for a graph's ImageField."""
        png = io.BytesIO()
        image.save(png, format="PNG")
        boundary = f"skip-tuning-{time.monotonic_ns()}"
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="upload.png"\r\n'
                f"Content-Type: image/png\r\n\r\n").encode() + png.getvalue() + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(
            self.url + "/api/v1/images/upload?image_category=general&is_intermediate=false", data=body,
            method="POST", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["image_name"]

    # -- models ---------------------------------------------------------------------------------------------
    def install_model(self, path: Path, timeout: float = 300) -> dict:
        job = self.send("POST", f"/api/v2/models/install?source={urllib.request.quote(str(path))}&inplace=true", {})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"/api/v2/models/install/{job['id']}")
            if job["status"] == "completed":
                key = job["config_out"]["key"] if job.get("config_out") else None
                key = key or next(model["key"] for model in self.get("/api/v2/models/")["models"]
                                  if model["path"].rstrip("/").endswith(path.name))
                return self.get(f"/api/v2/models/i/{key}")
            if job["status"] in ("error", "cancelled"):
                raise RuntimeError(f"model install failed: {job.get('error')}\n{self.log()[-3000:]}")
            time.sleep(1)
        raise RuntimeError(f"model install did not finish in {timeout} s")

    # -- the queue ------------------------------------------------------------------------------------------
    def enqueue(self, graph: dict, data: list | None = None) -> list[int]:
        batch = {"graph": graph, "runs": 1}
        if data:
            batch["data"] = data
        result = self.send("POST", "/api/v1/queue/default/enqueue_batch", {"batch": batch, "prepend": False})
        return list(result["item_ids"])

    def wait(self, item_id: int, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            item = self.get(f"/api/v1/queue/default/i/{item_id}")
            if item["status"] in ("completed", "failed", "canceled"):
                return item
            time.sleep(0.3)
        raise RuntimeError(f"queue item {item_id} did not finish in {timeout} s:\n{self.log()[-3000:]}")

    def image(self, item: dict, node_id: str):
        """The pixels (a PIL image, RGB) that node ``node_id`` of the finished item saved."""
        from PIL import Image

        assert item["status"] == "completed", (item["status"], item.get("error_message"), item.get("error_traceback"))
        session = item["session"]
        prepared = session["source_prepared_mapping"][node_id]
        (output,) = (session["results"][name] for name in prepared)
        status, png = self.request("GET", f"/api/v1/images/i/{output['image']['image_name']}/full")
        assert status == 200
        return Image.open(io.BytesIO(png)).convert("RGB")

"""A small DevTools-protocol driver for a headless Chromium, for the front-end tests.

Uses aiohttp's websocket client (ComfyUI itself needs aiohttp, so nothing extra to
install) on a private event loop, behind a plain synchronous interface.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The browser to drive: $CHROMIUM_PATH, else the first Chromium on PATH."""
    explicit = os.environ.get("CHROMIUM_PATH")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class BrowserError(RuntimeError):
    pass


class Chromium:
    """One headless Chromium with one page; ``console_errors`` collects what the page reports."""

    def __init__(self, executable: str, width: int = 1400, height: int = 900, timeout: float = 30.0):
        import aiohttp  # noqa: F401  (fail early, before starting a browser)

        self.profile = tempfile.mkdtemp(prefix="skip-tuning-chromium-")
        self.log_path = os.path.join(self.profile, "chromium.log")
        self.width, self.height = width, height
        self.console: list[dict] = []
        self._next_id = 0
        self._loop = asyncio.new_event_loop()
        self._session = None
        self._ws = None
        args = [
            executable,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--mute-audio",
            f"--user-data-dir={self.profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        try:
            self._connect(timeout)
        except BaseException:
            self.close()
            raise

    # -- connection -------------------------------------------------------------------------
    def _connect(self, timeout: float) -> None:
        import aiohttp

        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + timeout
        while not os.path.exists(port_file) or os.path.getsize(port_file) == 0:
            if self.process.poll() is not None:
                raise BrowserError(f"Chromium exited with {self.process.returncode}: {self._log_tail()}")
            if time.monotonic() > deadline:
                raise BrowserError(f"Chromium did not open its DevTools port: {self._log_tail()}")
            time.sleep(0.1)
        port = int(open(port_file).read().split()[0])

        async def connect():
            self._session = aiohttp.ClientSession()
            page_url = None
            while page_url is None:
                async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
                    targets = await response.json()
                page_url = next((t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"), None)
                if page_url is None:
                    if time.monotonic() > deadline:
                        raise BrowserError("Chromium has no page to drive")
                    await asyncio.sleep(0.1)
            ws_timeout = aiohttp.ClientWSTimeout(ws_close=timeout) if hasattr(aiohttp, "ClientWSTimeout") else timeout
            self._ws = await self._session.ws_connect(page_url, max_msg_size=0, timeout=ws_timeout)

        self._loop.run_until_complete(connect())
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                return log.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def close(self) -> None:
        async def disconnect():
            if self._ws is not None:
                await self._ws.close()
            if self._session is not None:
                await self._session.close()

        try:
            if not self._loop.is_closed():
                self._loop.run_until_complete(disconnect())
                self._loop.close()
        except Exception:
            pass
        if self.process.poll() is None:
            # Chromium's helpers live in the process group this object started.
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- protocol ---------------------------------------------------------------------------
    def _record(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled":
            args = params.get("args", [])
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in args)
            frames = params.get("stackTrace", {}).get("callFrames", [])
            self.console.append({"level": params.get("type"), "text": text,
                                 "urls": [f.get("url", "") for f in frames]})
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            frames = details.get("stackTrace", {}).get("callFrames", [])
            self.console.append({"level": "exception", "text": text,
                                 "urls": [details.get("url", "")] + [f.get("url", "") for f in frames]})
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.console.append({"level": entry.get("level"), "text": entry.get("text", ""),
                                 "urls": [entry.get("url", "")]})

    def send(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict:
        self._next_id += 1
        message_id = self._next_id

        async def call():
            await self._ws.send_str(json.dumps({"id": message_id, "method": method, "params": params or {}}))
            while True:
                message = await self._ws.receive(timeout=timeout)
                if message.type != 1:  # aiohttp.WSMsgType.TEXT
                    raise BrowserError(f"DevTools connection closed during {method}")
                data = json.loads(message.data)
                if data.get("id") == message_id:
                    return data
                self._record(data)

        try:
            reply = self._loop.run_until_complete(call())
        except asyncio.TimeoutError:
            raise BrowserError(f"no answer to {method} within {timeout} s") from None
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def evaluate(self, expression: str, timeout: float = 60.0):
        """Evaluate JavaScript in the page (promises awaited) and return its JSON value."""
        result = self.send("Runtime.evaluate", {
            "expression": expression, "awaitPromise": True, "returnByValue": True, "userGesture": True,
        }, timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript error: {text}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, interval: float = 0.2):
        """Poll ``expression`` until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for: {expression}")
            time.sleep(interval)

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def screenshot(self, path: str, clip: dict | None = None) -> str:
        params = {"format": "png"}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        data = self.send("Page.captureScreenshot", params)["data"]
        with open(path, "wb") as out:
            out.write(base64.b64decode(data))
        return path

    def mouse(self, kind: str, x: float, y: float, buttons: int = 0) -> None:
        self.send("Input.dispatchMouseEvent", {
            "type": kind, "x": x, "y": y, "button": "left" if kind != "mouseMoved" or buttons else "none",
            "buttons": buttons, "clickCount": 1 if kind != "mouseMoved" else 0,
        })

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 8) -> None:
        """Press at ``start``, move in ``steps`` and release at ``end``, like a user's drag."""
        self.mouse("mouseMoved", *start)
        self.mouse("mousePressed", *start, buttons=1)
        for k in range(1, steps + 1):
            x = start[0] + (end[0] - start[0]) * k / steps
            y = start[1] + (end[1] - start[1]) * k / steps
            self.mouse("mouseMoved", x, y, buttons=1)
        self.mouse("mouseReleased", *end)

    def errors_mentioning(self, *needles: str) -> list[dict]:
        """Console errors and exceptions whose text or source mentions one of ``needles``."""
        found = []
        for entry in self.console:
            if entry["level"] not in ("error", "exception", "assert"):
                continue
            haystack = (entry["text"] + " " + " ".join(entry["urls"])).lower()
            if any(needle.lower() in haystack for needle in needles):
                found.append(entry)
        return found

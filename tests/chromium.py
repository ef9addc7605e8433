"""Open a page in headless Chromium (Debian's package) over the DevTools protocol on a pipe, and
report what a person's browser would: console errors, uncaught exceptions, failed loads, every
URL it requested, facts evaluated in the page, and a screenshot.

No driver or websocket library: `--remote-debugging-pipe` reads commands on fd 3 and writes
replies on fd 4, each a JSON message ended by a NUL byte.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe"]


def browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageLoad:
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    facts: Any = None


class _Pipe:
    def __init__(self, write_fd: int, read_fd: int) -> None:
        self.write_fd, self.read_fd = write_fd, read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.time() + timeout
        while time.time() < deadline:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
            self.events.append(reply)
        raise TimeoutError(method)

    def wait_for(self, method: str, timeout: float = 30.0) -> None:
        deadline = time.time() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.time() > deadline:
                raise TimeoutError(method)
            self.events.append(self._read())

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            chunk = os.read(self.read_fd, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return dict(json.loads(message))


def open_page(path: Path, check: str, screenshot: Path | None = None) -> PageLoad:
    """Load `path` as file://, wait for its load event, evaluate the JS expression `check`
    (its JSON value comes back as `facts`), and collect errors and requests."""
    executable = browser()
    if executable is None:
        raise FileNotFoundError("chromium")
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def wire() -> None:  # via spare numbers: the pipes themselves may be fds 3 and 4
        spare_r, spare_w = os.dup(to_browser_r), os.dup(from_browser_w)
        os.dup2(spare_r, 3)  # dup2 leaves the copies inheritable, unlike os.pipe()'s fds
        os.dup2(spare_w, 4)

    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={profile}"],
                                preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        pipe = _Pipe(to_browser_w, from_browser_r)
        try:
            return _load(pipe, path, check, screenshot)
        finally:
            try:
                pipe.call("Browser.close", timeout=5)
            except (RuntimeError, TimeoutError, OSError):
                proc.kill()
            proc.wait(timeout=20)
            os.close(to_browser_w)
            os.close(from_browser_r)


def _load(pipe: _Pipe, path: Path, check: str, screenshot: Path | None) -> PageLoad:
    target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"]
    for domain in ("Runtime", "Log", "Network", "Page"):
        pipe.call(f"{domain}.enable", session=session)
    pipe.events.clear()
    pipe.call("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
    pipe.wait_for("Page.loadEventFired")
    facts = pipe.call("Runtime.evaluate", {"expression": check, "returnByValue": True},
                      session=session)["result"].get("value")
    if screenshot is not None:
        shot = pipe.call("Page.captureScreenshot", {"format": "png",
                                                    "captureBeyondViewport": True},
                         session=session)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
    load = PageLoad(facts=facts)
    for event in pipe.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in {"error", "assert"}:
            load.errors.append(f"console.{params['type']}: {params.get('args')}")
        elif method == "Runtime.exceptionThrown":
            load.errors.append(f"exception: {params.get('exceptionDetails')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            load.errors.append(f"log: {params['entry'].get('text')}")
        elif method == "Network.loadingFailed":
            load.errors.append(f"failed load: {params.get('errorText')}")
        elif method == "Network.requestWillBeSent":
            load.requests.append(str(params.get("request", {}).get("url", ""))[:80])
    return load

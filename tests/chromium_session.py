"""An interactive headless Chromium session over the DevTools pipe of tests/chromium.py: navigate,
evaluate JavaScript, wait for a condition, set a file input, accept downloads, and collect what a
person's browser would show as wrong (console errors, uncaught exceptions, failed loads) and
every URL the page requested."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from chromium import FLAGS, _Pipe, browser


class Session:
    def __init__(self) -> None:
        executable = browser()
        if executable is None:
            raise FileNotFoundError("chromium")
        self.profile = tempfile.TemporaryDirectory()
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()

        def wire() -> None:  # via spare numbers: the pipes themselves may be fds 3 and 4
            spare_r, spare_w = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(spare_r, 3)
            os.dup2(spare_w, 4)

        self.proc = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self.profile.name}",
             "--window-size=1200,900"], preexec_fn=wire, close_fds=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.pipe = _Pipe(to_browser_w, from_browser_r)
        self.seen = 0  # events already sorted into errors and requests
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.downloads: dict[str, str] = {}  # guid: state
        try:
            target = self.pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.pipe.call("Target.attachToTarget",
                                          {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Network", "Page", "DOM"):
                self.call(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    def call(self, method: str, params: dict[str, Any] | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        return self.pipe.call(method, params, session=self.session, timeout=timeout)

    def navigate(self, url: str, timeout: float = 30.0) -> None:
        self.pipe.events = [e for e in self.pipe.events if e.get("method") !=
                            "Page.loadEventFired"]
        self.call("Page.navigate", {"url": url})
        self.pipe.wait_for("Page.loadEventFired", timeout)

    def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """The JSON value of `expression` (awaited if it is a promise); a JS exception fails."""
        reply = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                               "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression!r}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait(self, expression: str, timeout: float, every: float = 0.5,
             what: str | None = None) -> Any:
        """Evaluate `expression` until it is truthy; its value. Times out with `what` (a JS
        expression describing the page) evaluated for the message."""
        deadline = time.time() + timeout
        while True:  # an element found is `true` (returnByValue would give `{}`)
            value = self.evaluate(f"(v => v instanceof Node || v)({expression})")
            if value:
                return value
            if time.time() > deadline:
                state = self.evaluate(what) if what else None
                raise TimeoutError(f"{expression} still false after {timeout:.0f}s: {state}")
            time.sleep(every)

    def click(self, selector: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    def fill(self, selector: str, value: str) -> None:
        """Type `value` into an input as a person would: its value set, input/change fired."""
        self.evaluate(f"""(() => {{ const el = document.querySelector({json.dumps(selector)});
            el.focus(); el.value = {json.dumps(value)};
            el.dispatchEvent(new Event('input', {{bubbles: true}}));
            el.dispatchEvent(new Event('change', {{bubbles: true}})); }})()""")

    def set_files(self, selector: str, paths: list[Path]) -> None:
        root = self.call("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
        node = self.call("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        if not node:
            raise LookupError(selector)
        self.call("DOM.setFileInputFiles", {"nodeId": node,
                                            "files": [str(p.resolve()) for p in paths]})

    def allow_downloads(self, folder: Path) -> None:
        self.pipe.call("Browser.setDownloadBehavior", {
            "behavior": "allowAndName", "downloadPath": str(folder), "eventsEnabled": True})

    def wait_download(self, suggested: str, timeout: float = 30.0) -> str:
        """The guid (file name under the download folder) of the completed download of
        `suggested`, a file name."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.evaluate("1")  # reads the events that arrived meanwhile
            guids = [e["params"]["guid"] for e in self.pipe.events
                     if e.get("method") == "Browser.downloadWillBegin"
                     and e["params"].get("suggestedFilename") == suggested]
            done = {e["params"]["guid"] for e in self.pipe.events
                    if e.get("method") == "Browser.downloadProgress"
                    and e["params"].get("state") == "completed"}
            for guid in guids:
                if guid in done:
                    return str(guid)
            time.sleep(0.3)
        raise TimeoutError(f"download of {suggested}")

    def collect(self) -> None:
        """Sort the events read so far into `errors` and `requests`."""
        for event in self.pipe.events[self.seen:]:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in {"error",
                                                                                "assert"}:
                self.errors.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Runtime.exceptionThrown":
                self.errors.append(f"exception: {params.get('exceptionDetails')}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                self.errors.append(f"log: {entry.get('text')} ({entry.get('url')})")
            elif method == "Network.loadingFailed":
                self.errors.append(f"failed load: {params.get('errorText')} "
                                   f"(canceled: {params.get('canceled')})")
            elif method == "Network.requestWillBeSent":
                self.requests.append(str(params.get("request", {}).get("url", "")))
        self.seen = len(self.pipe.events)

    def screenshot(self, path: Path) -> None:
        import base64

        shot = self.call("Page.captureScreenshot", {"format": "png",
                                                    "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        try:
            self.pipe.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            self.proc.kill()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.pipe.write_fd, self.pipe.read_fd):
            os.close(fd)
        self.profile.cleanup()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""A real `autofit serve` on loopback for tests: its own root, a free port, the admin token;
`kill()` is SIGKILL (the server's runs die with it), `stop()` a SIGTERM and a wait.

Datasets for it: `digits_npz` writes scikit-learn's embedded 8x8 digits as a .npz.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

START_S = 120.0  # Ray's start on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    root: Path
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        """The admin token the server wrote on first start."""
        return (self.root / "admin.token").read_text().strip()

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def client(self, token: str | None = None, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(token), timeout=timeout)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


def start(root: Path, port: int | None = None, *args: str) -> Server:
    """`autofit serve --root ROOT` on a free port, once it answers /healthz."""
    port = port or free_port()
    log = root.parent / f"{root.name}-serve-{port}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "autofit", "serve", "--root", str(root),
                                 "--port", str(port), *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    server = Server(root, port, proc, log)
    deadline = time.time() + START_S
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"autofit serve exited {proc.returncode}: {log.read_text()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"autofit serve did not answer in {START_S:.0f}s: {log.read_text()}")


@contextmanager
def running(root: Path, *args: str) -> Iterator[Server]:
    server = start(root, None, *args)
    try:
        yield server
    finally:
        server.stop()


def digits_npz(path: Path) -> Path:
    """scikit-learn's embedded 8x8 digits as autofit's .npz layout (no download)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images * (255 / 16)).astype(np.uint8)[..., None]
    y = digits.target.astype(np.int64)
    np.savez(path, x_train=x[:1400], y_train=y[:1400], x_test=x[1400:], y_test=y[1400:])
    return path


def wait_for(server: Server, run_id: str, statuses: tuple[str, ...], timeout: float,
             token: str | None = None) -> dict[str, Any]:
    """The run once its status is one of `statuses` (seen with `token`, default the admin's)."""
    deadline = time.time() + timeout
    run: dict[str, Any] = {}
    with server.client(token) as client:
        while time.time() < deadline:
            run = client.get(f"/v1/runs/{run_id}").json()
            if run["status"] in statuses:
                return run
            time.sleep(0.5)
    raise TimeoutError(f"run {run_id} still {run.get('status')} after {timeout:.0f}s: {run}")

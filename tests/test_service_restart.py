"""Nothing lost: `autofit serve` killed with SIGKILL while runs are queued and running, then
started again on the same root. Queued runs are still queued in order, the running run
resumes with the budget it had left, and a finished run and its files are intact."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import service_server as ss

RUN_MINUTES = 0.8


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _processes_under(root: Path) -> list[int]:
    """Processes whose command line names the server's root (its runs, or itself)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if str(root).encode() in cmdline and int(entry.name) != os.getpid():
                found.append(int(entry.name))
    return found


def test_a_killed_server_loses_nothing(tmp_path: Path):
    root = tmp_path / "root"
    server = ss.start(root)
    try:
        with server.client() as client, open(ss.digits_npz(tmp_path / "d.npz"), "rb") as f:
            digits = client.post("/v1/datasets", files={"file": ("d.npz", f)}).json()["id"]

            def submit(minutes: float) -> str:
                answer = client.post("/v1/runs", json={"dataset": digits, "minutes": minutes,
                                                       "max_params": "200k"})
                assert answer.status_code == 202, answer.text
                return str(answer.json()["id"])

            done = submit(RUN_MINUTES)
            ss.wait_for(server, done, ("finished",), 200)
            kept = {name: _sha(root / "runs" / done / name)
                    for name in ("model.onnx", "summary.json", "report.html")}
            running, first, second = submit(1.2), submit(RUN_MINUTES), submit(RUN_MINUTES)
            ss.wait_for(server, running, ("running",), 60)
            deadline = time.time() + 120
            while time.time() < deadline:
                before = client.get(f"/v1/runs/{running}").json()
                if (before["used_s"] or 0) >= 25:
                    break
                time.sleep(0.5)
        assert before["status"] == "running" and before["used_s"] >= 25, before
        assert len(_processes_under(root)) >= 2  # the server and its run
        server.kill()
        deadline = time.time() + 20
        while _processes_under(root) and time.time() < deadline:
            time.sleep(0.5)
        assert _processes_under(root) == []  # the run died with the server

        server = ss.start(root)
        with server.client() as client:
            runs = {r["id"]: r for r in client.get("/v1/runs").json()["runs"]}
            assert runs[done]["status"] == "finished"
            assert runs[first]["status"] == "queued" and runs[first]["position"] == 1
            assert runs[second]["status"] == "queued" and runs[second]["position"] == 2
            assert runs[running]["status"] == "running"

            resumed = ss.wait_for(server, running, ("finished", "failed", "stopped"), 200)
            assert resumed["status"] == "finished", resumed
            summary = resumed["summary"]
            assert summary["resumes"] == 1
            # the budget it had left: both lives together within the 72 s it was given
            assert resumed["used_s"] <= 1.2 * 60 + 1 and resumed["used_s"] > before["used_s"]
            assert resumed["test_accuracy"] is not None
            assert {name: _sha(root / "runs" / done / name) for name in kept} == kept
            assert client.get(f"/v1/runs/{done}/model.onnx").status_code == 200
            print(f"\nkilled at {before['used_s']:.1f}s used of 72s; resumed: "
                  f"{summary['resumes']} resume, {resumed['used_s']:.1f}s used, test accuracy "
                  f"{resumed['test_accuracy']:.4f}; queue kept: {first} then {second}")

            ss.wait_for(server, first, ("running", "finished"), 60)
            assert client.get(f"/v1/runs/{second}").json()["position"] == 1
    finally:
        server.stop()
    assert server.proc.returncode == 0  # SIGTERM: a clean shutdown
    assert _processes_under(root) == []


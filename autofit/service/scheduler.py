"""The queue: runs start in order, as normal `autofit run` processes on the server's Ray, when
the resources they plan to use are free; the scheduler notices how each ended.

A run plans one trial per Ray node with the node's CPUs and GPUs (search/cluster.py), so it
needs the whole cluster: it starts once our runs hold nothing and Ray says all of it is free.
Its clock starts then; the wait is `queued_s`. Every run process gets SIGKILL when the thread
that started it ends (prctl PR_SET_PDEATHSIG), so a server killed by SIGKILL leaves no run
behind, and the next server resumes each one with `--resume` and the budget it had left.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from autofit import stopping
from autofit.records import Summary
from autofit.service.db import Database

POLL_S = 0.5
STOP_GRACE_S = 15.0  # a SIGINT'd run records where it was in a second or two
PR_SET_PDEATHSIG = 1
log = logging.getLogger("autofit.serve")


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the scheduler's thread (the parent) ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Scheduler:
    """Starts and watches run processes from one long-lived thread of its own."""

    def __init__(self, db: Database, root: Path, ray_address: str,
                 storage: str | None = None) -> None:
        self.db, self.root, self.ray_address, self.storage = db, root, ray_address, storage
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="autofit-scheduler",
                                        daemon=True)

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def console(self, run_id: str) -> Path:
        return self.root / "logs" / f"{run_id}.txt"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Interrupt the runs (each records where it was, to resume at the next start)."""
        self._closing.set()
        self._thread.join(timeout=STOP_GRACE_S + 5)

    def _loop(self) -> None:
        while not self._closing.is_set():
            try:
                self._reap()
                self._start_next()
            except Exception:  # noqa: BLE001 - the queue must outlive one bad step
                log.exception("scheduler step failed")
            self._closing.wait(POLL_S)
        self._interrupt_all()

    def _interrupt_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        ends = time.time() + STOP_GRACE_S
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(ends - time.time(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _reap(self) -> None:
        for run_id, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.procs[run_id]
            summary = Summary.read(self.run_dir(run_id) / "summary.json")
            if summary is None:
                status, error = "failed", self._last_line(run_id, code)
            else:
                status, error = summary.status, summary.error
                if status == "stopped" and summary.test_accuracy is not None:
                    error = None
            self.db.update_run(run_id, when="running", status=status, error=error,
                               ended_at=time.time())
            log.info("run %s %s%s", run_id, status, f": {error}" if error else "")

    def _last_line(self, run_id: str, code: int) -> str:
        """Why a run process ended without a summary: its last error line, else its exit."""
        try:
            lines = self.console(run_id).read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        said = [line.strip() for line in lines if line.startswith("autofit: error:")]
        if said:
            return said[-1].removeprefix("autofit: error:").strip()
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        return f"the run process ended ({how}) without a summary"

    def _candidates(self) -> list[dict[str, Any]]:
        """Runs a server killed mid-run first (to resume), then the queue in order."""
        orphans = [r for r in self.db.runs(status="running") if r["id"] not in self.procs]
        return orphans + self.db.runs(status="queued")

    def _start_next(self) -> None:
        for run in self._candidates():
            if self.procs or not _cluster_free():
                return
            self._start(run)

    def _start(self, run: dict[str, Any]) -> None:
        run_id, run_dir = run["id"], self.run_dir(run["id"])
        resume = (run_dir / "journal.json").is_file()
        if resume:
            command = ["run", "--resume", str(run_dir)]
        else:
            dataset = self.db.dataset(run["owner"], run["dataset"])
            if dataset is None:
                self.db.update_run(run_id, status="failed", ended_at=time.time(),
                                   error=f"dataset {run['dataset']} was deleted")
                return
            command = self._new_run(run, dataset, run_dir)
        command += ["--ray-address", self.ray_address, "--quiet"]
        self.console(run_id).parent.mkdir(parents=True, exist_ok=True)
        with open(self.console(run_id), "ab") as console:
            self.procs[run_id] = subprocess.Popen(
                [sys.executable, "-m", "autofit", *command], stdin=subprocess.DEVNULL,
                stdout=console, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        now = time.time()
        first = run["started_at"] is None
        self.db.update_run(run_id, status="running", starts=run["starts"] + 1,
                           started_at=now if first else run["started_at"],
                           queued_s=round(now - run["created_at"], 3) if first
                           else run["queued_s"])
        log.info("run %s %s", run_id, "resumed" if resume else "started")

    def _new_run(self, run: dict[str, Any], dataset: dict[str, Any], run_dir: Path
                 ) -> list[str]:
        request = run["request"]
        data = self.root / "datasets" / dataset["id"] / dataset["data"]
        command = ["run", "--data", str(data), "--out", str(run_dir), "--seed",
                   str(request["seed"]), "--space", request["space"], "--budget",
                   request["budget"]]
        if request.get("minutes") is not None:
            command += ["--minutes", repr(float(request["minutes"]))]
        if request.get("max_params") is not None:
            command += ["--max-params", str(request["max_params"])]
        if request.get("max_latency_ms") is not None:
            command += ["--max-latency-ms", repr(float(request["max_latency_ms"]))]
        if request.get("quantize") is not None:
            command += ["--quantize", str(request["quantize"])]
        if self.storage is not None:
            command += ["--storage", self.storage]
        if run["stop_requested"]:  # stopped while it was being started
            run_dir.mkdir(parents=True, exist_ok=True)
            stopping.request(run_dir, by="autofit serve")
        return command


def _cluster_free() -> bool:
    """Whether Ray has every CPU and GPU of the cluster free (a run plans to use them all)."""
    import ray

    total, free = ray.cluster_resources(), ray.available_resources()
    return all(free.get(key, 0.0) >= total[key] - 1e-6 for key in ("CPU", "GPU")
               if total.get(key, 0.0) > 0)

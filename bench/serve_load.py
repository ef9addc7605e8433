"""`autofit serve` under load while a run trains: many clients on loopback asking /healthz,
one run's status and the run list at once. Writes counts, failures and latency percentiles
per endpoint, idle (no run) and busy (a run training on the same 2 cores), measured in one
process so the ratio holds on any machine.

    python bench/serve_load.py --out bench/results/serve-load.json [--clients 16]
        [--seconds 20] [--minutes 1.5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from common import ROOT, machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _digits(path: Path) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images * (255 / 16)).astype(np.uint8)[..., None]
    np.savez(path, x_train=x[:1400], y_train=digits.target[:1400], x_test=x[1400:],
             y_test=digits.target[1400:])
    return path


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _hammer(url: str, token: str, run_id: str, clients: int, seconds: float) -> dict[str, Any]:
    """`clients` threads, each cycling through the three calls until `seconds` pass."""
    paths = {"healthz": "/healthz", "run": f"/v1/runs/{run_id}", "runs": "/v1/runs"}
    times: dict[str, list[float]] = {name: [] for name in paths}
    failures: list[str] = []
    lock = threading.Lock()
    ends = time.time() + seconds

    def work(offset: int) -> None:
        names = list(paths)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                          timeout=30) as client:
            number = offset
            while time.time() < ends:
                name = names[number % len(names)]
                number += 1
                tick = time.perf_counter()
                try:
                    answer = client.get(paths[name])
                    ok, why = answer.status_code == 200, str(answer.status_code)
                except httpx.HTTPError as err:
                    ok, why = False, type(err).__name__
                took = time.perf_counter() - tick
                with lock:
                    times[name].append(took)
                    if not ok:
                        failures.append(f"{name}: {why}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"seconds": seconds, "clients": clients, "requests": sum(map(len, times.values())),
            "failures": len(failures), "failure_examples": failures[:5],
            "per_endpoint": {name: {
                "count": len(v), "p50_ms": round(1000 * statistics.median(v), 2),
                "p95_ms": round(1000 * _percentile(v, 95), 2),
                "p99_ms": round(1000 * _percentile(v, 99), 2),
                "max_ms": round(1000 * max(v), 2)} for name, v in times.items() if v}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--minutes", type=float, default=1.5, help="the run's budget")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="autofit-serve-load-") as tmp:
        root, port = Path(tmp) / "root", _free_port()
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        server = subprocess.Popen([sys.executable, "-m", "autofit", "serve", "--root", str(root),
                                   "--port", str(port)], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 120
            while time.time() < deadline:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            token = (root / "admin.token").read_text().strip()
            auth = {"Authorization": f"Bearer {token}"}
            with open(_digits(Path(tmp) / "digits.npz"), "rb") as handle:
                dataset = httpx.post(f"{url}/v1/datasets", headers=auth, timeout=60,
                                     files={"file": ("digits.npz", handle)}).json()["id"]
            run_id = httpx.post(f"{url}/v1/runs", headers=auth, json={
                "dataset": dataset, "minutes": args.minutes}).json()["id"]
            httpx.post(f"{url}/v1/runs/{run_id}/stop", headers=auth)  # queued: leaves the queue
            idle = _hammer(url, token, run_id, args.clients, args.seconds)
            run_id = httpx.post(f"{url}/v1/runs", headers=auth, json={
                "dataset": dataset, "minutes": args.minutes}).json()["id"]
            while httpx.get(f"{url}/v1/runs/{run_id}", headers=auth).json()["phase"] not in (
                    "search", "refit"):
                time.sleep(0.5)
            phase_at_start = httpx.get(f"{url}/v1/runs/{run_id}", headers=auth).json()["phase"]
            busy = _hammer(url, token, run_id, args.clients, args.seconds)
            status = httpx.get(f"{url}/v1/runs/{run_id}", headers=auth).json()
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    result = {
        "what": "autofit serve answering /healthz, GET /v1/runs/{id} and GET /v1/runs from "
                f"{args.clients} concurrent clients on loopback for {args.seconds:g} s, idle and "
                f"while a {args.minutes:g}-minute run trains on the same machine",
        "command": "python bench/serve_load.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "machine": machine(), "idle": idle,
        "busy": {**busy, "run_phase_at_start": phase_at_start,
                 "run_phase_at_end": status["phase"]},
        "p95_ratio_busy_over_idle": {
            name: round(busy["per_endpoint"][name]["p95_ms"] /
                        idle["per_endpoint"][name]["p95_ms"], 2)
            for name in busy["per_endpoint"]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("idle", "busy", "p95_ratio_busy_over_idle")},
                     indent=1))


if __name__ == "__main__":
    main()

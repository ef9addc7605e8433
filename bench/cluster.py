"""Benchmark: autofit on a two-node Ray cluster on loopback, with and without a node's death.

    python bench/cluster.py --minutes 2 --max-params 100k        # the embedded digits: searched
    python bench/cluster.py --data <image folder> --minutes 3 --max-params 300k

Three runs of the same command on the same data, in one go: (1) on this machine's own local
Ray (the baseline), (2) on a two-node cluster (`ray start --head` and `ray start --address`,
one CPU and a temp directory each, tests/ray_nodes.py) with `--storage` a folder that stands
for a shared mount, (3) the same with the worker node's raylet SIGKILLed at the first trial
report from it and its temp directory removed. Ray's own defaults for noticing a dead node.

Writes bench/results/cluster.json: per run the budget used and the wall time, trials per node,
the trials that failed and why, the seconds from the kill to the failure's record, where the
refit ran and how long Ray took to start it, and the test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
from common import write_record  # noqa: E402
from ray_nodes import LoopbackCluster  # noqa: E402

from autofit import events  # noqa: E402
from autofit.records import Summary  # noqa: E402


def _worker_reported(out: Path, worker: str) -> bool:
    return any(e.get("kind") == "trial_result" and str(e.get("node", "")).endswith(worker)
               for e in events.read(out)) if (out / events.FILE).is_file() else False


def one_run(name: str, args: argparse.Namespace, work: Path, env: dict[str, str],
            extra: list[str], cluster: LoopbackCluster | None = None,
            kill: bool = False) -> dict[str, Any]:
    out = work / name
    data = [] if args.data is None else ["--data", str(args.data)]
    command = [sys.executable, "-m", "autofit", "run", *data, "--minutes", str(args.minutes),
               "--max-params", args.max_params, "--out", str(out), "-q", *extra]
    start = time.time()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    killed_t = None
    if kill and cluster is not None:
        worker = cluster.node_ids()["worker"][:8]
        while proc.poll() is None and not _worker_reported(out, worker):
            time.sleep(0.2)
        if proc.poll() is None:
            cluster.kill_raylet("worker")
            shutil.rmtree(cluster.worker_dir)
            killed_t = max(float(e["t"]) for e in events.read(out))
    stdout, stderr = proc.communicate()
    wall = time.time() - start
    summary = Summary.read(out / "summary.json")
    record: dict[str, Any] = {"run": name, "command": " ".join(command), "exit": proc.returncode,
                              "wall_s": round(wall, 2), "result": stdout.strip()[-300:],
                              "error": stderr.strip()[-500:] if proc.returncode else None}
    if summary is None:
        return record
    ends = [e for e in events.read(out) if e.get("kind") == "trial_end"]
    failed = [{"trial": e["trial"], "error": e.get("error"), "t": e["t"]}
              for e in ends if e.get("status") == "error"]
    record.update({
        "budget_s": summary.budget_s, "elapsed_s": summary.elapsed_s,
        "phases": summary.phases, "trials": summary.trials, "trial_nodes": summary.trial_nodes,
        "trial_status": summary.trial_status, "failed": failed,
        "best_node": summary.best_node, "val_accuracy": summary.val_accuracy,
        "test_accuracy": summary.test_accuracy,
        "refit_node": summary.refit.node if summary.refit else None,
        "refit_start_s": summary.refit.start_s if summary.refit else None,
        "refit_epochs": summary.refit.epochs if summary.refit else None,
        "workers": summary.workers.where if summary.workers else None,
    })
    if killed_t is not None:
        record["killed_at_t"] = killed_t
        record["kill_to_failure_s"] = [round(f["t"] - killed_t, 2) for f in failed]
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="an image folder (default: the embedded digits)")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--max-params", default="300k")
    parser.add_argument("--out", type=Path, required=True, help="the JSON record to write")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as scratch:
        work = Path(scratch)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
        runs.append(one_run("local", args, work, env, []))
        print(json.dumps(runs[-1], indent=1), flush=True)
        for name, kill in (("two-nodes", False), ("two-nodes-worker-killed", True)):
            with LoopbackCluster(work / f"{name}-nodes", system_config=None) as cluster:
                runs.append(one_run(name, args, work, cluster.env,
                                    ["--ray-address", cluster.address, "--storage",
                                     str(work / f"{name}-shared")], cluster, kill))
                print(json.dumps(runs[-1], indent=1), flush=True)
    return write_record(args.out, {"minutes": args.minutes, "max_params": args.max_params,
                                   "data": str(args.data or "embedded digits"), "runs": runs})


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: autofit end to end on the CIFAR-10 JPEG set, timed from outside the process.

    python bench/cifar10.py --minutes 10 --max-params 2M

Appends one JSON line (budget, elapsed, test accuracy, params, trials, machine) to
bench/results/cifar10.jsonl and prints it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, add_data_argument, check_data, machine  # noqa: E402

from autofit.records import Summary  # noqa: E402

__all__ = ["machine"]  # bench/faults.py and bench/data_pipeline.py import it from here


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", default="10")
    parser.add_argument("--max-params", default="2M")
    add_data_argument(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--results", type=Path,
                        default=ROOT / "bench" / "results" / "cifar10.jsonl")
    args = parser.parse_args()
    if not check_data(args.data):
        return 2
    out = args.out or ROOT / "runs" / f"bench-cifar10-{time.strftime('%Y%m%d-%H%M%S')}"
    command = [sys.executable, "-m", "autofit", "run", "--data", str(args.data), "--minutes",
               str(args.minutes), "--max-params", str(args.max_params), "--out", str(out),
               "--seed", str(args.seed)]
    start = time.time()
    proc = subprocess.run(command)
    elapsed = time.time() - start
    if proc.returncode != 0:
        print(f"bench: autofit exited with {proc.returncode}", file=sys.stderr)
        return proc.returncode
    summary = Summary.read(out / "summary.json")
    if summary is None or summary.status != "finished" or summary.budget_s is None:
        print(f"bench: {out / 'summary.json'} is not a finished run's summary", file=sys.stderr)
        return 1
    record = {
        "bench": "cifar10",
        "budget_s": summary.budget_s,
        "max_params": summary.budget.max_params if summary.budget else None,
        "elapsed_s": round(elapsed, 2),
        "elapsed_over_budget": round(elapsed / summary.budget_s, 4),
        "test_accuracy": summary.test_accuracy,
        "val_accuracy": summary.val_accuracy,
        "params": summary.params,
        "trials": summary.trials,
        "best_config": summary.best_config.model_dump() if summary.best_config else None,
        "phases": summary.phases,
        "refit_epochs": summary.refit.epochs if summary.refit else None,
        "device": summary.device,
        "data_path": summary.data_path,
        "precision": summary.precision,
        "machine": machine(),
        "run_dir": str(out),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    line = json.dumps(record)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as handle:
        handle.write(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

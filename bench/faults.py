"""Benchmark: a real run killed with SIGKILL at random moments and resumed each time.

    python bench/faults.py --minutes 2 --kills 3

Each kill takes the whole process group (autofit and its local Ray), as a crash or power loss
would, at a random point of the run's budget time; `autofit run --resume` follows at once.
Writes bench/results/faults.json: runs completed, trials lost (started before a kill but
missing or failed afterwards; must be 0), finished trials whose result changed (must be 0),
and the budget time used against the budget, besides the wall time the kills added.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar10 import machine  # noqa: E402

from autofit.records import JournalState, Summary  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def spent(out: Path) -> float:
    journal = JournalState.read(out / "journal.json")
    return 0.0 if journal is None else sum(journal.spent.values())


def finished_trials(log: str) -> dict[int, float]:
    """Trials whose final result the run had recorded: best-so-far lines, and final states."""
    return {int(n): float(v) for n, v in
            re.findall(r"best so far: trial (\d+), val_acc ([0-9.]+)", log)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="image folder (default: embedded digits)")
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--max-params", default="200k")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "faults.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    budget_s = args.minutes * 60
    moments = sorted(rng.uniform(0.15, 0.9) * budget_s for _ in range(args.kills))
    run_dir = ROOT / "bench" / "results" / "faults-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, "-m", "autofit", "run", "--minutes", str(args.minutes),
               "--max-params", args.max_params, "--out", str(run_dir), "--seed", str(args.seed)]
    if args.data:
        command += ["--data", args.data]

    started = time.time()
    kills, started_trials, finished = [], set(), {}
    for moment in moments:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        while proc.poll() is None and spent(run_dir) < moment:
            time.sleep(0.05)
        if proc.poll() is not None:
            break  # the run finished (or failed) before this moment came
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log = (run_dir / "run.log").read_text()
        journal = JournalState.read(run_dir / "journal.json")
        started_trials |= {int(n) for n in re.findall(r"trial (\d+) start", log)}
        finished.update(finished_trials(log))
        kills.append({"at_budget_s": round(spent(run_dir), 1),
                      "phase": journal.phase if journal else None})
        print(f"killed at {kills[-1]['at_budget_s']}s of budget ({kills[-1]['phase']})",
              flush=True)
        command = [sys.executable, "-m", "autofit", "run", "--resume", str(run_dir)]
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.time() - started

    summary = Summary.read(run_dir / "summary.json")
    finished_run = summary is not None and summary.status == "finished"
    with open(run_dir / "leaderboard.csv") as handle:
        rows = {int(r["trial"]): r for r in csv.DictReader(handle)}
    lost = sorted(n for n in started_trials if n not in rows or rows[n]["status"] == "error")
    changed = sorted(n for n, v in finished.items()
                     if n not in rows or abs(float(rows[n]["val_accuracy"]) - v) > 1e-4)
    result = {
        "benchmark": "faults", "budget_s": budget_s, "max_params": args.max_params,
        "data": args.data or "embedded digits", "seed": args.seed, "kills": kills,
        "runs_completed": int(proc.returncode == 0 and finished_run),
        "exit_code": proc.returncode, "error": proc.stderr.strip()[-500:] or None,
        "trials_started_before_kills": len(started_trials),
        "trials_finished_before_kills": len(finished), "trials_final": len(rows),
        "trials_lost": len(lost), "lost": lost, "finished_trials_changed": len(changed),
        "budget_used_s": summary and summary.elapsed_s, "resumes": summary and summary.resumes,
        "within_budget": summary is not None and summary.elapsed_s <= budget_s + 5.0,
        "wall_s_including_restarts": round(wall, 1), "phases": summary and summary.phases,
        "test_accuracy": summary and summary.test_accuracy, "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

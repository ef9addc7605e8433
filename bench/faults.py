"""Benchmark: a real run SIGKILLed again and again, resumed each time; what did it lose?

    python bench/faults.py --minutes 2 --kills 3                       # random moments
    python bench/faults.py --minutes 4 --kills 12 --at boundaries      # Tune's checkpoint edges

`--at random`: each kill takes the whole process group (autofit and its local Ray), as a crash
or power loss would, at a random point of the run's budget time. `--at boundaries`: each life
is killed by autofit's own fault points (autofit/faults.py) at one of Tune's checkpoint
boundaries, drawn at random: a trial's K-th checkpoint written but not yet recorded
(`saved:*:K`), recorded with the previous one deleted but not yet in the experiment state
(`rotated:*:K`), or a trial's end before the state records it (`ended:*`); a life whose fault
never comes (the search is over) runs to the end. `autofit run --resume` follows each kill.
`--score` scores the model each kill left behind (best_so_far.onnx, from a trial or the
refit) on the run's own test split, before the resume:

    python bench/faults.py --data <CIFAR-10 JPEGs> --minutes 2 --max-params 300k --kills 3 --score

Writes bench/results/faults.json: per kill, where it struck and what the resume said; then
trials lost (started before a kill but missing or failed afterwards), finished trials whose
result changed, resumed trials whose first report had no more steps than their last before
the kill (training lost), the search's overrun of its deadline, and the budget used.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar10 import machine  # noqa: E402

from autofit import events  # noqa: E402
from autofit.records import JournalState, Summary  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BOUNDARIES = ("saved:*:{k}", "rotated:*:{k}", "ended:*")
SPLITS: dict[tuple[str | None, int], Any] = {}  # the run's data, decoded once


def spent(out: Path) -> float:
    journal = JournalState.read(out / "journal.json")
    return 0.0 if journal is None else sum(journal.spent.values())


def finished_trials(log: str) -> dict[int, float]:
    """Trials whose final result the run had recorded: best-so-far lines, and final states."""
    return {int(n): float(v) for n, v in
            re.findall(r"best so far: trial (\d+), val_acc ([0-9.]+)", log)}


def reports_by_life(out: Path) -> list[dict[int, list[dict]]]:
    """Each life's trial reports (events.jsonl), by trial number."""
    lives: list[dict[int, list[dict]]] = []
    for event in events.read(out):
        if event.get("kind") == "start":
            lives.append({})
        elif event.get("kind") == "trial_result" and lives:
            lives[-1].setdefault(int(event["trial"]), []).append(event)
    return lives


def training_lost(lives: list[dict[int, list[dict]]]) -> list[dict]:
    """Trials that reported on both sides of a kill and came back with fewer steps than they
    had reported: a running trial's next report must have more, a finished one's as many."""
    lost = []
    for life, (before, after) in enumerate(zip(lives, lives[1:], strict=False), start=1):
        for trial in before.keys() & after.keys():
            last, first = before[trial][-1], after[trial][0]
            need = last["steps"] + (1 if last["state"] == "running" else 0)
            if first["steps"] < need:
                lost.append({"kill": life, "trial": trial, "steps_before": last["steps"],
                             "steps_after": first["steps"]})
    return lost


def left_behind(run_dir: Path, data: str | None, seed: int) -> dict[str, object] | None:
    """The model a kill left (best_so_far.onnx), scored with onnxruntime on the run's test
    split (the run's seed gives the same split); None when there is none."""
    from autofit.data.dataset import load
    from autofit.deliver import best
    from autofit.deliver.evaluate import score_onnx

    record = best.read(run_dir)
    if record is None or not (run_dir / best.MODEL).is_file():
        return None
    if (data, seed) not in SPLITS:
        SPLITS[(data, seed)] = load(data, seed=seed, threads=2)
    split = SPLITS[(data, seed)]
    score = score_onnx(run_dir / best.MODEL, split.x_test, split.y_test, 2, len(split.classes))
    return {"source": record.source, "trial": record.trial, "epoch": record.epoch,
            "test_accuracy": round(score.accuracy, 4), "test_images": len(split.y_test)}


def live(command: list[str], faults: str | None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "AUTOFIT_FAULTS"}
    if faults:
        env["AUTOFIT_FAULTS"] = faults
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="image folder (default: embedded digits)")
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--max-params", default="200k")
    parser.add_argument("--budget", default=None, help="a budget preset instead of --minutes")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--at", choices=("random", "boundaries"), default="random")
    parser.add_argument("--score", action="store_true",
                        help="score the model each kill leaves on the run's test split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "faults.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    run_dir = ROOT / "bench" / "results" / "faults-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, "-m", "autofit", "run", "--max-params", args.max_params,
               "--out", str(run_dir), "--seed", str(args.seed)]
    command += ["--budget", args.budget] if args.budget else ["--minutes", str(args.minutes)]
    if args.data:
        command += ["--data", args.data]
    budget_s = args.minutes * 60
    moments = sorted(rng.uniform(0.15, 0.9) * budget_s for _ in range(args.kills))

    started = time.time()
    kills, started_trials, finished, ended = [], set(), {}, None
    for moment in moments:
        fault = None
        if args.at == "boundaries":
            fault = "kill@" + rng.choice(BOUNDARIES).format(k=rng.randint(1, 5))
        proc = live(command, fault)
        while proc.poll() is None and (fault or spent(run_dir) < moment):
            time.sleep(0.05)
        if proc.poll() is not None and proc.returncode != -signal.SIGKILL:
            ended = proc  # the run finished (or failed) before this kill came
            break
        os.killpg(proc.pid, signal.SIGKILL)  # the fault killed autofit; Ray's processes too
        proc.wait()
        log = (run_dir / "run.log").read_text()
        journal = JournalState.read(run_dir / "journal.json")
        started_trials |= {int(n) for n in re.findall(r"trial (\d+) start", log)}
        finished.update(finished_trials(log))
        kills.append({"fault": fault or "SIGKILL", "at_budget_s": round(spent(run_dir), 1),
                      "phase": journal.phase if journal else None,
                      **({"left_behind": left_behind(run_dir, args.data, args.seed)}
                         if args.score else {})})
        print(f"killed at {kills[-1]['at_budget_s']}s of budget ({kills[-1]['phase']}, "
              f"{kills[-1]['fault']})", flush=True)
        command = [sys.executable, "-m", "autofit", "run", "--resume", str(run_dir)]
    if ended is None:
        proc = subprocess.run(command, capture_output=True, text=True)
        returncode, error = proc.returncode, proc.stderr
    else:
        returncode, error = ended.returncode, ended.stderr.read().decode() if ended.stderr else ""
    wall = time.time() - started

    log = (run_dir / "run.log").read_text()
    resumes = [line.split("] ", 1)[-1] for line in log.splitlines()
               if re.search(r"search: trial \d+ (lost|resumes)|not continued", line)]
    summary = Summary.read(run_dir / "summary.json")
    finished_run = summary is not None and summary.status == "finished"
    budget_s = summary.budget_s if summary and summary.budget_s else budget_s
    with open(run_dir / "leaderboard.csv") as handle:
        rows = {int(r["trial"]): r for r in csv.DictReader(handle)}
    lost = sorted(n for n in started_trials if n not in rows or rows[n]["status"] == "error")
    changed = sorted(n for n, v in finished.items()
                     if n not in rows or abs(float(rows[n]["val_accuracy"]) - v) > 1e-4)
    regressed = training_lost(reports_by_life(run_dir))
    result = {
        "benchmark": "faults", "at": args.at, "budget_s": budget_s,
        "max_params": args.max_params, "data": args.data or "embedded digits",
        "seed": args.seed, "kills": kills, "resume_said": resumes,
        "runs_completed": int(returncode == 0 and finished_run),
        "exit_code": returncode, "error": error.strip()[-500:] or None,
        "trials_started_before_kills": len(started_trials),
        "trials_finished_before_kills": len(finished), "trials_final": len(rows),
        "trials_lost": len(lost), "lost": lost, "finished_trials_changed": len(changed),
        "trials_with_training_lost": len(regressed), "training_lost": regressed,
        "trials_error": sum(r["status"] == "error" for r in rows.values()),
        "search_overrun_s": summary and summary.search_overrun_s,
        "budget_used_s": summary and summary.elapsed_s, "resumes": summary and summary.resumes,
        "within_budget": summary is not None and summary.elapsed_s <= budget_s + 5.0,
        "wall_s_including_restarts": round(wall, 1), "phases": summary and summary.phases,
        "best_trial": summary and summary.best_trial,
        "test_accuracy": summary and summary.test_accuracy, "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

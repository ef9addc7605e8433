"""Kills at Ray Tune's checkpoint boundaries lose no training: a run killed after Tune deleted a
trial's previous checkpoint but before its experiment state named the new one, or after a new
checkpoint was written but before Tune recorded it, resumes each trial from its newest complete
checkpoint, marks nothing `error`, refits a trained winner, and keeps its deadlines. A search
whose trials never reach a rung refits the space's prior from scratch and says so."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autofit import events
from autofit.records import NO_CONTENDER, JournalState, Summary
from autofit.search.checkpoints import RECOVERED, _newest, repair_state
from autofit.train.loop import CHECKPOINT_FILE, save_state

BUDGET_S = 90.0


def _life(args: list[str], faults: str | None, timeout: float = 150) -> subprocess.CompletedProcess:
    """One life of the CLI in its own process group; Ray's processes are killed with it, as a
    crash leaves none."""
    env = {k: v for k, v in os.environ.items() if k != "AUTOFIT_FAULTS"}
    if faults:
        env["AUTOFIT_FAULTS"] = faults
    proc = subprocess.Popen([sys.executable, "-m", "autofit", "run", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    stdout, stderr = proc.communicate(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _reports_by_life(out: Path) -> list[dict[int, list[dict]]]:
    """Each life's trial reports (events.jsonl), by trial number."""
    lives: list[dict[int, list[dict]]] = []
    for event in events.read(out):
        if event.get("kind") == "start":
            lives.append({})
        elif event.get("kind") == "trial_result":
            lives[-1].setdefault(event["trial"], []).append(event)
    return lives


def test_kills_at_checkpoint_boundaries_resume_every_trial_from_its_newest_checkpoint(
        flat_folder: Path, tmp_path: Path):
    out = tmp_path / "run"
    first = _life(["--data", str(flat_folder), "--minutes", str(BUDGET_S / 60), "--max-params",
                   "100k", "--out", str(out), "--seed", "1"], "kill@rotated:1:3")
    assert first.returncode == -signal.SIGKILL, first.stderr  # the fault point was reached
    second = _life(["--resume", str(out)], "kill@saved:2:2")
    assert second.returncode == -signal.SIGKILL, second.stderr
    third = _life(["--resume", str(out)], None)
    assert third.returncode == 0, third.stderr
    assert "Traceback" not in third.stdout + third.stderr

    lives = _reports_by_life(out)
    assert len(lives) == 3
    for trial, before, after in ((1, lives[0], lives[1]), (2, lives[1], lives[2])):
        killed_at = before[trial][-1]  # the report whose checkpoint the kill caught
        assert trial in after, f"trial {trial} made no report after the resume"
        resumed = after[trial][0]
        assert resumed["steps"] > killed_at["steps"], (trial, killed_at, resumed)
        assert resumed["train_seconds"] >= killed_at["train_seconds"]

    with open(out / "leaderboard.csv") as handle:
        rows = {int(r["trial"]): r for r in csv.DictReader(handle)}
    assert {1, 2} <= set(rows)
    assert all(r["status"] != "error" and not r["error"] for r in rows.values()), rows

    text = (out / "run.log").read_text()
    # Tune's state named trial 1's second checkpoint, deleted when the third was recorded ...
    assert "search: trial 1 lost its recorded checkpoint checkpoint_000001" in text
    # ... and trial 2's second checkpoint was on disk before Tune recorded it
    assert "search: trial 2 resumes from step" in text

    summary = Summary.read(out / "summary.json")
    journal = JournalState.read(out / "journal.json")
    assert summary is not None and journal is not None and journal.plan is not None
    assert summary.status == "finished" and summary.resumes == 2
    winner = rows[summary.best_trial]  # a trained winner, warm-starting the refit
    assert float(winner["train_seconds"]) >= journal.plan.milestones[0]
    assert f"refit: warm start from the weights of trial {summary.best_trial}" in text
    assert summary.elapsed_s <= BUDGET_S + 5.0
    assert summary.search_overrun_s is not None and summary.search_overrun_s <= 1.5


def test_a_torn_experiment_state_starts_the_search_again(tmp_path: Path):
    import logging

    from ray import tune

    experiment = tmp_path / "search"
    experiment.mkdir()
    first, newer = experiment / "experiment_state-1.json", experiment / "experiment_state-2.json"
    first.write_text('{"trial_data": []}')
    repair_state(experiment, logging.getLogger("test"))
    assert first.exists()  # a whole state stays
    newer.write_text("")  # a later life's, torn by a kill in Tune's copy of it
    repair_state(experiment, logging.getLogger("test"))
    assert not first.exists() and not newer.exists()  # no earlier life's state is restored
    assert not tune.Tuner.can_restore(str(experiment))


def test_a_search_whose_trials_reach_no_rung_refits_the_prior_from_scratch(tmp_path: Path):
    """A 1.7 s search: its first trial starts (Ray, a worker, a pipeline) after the deadline
    and trains 0 s; its chance-level score is no winner and its weights no warm start."""
    budget = tmp_path / "tiny.yaml"
    budget.write_text("minutes: 0.75\nmax_params: 100k\nsearch_share: 0.06\n")
    out = tmp_path / "run"
    done = _life(["--budget", str(budget), "--out", str(out)], None)
    assert done.returncode == 0, done.stderr
    assert "| no trial reached a rung |" in done.stdout
    text = (out / "run.log").read_text()
    assert "search: no trial trained to its first rung" in text
    assert "the refit trains fastnet" in text and "refit: warm start" not in text
    journal = JournalState.read(out / "journal.json")
    assert journal is not None and journal.search is not None
    assert journal.search.prior is not None and journal.search.prior.status == NO_CONTENDER
    assert journal.search.records and not journal.search.contenders
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["best_trial"] is None
    assert summary["refit"]["warm_start"] is None


def _state(folder: Path, steps: int, partial: bool = False) -> Path:
    folder.mkdir(parents=True)
    state = {"model": {"w": torch.zeros(64)}, "counters": {"steps": steps}}
    save_state(state, folder / CHECKPOINT_FILE)
    if partial:  # a kill while Tune copied it into the trial's folder
        data = (folder / CHECKPOINT_FILE).read_bytes()
        (folder / CHECKPOINT_FILE).write_bytes(data[: len(data) // 2])
    return folder


@pytest.mark.parametrize("case", ["named-gone", "unrecorded", "named-newest", "nothing-left"])
def test_the_newest_complete_checkpoint_is_found_whatever_tunes_state_names(tmp_path: Path,
                                                                            case: str):
    trial = tmp_path / "trial"
    trial.mkdir()
    named = trial / "checkpoint_000002"
    if case in ("unrecorded", "named-newest"):
        _state(named, 20)
    if case in ("named-gone", "unrecorded"):  # written after the one Tune's state names
        _state(trial / "checkpoint_000003", 30)
    _state(trial / "checkpoint_000004", 40, partial=True)
    if case == "named-newest":
        _state(trial / RECOVERED, 10)  # an earlier resume's, now stale

    found = _newest(7, trial, named)

    assert not (trial / "checkpoint_000004").exists()  # the partial copy is gone
    assert named.is_dir()  # Tune restores only a checkpoint that exists
    if case == "named-newest":
        assert found.newest == named and found.steps == 20 and found.note is None
        assert not (trial / RECOVERED).exists()
    elif case == "nothing-left":
        assert found.newest is None and not any(named.iterdir())
        assert "no checkpoint is left: it starts again from scratch" in found.note
    else:
        assert found.newest == trial / RECOVERED and found.steps == 30
        assert not (trial / "checkpoint_000003").exists()  # moved, not copied
        assert ("lost its recorded checkpoint" in found.note) == (case == "named-gone")
        assert "resumes from step 30" in found.note

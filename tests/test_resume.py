"""Durable runs: SIGKILL at any moment, then `--resume`, finishes with the same artifacts, the
finished trials kept, and the budget counted only while the run was alive. Ctrl-C once stops
cleanly with a resume hint; twice exits at once."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autofit.data.dataset import load
from autofit.deliver.evaluate import score_onnx
from autofit.records import BestSoFarRecord, JournalState

ARTIFACTS = ("summary.json", "leaderboard.csv", "model.onnx", "model.pt", "best_so_far.onnx",
             "best_so_far.json", "journal.json", "run.log")


def _start(args: list[str]) -> subprocess.Popen[str]:
    """The CLI in its own process group, so a kill takes Ray's processes with it (a crash)."""
    return subprocess.Popen([sys.executable, "-m", "autofit", "run", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for(log: Path, pattern: str, proc: subprocess.Popen[str], timeout: float = 90) -> str:
    end = time.time() + timeout
    while time.time() < end:
        text = log.read_text() if log.exists() else ""
        if re.search(pattern, text):
            return text
        assert proc.poll() is None, f"run ended before {pattern!r}: {proc.stderr.read()}"
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} not in {log} after {timeout}s")


DEAD_S = 2.0  # how long each killed run lies dead before its resume


def _kill(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _finished_trials(log_text: str) -> dict[int, float]:
    """Trials whose final result had been recorded (best-so-far offers come after it)."""
    return {int(n): float(v) for n, v in
            re.findall(r"best so far: trial (\d+), val_acc ([0-9.]+)", log_text)}


def _score_best_so_far(data: Path, out: Path, finished: dict[int, float]) -> None:
    """best_so_far.onnx loads in onnxruntime and scores, on the run's own validation split
    (the same seed gives the same split), what its trial scored when it was exported."""
    record = BestSoFarRecord.read(out / "best_so_far.json")
    assert record is not None and record.trial in finished
    assert record.val_accuracy == pytest.approx(finished[record.trial], abs=1e-4)
    split = load(data, seed=_seed(out), threads=2)
    score = score_onnx(out / "best_so_far.onnx", split.x_val, split.y_val, 2,
                       len(split.classes))
    assert score.accuracy == pytest.approx(record.val_accuracy, abs=1.0 / len(split.y_val))


def _seed(out: Path) -> int:
    journal = JournalState.read(out / "journal.json")
    assert journal is not None
    return journal.args.seed


def test_kill_nine_twice_then_resume_loses_nothing(flat_folder: Path, tmp_path: Path):
    out = tmp_path / "run"
    log = out / "run.log"
    budget_s = 120.0  # three lives' set-up (15-20 s each) must leave the refit time to resume
    proc = _start(["--data", str(flat_folder), "--minutes", str(budget_s / 60), "--max-params",
                   "100k", "--out", str(out), "--seed", "2"])
    before = _finished_trials(_wait_for(log, r"trial 2 start", proc))
    _kill(proc)
    assert before
    _score_best_so_far(flat_folder, out, before)  # usable the moment trial 1 ended
    spent_at_kill = sum(json.loads((out / "journal.json").read_text())["spent"].values())

    time.sleep(DEAD_S)
    proc = _start(["--resume", str(out)])
    _wait_for(log, r"search: resuming the Ray Tune experiment", proc)
    _wait_for(log, r"refit: .* train\+val images for", proc)
    end = time.time() + 30
    while not (out / "refit.pt").exists() and time.time() < end:  # its first saved state
        assert proc.poll() is None, f"finished before the refit saved a state: {log.read_text()}"
        time.sleep(0.05)
    _kill(proc)

    time.sleep(DEAD_S)
    proc = _start(["--resume", str(out)])
    stdout, stderr = proc.communicate(timeout=budget_s + 60)
    assert proc.returncode == 0, stderr
    assert "test accuracy" in stdout and "Traceback" not in stdout + stderr

    for name in ARTIFACTS:
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["resumes"] == 2
    assert summary["elapsed_s"] <= budget_s + 5.0  # dead time does not count ...
    assert summary["wall_s"] - summary["elapsed_s"] >= 2 * DEAD_S - 0.2  # ... though it passed
    assert summary["elapsed_s"] >= spent_at_kill
    with open(out / "leaderboard.csv") as handle:
        rows = {int(r["trial"]): r for r in csv.DictReader(handle)}
    for number, val_accuracy in before.items():  # finished before the kill: kept as they were
        assert rows[number]["status"] in {"completed", "stopped by ASHA"}
        assert float(rows[number]["val_accuracy"]) == pytest.approx(val_accuracy, abs=1e-4)
    text = log.read_text()
    assert "refit: resuming" in text
    assert not (out / "refit.pt").exists()
    assert text.count("data: the decisions made before the interruption stand: mirror; "
                      "resolution; lr") == 2  # a timed test may not come out the same twice
    assert [d["name"] for d in summary["decisions"]][:3] == ["mirror", "resolution", "lr"]


def test_kill_during_the_report_resumes_into_the_report_alone(flat_folder: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "run"
    monkeypatch.setenv("AUTOFIT_FAULTS", "kill@report")  # after the test pass, as a crash
    proc = _start(["--data", str(flat_folder), "--minutes", "0.6", "--max-params", "100k",
                   "--out", str(out)])
    proc.wait(timeout=120)
    os.killpg(proc.pid, signal.SIGKILL)  # Ray's processes, as a crash leaves them
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "report.html").exists()
    assert json.loads((out / "journal.json").read_text())["status"] == "tested"
    scored = json.loads((out / "summary.json").read_text())
    model = (out / "model.onnx").read_bytes()

    monkeypatch.delenv("AUTOFIT_FAULTS")
    proc = _start(["--resume", str(out)])
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stdout + stderr
    for name in (*ARTIFACTS, "report.html", "events.jsonl"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["resumes"] == 1
    assert summary["test_accuracy"] == scored["test_accuracy"]
    assert summary["phases"]["report"] > 0 and summary["elapsed_s"] >= scored["elapsed_s"]
    assert (out / "model.onnx").read_bytes() == model  # not exported again
    text = (out / "run.log").read_text()
    assert "after its test pass; rendering the report" in text
    assert "data: " not in text.split("after its test pass")[1]  # no data loaded again
    assert json.loads((out / "journal.json").read_text())["status"] == "finished"
    with pytest.raises(subprocess.CalledProcessError):  # and now it is finished for good
        subprocess.run([sys.executable, "-m", "autofit", "run", "--resume", str(out)],
                       check=True, capture_output=True, timeout=60)


def _searching(flat_folder: Path, out: Path) -> subprocess.Popen[str]:
    """A one-minute run, once its first trial has started."""
    proc = _start(["--data", str(flat_folder), "--minutes", "1", "--max-params", "100k",
                   "--out", str(out)])
    _wait_for(out / "run.log", r"trial 1 start", proc)
    return proc


def test_ctrl_c_once_stops_cleanly_and_says_how_to_resume(flat_folder: Path, tmp_path: Path):
    out = tmp_path / "run"
    proc = _searching(flat_folder, out)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("autofit: error: interrupted after"), stderr
    assert f"resume with: autofit run --resume {out}" in lines[-1]
    assert "Traceback" not in stderr
    journal = json.loads((out / "journal.json").read_text())
    assert journal["status"] == "running" and journal["phase"] == "search"


def test_ctrl_c_twice_exits_at_once(flat_folder: Path, tmp_path: Path):
    proc = _searching(flat_folder, tmp_path / "run")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)  # as a person presses it again, while the clean stop is under way
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGINT and time.time() - sent < 1.0  # a shell shows 130
    os.killpg(proc.pid, signal.SIGKILL)  # Ray's processes, left as a hard exit leaves them


@pytest.mark.parametrize("args,needle", [
    (["--minutes", "2"], "--resume continues a run with its own options; drop --minutes"),
    ([], "--resume {run}: no journal.json there; not an autofit run directory"),
])
def test_resume_refuses_what_it_cannot_continue(tmp_path: Path, args, needle):
    proc = subprocess.run([sys.executable, "-m", "autofit", "run", "--resume", str(tmp_path),
                           *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    expected = f"autofit: error: {needle.format(run=tmp_path)}"
    assert proc.stderr.strip().splitlines() == [expected], proc.stderr

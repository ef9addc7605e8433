"""Stop a run now and keep its best model: `autofit stop RUN_DIR` (a request file the run's
heartbeat sees) ends a live run within seconds with its best exported model scored and
reported; a run asked to stop before any model exists says so, with no model."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import onnx

from autofit import stopping


def _autofit(*args: str) -> list[str]:
    return [sys.executable, "-m", "autofit", *args]


def _best_val(run_dir: Path) -> float:
    """The validation accuracy of the best model exported so far (-1 before the first)."""
    try:
        return float(json.loads((run_dir / "best_so_far.json").read_text())["val_accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1.0


def test_autofit_stop_ends_a_live_run_with_its_best_model(tmp_path: Path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(_autofit("run", "--minutes", "2", "--out", str(run_dir)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        while _best_val(run_dir) < 0.9 and time.time() < deadline:  # a trial past its rungs
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        assert _best_val(run_dir) >= 0.9
        asked = time.time()
        said = subprocess.run(_autofit("stop", str(run_dir)), capture_output=True, text=True,
                              timeout=60)
        assert said.returncode == 0, said.stderr
        out, err = proc.communicate(timeout=60)
        took = time.time() - asked
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert took < 20, took
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["stopped_phase"] in ("search", "refit")
    assert summary["test_accuracy"] > 0.8 and summary["elapsed_s"] < 100
    if summary["stopped_phase"] == "search":  # the model scored is the best trial's export
        assert (run_dir / "model.onnx").read_bytes() == (run_dir / "best_so_far.onnx").read_bytes()
    assert "stopped in the" in out and "model:" in out
    onnx.checker.check_model(onnx.load(str(run_dir / "model.onnx")))
    assert (run_dir / "report.html").is_file()
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events[-1]["kind"] == "done" and events[-1]["status"] == "stopped"
    again = subprocess.run(_autofit("run", "--resume", str(run_dir)), capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 2 and "already stopped" in again.stderr


def test_a_run_asked_to_stop_before_any_model_stops_without_one(tmp_path: Path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stopping.request(run_dir, by="test")
    done = subprocess.run(_autofit("run", "--minutes", "1", "--out", str(run_dir)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "autofit: error: stopped in the setup phase before any model was exported"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["test_accuracy"] is None
    assert summary["elapsed_s"] < 30 and not (run_dir / "model.onnx").exists()

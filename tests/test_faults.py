"""Faults inside real runs (real Ray Tune, DALI, ONNX): each leaves a finished run, or a clear
error with the work so far kept, and a record in summary.json and leaderboard.csv.

Faults are injected through AUTOFIT_FAULTS (autofit/faults.py): a raised error, NaN logits,
torch's out-of-memory error and a SIGKILL of the Ray worker, inside the real trainable.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from autofit import Budget, resume, run
from autofit.deliver.export import to_input
from autofit.errors import AutofitError


def _leaderboard(out: Path) -> dict[int, dict[str, str]]:
    with open(out / "leaderboard.csv") as handle:
        return {int(row["trial"]): row for row in csv.DictReader(handle)}


def _check_onnx(path: Path, classes: int = 4) -> dict[str, str]:
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = to_input(np.zeros((2, 16, 16, 3), np.uint8))
    assert session.run(["logits"], {"input": x})[0].shape == (2, classes)
    return {p.key: p.value for p in proto.metadata_props}


def test_failing_trials_never_end_the_search(flat_folder: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AUTOFIT_FAULTS", "raise@1,nan@2,oom@3,kill@4,oom-always@5")
    out = tmp_path / "run"
    budget = Budget(minutes=1.25, max_params="100k", search_share=0.8)
    start = time.time()
    result = run(flat_folder, budget, out=out, quiet=True)
    assert time.time() - start <= budget.seconds + budget.tolerance_s

    rows = _leaderboard(out)
    assert {1, 2, 3, 4, 5} <= set(rows), rows.keys()
    assert rows[1]["status"] == "error" and "injected fault in trial 1" in rows[1]["error"]
    assert rows[2]["status"] == "diverged"
    assert rows[3]["status"] in {"completed", "stopped by ASHA", "stopped at search deadline"}
    assert rows[3]["error"] == ""  # retried at half batch
    first_batch = min(int(rows[3]["batch_size"]), 88)  # 88 training images cap the batch
    assert rows[4]["status"] == "error" and "worker process died" in rows[4]["error"]
    assert rows[5]["status"] == "error" and "out of memory" in rows[5]["error"]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["trial_status"]["error"] >= 3
    assert summary["trial_status"]["diverged"] == 1
    oom = next(r for r in json.loads((out / "journal.json").read_text())["search"]["records"]
               if r["number"] == 3)
    assert oom["metrics"]["batch_size"] == first_batch // 2 and oom["metrics"]["oom_retries"] == 1
    assert result.summary.best_trial not in {1, 2, 4, 5, None}

    best = json.loads((out / "best_so_far.json").read_text())
    meta = _check_onnx(out / "best_so_far.onnx")
    assert best["trial"] not in {1, 2, 4, 5} and meta["source"] == best["source"]
    if best["source"] == "trial":  # the refit may have replaced it in its last quarter
        assert float(meta["val_accuracy"]) == best["val_accuracy"] >= 0.5
    else:
        assert best["trial"] == result.summary.best_trial and best["accuracy"] >= 0.5


def test_every_trial_failing_stops_early_with_the_first_error(flat_folder: Path,
                                                              tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AUTOFIT_FAULTS", "raise@*")
    out = tmp_path / "run"
    budget = Budget(minutes=1.5, max_params="100k")
    start = time.time()
    with pytest.raises(AutofitError, match="every trial failed; first error: .*injected fault "
                                           "in trial 1$"):
        run(flat_folder, budget, out=out, quiet=True)
    assert time.time() - start < 0.6 * budget.seconds  # it did not wait out the search
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failed_phase"] == "search"
    assert "injected fault in trial 1" in summary["error"]
    rows = _leaderboard(out)
    assert len(rows) == 3 and all(r["status"] == "error" for r in rows.values())
    assert not (out / "best_so_far.onnx").exists()


def test_full_disk_at_export_keeps_best_so_far_and_resumes(flat_folder: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AUTOFIT_FAULTS", "enospc@export")
    out = tmp_path / "run"
    with pytest.raises(AutofitError, match=r"cannot write .*model.onnx: No space left on "
                                           r"device; the refit weights are in .*model.pt"):
        run(flat_folder, Budget(minutes=0.6, max_params="100k"), out=out, quiet=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failed_phase"] == "export"
    assert summary["best_so_far"]["model"] == str(out / "best_so_far.onnx")
    assert (out / "leaderboard.csv").is_file() and not (out / "model.onnx").exists()
    before = (out / "best_so_far.onnx").read_bytes()
    _check_onnx(out / "best_so_far.onnx")
    assert not list(out.glob(".model-*"))  # no half-written temp file left behind

    monkeypatch.delenv("AUTOFIT_FAULTS")  # space freed: the run finishes without retraining
    result = resume(out, quiet=True)
    assert result.summary.status == "finished" and result.summary.resumes == 1
    assert "refit: done before the interruption" in (out / "run.log").read_text()
    _check_onnx(result.model_path)
    assert (out / "best_so_far.onnx").read_bytes() == before

"""`autofit extend RUN_DIR --minutes M`: a finished run trained for more minutes from its refit
weights, as a new run that names its parent, keeping the better model on validation; killed
and resumed like any run. One parent run (the embedded digits) serves every test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from autofit import Budget, extension, run
from autofit.data import pipeline
from autofit.data.dataset import load
from autofit.deliver.evaluate import Score, score_onnx
from autofit.records import Summary
from autofit.runner import extend

EXTEND_MINUTES = 0.6


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("extend") / "parent"
    run(None, Budget(minutes=0.8, max_params="200k"), out=out, seed=0, quiet=True)
    return out


def _val_images() -> tuple[np.ndarray, np.ndarray, int]:
    """The digits' validation split as the runs make it (same data, same seed)."""
    data = load(None, 0, 2, check=lambda shape: None, path=pipeline.choose("cpu"))
    return data.x_val, data.y_val, len(data.classes)


def _autofit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autofit", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_an_extension_killed_in_its_refit_resumes_and_keeps_the_better_model(parent: Path,
                                                                             tmp_path: Path):
    out = tmp_path / "extended"
    proc = subprocess.Popen([sys.executable, "-m", "autofit", "extend", str(parent),
                             "--minutes", str(EXTEND_MINUTES), "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    while not (out / "refit.pt").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()  # still training when killed
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = _autofit("run", "--resume", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    summary = Summary.read(out / "summary.json")
    assert summary is not None and summary.status == "finished" and summary.resumes == 1
    assert summary.elapsed_s <= EXTEND_MINUTES * 60 + 5  # both lives, inside the budget
    assert summary.plan is not None and not summary.plan.searched and summary.trials == 0
    assert summary.refit is not None and "parent run" in str(summary.refit.warm_start)
    info = summary.extension
    assert info is not None and info.parent == str(parent.resolve())
    parent_summary = Summary.read(parent / "summary.json")
    assert parent_summary is not None and summary.best_config == parent_summary.best_config
    assert info.parent_test_accuracy == parent_summary.test_accuracy

    x_val, y_val, classes = _val_images()  # the recorded comparison, scored again here
    assert len(y_val) == info.val_images
    theirs = score_onnx(parent / "model.onnx", x_val, y_val, 2, classes).accuracy
    assert theirs == pytest.approx(info.parent_val_accuracy)
    kept = out / "model.onnx"
    if info.kept == "extended":
        assert info.val_accuracy > info.parent_val_accuracy
        assert score_onnx(kept, x_val, y_val, 2, classes).accuracy == \
            pytest.approx(info.val_accuracy)
        assert kept.read_bytes() != (parent / "model.onnx").read_bytes()
    else:
        assert info.val_accuracy <= info.parent_val_accuracy
        assert kept.read_bytes() == (parent / "model.onnx").read_bytes()
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    if info.kept == "extended":
        assert meta["parent"] == str(parent.resolve())  # the file names where it came from
    assert "extends" in (out / "report.html").read_text()


def test_the_parents_model_stays_where_the_extension_scores_worse_and_is_quantized(
        parent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    real = extension._val

    def worse_extension(ctx, path: Path, dataset) -> Score:  # type: ignore[no-untyped-def]
        score = real(ctx, path, dataset)
        return Score(0.0, score.confusion) if path.parent == ctx.run_dir else score

    monkeypatch.setattr(extension, "_val", worse_extension)
    result = extend(parent, EXTEND_MINUTES, out=tmp_path / "kept-parent", quantize="int8",
                    quiet=True)
    info = result.summary.extension
    assert info is not None and info.kept == "parent" and info.val_accuracy == 0.0
    out = result.run_dir
    assert (out / "model.onnx").read_bytes() == (parent / "model.onnx").read_bytes()
    assert (out / "model.extended.onnx").is_file()
    parent_summary = Summary.read(parent / "summary.json")
    assert parent_summary is not None
    assert result.test_accuracy == pytest.approx(parent_summary.test_accuracy)  # re-scored
    assert result.summary.elapsed_s <= EXTEND_MINUTES * 60 + 5
    int8 = result.summary.int8  # quantized after the pick: the parent's model, not the other
    assert int8 is not None and int8.status in ("kept", "rejected"), int8
    assert int8.float_test_accuracy == pytest.approx(parent_summary.test_accuracy)
    assert (out / "model.int8.onnx").is_file() == (int8.status == "kept")


def test_what_cannot_be_extended_is_a_one_line_error(parent: Path, tmp_path: Path):
    half = tmp_path / "unfinished"
    half.mkdir()
    (half / "journal.json").write_bytes((parent / "journal.json").read_bytes())
    cases = {
        str(tmp_path / "nowhere"): "not an autofit run directory",
        str(half): "only a finished run can be extended",
    }
    for where, message in cases.items():
        proc = _autofit("extend", where, "--minutes", "1", "--out", str(tmp_path / "x"))
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    proc = _autofit("extend", str(parent), "--minutes", "-3")
    assert proc.returncode == 2 and "--minutes" in proc.stderr, proc.stderr
    assert not (tmp_path / "x").exists()  # nothing made for a run that could not start

"""Whole runs with real Ray Tune, DALI (CPU), ONNX export and onnxruntime, on images the tests
write. They assert the deadline contract, the artifacts, parity and learning."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image

import autofit
from autofit import Budget, run
from autofit.deliver.export import onnx_param_count, to_input
from autofit.models import DataShape
from autofit.records import SCHEMA_VERSION, Summary
from autofit.train.loop import make_model


def _test_images(root: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Decoded independently of autofit (PIL, not DALI)."""
    xs, ys = [], []
    for label, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            xs.append(np.asarray(Image.open(f).convert("RGB")))
            ys.append(label)
    return np.stack(xs), np.array(ys)


def test_cli_run_keeps_the_deadline_and_delivers_a_verified_model(split_folder: Path,
                                                                   tmp_path: Path):
    out = tmp_path / "run"
    budget_s, cap = 45.0, 200_000
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "autofit", "run", "--data", str(split_folder), "--minutes",
         str(budget_s / 60), "--max-params", "200k", "--out", str(out), "--seed", "1"],
        capture_output=True, text=True, timeout=budget_s + 60,
    )
    wall = time.time() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert wall <= budget_s + 5.0, f"ran {wall:.1f}s on a {budget_s:.0f}s budget: {proc.stdout}"
    assert "Traceback" not in proc.stdout + proc.stderr

    summary = json.loads((out / "summary.json").read_text())
    typed = Summary.read(out / "summary.json")  # the file is the typed record, field for field
    assert typed is not None and typed.schema_version == SCHEMA_VERSION
    assert typed.model_dump(mode="json") == summary
    assert summary["device"] == "cpu" and summary["autofit_version"] == autofit.__version__
    assert summary["input_shape"] == [3, 16, 16] and summary["budget_s"] == budget_s
    assert summary["data_path"] == "dali-cpu" and summary["seed"] == 1
    assert set(summary["phases"]) == {"setup", "search", "refit", "export", "evaluate", "report"}
    assert sum(summary["phases"].values()) <= budget_s
    assert summary["search_overrun_s"] <= 1.5, summary  # trials stop at the search deadline
    assert summary["classes"] == ["blue", "green", "red", "yellow"]
    assert summary["params"] <= cap and summary["trials"] >= 1
    log = (out / "run.log").read_text()
    assert log.count("trial 1 start") == 1
    assert f"({summary['plan']['sized']})" in log and "compute frontier" in log  # the cap, why

    with open(out / "leaderboard.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == summary["trials"]
    assert all(int(r["params"]) <= cap for r in rows)

    model_path = out / "model.onnx"
    proto = onnx.load(str(model_path))
    onnx.checker.check_model(proto, full_check=True)
    assert not any(t.external_data for t in proto.graph.initializer)
    assert onnx_param_count(proto) <= cap
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == summary["classes"]
    assert json.loads(meta["input_shape"]) == [3, 16, 16]
    assert json.loads(meta["budget"]) == {"minutes": budget_s / 60, "max_params": cap}

    x, y = _test_images(split_folder / "test", summary["classes"])
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": to_input(x)})[0]
    accuracy = float((logits.argmax(1) == y).mean())
    assert accuracy >= 0.9, (accuracy, summary)  # 4 colour classes: working runs score 1.0
    assert abs(accuracy - summary["test_accuracy"]) <= 0.05

    config = typed.best_config
    assert config is not None
    model = make_model(config, DataShape(3, 16, 16, 4), [0.0] * 3, [1.0] * 3)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(to_input(x))).numpy()
    assert np.allclose(logits, want, rtol=1e-4, atol=1e-3)


def test_python_api_runs_and_exports(flat_folder: Path, tmp_path: Path):
    """In this process: the result is the summary on disk, the exported copy is the scored
    model, and the host's environment is as it was (Ray's settings last only its session)."""
    budget = Budget(minutes=0.5, max_params="100k")
    environment = dict(os.environ)
    start = time.time()
    result = run(flat_folder, budget, out=tmp_path / "api", seed=0, quiet=True)
    assert time.time() - start <= budget.seconds + 5.0
    assert dict(os.environ) == environment
    assert result.summary == Summary.read(result.run_dir / "summary.json")
    assert result.summary.trials and result.summary.workers is not None  # Ray ran the search
    assert result.params == result.best_config.params <= 100_000
    assert result.test_accuracy == result.summary.test_accuracy
    target = result.export(tmp_path / "deploy" / "model.onnx")
    assert target.read_bytes() == result.model_path.read_bytes()
    score = autofit.load(target).predict([flat_folder])  # the copy, used as a user would
    right = sum(p.labels[0] == Path(p.image).parent.name for p in score)
    assert right / len(score) >= 0.9  # every image, train and test: 4 colour classes

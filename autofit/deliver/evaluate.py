"""Score the deployed artifact: the ONNX file's test predictions through onnxruntime."""

from __future__ import annotations

import math
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autofit.budget import Cost
from autofit.config import TrialConfig
from autofit.data.dataset import Dataset
from autofit.deliver import best as best_so_far
from autofit.deliver.export import export_onnx, ort_session, to_input
from autofit.errors import AutofitError
from autofit.models import count_work
from autofit.records import TestResult, TrialRecord
from autofit.reserves import EVAL_RATE_GUESS, test_pass_rate
from autofit.train.loop import make_model

BATCH = 512


@dataclass(frozen=True)
class Score:
    """Test accuracy and the confusion matrix behind it (rows: true class, columns: predicted)."""

    accuracy: float
    confusion: np.ndarray

    def result(self, classes: list[str]) -> TestResult:
        totals = self.confusion.sum(1)
        per_class = {name: round(float(self.confusion[i, i] / totals[i]), 4) if totals[i] else None
                     for i, name in enumerate(classes)}
        return TestResult(accuracy=self.accuracy, images=int(totals.sum()),
                          confusion=self.confusion.tolist(), per_class_accuracy=per_class)


def score_onnx(path: Path, images: np.ndarray, labels: np.ndarray, threads: int,
               num_classes: int) -> Score:
    session = ort_session(path, threads)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for start in range(0, len(images), BATCH):
        logits = session.run(["logits"], {"input": to_input(images[start:start + BATCH])})[0]
        np.add.at(confusion, (labels[start:start + BATCH], logits.argmax(1)), 1)
    accuracy = float(np.trace(confusion) / max(confusion.sum(), 1))
    return Score(accuracy, confusion)


def onnx_rate(path: Path, images: np.ndarray, threads: int, sample: int = 256) -> float:
    """Images per second onnxruntime scores at with this model here: what sizes the time kept
    for the final test pass (PyTorch's evaluation speed in a trial can be half of it)."""
    session = ort_session(path, threads)
    session.run(["logits"], {"input": to_input(images[:8])})  # first run: allocations
    batch = to_input(images[:sample])
    start = time.perf_counter()
    session.run(["logits"], {"input": batch})
    return len(batch) / max(time.perf_counter() - start, 1e-9)


def test_pass_speed(run_dir: Path, best: TrialRecord, dataset: Dataset, threads: int,
                    cost: Cost | None) -> float:
    """Test-pass speed for sizing the final reserve: onnxruntime's, timed on the winner's own
    best_so_far.onnx when that is the winner; else the trial's PyTorch evaluation speed
    (float32, as the test pass); for a model no trial trained, onnxruntime's on the model
    untrained, or where that cannot be timed, predicted from the probe's cost of its work."""
    record = best_so_far.read(run_dir)
    if record is not None and record.trial == best.number and record.model is not None:
        with suppress(OSError, RuntimeError, ValueError):  # cannot be timed: fall back
            return onnx_rate(Path(record.model), dataset.x_val, threads)
    measured = 0.0 if best.metrics is None else best.metrics.eval_images_per_s
    if measured and math.isfinite(measured):
        return measured
    config = best.config
    with suppress(OSError, RuntimeError, ValueError, AutofitError):
        return untrained_speed(config, dataset, run_dir, threads)
    if cost is None:
        return EVAL_RATE_GUESS
    return test_pass_rate(cost.seconds(count_work(config.family, config.arch, dataset.shape)),
                          config.recipe.test_passes)


_UNTRAINED: dict[tuple[str, str, int, str, int], float] = {}  # run, model, views, shape, threads


def untrained_speed(config: TrialConfig, dataset: Dataset, run_dir: Path, threads: int) -> float:
    """onnxruntime's speed on `config`'s model with its initial weights (the speed does not
    depend on them): the probe prices training, which may run in bf16 while the test pass runs
    in float32. From the bf16 price, a 10-minute run's reserve assumed 450 images/s for a
    test pass of fastnet width 64 that ran at 186 and ended the run 18 s late. Timed once a
    run per model: the plan's timing serves the refit's reserves (2-4 s each at width 56). The
    cache holds one run's timings: a service's worker process runs one run after another."""
    key = (str(run_dir), config.model_name, config.recipe.test_passes, repr(dataset.shape),
           threads)
    if key not in _UNTRAINED:
        if any(other[0] != key[0] for other in _UNTRAINED):
            _UNTRAINED.clear()
        model = make_model(config, dataset.shape, *dataset.mean_std)
        with tempfile.TemporaryDirectory(prefix=".timing-", dir=run_dir) as tmp:
            path = Path(tmp) / "untrained.onnx"
            export_onnx(model, path, dataset.x_val, {}, threads)
            _UNTRAINED[key] = onnx_rate(path, dataset.x_val, threads)
    return _UNTRAINED[key]

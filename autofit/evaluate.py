"""Score the deployed artifact: the ONNX file's test predictions through onnxruntime."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autofit.export import ort_session, to_input

BATCH = 512


@dataclass(frozen=True)
class Score:
    """Test accuracy and the confusion matrix behind it (rows: true class, columns: predicted)."""

    accuracy: float
    confusion: np.ndarray

    def as_dict(self, classes: list[str]) -> dict[str, Any]:
        totals = self.confusion.sum(1)
        per_class = {name: round(float(self.confusion[i, i] / totals[i]), 4) if totals[i] else None
                     for i, name in enumerate(classes)}
        return {"accuracy": self.accuracy, "images": int(totals.sum()),
                "confusion": self.confusion.tolist(), "per_class_accuracy": per_class}


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

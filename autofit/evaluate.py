"""Score the deployed artifact: test accuracy of the ONNX file through onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autofit.export import ort_session, to_input

BATCH = 512


def onnx_accuracy(path: Path, images: np.ndarray, labels: np.ndarray, threads: int) -> float:
    session = ort_session(path, threads)
    correct = 0
    for start in range(0, len(images), BATCH):
        logits = session.run(["logits"], {"input": to_input(images[start:start + BATCH])})[0]
        correct += int((logits.argmax(1) == labels[start:start + BATCH]).sum())
    return correct / max(len(labels), 1)

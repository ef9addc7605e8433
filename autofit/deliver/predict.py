"""Use an exported model: labels and probabilities for image files, and what the file is.

`load("model.onnx")` reads the classes and the training resize from the model's metadata, so
a prediction decodes and resizes exactly as the run that trained it did (`autofit.data.inputs`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autofit.data.inputs import as_input, read_model
from autofit.deliver.export import ort_session
from autofit.errors import DataError
from autofit.files import image_files
from autofit.records import Summary

LATENCY_RUNS = 50


@dataclass(frozen=True)
class Prediction:
    """One image's top classes, most likely first."""

    image: str
    labels: list[str]
    probabilities: list[float]
    error: str | None = None  # why the image could not be read (no labels then)

    def as_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, "top": [{"label": label, "probability": round(p, 6)}
                                             for label, p in zip(self.labels, self.probabilities,
                                                                 strict=True)]}


class Model:
    """An autofit ONNX model in onnxruntime, with its metadata."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        self.path = Path(path)
        proto, self.metadata = read_model(self.path)
        self.classes: list[str] = self.metadata["classes"]
        self.opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                         default=0)
        self.session = ort_session(self.path, threads)
        self.threads = threads

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Softmax of the logits for float32 N x C x H x W input in [0, 1]."""
        logits = self.session.run(["logits"], {"input": x})[0].astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def predict(self, images: Sequence[str | Path], top_k: int = 1) -> list[Prediction]:
        """The `top_k` classes of each image file (folders are expanded to their images), in
        order; a file that cannot be read gets its reason instead, and the others go on."""
        files = [str(f) for f in expand(images)]
        x, bad = as_input(files, self.metadata["resize"], self.threads, max_bad=len(files))
        why = dict(bad)
        probs = iter(self.probabilities(x) if len(x) else [])
        k = max(1, min(top_k, len(self.classes)))
        out = []
        for f in files:
            if f in why:
                out.append(Prediction(f, [], [], error=why[f]))
                continue
            p = next(probs)
            top = np.argsort(-p)[:k]
            out.append(Prediction(f, [self.classes[i] for i in top], [float(p[i]) for i in top]))
        return out

    def latency_ms(self, runs: int = LATENCY_RUNS) -> float:
        """Median onnxruntime time of one image (batch 1) on this machine, after a warm-up."""
        c, h, w = self.metadata["input_shape"]
        x = np.random.default_rng(0).random((1, c, h, w), dtype=np.float32)
        self.session.run(["logits"], {"input": x})
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.session.run(["logits"], {"input": x})
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000

    def facts(self) -> dict[str, Any]:
        """What `autofit inspect` prints: the file, its metadata, and its test accuracy when
        its run directory's summary.json is beside it."""
        summary = Summary.read(self.path.parent / "summary.json")
        test_accuracy = None if summary is None else summary.test_accuracy
        if "quantization" in self.metadata:  # model.int8.onnx: its own score, not model.onnx's
            test_accuracy = None if summary is None or summary.int8 is None else \
                summary.int8.test_accuracy
        m = self.metadata
        return {"model": str(self.path), "classes": self.classes,
                "input_shape": m.get("input_shape"), "resize": m.get("resize"),
                "params": m.get("params"), "opset": self.opset, "budget": m.get("budget"),
                "val_accuracy": m.get("val_accuracy"), "test_accuracy": test_accuracy,
                "latency_ms_batch1": round(self.latency_ms(), 3),
                "autofit_version": m.get("autofit_version"), **int8_facts(m, summary)}


def int8_facts(metadata: dict[str, Any], summary: Summary | None) -> dict[str, str]:
    """`inspect`'s INT8 lines (--quantize int8): for model.int8.onnx how it was made and how it
    compares with model.onnx; for model.onnx what became of its INT8 sibling."""
    q = None if summary is None else summary.int8
    facts = {}
    if "quantization" in metadata:
        made = metadata["quantization"]
        facts["quantization"] = (f"{made.get('format')}: activations {made.get('activations')}, "
                                 f"weights {made.get('weights')}, {made.get('calibration_method')}"
                                 f" calibration on {made.get('calibration_images')} training "
                                 "images")
    if q is None:
        return facts
    if q.status != "kept":
        return {**facts, "int8": f"{q.status}: {q.reason}"}
    timed = "" if q.int8_latency_ms is None else (
        f", batch-1 {q.int8_latency_ms:.3f} ms against {q.float_latency_ms:.3f} ms on "
        f"{q.latency_threads} threads")
    return {**facts, "int8": (
        f"{Path(q.path or '').name}: test accuracy {q.test_accuracy:.4f} against "
        f"{q.float_test_accuracy:.4f} (drop {q.accuracy_drop:+.4f}), top-1 agreement "
        f"{q.agreement:.4f} (bar {q.agreement_bar:g}), {q.int8_bytes:,} bytes against "
        f"{q.float_bytes:,}{timed}")}


def load(path: str | Path, threads: int = 1) -> Model:
    """An exported autofit model, ready to predict."""
    return Model(path, threads)


def expand(images: Sequence[str | Path]) -> list[Path]:
    """Image files as given, folders replaced by the image files in them (sorted)."""
    try:
        return image_files(images)
    except ValueError as err:
        raise DataError(str(err)) from None

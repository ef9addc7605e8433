"""The records of a run's delivery: the refit, the export, the test pass, the INT8 copy and an
extension's choice (the summary and the journal hold them)."""

from __future__ import annotations

from typing import Literal

from autofit.records.base import Record


class RefitInfo(Record):
    seconds_planned: float
    epochs_planned: float | None
    epochs: float
    steps: int
    seconds: float
    state: str
    train_images: int
    warm_start: str | None = None  # whose weights the refit began from (None: initialised)
    exports: int = 0  # best_so_far.onnx exports from the refit's weights, in its last life
    exports_s: float = 0.0  # their cost: export, verification and scoring
    node: str | None = None  # the Ray node it ran on, as Ray work on a cluster (None: the driver)
    start_s: float | None = None  # on a cluster: from asking Ray for it to its first step there


class ExportInfo(Record):
    path: str
    exporter: str
    opset: int
    onnx_params: int
    parity_max_abs_diff: float
    parity_images: int


class ExtensionInfo(Record):
    """`autofit extend`: the parent run, and which model was kept by validation accuracy (both
    models trained on the validation images: this guards against a worse restart)."""

    parent: str  # the parent's run directory
    kept: Literal["extended", "parent"]
    val_images: int
    val_accuracy: float  # the extended model's
    parent_val_accuracy: float
    test_accuracy: float  # the extended model's, whichever was kept
    parent_test_accuracy: float | None  # as the parent's summary gives it


class QuantizedInfo(Record):
    """--quantize int8: model.int8.onnx `kept`, or `rejected` (checker, agreement), `skipped`
    (no time) or `failed` (quantization raised), with why (autofit/deliver/quantize.py)."""

    status: Literal["kept", "rejected", "skipped", "failed"]
    reason: str | None = None
    path: str | None = None
    method: str | None = None
    calibration_images: int | None = None
    agreement: float | None = None  # top-1, with model.onnx, on the test images
    agreement_bar: float | None = None
    test_accuracy: float | None = None  # model.int8.onnx's, through onnxruntime
    float_test_accuracy: float | None = None
    accuracy_drop: float | None = None  # float minus int8
    test_images: int | None = None
    int8_bytes: int | None = None
    float_bytes: int | None = None
    int8_latency_ms: float | None = None  # batch-1 median after warm-up (deliver/latency.py)
    float_latency_ms: float | None = None
    latency_threads: int | None = None
    latency_runs: int | None = None
    latency_warmup: int | None = None
    quantize_s: float | None = None  # calibration and quantization
    seconds: float | None = None  # all of it, checks and timings included
    planned_s: float | None = None  # what the final reserve kept for it


class TestResult(Record):
    """The test set through the exported ONNX model in onnxruntime."""

    __test__ = False  # not a pytest class, whatever its name

    accuracy: float
    images: int
    confusion: list[list[int]]  # rows: true class, columns: predicted
    per_class_accuracy: dict[str, float | None]  # None: the class has no test image

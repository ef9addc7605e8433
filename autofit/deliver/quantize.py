"""`--quantize int8`: model.onnx statically quantized to INT8 with onnxruntime's tools (QDQ),
calibrated on training images, and kept as model.int8.onnx only once it is verified.

Verified as the float model is: onnx.checker (full check), then top-1 agreement with model.onnx
on every test image at or above AGREEMENT_BAR; then scored on the test set and timed at batch
1 beside the float model, on the same threads. A file that fails is not kept: the record says
`rejected`, why, and the agreement it measured. Normalisation and the test-time views are
inside the float graph, so they are inside the quantized one too.

The float model is the run's deliverable and INT8 an extra: if onnxruntime's quantization
raises, the record says `failed` with its error, the log says so, and the run still finishes
with model.onnx. Where the time left before the deadline cannot pay for it, it is `skipped`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autofit import events, faults
from autofit.context import RunContext
from autofit.data.dataset import Dataset
from autofit.deliver import best as best_so_far
from autofit.deliver.evaluate import BATCH, Score, onnx_rate, untrained_speed
from autofit.deliver.export import ort_session, to_input
from autofit.deliver.int8_file import (
    CALIBRATION_METHODS,
    METHOD_LINE,
    calibration_sample,
    quantize_file,
)
from autofit.deliver.latency import batch1_latency
from autofit.errors import AutofitError, one_line
from autofit.records import QuantizedInfo
from autofit.reserves import (
    CHOICE_IMAGES,
    EVAL_MARGIN,
    EXIT_RESERVE_S,
    QUANTIZE_MAX_SHARE,
    REPORT_RESERVE_S,
    int8_planned,
    latency_timings_s,
    quantize_reserve,
    quantize_work_s,
)

FILE = "model.int8.onnx"
FLOAT = "model.onnx"
# The bar a quantized model must reach to be kept: it disagrees with the float model on at
# most 1 test image in 100. The float model's own accuracy stands beside it in the record.
AGREEMENT_BAR = 0.99
def predictions(path: Path, images: np.ndarray, threads: int, stop_at: float = math.inf
                ) -> np.ndarray | None:
    """Each image's top-1 class by the ONNX file at `path` in onnxruntime; None where the
    next batch, at the pace of the last one, would end after `stop_at` (a time.time())."""
    session = ort_session(path, threads)
    found, batch_s = [np.zeros(0, dtype=np.int64)], 0.0
    for start in range(0, len(images), BATCH):
        if time.time() + batch_s > stop_at:
            return None
        began = time.time()
        logits = session.run(["logits"], {"input": to_input(images[start:start + BATCH])})[0]
        found.append(logits.argmax(1))
        batch_s = time.time() - began
    return np.concatenate(found)


def score(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> Score:
    """Test accuracy and confusion from predictions, counted as `evaluate.score_onnx` does."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    return Score(float(np.trace(confusion) / max(confusion.sum(), 1)), confusion)


@dataclass(frozen=True)
class FloatPass:
    """model.onnx's test pass, its predictions kept: the INT8 model is compared with them."""

    score: Score
    predicted: np.ndarray
    rate: float  # test images per second


def float_test_pass(path: Path, dataset: Dataset, threads: int) -> FloatPass:
    """The float model's test pass (the run's test score) keeping each image's prediction."""
    started = time.time()
    predicted = predictions(path, dataset.x_test, threads)
    assert predicted is not None  # no deadline given
    rate = len(predicted) / max(time.time() - started, 1e-9)
    return FloatPass(score(predicted, dataset.y_test, len(dataset.classes)), predicted, rate)


def wanted(ctx: RunContext) -> bool:
    """Whether this run makes model.int8.onnx: asked for (an `autofit extend` run makes it
    after it has picked its model, its own or its parent's)."""
    return ctx.budget.quantize is not None


def reserve_s(ctx: RunContext, dataset: Dataset, rate: float, other_s: float) -> float:
    """What the final reserve keeps for model.int8.onnx besides its `other_s` seconds: none
    where it is not wanted, or where it would be over QUANTIZE_MAX_SHARE of the time left to
    train (said in the log). Priced at onnxruntime's speed on the winner's model: `rate`, the
    test pass's planned speed, is that where it was timed on the winner's best_so_far.onnx;
    else it may be a trial's PyTorch evaluation of a few validation images (19 images/s on 24,
    where onnxruntime ran the model at thousands), and this reserve, some 700 test images'
    worth besides the test set, took all of a 1-minute run's refit. On a cluster (the test
    pass ran on a node) and in an extension (its model is picked after the test pass) the
    float predictions are made again: one more float test pass."""
    if not wanted(ctx):
        return 0.0
    assert ctx.outcome is not None
    best, record = ctx.outcome.best, best_so_far.read(ctx.run_dir)
    if record is None or record.trial != best.number or record.model is None:
        with suppress(OSError, RuntimeError, ValueError, AutofitError):  # else: as planned
            rate = untrained_speed(best.config, dataset, ctx.run_dir, ctx.threads)
    n_test = len(dataset.y_test)
    again = EVAL_MARGIN * n_test / max(rate, 1.0) if _float_pass_again(ctx) else 0.0
    need = quantize_reserve(n_test, rate, len(dataset.y_val)) + again
    trainable = ctx.clock.left() - other_s
    if int8_planned(need, trainable):
        return need
    ctx.log.info("refit: model.int8.onnx not planned: its %.1fs would be over %.0f%% of the "
                 "%.1fs left to train; it is made at the end only if the time is there", need,
                 100 * QUANTIZE_MAX_SHARE, trainable)
    return 0.0


def deliver_int8(ctx: RunContext, dataset: Dataset, tested: FloatPass | None = None
                 ) -> QuantizedInfo:
    """model.int8.onnx from the run's verified, scored model.onnx, or the reason there is none;
    recorded in the journal (the summary's `int8`) and said in one line of the log.

    `tested` is the float test pass where it ran here; on a cluster (it ran on another node)
    the float model is timed and its predictions made again here. A kill during this step
    resumes by doing it again; whatever the outcome, a model.int8.onnx from an earlier life is
    not left beside a record that does not vouch for it."""
    info = _attempt(ctx, dataset, tested)
    if info.status != "kept":
        (ctx.run_dir / FILE).unlink(missing_ok=True)
    ctx.journal.set(int8=info)
    _say(ctx, info)
    return info


def _float_pass_again(ctx: RunContext) -> bool:
    """Whether the INT8 check makes the float model's test predictions again: the test pass
    ran on a cluster node, or the model checked is an extension's pick, made after it."""
    return ctx.cluster is not None or bool(ctx.args.parent)


def _attempt(ctx: RunContext, dataset: Dataset, tested: FloatPass | None) -> QuantizedInfo:
    """Quantize where the time left pays for what a kept model needs (the latency timings
    are left out where they do not fit), priced from the float test pass's rate; skipped
    where it does not. The reserve planned all of it: an earlier phase that ran over it is
    what leaves too little."""
    started, model_path, n_test = time.time(), ctx.run_dir / FLOAT, len(dataset.y_test)
    rate = tested.rate if tested is not None else onnx_rate(model_path, dataset.x_test,
                                                            ctx.threads)
    again = 0.0 if tested is not None else EVAL_MARGIN * n_test / max(rate, 1.0)
    planned = quantize_reserve(n_test, rate, len(dataset.y_val)) + again
    short = _short_of(ctx, quantize_work_s(n_test, rate, len(dataset.y_val)) + again,
                      "calibration, quantization and the test passes")
    if short is not None:
        return QuantizedInfo(status="skipped", reason=short, planned_s=round(planned, 3))
    ctx.start_phase("quantize")
    try:
        info = _quantize(ctx, dataset, ctx.run_dir / FILE, tested, rate)
    except Exception as err:  # noqa: BLE001 - whatever onnxruntime's tools raise
        info = QuantizedInfo(status="failed", reason=f"quantization raised "
                             f"{type(err).__name__}: {one_line(err)}")
    return info.model_copy(update={"planned_s": round(planned, 3),
                                   "seconds": round(time.time() - started, 3)})


def _quantize(ctx: RunContext, dataset: Dataset, out: Path, tested: FloatPass | None,
              rate: float) -> QuantizedInfo:
    """Quantize, check, score and time; the file is moved into place only once it passed."""
    import onnx

    model_path, x_test, y_test = ctx.run_dir / FLOAT, dataset.x_test, dataset.y_test
    calibration = calibration_sample(dataset.x_train, ctx.seed)
    tmp = out.with_name(f".{out.stem}-{os.getpid()}.onnx")
    facts: dict[str, Any] = {"method": METHOD_LINE, "calibration_images": len(calibration),
                             "agreement_bar": AGREEMENT_BAR,
                             "float_bytes": model_path.stat().st_size}
    stop_at = ctx.clock.deadline - REPORT_RESERVE_S - EXIT_RESERVE_S  # for the test passes
    try:
        reference = tested.predicted if tested is not None else \
            predictions(model_path, x_test, ctx.threads, stop_at)
        if reference is None:
            return QuantizedInfo(status="skipped", **facts, reason="the deadline came during "
                                 "the float model's test pass, before quantization")
        start = time.time()
        faults.kill_at("quantize")
        chosen = _quantize_best(ctx, dataset, tmp, calibration, stop_at)
        if chosen is None:
            return QuantizedInfo(status="skipped", **facts, reason="the deadline came while "
                                 "the calibrations were compared")
        facts.update(method=f"{METHOD_LINE}, {chosen}", quantize_s=round(time.time() - start, 3),
                     int8_bytes=tmp.stat().st_size)
        try:
            onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)
        except Exception as err:  # noqa: BLE001 - the checker's ValidationError and kin
            return QuantizedInfo(status="rejected", **facts,
                                 reason=f"onnx.checker: {one_line(err)}")
        got = predictions(tmp, x_test, ctx.threads, stop_at)
        if got is None:
            return QuantizedInfo(status="skipped", **facts, reason=(
                f"quantization took {facts['quantize_s']:.1f}s and the deadline came during "
                "the INT8 test pass"))
        int8 = score(got, y_test, len(dataset.classes))
        float_accuracy = score(reference, y_test, len(dataset.classes)).accuracy
        agreement = float(np.mean(reference == got)) if len(got) else 0.0
        facts.update(agreement=round(agreement, 6), test_accuracy=int8.accuracy,
                     float_test_accuracy=float_accuracy, test_images=len(y_test),
                     accuracy_drop=round(float_accuracy - int8.accuracy, 6))
        if agreement < AGREEMENT_BAR:
            return QuantizedInfo(status="rejected", **facts, reason=(
                f"top-1 agreement with {FLOAT} {agreement:.4f} on {len(y_test)} test images "
                f"is under the bar {AGREEMENT_BAR:g}"))
        facts.update(_latencies(ctx, dataset, model_path, tmp, latency_timings_s(rate)))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, out)
        return QuantizedInfo(status="kept", path=str(out), **facts)
    finally:
        tmp.unlink(missing_ok=True)


def _quantize_best(ctx: RunContext, dataset: Dataset, out: Path, calibration: np.ndarray,
                   stop_at: float) -> str | None:
    """`out`: the model quantized with each of CALIBRATION_METHODS, the one that agrees more
    with the float model on the first CHOICE_IMAGES validation images (the test images stay
    for the verification); the choice as words, or None where the deadline came first."""
    model_path, images = ctx.run_dir / FLOAT, dataset.x_val[:CHOICE_IMAGES]
    reference = predictions(model_path, images, ctx.threads, stop_at) if len(images) else None
    agreements: dict[str, float] = {}
    for method in CALIBRATION_METHODS if reference is not None else CALIBRATION_METHODS[:1]:
        candidate = out.with_name(f"{out.stem}.{method}{out.suffix}")
        try:
            quantize_file(model_path, candidate, calibration, method)
            if reference is None:
                os.replace(candidate, out)
                return f"{method} calibration"
            got = predictions(candidate, images, ctx.threads, stop_at)
            if got is None:
                break
            agreement = float(np.mean(got == reference))
            if not agreements or agreement > max(agreements.values()):
                os.replace(candidate, out)
            agreements[method] = agreement
        finally:
            candidate.unlink(missing_ok=True)
    if not agreements:
        return None
    best = max(agreements, key=lambda m: agreements[m])  # the first of equals
    shown = ", ".join(f"{m} {a:.4f}" for m, a in agreements.items())
    return (f"{best} calibration (top-1 agreement with {FLOAT} on {len(images)} validation "
            f"images: {shown})")


def _latencies(ctx: RunContext, dataset: Dataset, float_path: Path, int8_path: Path,
               timings_s: float) -> dict[str, Any]:
    """Both models' batch-1 latency on the same threads, one after the other; where the time
    left cannot pay for them (the test passes ran slower than planned), the verified model is
    kept untimed and the record says so."""
    short = _short_of(ctx, timings_s, "the batch-1 latency timings")
    if short is not None:
        return {"reason": f"kept; batch-1 latency not timed: {short}"}
    shape = (int(dataset.shape[0]), int(dataset.shape[1]), int(dataset.shape[2]))
    timed_float = batch1_latency(float_path, shape, ctx.threads)
    timed_int8 = batch1_latency(int8_path, shape, ctx.threads)
    return {"float_latency_ms": timed_float.median_ms, "int8_latency_ms": timed_int8.median_ms,
            "latency_threads": timed_int8.threads, "latency_runs": timed_int8.runs,
            "latency_warmup": timed_int8.warmup}


def _short_of(ctx: RunContext, need_s: float, what: str) -> str | None:
    """Why there is no time for `need_s` seconds of `what` (and then the report and exit)
    before the deadline; None when there is."""
    left, after = ctx.clock.left(), REPORT_RESERVE_S + EXIT_RESERVE_S
    if left >= need_s + after:
        return None
    return (f"{max(left, 0.0):.1f}s left before the deadline, {need_s:.1f}s needed for {what} "
            f"and {after:.0f}s for the report and exit")


def _say(ctx: RunContext, info: QuantizedInfo) -> None:
    """One line of the log, and an `int8` event, for the outcome."""
    fields = info.model_dump(exclude_none=True)
    if info.status == "kept":
        timed = "batch-1 latency not timed" if info.int8_latency_ms is None else (
            f"batch-1 {info.int8_latency_ms:.3f} ms (float {info.float_latency_ms:.3f} ms) on "
            f"{info.latency_threads} threads")
        events.emit(ctx.log, "int8", "int8: %s kept: test accuracy %.4f (float %.4f), top-1 "
                    "agreement %.4f, %s bytes (float %s), %s; %.1fs", info.path,
                    info.test_accuracy, info.float_test_accuracy, info.agreement,
                    f"{info.int8_bytes:,}", f"{info.float_bytes:,}", timed,
                    info.seconds or 0.0, **fields)
    else:
        events.emit(ctx.log, "int8", "int8: %s, no %s: %s", info.status, FILE, info.reason,
                    level=logging.WARNING, **fields)

"""What the end of a run costs, kept back from training: the export, the test pass (at a
rate predicted from the probe's measured training cost), the report, exit, and with --quantize
the INT8 copy's calibrations, choice and timings."""

from __future__ import annotations

EXPORT_RESERVE_S = 3.0  # ONNX export, onnx.checker, parity check (0.2-0.3 s measured, 200k params)
REPORT_RESERVE_S = 3.0  # report.html and its plots (about 1.5 s measured on 2 busy cores)
EXIT_RESERVE_S = 2.0  # writing the summary, Ray shutdown, interpreter exit
EVAL_RATE_GUESS = 500.0  # images/s for the test pass when nothing was measured
EVAL_PASS_SHARE = 1 / 3  # one forward pass of a test image: a third of a training step's cost
EVAL_MARGIN = 1.15  # on the timed test-pass rate (10-minute CIFAR: 4.4 s taken, 6.8 s predicted)


def test_pass_rate(train_image_s: float, passes: int = 2) -> float:
    """Test images per second predicted from a model's training seconds per image and its
    forward passes per test image (2: flip TTA)."""
    return 1.0 / (EVAL_PASS_SHARE * passes * train_image_s)


def final_reserve(n_test: int, eval_rate: float, *, quantize: bool = False) -> float:
    """Seconds kept back for export, the onnxruntime test pass, the report, and exit; with
    `quantize`, for the INT8 model too (`quantize_reserve`)."""
    return EXPORT_RESERVE_S + EVAL_MARGIN * n_test / max(eval_rate, 1.0) + REPORT_RESERVE_S + \
        EXIT_RESERVE_S + (quantize_reserve(n_test, eval_rate) if quantize else 0.0)


# --quantize int8 (autofit/deliver/quantize.py), priced in images of the float test pass at
# its measured rate. On 2 busy cores (digits; fastnet width 16, 64 and ResNet-20 on 32x32, 6
# test-time views): 1.1-1.5 test images per calibration image over 0.1-1.6 s fixed; an INT8
# test pass 0.55-0.95 of the float one (1.5 on the digits: 0.05 s); a batch-1 run 0.8-2.7.
CALIBRATION_IMAGES = 256  # training images the activation ranges are calibrated on
CALIBRATIONS, CHOICE_IMAGES = 3, 5000  # methods tried, validation images choosing between them
QUANTIZE_FIXED_S = 1.0  # pre-processing, the graph rewrite, onnx.checker, saving, sessions
CALIBRATION_COST = 1.5  # a calibration image: a float pass with every tensor an output
INT8_PASS_COST = 1.0  # an INT8 test image (the pass stops at the deadline if it is dearer)
LATENCY_TIMED_RUNS = 60  # batch-1 runs per model: deliver/latency.py's WARMUP + RUNS
BATCH1_COST = 2.5  # a batch-1 run
# The INT8 copy is an extra: its time is planned only where it is at most this share of the
# time left to train. A 2-minute CIFAR-10 run on busy cores, 10,000 test images priced at the
# probe's rate, had otherwise had no time to train; unplanned, it is made if time is left.
QUANTIZE_MAX_SHARE = 1 / 3


def quantize_work_s(n_test: int, eval_rate: float, n_val: int | None = None) -> float:
    """Seconds a kept INT8 model needs: each calibration and quantization, their comparison on
    up to CHOICE_IMAGES of the `n_val` validation images (a float pass and one per calibration;
    where `n_val` is not known yet, as many as the test images), its test pass."""
    choice = min(CHOICE_IMAGES, n_test if n_val is None else n_val)
    images = CALIBRATIONS * (CALIBRATION_IMAGES * CALIBRATION_COST + choice * INT8_PASS_COST) \
        + choice + n_test * INT8_PASS_COST
    return CALIBRATIONS * QUANTIZE_FIXED_S + EVAL_MARGIN * images / max(eval_rate, 1.0)


def latency_timings_s(eval_rate: float) -> float:
    """Seconds for the float and INT8 models' batch-1 latency timings."""
    runs = (1 + INT8_PASS_COST) * LATENCY_TIMED_RUNS * BATCH1_COST
    return EVAL_MARGIN * runs / max(eval_rate, 1.0)


def quantize_reserve(n_test: int, eval_rate: float, n_val: int | None = None) -> float:
    return quantize_work_s(n_test, eval_rate, n_val) + latency_timings_s(eval_rate)


def int8_planned(int8_s: float, trainable_s: float) -> bool:
    return int8_s <= QUANTIZE_MAX_SHARE * max(trainable_s, 0.0)

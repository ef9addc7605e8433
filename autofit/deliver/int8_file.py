"""How model.int8.onnx is made from model.onnx: onnxruntime's static quantization (QDQ),
calibrated on a sample of training images, the float file's metadata carried over. The run
step around it (the choice of calibration, verification, timing, the budget) is quantize.py."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from autofit.deliver.export import to_input
from autofit.reserves import CALIBRATION_IMAGES

CALIBRATION_BATCH = 32
# The convolutions alone: they carry nearly all the weights and the compute. Quantizing every
# op (the GELUs' Add/Mul/Div, pooling) gave the same speed on a CIFAR-sized fastnet and
# ResNet-20 (2.51 ms at batch 1 against 2.42 ms) in larger files and up to 2.6x the quantize
# time. The classifier heads (Gemm) stay float: on a weak digits model (46% test accuracy,
# close logits) quantizing them too cut the top-1 agreement from 0.9861 to 0.9666; on two
# strong ones it was 1.0 either way.
QUANTIZED_OPS = ("Conv",)
# Activation ranges: each is tried and the one whose model agrees most with the float model on
# up to CHOICE_IMAGES validation images is verified on the test set (the first of equals).
# None wins everywhere. Two 10-minute CIFAR-10 fastnets (10,000 test images): width 12,
# MinMax agreed 0.9850 (1,024 calibration images: 0.9688), Percentile 99.999 0.9913, Entropy
# 0.9850; width 20, MinMax 0.9850, Percentile 99.999 0.9893, 99.99 0.9920, 99.9 0.9881. The
# digits: MinMax 1.0, Percentile 0.9972. A choice on 1,000 validation images picked the
# 0.9893 (0.9940 against MinMax's 0.9910 there): the differences are a few images, so it is
# made on as many as the run has, up to 5,000. Percentile fails on a short last calibration
# batch, so the sample is a whole number of batches.
CALIBRATIONS: dict[str, tuple[str, dict[str, float]]] = {  # name: method, extra options
    "MinMax": ("MinMax", {}),
    "Percentile 99.999": ("Percentile", {"CalibPercentile": 99.999}),
    "Percentile 99.99": ("Percentile", {"CalibPercentile": 99.99}),
}
CALIBRATION_METHODS = tuple(CALIBRATIONS)  # as many as reserves.CALIBRATIONS
# uint8 activations and int8 per-channel weights (U8S8): on this x86 CPU, int8 activations
# (S8S8) made the models slower than float at batch 1 (fastnet width 64 on 32x32 images with
# its 6 test-time views: 7.1 ms against 4.1 ms float, and 2.4 ms with U8S8; ResNet-20: 1.41,
# 1.21 and 0.48 ms), as onnxruntime's guide says for x86 CPUs.
METHOD = {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
          "activations": "uint8 per tensor", "weights": "int8 per channel",
          "ops": list(QUANTIZED_OPS),
          "pre_process": "onnxruntime.quantization.shape_inference.quant_pre_process"}
METHOD_LINE = ("onnxruntime quantize_static, QDQ, uint8 activations per tensor, int8 weights per "
               "channel, Conv layers (the heads stay float)")


class Calibration:
    """onnxruntime's CalibrationDataReader over uint8 images: the model's own input, float32
    N x C x H x W in [0, 1], in batches."""

    def __init__(self, images: np.ndarray, input_name: str = "input") -> None:
        self.images, self.input_name, self.start = images, input_name, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= len(self.images):
            return None
        batch = self.images[self.start:self.start + CALIBRATION_BATCH]
        self.start += CALIBRATION_BATCH
        return {self.input_name: to_input(batch)}

    def rewind(self) -> None:
        self.start = 0


def calibration_sample(images: np.ndarray, seed: int, count: int = CALIBRATION_IMAGES
                       ) -> np.ndarray:
    """A seeded sample of the training images, in their order: ranges from a few hundred
    images are the ranges of the data (every class of CIFAR-10 is in 256 draws)."""
    count = min(count, len(images))
    if count >= CALIBRATION_BATCH:
        count -= count % CALIBRATION_BATCH  # whole batches (see CALIBRATION_METHODS)
    picked = np.random.default_rng(seed).choice(len(images), count, replace=False)
    return images[np.sort(picked)]


def quantize_file(float_path: Path, out_path: Path, calibration: np.ndarray,
                  method: str = CALIBRATION_METHODS[0]) -> None:
    """Write `out_path`: `float_path` quantized (METHOD, `method` calibration), with the float
    file's metadata and a `quantization` entry saying what was done. Intermediate files stay
    beside `out_path`."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(Calibration, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix=".int8-", dir=out_path.parent) as tmp, \
            _quiet_tools():
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "quantized.onnx"
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(quantized), Reader(calibration),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod[CALIBRATIONS[method][0]],
                        extra_options=dict(CALIBRATIONS[method][1]),
                        op_types_to_quantize=list(QUANTIZED_OPS))
        proto = onnx.load(str(quantized))
    source = onnx.load(str(float_path), load_external_data=False)
    del proto.metadata_props[:]
    for prop in source.metadata_props:
        proto.metadata_props.add(key=prop.key, value=prop.value)
    proto.metadata_props.add(key="quantization", value=json.dumps(
        {**METHOD, "calibration_method": method, "calibration_images": len(calibration),
         "calibration_source": "train",
         "from": float_path.name}))
    onnx.save(proto, str(out_path))


@contextmanager
def _quiet_tools() -> Iterator[None]:
    """onnxruntime's quantization tools warn on the root logger (Python prints that on stderr
    when it has no handler) and print their histogram calibration's progress on stdout; the
    run's own log says what was done instead."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)

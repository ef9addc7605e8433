"""Export the refit model to one self-contained ONNX file, verified before it is kept.

The graph takes `input` (float32 N x C x H x W, pixels in [0, 1], dynamic batch) and gives
`logits`; normalisation is inside it, and the metadata says what a caller must know (classes,
input size, the budget it was trained under). The file is only moved into place after
onnx.checker passes and onnxruntime matches PyTorch on real images.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from autofit import __version__
from autofit.budget import Budget
from autofit.data.dataset import Dataset
from autofit.data.pipeline import RESIZE_METHOD
from autofit.errors import AutofitError, ExportError
from autofit.records import ExportInfo

PARITY_ATOL = 1e-3
PARITY_RTOL = 1e-4  # float32 rounding grows with the logits' size
PARITY_IMAGES = 64
OPSET = 18


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 N x H x W x C images to the model's float32 N x C x H x W input in [0, 1]."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def _export(model: torch.nn.Module, example: torch.Tensor, path: Path) -> str:
    """TorchScript exporter (fast: well under a second); the dynamo exporter if it is gone."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), dynamo=False,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=OPSET)
        return "torchscript"
    except (RuntimeError, TypeError, ValueError, AttributeError):
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=["input"],
                                    output_names=["logits"], verbose=False,
                                    dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
        program.save(str(path), external_data=False)
        return "dynamo"


def onnx_param_count(model_proto) -> int:  # type: ignore[no-untyped-def]
    """Elements of the float initializers: the weights a deployed file actually carries."""
    import onnx

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    return sum(int(np.prod(t.dims)) for t in model_proto.graph.initializer
               if t.data_type in floats and len(t.dims) > 0)


def ort_session(path: Path, threads: int):  # type: ignore[no-untyped-def]
    """An onnxruntime CPU session on `threads` intra-op threads: how autofit runs every model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_onnx(model: torch.nn.Module, path: Path, images: np.ndarray,
                metadata: dict[str, object], threads: int) -> ExportInfo:
    """Write `path` atomically; raise ExportError if the file is not a faithful copy."""
    import onnx

    model = model.eval().cpu()
    sample = to_input(images[:PARITY_IMAGES])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".model-", suffix=".onnx", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise AutofitError(f"cannot write {path}: {err.strerror or err}") from None
    tmp = Path(tmp_name)
    try:
        exporter = _export(model, torch.from_numpy(sample[:2]), tmp)
        proto = onnx.load(str(tmp))
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        session = ort_session(tmp, threads)
        got = session.run(["logits"], {"input": sample})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(sample)).numpy()
        diff = float(np.abs(got - want).max())
        if not np.allclose(got, want, rtol=PARITY_RTOL, atol=PARITY_ATOL):
            raise ExportError(f"ONNX export of {path.name} differs from PyTorch by {diff:.2e} "
                              f"(beyond {PARITY_ATOL:g} + {PARITY_RTOL:g} x |logit|) on "
                              f"{len(sample)} real images")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise AutofitError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return ExportInfo(path=str(path), exporter=exporter, opset=OPSET,
                      onnx_params=onnx_param_count(proto), parity_max_abs_diff=diff,
                      parity_images=len(sample))


def model_metadata(dataset: Dataset, budget: Budget) -> dict[str, object]:
    """What an ONNX file of the run says about itself besides its weights: what a caller must
    know to feed it (classes, input, resize) and what it was made under."""
    res = dataset.resolution
    return {
        "classes": dataset.classes, "input_shape": list(dataset.shape[:3]),
        "input": "float32 NCHW, pixels in [0, 1], normalisation inside the graph",
        "resize": {"height": res.height, "width": res.width, "channels": res.channels,
                   "method": RESIZE_METHOD, "chosen": res.how},
        "budget": {"minutes": budget.minutes, "max_params": budget.max_params},
        "autofit_version": __version__,
    }

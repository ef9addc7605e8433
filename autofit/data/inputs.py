"""Image files as the exact input an exported model was trained on.

The model's ONNX metadata (`resize`) holds its training resolution and channels; the files go
through the same decoder and resize the run used, so a prediction sees what training saw.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autofit.data import pipeline
from autofit.errors import UsageError
from autofit.files import printable


def read_model(model_path: str | Path) -> tuple[Any, dict[str, Any]]:
    """An autofit ONNX model's proto and its metadata, JSON values decoded; refuses a file
    without the `classes` and `resize` records autofit writes."""
    import onnx

    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - a missing file or not an ONNX model
        raise UsageError(f"cannot read {printable(model_path)} as an ONNX model: {err}") from None
    meta = {p.key: _value(p.value) for p in proto.metadata_props}
    if "classes" not in meta or "resize" not in meta:
        raise UsageError(f"{printable(model_path)} has no autofit metadata (classes, resize); it "
                         "was not exported by autofit 0.1 or later")
    return proto, meta


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def prepare(files: Sequence[str | Path], model_path: str | Path,
            threads: int = 1) -> np.ndarray:
    """float32 N x C x H x W in [0, 1]: `files` decoded and resized as the model's run did."""
    return as_input(files, read_model(model_path)[1]["resize"], threads)[0]


def as_input(files: Sequence[str | Path], resize: dict[str, object], threads: int = 1,
             max_bad: int = 0) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """`files` through the run's decoder at the size and channels of a `resize` record; up to
    `max_bad` unreadable ones are left out and returned with their reasons."""
    height, width, channels = (int(resize[k]) for k in ("height", "width", "channels"))
    path = pipeline.choose("cpu")
    pixels, bad = pipeline.decode(path, [str(f) for f in files], height, width, channels,
                                  threads, max_bad)
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0, bad

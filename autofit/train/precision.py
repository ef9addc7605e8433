"""Whether training runs under bf16 autocast, and why: the run's log says which it took.

bf16 where the device computes it natively: a GPU's tensor cores, and a CPU with Intel's AMX
tiles, where oneDNN's bf16 convolutions trained fastnet at 1.4-2.3x the images per second of
float32 on this project's 2-core CPU (`bench/widths.py --precisions fp32 bf16`). Elsewhere
bf16 on a CPU is emulated and slower than float32, so it stays off. Weights, gradients and
optimizer state stay float32 either way. On a CPU, evaluation runs in float32, as the exported
ONNX model does on onnxruntime: the trials' evaluation speed predicts that model's test pass.
`AUTOFIT_PRECISION=fp32` (or `bf16`) overrides the choice, e.g. for bit-stable CPU runs.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

from autofit.errors import UsageError

ENV = "AUTOFIT_PRECISION"
CHOICES = ("auto", "bf16", "fp32")


class Precision(NamedTuple):
    bf16: bool
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"


def amx() -> bool:
    """Whether this CPU has AMX tiles (what oneDNN's fast bf16 kernels run on)."""
    supported = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(supported()) if supported is not None else False


def choose(device_type: str) -> Precision:
    """The precision training runs at on `device_type` ("cuda" or "cpu")."""
    wanted = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if wanted not in CHOICES:
        raise UsageError(f"{ENV}={wanted!r}: expected one of {', '.join(CHOICES)}")
    if wanted != "auto":
        return Precision(wanted == "bf16", f"{ENV}={wanted}")
    if device_type == "cuda":
        return Precision(True, "bf16 autocast on the GPU's tensor cores")
    if amx():
        return Precision(True, "bf16 autocast: this CPU has AMX tiles")
    return Precision(False, "float32: this CPU has no AMX tiles, where bf16 is slower")


def autocast(device_type: str, bf16: bool | None = None) -> torch.autocast:
    """The forward pass and loss under bf16 when `bf16` (default: what `choose` says).
    Cross-entropy itself runs in float32 under autocast; bf16 needs no loss scaling."""
    return torch.autocast(device_type, dtype=torch.bfloat16,
                          enabled=choose(device_type).bf16 if bf16 is None else bf16)

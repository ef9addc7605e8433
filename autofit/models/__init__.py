"""Model families, by name, and the two things the search needs of them: build and count.

Each family is a small module with a `build(**knobs, in_channels, num_classes, input_size)`.
Parameter counts are exact: the model is instantiated on the meta device (no memory, no
init cost), so a model's size is known before it ever trains.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NamedTuple

import torch
from torch import Tensor, nn

from autofit.models import resnet

FAMILIES: Mapping[str, Callable[..., nn.Module]] = MappingProxyType({"resnet": resnet.build})
_DATA_ARGS = {"in_channels", "num_classes", "input_size"}


def knobs(family: str) -> set[str]:
    """Architecture knobs a family's builder takes (what a search space may set)."""
    return set(inspect.signature(FAMILIES[family]).parameters) - _DATA_ARGS


def build(family: str, arch: Mapping[str, int], in_channels: int, num_classes: int,
          input_size: int) -> nn.Module:
    return FAMILIES[family](
        **arch, in_channels=in_channels, num_classes=num_classes, input_size=input_size
    )


def count_params(family: str, arch: Mapping[str, int], in_channels: int, num_classes: int,
                 input_size: int) -> int:
    """Exact trainable-parameter count, computed without allocating weights."""
    with torch.device("meta"):
        model = build(family, arch, in_channels, num_classes, input_size)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Classifier(nn.Module):
    """A family's network behind per-channel normalisation, so callers feed pixels in [0, 1].

    The same module trains and is exported: normalisation travels inside the ONNX graph.
    """

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)


class DataShape(NamedTuple):
    """What a model needs to know of the data to be built (and counted)."""

    channels: int
    height: int
    width: int
    num_classes: int

    @property
    def size(self) -> int:
        return max(self.height, self.width)


def build_for(family: str, arch: Mapping[str, int], shape: DataShape) -> nn.Module:
    return build(family, arch, shape.channels, shape.num_classes, shape.size)


def count_for(family: str, arch: Mapping[str, int], shape: DataShape) -> int:
    return count_params(family, arch, shape.channels, shape.num_classes, shape.size)

"""Model families, by name, and what the search needs of them: build, count params and MACs.

Each family is a small module with a
`build(**knobs, in_channels, num_classes, input_size, dropout=0.0)`; its knobs are integers
(what a search space samples), and `dropout` (before the linear head, no parameters) is a
training setting, not a knob, so it never changes a count or a state_dict's keys.
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

from autofit.models import fastnet, pretrained, pyramidnet, resnet, wrn

FAMILIES: Mapping[str, Callable[..., nn.Module]] = MappingProxyType({
    "resnet": resnet.build,
    "wrn": wrn.build,
    "pyramidnet": pyramidnet.build,
    "fastnet": fastnet.build,
    pretrained.FAMILY: pretrained.build,
})
_NOT_KNOBS = frozenset({"in_channels", "num_classes", "input_size", "dropout"})
# Every from-scratch family's optional knob: the input is averaged down by this factor before
# the family's own layers, which are laid out for the smaller side (search/resolution.py
# decides it from the data). Pretrained nets resize to their own `resolution` instead.
SHRINK = "shrink"


def knobs(family: str) -> set[str]:
    """Architecture knobs a family's builder takes (what a search space may set)."""
    own = set(inspect.signature(FAMILIES[family]).parameters) - _NOT_KNOBS
    return own if family == pretrained.FAMILY else own | {SHRINK}


def required_knobs(family: str) -> set[str]:
    """The knobs a search space must set: those the builder has no default for (a knob added
    later, with a default that builds what the family built before, leaves spaces valid)."""
    return {name for name, p in inspect.signature(FAMILIES[family]).parameters.items()
            if p.default is inspect.Parameter.empty} - _NOT_KNOBS


def build(family: str, arch: Mapping[str, int], in_channels: int, num_classes: int,
          input_size: int, dropout: float = 0.0) -> nn.Module:
    own = {k: v for k, v in arch.items() if k != SHRINK}
    shrink = arch.get(SHRINK, 1)
    net = FAMILIES[family](**own, in_channels=in_channels, num_classes=num_classes,
                           input_size=max(1, input_size // shrink), dropout=dropout)
    return net if shrink == 1 else Shrunk(shrink, net)


class Shrunk(nn.Module):
    """A network behind a `shrink` x `shrink` average pool: the antialiased downscale of the
    input (a box filter, exact at a factor of 2), inside the model, so the data, its pipeline
    and the exported model's input keep the loaded side."""

    def __init__(self, shrink: int, net: nn.Module) -> None:
        super().__init__()
        self.shrink = nn.AvgPool2d(shrink)
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.shrink(x))


def count_params(family: str, arch: Mapping[str, int], in_channels: int, num_classes: int,
                 input_size: int) -> int:
    """Exact parameter count, frozen ones included (they ship in the exported model),
    computed without allocating weights."""
    with torch.device("meta"):
        model = build(family, arch, in_channels, num_classes, input_size)
    return sum(p.numel() for p in model.parameters())


def count_macs(family: str, arch: Mapping[str, int], shape: DataShape) -> int:
    """Multiply-accumulates of one image's forward pass (convolutions and linear layers)."""
    return count_work(family, arch, shape)[0]


def count_work(family: str, arch: Mapping[str, int], shape: DataShape) -> tuple[int, int]:
    """(MACs, activations) of one image's forward pass, from a forward pass on the meta
    device: what a model costs to train, known before it trains, as its parameter count is.

    MACs alone mis-time models on a CPU by up to 4x: narrow and deep nets are bound by memory
    traffic (batch norm, activations, pooling), which grows with the values every layer
    writes, not with its arithmetic. autofit/train/probe.py prices both."""
    with torch.device("meta"):
        net = build(family, arch, shape.channels, shape.num_classes, shape.size).eval()
    macs = acts = 0

    def add(module: nn.Module, inputs: object, out: Tensor) -> None:
        nonlocal macs, acts
        if isinstance(out, Tensor):
            acts += out.numel()
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            macs += out.numel() * module.in_channels // module.groups * kernel
        elif isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features

    for module in net.modules():
        if not any(True for _ in module.children()):
            module.register_forward_hook(add)
    with torch.no_grad():
        net(torch.empty(1, shape.channels, shape.height, shape.width, device="meta"))
    return macs, acts


class Classifier(nn.Module):
    """A family's network behind per-channel normalisation, so callers feed pixels in [0, 1].

    The same module trains and is exported: normalisation travels inside the ONNX graph, and
    so does test-time augmentation. In eval mode, `tta` averages the logits of each image and
    of its horizontal mirror (two passes of the network), and `translate` (airbench's second
    TTA level) averages those, weighted one half, with the mean of the same views shifted one
    pixel up-left and down-right (edges reflected), so three times the passes; validation,
    the ONNX files and their test accuracy all see it. Both are plain attributes, not buffers:
    state_dict keys are the same with and without them.
    """

    def __init__(self, net: nn.Module, mean: list[float], std: list[float],
                 tta: bool = False, translate: bool = False) -> None:
        super().__init__()
        self.net = net
        self.tta = tta
        self.translate = translate
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.mean) / self.std
        if self.training:
            return self.net(x)
        logits = self._mirrored(x)
        if self.translate:
            height, width = x.shape[2:]
            padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
            shifted = (self._mirrored(padded[:, :, :height, :width])
                       + self._mirrored(padded[:, :, 2:, 2:])) / 2
            logits = (logits + shifted) / 2
        return logits

    def _mirrored(self, x: Tensor) -> Tensor:
        return (self.net(x) + self.net(x.flip(3))) / 2 if self.tta else self.net(x)


class DataShape(NamedTuple):
    """What a model needs to know of the data to be built (and counted)."""

    channels: int
    height: int
    width: int
    num_classes: int

    @property
    def size(self) -> int:
        return max(self.height, self.width)


def build_for(family: str, arch: Mapping[str, int], shape: DataShape,
              dropout: float = 0.0) -> nn.Module:
    return build(family, arch, shape.channels, shape.num_classes, shape.size, dropout=dropout)


def count_for(family: str, arch: Mapping[str, int], shape: DataShape) -> int:
    return count_params(family, arch, shape.channels, shape.num_classes, shape.size)


def head(model: nn.Module) -> nn.Module:
    """The classifier head of a built network, or of a Classifier around one: the layer a new
    task replaces, which a recipe's `backbone_lr_scale` and `freeze_epochs` treat apart from
    the rest. The pretrained family names it; in the others it is the last Linear layer."""
    net = model.net if isinstance(model, Classifier) else model
    if isinstance(net, pretrained.Pretrained):
        return net.head()
    return [m for m in net.modules() if isinstance(m, nn.Linear)][-1]

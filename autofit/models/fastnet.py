"""A fast, shallow, wide net in the CIFAR-10 speed-run lineage (Page's ResNet-9, hlb-CIFAR10,
Keller Jordan's airbench94): what reaches good accuracy in the fewest seconds, so it wins short
budgets, on CPU above all.

A 3x3 conv stem (width/2 channels), then three blocks of widths w, 4w, 4w, each
conv -> 2x2 max-pool -> BN -> GELU followed by `depth` - 1 more conv -> BN -> GELU, then a
global max-pool and a linear head. `width` is w (airbench94 is w=64, depth 2: about 2M params);
`depth` is convs per block (2 as airbench94, 3 as airbench96). A block skips its pool where the
map would drop below 4 px (models/layout.py). `whiten` > 0 swaps the stem for airbench's: the
whitened `whiten` x `whiten` patches (2 x channels x whiten^2 frozen filters fitted to the
first training batch: parts.PatchWhiten), then GELU. Unlike airbench, BN scales are learned
and logits are not scaled by 1/9: the recipe's learning rate is searched per family, and plain
logits suit the shared recipe.
"""

from __future__ import annotations

from torch import Tensor, nn

from autofit.models.layout import layout
from autofit.models.parts import PatchWhiten, init_convs, stem


def _conv_bn(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return [*layers, nn.BatchNorm2d(c_out), nn.GELU()]


class FastNet(nn.Module):
    def __init__(self, width: int, depth: int, in_channels: int, num_classes: int,
                 input_size: int, dropout: float, whiten: int = 0) -> None:
        super().__init__()
        if width < 2 or depth < 1 or whiten < 0:
            raise ValueError(f"fastnet needs width >= 2, depth >= 1 and whiten >= 0, not "
                             f"{width}, {depth} and {whiten}")
        plan = layout(input_size, 3, first_may_halve=True, ceil=False)
        if whiten:
            first = PatchWhiten(in_channels, whiten, plan.stem_stride)
            stem_width, layers = first.out_channels, [first, nn.GELU()]
        else:
            stem_width = width // 2
            layers = [nn.Conv2d(in_channels, stem_width, 3, plan.stem_stride, 1, bias=False),
                      nn.BatchNorm2d(stem_width), nn.GELU()]
        self.stem = stem(layers, plan.stem_pool)
        blocks: list[nn.Module] = []
        c_in = stem_width
        for c_out, stride in zip((width, 4 * width, 4 * width), plan.strides, strict=True):
            layers = _conv_bn(c_in, c_out, pool=stride == 2)
            for _ in range(depth - 1):
                layers += _conv_bn(c_out, c_out, pool=False)
            blocks.append(nn.Sequential(*layers))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(c_in, num_classes)
        init_convs(self, mode="fan_in")

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem(x))
        return self.head(self.drop(self.pool(x).flatten(1)))


def build(width: int, depth: int, in_channels: int, num_classes: int, input_size: int,
          dropout: float = 0.0, whiten: int = 0) -> nn.Module:
    return FastNet(width, depth, in_channels, num_classes, input_size, dropout, whiten)

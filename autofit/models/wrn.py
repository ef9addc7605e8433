"""Wide-ResNet (Zagoruyko & Komodakis 2016): pre-activation basic blocks, made wide not deep.

`depth` is 6n+4 (n blocks per stage: WRN-16-4 is n=2) and `widen` the factor k on the stage
widths 16k, 32k, 64k. Wider-but-shallower nets train faster per parameter on GPUs, which is
what a time budget rewards. Downsampling follows the input size (models/layout.py).
"""

from __future__ import annotations

from torch import Tensor, nn

from autofit.models.layout import layout
from autofit.models.parts import PreActHead, init_convs, stem


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice; the shortcut is a 1x1 conv where width or resolution changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.act(self.bn1(x))
        # A projection reads the pre-activated input, as in the paper's code.
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.act(self.bn2(out)))
        return out + skip


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, in_channels: int, num_classes: int,
                 input_size: int, dropout: float) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1, not {depth}")
        if widen < 1:
            raise ValueError(f"WRN widen must be at least 1, not {widen}")
        blocks = (depth - 4) // 6
        plan = layout(input_size, 3)
        self.stem = stem([nn.Conv2d(in_channels, 16, 3, plan.stem_stride, 1, bias=False)],
                         plan.stem_pool)
        layers: list[nn.Module] = []
        c_in = 16
        for c_out, stride in zip((16 * widen, 32 * widen, 64 * widen), plan.strides, strict=True):
            for i in range(blocks):
                layers.append(PreActBlock(c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
        self.stages = nn.Sequential(*layers)
        self.head = PreActHead(c_in, num_classes, dropout)
        init_convs(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


def build(depth: int, widen: int, in_channels: int, num_classes: int, input_size: int,
          dropout: float = 0.0) -> nn.Module:
    return WideResNet(depth, widen, in_channels, num_classes, input_size, dropout)

"""CIFAR-style ResNet (He et al. 2016, section 4.2): three stages of basic blocks.

`depth` is 6n+2 (n blocks per stage: ResNet-20 is n=3); `width` is the first stage's channels,
doubled at each later stage. Inputs larger than 48 px get a strided stem so compute stays
bounded; 1x1 projection shortcuts join stages of different width.
"""

from __future__ import annotations

from torch import Tensor, nn

from autofit.models.parts import init_convs


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, depth: int, width: int, in_channels: int, num_classes: int,
                 input_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n+2 with n >= 1, not {depth}")
        blocks = (depth - 2) // 6
        stem_stride = 2 if input_size > 48 else 1
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stem_stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        c_in = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(c_in, c_out, stride))
                c_in = c_out
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(c_in, num_classes)
        init_convs(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        return self.head(self.drop(self.pool(x).flatten(1)))


def build(depth: int, width: int, in_channels: int, num_classes: int, input_size: int,
          dropout: float = 0.0) -> nn.Module:
    return ResNet(depth, width, in_channels, num_classes, input_size, dropout)

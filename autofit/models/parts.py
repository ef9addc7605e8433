"""Pieces several families share: their weight init and the pre-activation head."""

from __future__ import annotations

from torch import Tensor, nn


def init_convs(model: nn.Module, mode: str = "fan_out") -> None:
    """He init of every conv; skipped on the meta device, where a model is only counted."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and not m.weight.is_meta:
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")


class PreActHead(nn.Module):
    """The end of a pre-activation network: BatchNorm and ReLU on the last stage's output
    (its blocks leave it un-normalised), global average pool, dropout, linear classifier."""

    def __init__(self, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(self.pool(self.act(self.bn(x))).flatten(1)))


def stem(layers: list[nn.Module], pool: bool) -> nn.Sequential:
    """A family's stem, with the extra 2x max-pool that large inputs get (see layout)."""
    return nn.Sequential(*layers, *([nn.MaxPool2d(3, 2, 1)] if pool else []))

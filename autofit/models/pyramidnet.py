"""PyramidNet (Han et al. 2017) with additive widening, optionally with ShakeDrop.

`depth` is 6n+2 (n basic blocks per stage; PyramidNet-110 is n=18) and `alpha` the total
widening: block i of N has round(16 + alpha * i / N) channels, so width grows a little at every
block instead of doubling at stage boundaries. Shortcuts are parameter-free (2x2 average pool
where the block downsamples, zero channels appended), so all parameters sit in residual
branches. `shakedrop` 1 adds ShakeDrop (Yamada et al. 2019) to each branch with the linear
decay rule, p_L = 0.5: a strong regulariser that needs long training, so the search decides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autofit.models.layout import layout
from autofit.models.parts import PreActHead, init_convs, stem

DROP_LAST = 0.5  # ShakeDrop's p_L: the last block's branch is perturbed half the time


class ShakeDrop(nn.Module):
    """Scales a residual branch by b + alpha - b * alpha forward and b + beta - b * beta backward
    (b ~ Bernoulli(1 - drop), alpha ~ U[-1, 1], beta ~ U[0, 1], one draw per image).

    In eval mode it is the expectation, a fixed factor 1 - drop, so export is a plain Mul.
    """

    def __init__(self, drop: float) -> None:
        super().__init__()
        self.drop = drop

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x * (1.0 - self.drop)
        shape = (x.shape[0], 1, 1, 1)
        gate = torch.bernoulli(torch.full(shape, 1.0 - self.drop, device=x.device, dtype=x.dtype))
        alpha = torch.empty(shape, device=x.device, dtype=x.dtype).uniform_(-1.0, 1.0)
        beta = torch.rand(shape, device=x.device, dtype=x.dtype)
        forward = gate + (1.0 - gate) * alpha
        backward = gate + (1.0 - gate) * beta
        # Value x * forward, gradient x * backward: the detached term carries the difference.
        return x * backward + (x * (forward - backward)).detach()


class PyramidBlock(nn.Module):
    """BN-conv-BN-ReLU-conv-BN (the paper's basic block: no ReLU before the addition)."""

    def __init__(self, c_in: int, c_out: int, stride: int, drop: float | None) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.BatchNorm2d(c_in),
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shake: nn.Module = nn.Identity() if drop is None else ShakeDrop(drop)
        # ceil_mode keeps odd sides in step with the stride-2 conv (45 px -> 23, not 22).
        self.down: nn.Module = nn.AvgPool2d(2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.extra = c_out - c_in

    def forward(self, x: Tensor) -> Tensor:
        skip = self.down(x)
        if self.extra:
            skip = F.pad(skip, (0, 0, 0, 0, 0, self.extra))
        return self.shake(self.branch(x)) + skip


class PyramidNet(nn.Module):
    def __init__(self, depth: int, alpha: int, shakedrop: int, in_channels: int,
                 num_classes: int, input_size: int, dropout: float) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"PyramidNet depth must be 6n+2 with n >= 1, not {depth}")
        if alpha < 0 or shakedrop not in (0, 1):
            raise ValueError(f"PyramidNet needs alpha >= 0 and shakedrop 0 or 1, not "
                             f"{alpha} and {shakedrop}")
        per_stage = (depth - 2) // 6
        total = 3 * per_stage
        plan = layout(input_size, 3)
        self.stem = stem([nn.Conv2d(in_channels, 16, 3, plan.stem_stride, 1, bias=False),
                          nn.BatchNorm2d(16)], plan.stem_pool)
        layers: list[nn.Module] = []
        c_in = 16
        for i in range(1, total + 1):
            c_out = round(16 + alpha * i / total)
            stage, index = divmod(i - 1, per_stage)
            stride = plan.strides[stage] if index == 0 else 1
            drop = DROP_LAST * i / total if shakedrop else None
            layers.append(PyramidBlock(c_in, c_out, stride, drop))
            c_in = c_out
        self.stages = nn.Sequential(*layers)
        self.head = PreActHead(c_in, num_classes, dropout)
        init_convs(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


def build(depth: int, alpha: int, shakedrop: int, in_channels: int, num_classes: int,
          input_size: int, dropout: float = 0.0) -> nn.Module:
    return PyramidNet(depth, alpha, shakedrop, in_channels, num_classes, input_size, dropout)

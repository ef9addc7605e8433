"""A frozen patch-whitening stem (airbench94's first layer), set from the training images.

A 2x2 convolution whose filters are the eigenvectors of the covariance of 2x2 input patches,
each scaled by 1/sqrt(its eigenvalue), and their negatives (so the GELU after it drops no
direction): 8c outputs for c input channels. Its output is decorrelated with unit variance
from the first step, which is what lets a short training run start learning at once. The
weights stay frozen (only the bias trains) and are part of the state_dict, so a checkpoint, a
warm start and the ONNX file carry them; `fitted` says whether they were ever set from data.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

KERNEL = 2
EPS = 5e-4  # added to the eigenvalues: keeps near-constant directions from blowing up
PATCH_IMAGES = 5000  # images whose patches estimate the covariance (airbench94's count) ...
PATCH_VALUES = 16_000_000  # ... or fewer, for large images: at most this many input values
CHUNK = 500  # images per step of the estimate, to bound its memory


def channels(in_channels: int) -> int:
    """Output channels: each eigenvector of the c*2*2 patch space and its negative."""
    return 2 * in_channels * KERNEL * KERNEL


class WhiteningStem(nn.Module):
    def __init__(self, in_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels(in_channels), KERNEL, stride, 0, bias=True)
        self.conv.weight.requires_grad = False
        self.act = nn.GELU()
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))

    @torch.no_grad()
    def fit(self, chunks: Iterable[Tensor]) -> None:
        """Set the filters from batches of normalised images (N, C, H, W); the bias starts
        at zero."""
        stride, size = self.conv.stride[0], self.conv.weight[0].numel()
        cov = torch.zeros(size, size, dtype=torch.float64, device=self.conv.weight.device)
        count = 0
        for chunk in chunks:
            patches = chunk.float().unfold(2, KERNEL, stride).unfold(3, KERNEL, stride)
            flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, cov.shape[0]).double()
            cov += flat.T @ flat
            count += len(flat)
        values, vectors = torch.linalg.eigh(cov / max(count, 1))
        filters = (vectors.T / torch.sqrt(values.clamp(min=0) + EPS)[:, None]).flip(0)
        filters = filters.reshape(-1, *self.conv.weight.shape[1:]).to(self.conv.weight)
        self.conv.weight.copy_(torch.cat((filters, -filters)))
        self.conv.bias.zero_()
        self.fitted.fill_(True)

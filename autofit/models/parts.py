"""Pieces families share: their weight init, the pre-activation head, a whitening stem."""

from __future__ import annotations

import torch
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


class PatchWhiten(nn.Module):
    """A stem conv whose filters whiten the input's k x k patches (airbench94's first layer):
    the eigenvectors of the patch covariance, each scaled by 1/sqrt(its eigenvalue) and paired
    with its negation (so a GELU after it keeps both signs), frozen; only the bias trains.
    Fine, faint structure then starts on the same footing as colour and brightness, which is
    what lets a short run use it.

    The filters need the data, which a model does not have when it is built, so the module
    fits them to the first batch it sees in training (normalised and augmented, as the
    network sees them); the `fitted` buffer travels in the state_dict, so a model loaded from
    trained weights (a refit's warm start, a resumed trial, an export) keeps its fit. Padded
    on the right and bottom by k - 1, so the map keeps the side (stride 1) or halves it,
    rounding up (stride 2), as models/layout.py expects of a stem.
    """

    def __init__(self, in_channels: int, k: int, stride: int = 1, eps: float = 5e-4) -> None:
        super().__init__()
        self.k, self.eps = k, eps
        self.pad = nn.ZeroPad2d((0, k - 1, 0, k - 1))
        self.conv = nn.Conv2d(in_channels, 2 * in_channels * k * k, k, stride, bias=True)
        self.conv.weight.requires_grad_(False)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._fitted: bool | None = None  # the buffer, read once: no device sync per step
        self.register_load_state_dict_post_hook(PatchWhiten._forget)

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    @staticmethod
    def _forget(module: nn.Module, keys: object) -> None:
        module._fitted = None

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """Set the filters from the patches of `x` (N, C, H, W), in float32."""
        c, k = x.shape[1], self.k
        with torch.autocast(x.device.type, enabled=False):
            patches = x.float().unfold(2, k, 1).unfold(3, k, 1)  # N C H' W' k k
            patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
            values, vectors = torch.linalg.eigh(patches.T @ patches / len(patches))
            scale = (values.flip(0).clamp(min=0) + self.eps).rsqrt()
            filters = (vectors.T.flip(0) * scale[:, None]).reshape(-1, c, k, k)
            self.conv.weight.copy_(torch.cat([filters, -filters]))
        self.fitted.fill_(True)
        self._fitted = True

    def forward(self, x: Tensor) -> Tensor:
        if self.training and not self._fitted:
            self._fitted = bool(self.fitted)
            if not self._fitted:
                self.fit(x)
        return self.conv(self.pad(x))

"""What every data path's loader shares: batch sizes, the seeded order, the augmentation sizes.

The DALI loader (`autofit.data.pipeline`) and the torch one (`autofit.data.torch_data`) differ
only in
how a batch of indices becomes augmented tensors; everything else lives here, once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Self

import numpy as np
import torch

from autofit.config import CROP_SHIFT


def crop_pad(height: int, width: int, share: float = CROP_SHIFT) -> int:
    """How far a random crop may shift: `share` of the shorter side (4 pixels at 32x32 for the
    usual CROP_SHIFT), at least a pixel unless the share is 0."""
    return max(1, round(min(height, width) * share)) if share > 0 else 0


def cutout_side(cutout: float, height: int, width: int) -> int:
    """Cutout's square side in pixels: a share of the shorter side, 0 when off."""
    return max(1, round(cutout * min(height, width))) if cutout > 0 else 0


class Batches:
    """Epochs of batches over a uint8 N x H x W x C cache and its labels.

    Training loaders shuffle (seeded, a new order each epoch) and drop the last partial batch;
    evaluation loaders keep order and keep every image. Subclasses turn each batch of indices
    into (float32 NCHW in [0, 1] laid out channels_last, int64 labels) on `device`, mirroring
    the images `_flips` picks.
    """

    def __init__(self, images: Any, labels: np.ndarray, batch_size: int, *, train: bool,
                 hflip: bool = True, alternate_flip: bool = False, cutout: float = 0.0,
                 crop_shift: float = CROP_SHIFT, seed: int = 0, threads: int = 1,
                 device: str = "cpu", **extra: Any) -> None:
        if len(images) != len(labels):
            raise ValueError("images and labels differ in length")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size = min(batch_size, len(images)) if train else batch_size
        self.train = train
        self.hflip = hflip
        self.device = torch.device(device)
        height, width = images.shape[1:3]
        self.pad = crop_pad(height, width, crop_shift)
        self.cut = cutout_side(cutout, height, width)
        self._options: dict[str, Any] = {"hflip": hflip, "alternate_flip": alternate_flip,
                                         "cutout": cutout, "crop_shift": crop_shift,
                                         "seed": seed, "threads": threads, "device": device,
                                         **extra}
        self._rng = np.random.default_rng(seed)
        self._first = self._rng.random(len(images)) < 0.5 \
            if train and hflip and alternate_flip else None
        self._epoch = -1  # of the pass being iterated, from 0

    def rebatched(self, batch_size: int) -> Self:
        """The same loader with another batch size (a trial out of memory retries smaller)."""
        return type(self)(self.images, self.labels, batch_size, train=self.train,
                          **self._options)

    def __len__(self) -> int:
        if self.train:
            return len(self.images) // self.batch_size
        return -(-len(self.images) // self.batch_size)

    def _indices(self) -> Iterator[np.ndarray]:
        """One epoch's batches of image indices."""
        order = self._rng.permutation(len(self.images)) if self.train else \
            np.arange(len(self.images))
        self._epoch += 1
        for i in range(len(self)):
            yield order[i * self.batch_size:(i + 1) * self.batch_size]

    def _flips(self, index: np.ndarray) -> np.ndarray:
        """Which images of a batch to mirror: none outside training or without `hflip`; else
        a coin each, or with `alternate_flip` (airbench) a random half in the first epoch and
        then each image mirrored in every other epoch, so two epochs see both views of every
        image and none repeats one view twice running."""
        if not (self.train and self.hflip):
            return np.zeros(len(index), dtype=bool)
        if self._first is None:
            return self._rng.random(len(index)) < 0.5
        return self._first[index] ^ bool(self._epoch % 2)

    def _labels(self, index: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.labels[index]).to(self.device, non_blocking=True)

"""NVIDIA DALI data path: decode files once into a uint8 cache, then augment it per batch.

Decoding (`autofit.decoder`) happens once per run, not per trial; every trial and the refit
read the same cache and get their batches from a DALI pipeline (pad-and-random-crop,
horizontal flip, scaling to [0, 1] floats, NCHW in channels_last layout). This module runs
DALI's CPU backend; `backend_name` is what the run records, so a GPU path can be added behind
the same two entry points.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from autofit.decoder import decode

__all__ = ["BatchLoader", "backend_name", "decode"]


def backend_name() -> str:
    return "dali-cpu"


class BatchLoader:
    """Epochs of (images, labels) from a uint8 cache through a DALI pipeline.

    Training loaders shuffle (seeded) and augment; evaluation loaders keep order and only
    convert. Images come out as float32 NCHW in [0, 1] (normalisation lives in the model),
    laid out channels_last, which convolutions run fastest on, CPU included.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, *,
                 train: bool, hflip: bool = True, seed: int = 0, threads: int = 1,
                 device: str = "cpu") -> None:
        if len(images) != len(labels):
            raise ValueError("images and labels differ in length")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size = min(batch_size, len(images)) if train else batch_size
        self.train = train
        self.device = torch.device(device)
        self._options = {"hflip": hflip, "seed": seed, "threads": threads, "device": device}
        self._rng = np.random.default_rng(seed)
        self._pipe = self._build(hflip, seed, threads)

    def rebatched(self, batch_size: int) -> BatchLoader:
        """The same loader with another batch size (a trial out of memory retries smaller)."""
        return BatchLoader(self.images, self.labels, batch_size, train=self.train,
                           **self._options)  # type: ignore[arg-type]

    def __len__(self) -> int:
        if self.train:
            return len(self.images) // self.batch_size
        return -(-len(self.images) // self.batch_size)

    def _build(self, hflip: bool, seed: int, threads: int):  # type: ignore[no-untyped-def]
        from nvidia.dali import fn, pipeline_def, types

        height, width = self.images.shape[1:3]
        pad = max(1, round(min(height, width) / 8))
        train = self.train

        @pipeline_def(batch_size=self.batch_size, num_threads=threads, device_id=None,
                      seed=seed, prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
        def augment():  # type: ignore[no-untyped-def]
            images = fn.external_source(name="images", layout="HWC", dtype=types.UINT8)
            mirror = 0
            if train:
                offsets = list(range(-pad, pad + 1))
                start = fn.stack(fn.random.uniform(values=offsets, dtype=types.INT32),
                                 fn.random.uniform(values=offsets, dtype=types.INT32))
                images = fn.slice(images, start, np.array([height, width], dtype=np.int32),
                                  axes=[0, 1], out_of_bounds_policy="pad", fill_values=0)
                if hflip:
                    mirror = fn.random.coin_flip()
            return fn.crop_mirror_normalize(images, mirror=mirror, mean=[0.0], std=[255.0],
                                            output_layout="HWC", dtype=types.FLOAT)

        pipe = augment()
        pipe.build()
        return pipe

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._rng.permutation(len(self.images)) if self.train else None
        for i in range(len(self)):
            picks = slice(i * self.batch_size, (i + 1) * self.batch_size)
            index = order[picks] if order is not None else np.arange(len(self.images))[picks]
            self._pipe.feed_input("images", self.images[index])
            (out,) = self._pipe.run()
            x = torch.from_numpy(out.as_array()).permute(0, 3, 1, 2)  # NCHW, channels_last
            y = torch.from_numpy(self.labels[index])
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

"""The data path: decode files once into a uint8 cache, then augment it per batch.

Three paths, one interface (`choose`, `decode`, `loader`), and the run records which it took:
- `dali-gpu`: DALI decodes with nvJPEG (`device="mixed"`); each trial keeps the uint8 cache
  on its GPU and DALI augments there, handing batches to PyTorch without a host round trip.
- `dali-cpu`: DALI's CPU backend decodes and augments (no GPU, or DALI's GPU backend failed
  its start-up self-test, which the run says).
- `torch`: DALI cannot be imported (it ships for Linux only): PIL decodes and torch augments,
  and the run says so loudly.
Augmentation: pad-and-random-crop, horizontal flip (a space knob: off where a mirror changes
the label), cutout, scaling to [0, 1] floats, NCHW in channels_last layout. Per-channel
normalisation is the model's first layer, so the exported ONNX file carries it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from autofit import faults
from autofit.config import CROP_SHIFT, Recipe
from autofit.data import decoder, torch_data
from autofit.data.batches import Batches
from autofit.errors import one_line

DALI_GPU, DALI_CPU, TORCH = "dali-gpu", "dali-cpu", "torch"
RESIZE_METHOD = "bilinear, antialiased when shrinking, aspect not kept (DALI fn.resize)"

__all__ = ["DALI_CPU", "DALI_GPU", "TORCH", "BatchLoader", "DataPath", "Loader", "choose",
           "decode", "loader"]


@dataclass(frozen=True)
class DataPath:
    """Which path the run's data takes, and why: the run logs `reason` and records `name`."""

    name: str
    reason: str


def dali_missing() -> str | None:
    """Why DALI cannot be used on this machine, or None when it can."""
    if "no-dali" in faults.planned("data"):
        return f"DALI is switched off by {faults.ENV}=no-dali@data"
    try:
        import nvidia.dali  # noqa: F401
    except Exception as err:  # noqa: BLE001 - a missing wheel or a broken native library
        return f"NVIDIA DALI cannot be imported ({one_line(err)}; it ships for Linux only)"
    return None


def choose(device: str) -> DataPath:
    """The fastest path that works here; every step down is said, never silent."""
    missing = dali_missing()
    if missing is not None:
        return DataPath(TORCH, f"{missing}: using the torch data path (PIL decode, torch "
                               "augmentation), which is slower")
    if device != "cuda":
        return DataPath(DALI_CPU, "no GPU: DALI's CPU backend decodes and augments")
    failure = _gpu_self_test()
    if failure is not None:
        return DataPath(DALI_CPU, f"DALI's GPU backend failed its self-test ({failure}): "
                                  "DALI decodes and augments on the CPU, batches are copied to "
                                  "the GPU")
    return DataPath(DALI_GPU, "DALI decodes with nvJPEG and augments on the GPU")


def _gpu_self_test() -> str | None:
    """Decode one JPEG with nvJPEG and augment a batch on the GPU, before the run relies on
    either; the reason they failed, or None."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(buffer, format="JPEG")
    try:
        pixels = decoder.decode_gpu_bytes([np.frombuffer(buffer.getvalue(), np.uint8)], 8, 8, 3)
        batch = loader(DALI_GPU, pixels.repeat(4, axis=0), np.zeros(4), 4, train=True,
                       cutout=0.25, device="cuda")
        x, _ = next(iter(batch))
        if x.device.type != "cuda" or tuple(x.shape) != (4, 3, 8, 8):
            return f"unexpected batch {tuple(x.shape)} on {x.device}"
    except Exception as err:  # noqa: BLE001 - any failure means: do not rely on it
        return one_line(err)[:200]
    return None


def decode(path: DataPath, files: Sequence[str], height: int, width: int, channels: int,
           threads: int, max_bad: int = 0,
           resize: bool = True) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode and resize files to N x H x W x C uint8 in file order, on the path's device.

    Files that cannot be decoded are left out, up to `max_bad` of them: the pixels of the rest
    and the (file, reason) of each one left out. One more is a DataError. `resize=False`
    promises every image is height x width already."""
    if path.name == TORCH:
        return torch_data.decode(files, height, width, channels, threads, max_bad)
    return decoder.decode(files, height, width, channels, threads, max_bad=max_bad,
                          gpu=path.name == DALI_GPU, resize=resize)


def loader(path: str, images: np.ndarray, labels: np.ndarray, batch_size: int, *,
           train: bool, hflip: bool = True, alternate_flip: bool = False, cutout: float = 0.0,
           crop_shift: float = CROP_SHIFT, seed: int = 0, threads: int = 1,
           device: str = "cpu") -> Loader:
    """Batches of `images` on `device` through the run's data path."""
    options: dict[str, Any] = {"train": train, "hflip": hflip, "alternate_flip": alternate_flip,
                               "cutout": cutout, "crop_shift": crop_shift, "seed": seed,
                               "threads": threads, "device": device}
    if path == TORCH:
        return torch_data.TorchBatchLoader(images, labels, batch_size, **options)
    return BatchLoader(images, labels, batch_size, **options, gpu=path == DALI_GPU)


def training_loader(path: str, images: np.ndarray, labels: np.ndarray, recipe: Recipe, *,
                    seed: int, threads: int, device: str) -> Loader:
    """A training loader with the recipe's batch size and augmentation."""
    return loader(path, images, labels, recipe.batch_size, train=True, hflip=recipe.hflip,
                  alternate_flip=recipe.alternate_flip, cutout=recipe.cutout,
                  crop_shift=recipe.crop_shift, seed=seed, threads=threads, device=device)


class BatchLoader(Batches):
    """Epochs of (images, labels) from a uint8 cache through a DALI pipeline.

    Training loaders augment; evaluation loaders only convert. With `gpu`, the cache is copied
    to the GPU once and DALI's GPU operators read it there.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray, batch_size: int,
                 *, train: bool, hflip: bool = True, alternate_flip: bool = False,
                 cutout: float = 0.0, crop_shift: float = CROP_SHIFT, seed: int = 0,
                 threads: int = 1, device: str = "cpu", gpu: bool = False) -> None:
        if gpu:  # the device-resident cache: one upload per loader, none per batch
            images = torch.as_tensor(images).to(device)
        super().__init__(images, labels, batch_size, train=train, hflip=hflip,
                         alternate_flip=alternate_flip, cutout=cutout, crop_shift=crop_shift,
                         seed=seed, threads=threads, device=device, gpu=gpu)
        self.gpu = gpu
        self._pipe = self._build(seed, threads)

    def _build(self, seed: int, threads: int):  # type: ignore[no-untyped-def]
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali import math as dmath

        height, width = self.images.shape[1:3]
        pad, side = self.pad, self.cut
        train, where = self.train, "gpu" if self.gpu else "cpu"
        device_id = torch.cuda.current_device() if self.gpu else None

        @pipeline_def(batch_size=self.batch_size, num_threads=threads, device_id=device_id,
                      seed=seed, prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
        def augment():  # type: ignore[no-untyped-def]
            images = fn.external_source(name="images", layout="HWC", dtype=types.UINT8,
                                        device=where)
            mirror = fn.external_source(name="mirror", dtype=types.INT32) if train else 0
            if train:
                offsets = list(range(-pad, pad + 1))
                start = fn.stack(fn.random.uniform(values=offsets, dtype=types.INT32),
                                 fn.random.uniform(values=offsets, dtype=types.INT32))
                images = fn.slice(images, start, np.array([height, width], dtype=np.int32),
                                  axes=[0, 1], out_of_bounds_policy="pad", fill_values=0)
                if side:  # centred on a uniform pixel, clipped at the borders (DeVries 2017)
                    anchor = fn.stack(
                        fn.random.uniform(range=[-(side // 2), height - side // 2]),
                        fn.random.uniform(range=[-(side // 2), width - side // 2]))
                    images = fn.erase(images, anchor=dmath.floor(anchor), shape=[side, side],
                                      axis_names="HW", fill_value=0)
            return fn.crop_mirror_normalize(images, mirror=mirror, mean=[0.0], std=[255.0],
                                            output_layout="HWC", dtype=types.FLOAT)

        pipe = augment()
        pipe.build()
        return pipe

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index in self._indices():
            if self.gpu:
                yield self._gpu_batch(index), self._labels(index)
                continue
            self._feed_flips(index)
            self._pipe.feed_input("images", self.images[index])
            (out,) = self._pipe.run()
            x = torch.from_numpy(out.as_array()).permute(0, 3, 1, 2)  # NCHW, channels_last
            yield x.to(self.device, non_blocking=True), self._labels(index)

    def _feed_flips(self, index: np.ndarray) -> None:
        """Which images DALI mirrors (a CPU argument input, on either backend)."""
        if self.train:
            self._pipe.feed_input("mirror", self._flips(index).astype(np.int32))

    def _gpu_batch(self, index: np.ndarray) -> torch.Tensor:
        """Gather on the GPU, augment there, copy DALI's output into a torch tensor there."""
        from nvidia.dali.plugin.pytorch import feed_ndarray

        stream = torch.cuda.current_stream(self.device)
        picked = self.images[torch.from_numpy(index).to(self.device)]
        self._feed_flips(index)
        self._pipe.feed_input("images", picked, cuda_stream=stream)
        (out,) = self._pipe.run()
        x = torch.empty(picked.shape, dtype=torch.float32, device=self.device)
        feed_ndarray(out.as_tensor(), x, cuda_stream=stream)
        return x.permute(0, 3, 1, 2)


Loader = BatchLoader | torch_data.TorchBatchLoader

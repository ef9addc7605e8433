"""The data path for platforms without DALI: PIL decode, torch augmentation; same interface as
the DALI one (`autofit.data.decoder.decode`, `autofit.data.pipeline.BatchLoader`).

`decode` reads files with PIL on a thread pool (PIL releases the GIL while it decodes);
`TorchBatchLoader` augments whole batches with vectorised torch indexing: pad-and-random-crop
(zero padding), horizontal flip and, optionally, Cutout. Nothing here imports nvidia.dali.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from autofit.config import CROP_SHIFT
from autofit.data.batches import Batches
from autofit.data.decoder import quiet_pil
from autofit.errors import UnreadableData, one_line
from autofit.files import printable

__all__ = ["TorchBatchLoader", "decode"]


def decode(files: Sequence[str], height: int, width: int, channels: int, threads: int,
           max_bad: int = 0) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode and resize image files to an N x H x W x C uint8 array, in file order. Like the
    DALI decoder: EXIF orientation applied, bilinear (antialiased) resize only when needed,
    and up to `max_bad` files that fail left out: the pixels of the rest and (file, reason)
    for each one left out."""
    from PIL import Image, ImageOps

    out = np.empty((len(files), height, width, channels), dtype=np.uint8)
    mode = "L" if channels == 1 else "RGB"

    def one(i: int) -> str | None:
        path = files[i]
        try:
            with Image.open(path) as img:
                pic = ImageOps.exif_transpose(img).convert(mode)
            if pic.size != (width, height):
                pic = pic.resize((width, height), Image.Resampling.BILINEAR)
            out[i] = np.asarray(pic).reshape(height, width, channels)
        except Exception as err:  # noqa: BLE001 - any failure is a file we cannot use
            return f"cannot decode image {printable(path)}: {one_line(err)}"
        return None

    with quiet_pil(), ThreadPoolExecutor(max(1, threads)) as pool:
        failures = list(pool.map(one, range(len(files))))
    bad = [(files[i], why) for i, why in enumerate(failures) if why is not None]
    if len(bad) > max_bad:
        raise UnreadableData(bad[0][1], bad)
    return out[[why is None for why in failures]], bad


class TorchBatchLoader(Batches):
    """Epochs of (images, labels) from a uint8 cache, augmented with torch ops, as
    `autofit.data.pipeline.BatchLoader` gives them. `threads` is kept for parity: torch's own
    intra-op pool runs the indexing.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, *,
                 train: bool, hflip: bool = True, alternate_flip: bool = False,
                 cutout: float = 0.0, crop_shift: float = CROP_SHIFT, seed: int = 0,
                 threads: int = 1, device: str = "cpu") -> None:
        super().__init__(images, labels, batch_size, train=train, hflip=hflip,
                         alternate_flip=alternate_flip, cutout=cutout, crop_shift=crop_shift,
                         seed=seed, threads=threads, device=device)
        self._gen = torch.Generator().manual_seed(seed)

    def _augment(self, x: torch.Tensor, flip: np.ndarray) -> torch.Tensor:
        """Random crop of the zero-padded image, the mirror where `flip` says, and Cutout, for
        a whole N x H x W x C batch at once: pad once, pick each image's window from an unfold
        view of the batch."""
        n, height, width, channels = x.shape
        g, pad, every = self._gen, self.pad, torch.arange(n)
        padded = x.new_zeros(n, height + 2 * pad, width + 2 * pad, channels)
        padded[:, pad:pad + height, pad:pad + width] = x
        windows = padded.unfold(1, height, 1).unfold(2, width, 1).permute(0, 1, 2, 4, 5, 3)
        top, left = torch.randint(0, 2 * pad + 1, (2, n), generator=g)
        out = windows[every, top, left]  # offsets -pad..pad, as DALI's padded slice
        mirrored = every[torch.from_numpy(flip)]
        out[mirrored] = out[mirrored].flip(2)
        if self.cut:
            top, left = (torch.randint(0, size, (n, 1), generator=g) - self.cut // 2
                         for size in (height, width))
            ys, xs = torch.arange(height), torch.arange(width)
            inside = ((ys >= top) & (ys < top + self.cut))[:, :, None] & \
                ((xs >= left) & (xs < left + self.cut))[:, None, :]
            out.masked_fill_(inside[..., None], 0)
        return out

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index in self._indices():
            x = torch.from_numpy(np.ascontiguousarray(self.images[index]))
            if self.train:
                x = self._augment(x, self._flips(index))
            x = x.to(self.device, non_blocking=True).float().div_(255)
            yield x.permute(0, 3, 1, 2), self._labels(index)  # NCHW view of NHWC: channels_last

"""Find a labelled image dataset, split it, and decode it once into uint8 arrays.

Sources: `DIR/train/<class>/*` with an optional `DIR/test/<class>/*`, or `DIR/<class>/*`; a
label CSV (or `DIR/train.csv` with an optional `DIR/test.csv`); a .npz of arrays; a named
dataset in torchvision's layout (`autofit.data.sources`). Without a test split a stratified one
is held out. Without any source, scikit-learn's bundled 8x8 digits are used, so autofit runs
offline. Validation is always carved from train, stratified and seeded. Images of mixed
sizes are resized to one resolution chosen from the data; unreadable images are left out
and listed, unless they are more than 1% of the data.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np

from autofit.data import pipeline, sources
from autofit.data.decoder import decode_room
from autofit.data.discover import (
    MAX_VAL,
    TEST_FRACTION,
    VAL_FRACTION,
    Found,
    discover,
    stratified_split,
    too_many_unreadable,
    unreadable_allowance,
)
from autofit.data.images import ImageInfo
from autofit.errors import DataError, UnreadableData
from autofit.files import printable
from autofit.models import DataShape
from autofit.records import DataFacts, DataFingerprint, FileIssue

MAX_SIDE = 128  # the largest side a run trains at; larger images are scaled down


class Resolution(NamedTuple):
    """The size every image is trained (and predicted) at, and how it was chosen."""

    height: int
    width: int
    channels: int
    how: str


@dataclass
class Dataset:
    """The decoded run data: uint8 N x H x W x C arrays, one per split."""

    name: str
    classes: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    resolution: Resolution
    data_path: str = pipeline.DALI_CPU
    notes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)

    @property
    def shape(self) -> DataShape:
        _, height, width, channels = self.x_train.shape
        return DataShape(channels, height, width, len(self.classes))

    @cached_property
    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel pixel statistics of the training split, on the [0, 1] scale.

        Computed from per-channel histograms: exact, and no float copy of the data.
        """
        pixels = self.x_train.reshape(-1, self.x_train.shape[-1])
        levels = np.arange(256, dtype=np.float64) / 255.0
        means, stds = [], []
        for c in range(pixels.shape[1]):
            counts = np.bincount(pixels[:, c], minlength=256).astype(np.float64)
            mean = float(counts @ levels / counts.sum())
            var = float(counts @ (levels - mean) ** 2 / counts.sum())
            means.append(round(mean, 6))
            stds.append(round(max(var**0.5, 1e-3), 6))
        return means, stds

    def at_side(self, side: int, how: str) -> Dataset:
        """A copy whose every split is scaled down (antialiased) to at most `side` pixels a
        side, keeping the aspect; `how` says why, after the resolution's own reason."""
        height, width = self.shape.height, self.shape.width
        scale = side / max(height, width)
        if scale >= 1.0:
            return self
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        res = self.resolution._replace(height=size[0], width=size[1],
                                       how=f"{self.resolution.how}; {how}")
        return replace(self, x_train=_scaled(self.x_train, size), x_val=_scaled(self.x_val, size),
                       x_test=_scaled(self.x_test, size), resolution=res)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}

    def fingerprint(self) -> DataFingerprint:
        return DataFingerprint(classes=self.classes, sizes=self.sizes(), shape=list(self.shape))

    def facts(self) -> DataFacts:
        return DataFacts(name=self.name, source=self.source, sizes=self.sizes(),
                         resolution=self.resolution._asdict(),
                         skipped=[FileIssue(file=f, reason=r) for f, r in self.skipped],
                         ignored=[FileIssue(file=f, reason=r) for f, r in self.ignored])


def resolution(infos: list[ImageInfo]) -> Resolution:
    """The one size every image is resized to, chosen from the data: the size all images
    share, else the median height and width; either way at most MAX_SIDE a side, since a
    budget of minutes cannot train on large images. Greyscale stays 1-channel only when every
    image is greyscale."""
    sizes = Counter((i.height, i.width) for i in infos)
    channels = 1 if infos and all(i.channels == 1 for i in infos) else 3
    if len(sizes) == 1:
        (height, width), = sizes
        how = f"every image is {width}x{height}"
    else:
        height = int(np.median([i.height for i in infos]))
        width = int(np.median([i.width for i in infos]))
        low, high = min(sizes, key=lambda s: s[0] * s[1]), max(sizes, key=lambda s: s[0] * s[1])
        how = (f"median of {len(infos):,} image sizes ({len(sizes)} distinct, {low[1]}x{low[0]} "
               f"to {high[1]}x{high[0]})")
    if max(height, width) > MAX_SIDE:
        scale = MAX_SIDE / max(height, width)
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
        how += f", scaled to at most {MAX_SIDE} pixels a side"
    return Resolution(height, width, channels, how)


def _scaled(images: np.ndarray, size: tuple[int, int], chunk: int = 1024) -> np.ndarray:
    """uint8 N x H x W x C images resized to `size` (bilinear with antialiasing, in chunks so
    no float copy of the whole split is made)."""
    import torch
    from torch.nn.functional import interpolate

    out = np.empty((len(images), *size, images.shape[-1]), dtype=np.uint8)
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(images[start:start + chunk]).permute(0, 3, 1, 2).float()
        y = interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return out


def _check_room(root: Path, count: int, res: Resolution) -> None:
    """Refuse a decode that cannot fit in memory before starting it."""
    need = count * res.height * res.width * res.channels
    room = decode_room()
    if need > room:
        raise DataError(f"decoding {count:,} images of {printable(root)} at "
                        f"{res.width}x{res.height} "
                        "needs "
                        f"{need / 2**30:.1f} GiB, more than the {room / 2**30:.1f} GiB free for it "
                        "(half the available memory, at most the free space in /dev/shm)")


def load(source: str | Path | None, seed: int, threads: int,
         check: Callable[[DataShape], None] | None = None,
         path: pipeline.DataPath | None = None, data_root: Path | None = None) -> Dataset:
    """Discover, split and decode (once) the data at `source`, or the embedded digits.

    `source` is a folder, a label CSV, a .npz file, or the name of a dataset under
    `data_root` (torchvision's layout). `check` sees the data's shape before the (slow)
    decode, so a run that cannot go ahead, e.g. a parameter cap no model fits, fails in a
    second rather than after decoding."""
    path = path or pipeline.DataPath(pipeline.DALI_CPU, "")
    if source is None:
        data = _digits(seed, path.name)
    elif str(source) in sources.NAMED and not Path(source).exists():
        data = _from_arrays(sources.load_named(str(source), data_root or
                                               sources.default_named_root()), seed, path.name)
    elif Path(source).suffix.lower() == ".npz" and Path(source).is_file():
        data = _from_arrays(sources.load_npz(Path(source)), seed, path.name)
    else:
        return _from_files(Path(source), seed, threads, check, path)
    if check is not None:
        check(data.shape)
    return data


def _from_files(root: Path, seed: int, threads: int, check: Callable[[DataShape], None] | None,
                path: pipeline.DataPath) -> Dataset:
    found = Found()
    classes, train, test, test_source = discover(root, seed, found)
    total = len(train.files) + len(test.files) + len(found.skipped)
    if len(found.skipped) > unreadable_allowance(total):
        raise too_many_unreadable(found.skipped, total)
    res = resolution(found.infos)
    if check is not None:
        check(DataShape(res.channels, res.height, res.width, len(classes)))
    files = train.files + test.files
    _check_room(root, len(files), res)
    try:
        sized = res.height == res.width and len(found.infos) == len(files) and all(
            (i.height, i.width) == (res.height, res.width) for i in found.infos)  # square:
        # an EXIF rotation, which the decoder applies, cannot change its size
        pixels, bad = pipeline.decode(path, files, res.height, res.width, res.channels, threads,
                                      max_bad=unreadable_allowance(total) - len(found.skipped),
                                      resize=not sized)
    except UnreadableData as err:
        raise too_many_unreadable(found.skipped + err.bad, total) from None
    found.skipped += bad
    keep = np.ones(len(files), dtype=bool)
    keep[[files.index(f) for f, _ in bad]] = False
    n_train = int(keep[: len(train.files)].sum())
    labels = np.concatenate([train.labels, test.labels])[keep]
    data = _with_val(str(root), classes, pixels[:n_train], labels[:n_train], pixels[n_train:],
                     labels[n_train:], seed, f"train {printable(root)}, test {test_source}")
    data.resolution, data.data_path = res, path.name
    data.skipped, data.ignored = found.skipped, found.ignored
    data.notes += _said(found)
    return data


def _said(found: Found) -> list[str]:
    """What the run log says about files it left out (the summary lists them all)."""
    notes = []
    for what, items in (("skipped unreadable", found.skipped),
                        ("ignored non-image", found.ignored)):
        if items:
            first = "; ".join(reason if what.startswith("skipped") else printable(f)
                              for f, reason in items[:3])
            more = f" (and {len(items) - 3} more)" if len(items) > 3 else ""
            notes.append(f"{what} files: {len(items)}: {first}{more}; listed in summary.json")
    return notes


def _from_arrays(arrays: sources.Arrays, seed: int, data_path: str) -> Dataset:
    """A dataset that comes as arrays: a test split is held out when it has none."""
    x, y = arrays.x_train, arrays.y_train
    if arrays.x_test is not None and arrays.y_test is not None:
        x_test, y_test, test_source = arrays.x_test, arrays.y_test, "its test split"
    else:
        kept, held = stratified_split(y, TEST_FRACTION, seed + 1)
        x, y, x_test, y_test = x[kept], y[kept], x[held], y[held]
        test_source = f"stratified {TEST_FRACTION:.0%} of train"
    data = _with_val(arrays.source, arrays.classes, x, y, x_test, y_test, seed,
                     f"{arrays.source}, test {test_source}")
    data.data_path = data_path
    data.notes.append("the data comes as arrays: nothing to decode")
    return data


def _with_val(name: str, classes: list[str], x: np.ndarray, y: np.ndarray, x_test: np.ndarray,
              y_test: np.ndarray, seed: int, source: str) -> Dataset:
    kept, held = stratified_split(y, VAL_FRACTION, seed, cap=MAX_VAL)
    held = np.random.default_rng(seed).permutation(held)  # any prefix is a fair sample
    _, height, width, channels = x.shape
    return Dataset(name=name, classes=classes, x_train=x[kept], y_train=y[kept], x_val=x[held],
                   y_val=y[held], x_test=x_test, y_test=y_test, source=source,
                   resolution=Resolution(height, width, channels, "the arrays' own size"))


def _digits(seed: int, data_path: str) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), 1 channel."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.clip(digits.images * 16.0, 0, 255).astype(np.uint8)[..., None]
    y = digits.target.astype(np.int64)
    kept, held = stratified_split(y, TEST_FRACTION, seed + 1)
    data = _with_val("digits", [str(c) for c in range(10)], x[kept], y[kept], x[held], y[held],
                     seed, "scikit-learn digits (embedded)")
    data.data_path = data_path
    data.notes.append("embedded 8x8 digits are arrays already: nothing to decode")
    return data

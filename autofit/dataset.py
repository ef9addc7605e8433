"""Find a labelled image dataset, split it, and decode it once into uint8 arrays.

Sources: `DIR/train/<class>/*` with an optional `DIR/test/<class>/*`, or `DIR/<class>/*`; a
label CSV (or `DIR/train.csv` with an optional `DIR/test.csv`); a .npz of arrays; a named
dataset in torchvision's layout (`autofit.sources`). Without a test split a stratified one
is held out. Without any source, scikit-learn's bundled 8x8 digits are used, so autofit runs
offline. Validation is always carved from train, stratified and seeded. Images of mixed
sizes are resized to one resolution chosen from the data; unreadable images are left out
and listed, unless they are more than 1% of the data.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
from PIL import Image

from autofit import pipeline, sources
from autofit.decoder import decode_room, quiet_pil, shown
from autofit.errors import DataError, UnreadableData, one_line
from autofit.models import DataShape

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff",
                            ".webp"})
HEAD_BYTES = 26  # through a PNG's IHDR colour type
TAIL_BYTES = 1024
MAX_PIXELS = 1 << 26  # 8192 x 8192; one RGB image decodes to 192 MiB, and DALI decodes several
JPEG_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                         0xCF})
JPEG_MAX_SEGMENTS = 1024
MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"P2", b"P3",
         b"P5", b"P6")
TEST_FRACTION = 0.2
VAL_FRACTION = 0.1
MAX_VAL = 5000
MAX_SIDE = 128  # the largest side a run trains at; larger images are scaled down
MAX_UNREADABLE = 0.01  # the share of unreadable images a run skips rather than refuses
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


@dataclass(frozen=True)
class Listing:
    """Image files of one split with their class indices."""

    files: list[str]
    labels: np.ndarray


class ImageInfo(NamedTuple):
    """An image's size and channel count as its header gives them (None: not known)."""

    width: int
    height: int
    channels: int | None


class Resolution(NamedTuple):
    """The size every image is trained (and predicted) at, and how it was chosen."""

    height: int
    width: int
    channels: int
    how: str


@dataclass
class Found:
    """What listing the data found besides the images it keeps."""

    infos: list[ImageInfo] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable: (file, reason)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # not images: (file, reason)


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

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def stratified_split(labels: np.ndarray, fraction: float, seed: int,
                     cap: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out): `fraction` of each class held out, at least one per class
    that has two or more samples, and at most `cap` in all."""
    rng = np.random.default_rng(seed)
    if cap is not None:
        fraction = min(fraction, cap / max(len(labels), 1))
    kept, held = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_held = max(1, round(fraction * len(idx))) if len(idx) >= 2 else 0
        held.append(idx[:n_held])
        kept.append(idx[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def check_image_file(path: str | Path) -> ImageInfo | None:
    """Refuse what is not a whole image of a sane size by its first and last bytes and its
    header: an empty file, a text file named .jpg, a JPEG or PNG cut short, a decompression
    bomb. DALI 2.4's CPU decoder can crash the process (SIGSEGV) on such files instead of
    raising, and decodes a bomb in full, so they must not reach it. Returns the header's size
    and channels, which choose the run's resolution (None when only a decode can tell)."""
    try:
        str(path).encode()
    except UnicodeEncodeError:
        raise DataError(f"{shown(path)}: the name is not valid UTF-8, which DALI cannot open; "
                        "rename it") from None
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - TAIL_BYTES))
            tail = handle.read()
            _check_ends(path, head, tail)
            found = _png_size(head) or (_jpeg_size(handle) if head[:2] == b"\xff\xd8" else None)
    except OSError as err:
        raise DataError(f"cannot read {shown(path)}: {err.strerror or err}") from None
    found = found or _pil_size(path)
    if found is None:
        return None
    width, height = found.width, found.height
    if width < 1 or height < 1:
        raise DataError(f"{shown(path)} has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise DataError(f"{shown(path)} is {width}x{height}, over the limit of {MAX_PIXELS:,} "
                        "pixels per image")
    return found


def _check_ends(path: Path, head: bytes, tail: bytes) -> None:
    if not head:
        raise DataError(f"{shown(path)} is empty (0 bytes)")
    if not (head.startswith(MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
        raise DataError(f"{shown(path)} is not a JPEG, PNG, BMP, PPM/PGM, TIFF or WebP image")
    if head.startswith(b"\xff\xd8") and b"\xff\xd9" not in tail:
        raise DataError(f"{shown(path)} is a truncated JPEG (no end-of-image marker)")
    if head.startswith(b"\x89PNG") and b"IEND" not in tail:
        raise DataError(f"{shown(path)} is a truncated PNG (no IEND chunk)")


def _png_size(head: bytes) -> ImageInfo | None:
    """Size and channels from the IHDR chunk, which a PNG must start with (colour types 0
    and 4 are greyscale, with or without alpha)."""
    if not (head.startswith(b"\x89PNG") and head[12:16] == b"IHDR" and len(head) >= 26):
        return None
    return ImageInfo(int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"),
                     1 if head[25] in (0, 4) else 3)


def _jpeg_size(handle: BinaryIO) -> ImageInfo | None:
    """Size and channels from the start-of-frame segment, walking the (EXIF, table) segments
    before it; a few reads, where PIL parses every table. None when the walk does not find it."""
    start = 2
    for _ in range(JPEG_MAX_SEGMENTS):
        handle.seek(start)
        segment = handle.read(10)  # marker, length, a frame's precision, height, width, planes
        if len(segment) < 4 or segment[0] != 0xFF:
            return None
        if segment[1] == 0xFF:  # a fill byte before the marker
            start += 1
            continue
        length = int.from_bytes(segment[2:4], "big")
        if segment[1] in JPEG_FRAMES and len(segment) == 10:
            return ImageInfo(int.from_bytes(segment[7:9], "big"),
                             int.from_bytes(segment[5:7], "big"), 1 if segment[9] == 1 else 3)
        if segment[1] == 0xDA or length < 2:
            return None
        start += 2 + length
    return None


def _pil_size(path: Path) -> ImageInfo | None:
    """Size and channels as PIL reads them from the header (it decodes no pixels). None when
    PIL cannot read it: the decoder, in its child process, judges that file, and the error
    then names it with the decoder's (or PIL's) reason."""
    try:
        with quiet_pil(), Image.open(path) as img:
            return ImageInfo(img.width, img.height, 1 if img.mode in GREY_MODES else 3)
    except Image.DecompressionBombError as err:
        raise DataError(f"{shown(path)} is too large to decode: {one_line(err)}") from None
    except Exception:  # noqa: BLE001 - PIL raises many types on a malformed header
        return None


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    """A folder's entries by name; scandir's entries know their type without a stat each,
    which matters at 50,000 files."""
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as err:
        raise DataError(f"cannot list {shown(folder)}: {err.strerror or err}") from None


def _class_dirs(root: Path) -> list[Path]:
    return [Path(e.path) for e in _entries(root) if _is(e, "dir") and not e.name.startswith(".")]


def _is(entry: os.DirEntry[str], kind: str) -> bool:
    """Whether an entry is a folder or file, following links; a dangling or looping link is
    neither (Path.is_dir's answer, where DirEntry's raises)."""
    try:
        return entry.is_dir() if kind == "dir" else entry.is_file()
    except OSError:
        return False


def _suffix(name: str) -> str:
    """What Path.suffix gives, lower-cased, without building a Path."""
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def _checked(files: list[str], labels: list[int], found: Found) -> Listing:
    """The files whose headers pass `check_image_file`; the others go to `found.skipped`."""
    kept, kept_labels = [], []
    for path, label in zip(files, labels, strict=True):
        try:
            info = check_image_file(path)
        except DataError as err:
            found.skipped.append((path, str(err)))
            continue
        kept.append(path)
        kept_labels.append(label)
        if info is not None:
            found.infos.append(info)
    return Listing(kept, np.asarray(kept_labels, dtype=np.int64))


def _list_split(root: Path, found: Found, classes: list[str] | None = None
                ) -> tuple[list[str], Listing]:
    dirs = _class_dirs(root)
    if not dirs:
        raise DataError(f"{shown(root)} has no class folders (expected "
                        f"{shown(root)}/<class>/<image>)")
    names = [d.name for d in dirs]
    if classes is not None:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise DataError(f"{shown(root)} has classes not in train: "
                            f"{', '.join(map(shown, unknown))}")
    index = {name: i for i, name in enumerate(classes or names)}
    files: list[str] = []
    labels: list[int] = []
    for d in dirs:
        entries = [e for e in _entries(d) if _is(e, "file") and not e.name.startswith(".")]
        images = [e.path for e in entries if _suffix(e.name) in IMAGE_SUFFIXES]
        found.ignored += [(e.path, "not an image file (by its name)") for e in entries
                          if _suffix(e.name) not in IMAGE_SUFFIXES]
        if not images:
            raise DataError(f"class folder {shown(d)} has no images")
        files += images
        labels += [index[d.name]] * len(images)
    if classes is None and len(names) < 2:
        raise DataError(f"{shown(root)} has {len(names)} class folder; at least 2 classes are "
                        "needed")
    listing = _checked(files, labels, found)
    for d in dirs:
        if not np.any(listing.labels == index[d.name]):
            raise DataError(f"class folder {shown(d)} has no readable images")
    return names, listing


def _csv_split(path: Path, found: Found, classes: list[str] | None = None
               ) -> tuple[list[str], Listing]:
    """A label CSV's rows: missing files are skipped and counted like unreadable ones."""
    rows = sources.read_csv(path)
    found.skipped += rows.missing
    names = classes or sorted(set(rows.labels))
    unknown = sorted(set(rows.labels) - set(names))
    if unknown:
        raise DataError(f"{shown(path)} has labels not in train: {', '.join(unknown[:5])}")
    if classes is None and len(names) < 2:
        raise DataError(f"{shown(path)} names {len(names)} label; at least 2 classes are needed")
    index = {name: i for i, name in enumerate(names)}
    listing = _checked(rows.files, [index[label] for label in rows.labels], found)
    if not len(listing.files):
        raise DataError(f"{shown(path)} names no readable images")
    return names, listing


def discover(root: Path, seed: int, found: Found | None = None
             ) -> tuple[list[str], Listing, Listing, str]:
    """Classes, train listing, test listing, and how the test split was obtained.

    `root` is a folder of class folders (optionally under train/ and test/), a label CSV, or
    a folder holding train.csv (and optionally test.csv). Files left out go to `found`."""
    found = found if found is not None else Found()
    if not root.exists():
        if root.is_symlink():
            raise DataError(f"data directory {shown(root)} is a symbolic link to nothing (a "
                            "missing target or a loop)")
        raise DataError(f"data directory {shown(root)} does not exist")
    if root.is_file() and root.suffix.lower() == ".csv":
        classes, train = _csv_split(root, found)
        return (classes, *_held_out(train, seed), f"stratified {TEST_FRACTION:.0%} of "
                f"{shown(root)}")
    if not root.is_dir():
        raise DataError(f"--data {shown(root)} is not a directory, a .csv or a .npz file")
    if not _entries(root):
        raise DataError(f"data directory {shown(root)} is empty")
    if (root / "train.csv").is_file():
        classes, train = _csv_split(root / "train.csv", found)
        if (root / "test.csv").is_file():
            _, test = _csv_split(root / "test.csv", found, classes)
            return classes, train, test, shown(root / "test.csv")
        return (classes, *_held_out(train, seed), f"stratified {TEST_FRACTION:.0%} of "
                f"{shown(root / 'train.csv')}")
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir():
        classes, train = _list_split(train_dir, found)
        if test_dir.is_dir():
            _, test = _list_split(test_dir, found, classes)
            return classes, train, test, shown(test_dir)
    else:
        classes, train = _list_split(root, found)
    return classes, *_held_out(train, seed), f"stratified {TEST_FRACTION:.0%} of {shown(root)}"


def _held_out(train: Listing, seed: int) -> tuple[Listing, Listing]:
    """(train, test) when the data has no test split: a stratified, seeded share of train."""
    kept, held = stratified_split(train.labels, TEST_FRACTION, seed + 1)
    return (Listing([train.files[i] for i in kept], train.labels[kept]),
            Listing([train.files[i] for i in held], train.labels[held]))


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


def _check_room(root: Path, count: int, res: Resolution) -> None:
    """Refuse a decode that cannot fit in memory before starting it."""
    need = count * res.height * res.width * res.channels
    room = decode_room()
    if need > room:
        raise DataError(f"decoding {count:,} images of {shown(root)} at {res.width}x{res.height} "
                        "needs "
                        f"{need / 2**30:.1f} GiB, more than the {room / 2**30:.1f} GiB free for it "
                        "(half the available memory, at most the free space in /dev/shm)")


def _allowance(total: int) -> int:
    """How many unreadable images a run skips before it refuses the data."""
    return int(total * MAX_UNREADABLE)


def _too_many(bad: list[tuple[str, str]], total: int) -> UnreadableData:
    return UnreadableData(
        f"{len(bad):,} of {total:,} images cannot be read ({len(bad) / max(total, 1):.1%}, "
        f"over the {MAX_UNREADABLE:.0%} autofit skips); the first: {bad[0][1]}", bad)


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
    if len(found.skipped) > _allowance(total):
        raise _too_many(found.skipped, total)
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
                                      max_bad=_allowance(total) - len(found.skipped),
                                      resize=not sized)
    except UnreadableData as err:
        raise _too_many(found.skipped + err.bad, total) from None
    found.skipped += bad
    keep = np.ones(len(files), dtype=bool)
    keep[[files.index(f) for f, _ in bad]] = False
    n_train = int(keep[: len(train.files)].sum())
    labels = np.concatenate([train.labels, test.labels])[keep]
    data = _with_val(str(root), classes, pixels[:n_train], labels[:n_train], pixels[n_train:],
                     labels[n_train:], seed, f"train {shown(root)}, test {test_source}")
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
            first = "; ".join(reason if what.startswith("skipped") else shown(f)
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

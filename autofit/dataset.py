"""Find a labelled image dataset, split it, and decode it once into uint8 arrays.

Layouts: `DIR/train/<class>/*` with an optional `DIR/test/<class>/*`, or `DIR/<class>/*`
(a stratified test split is then held out). Without a directory, scikit-learn's bundled 8x8
digits are used, so autofit runs offline. Validation is always carved from train, stratified
and seeded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from autofit import pipeline
from autofit.decoder import decode_room, quiet_pil, shown
from autofit.errors import DataError, one_line
from autofit.models import DataShape

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff",
                            ".webp"})
HEAD_BYTES = 24
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


@dataclass(frozen=True)
class Listing:
    """Image files of one split with their class indices."""

    files: list[str]
    labels: np.ndarray


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
    notes: list[str] = field(default_factory=list)

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


def check_image_file(path: Path) -> None:
    """Refuse what is not a whole image of a sane size by its first and last bytes and its
    header: an empty file, a text file named .jpg, a JPEG or PNG cut short, a decompression
    bomb. DALI 2.4's CPU decoder can crash the process (SIGSEGV) on such files instead of
    raising, and decodes a bomb in full, so they must not reach it."""
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
        return
    width, height = found
    if width < 1 or height < 1:
        raise DataError(f"{shown(path)} has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise DataError(f"{shown(path)} is {width}x{height}, over the limit of {MAX_PIXELS:,} "
                        "pixels per image")


def _check_ends(path: Path, head: bytes, tail: bytes) -> None:
    if not head:
        raise DataError(f"{shown(path)} is empty (0 bytes)")
    if not (head.startswith(MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
        raise DataError(f"{shown(path)} is not a JPEG, PNG, BMP, PPM/PGM, TIFF or WebP image")
    if head.startswith(b"\xff\xd8") and b"\xff\xd9" not in tail:
        raise DataError(f"{shown(path)} is a truncated JPEG (no end-of-image marker)")
    if head.startswith(b"\x89PNG") and b"IEND" not in tail:
        raise DataError(f"{shown(path)} is a truncated PNG (no IEND chunk)")


def _png_size(head: bytes) -> tuple[int, int] | None:
    """Width and height from the IHDR chunk, which a PNG must start with."""
    if not (head.startswith(b"\x89PNG") and head[12:16] == b"IHDR" and len(head) >= 24):
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _jpeg_size(handle: BinaryIO) -> tuple[int, int] | None:
    """Width and height from the start-of-frame segment, walking the (EXIF, table) segments
    before it; a few reads, where PIL parses every table. None when the walk does not find it."""
    start = 2
    for _ in range(JPEG_MAX_SEGMENTS):
        handle.seek(start)
        segment = handle.read(9)  # marker, length, then a frame's precision, height, width
        if len(segment) < 4 or segment[0] != 0xFF:
            return None
        if segment[1] == 0xFF:  # a fill byte before the marker
            start += 1
            continue
        length = int.from_bytes(segment[2:4], "big")
        if segment[1] in JPEG_FRAMES and len(segment) == 9:
            return int.from_bytes(segment[7:9], "big"), int.from_bytes(segment[5:7], "big")
        if segment[1] == 0xDA or length < 2:
            return None
        start += 2 + length
    return None


def _pil_size(path: Path) -> tuple[int, int] | None:
    """Width and height as PIL reads them from the header (it decodes no pixels). None when
    PIL cannot read it: the decoder, in its child process, judges that file, and the error
    then names it with the decoder's (or PIL's) reason."""
    try:
        with quiet_pil(), Image.open(path) as img:
            return img.size
    except Image.DecompressionBombError as err:
        raise DataError(f"{shown(path)} is too large to decode: {one_line(err)}") from None
    except Exception:  # noqa: BLE001 - PIL raises many types on a malformed header
        return None


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as err:
        raise DataError(f"cannot list {shown(folder)}: {err.strerror or err}") from None


def _class_dirs(root: Path) -> list[Path]:
    return [p for p in _entries(root) if p.is_dir() and not p.name.startswith(".")]


def _list_split(root: Path, classes: list[str] | None = None) -> tuple[list[str], Listing]:
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
        images = [p for p in _entries(d) if p.is_file()
                  and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
        if not images:
            raise DataError(f"class folder {shown(d)} has no images")
        for image in images:
            check_image_file(image)
        files += [str(p) for p in images]
        labels += [index[d.name]] * len(images)
    if classes is None and len(names) < 2:
        raise DataError(f"{shown(root)} has {len(names)} class folder; at least 2 classes are "
                        "needed")
    return names, Listing(files, np.asarray(labels, dtype=np.int64))


def discover(root: Path, seed: int) -> tuple[list[str], Listing, Listing, str]:
    """Classes, train listing, test listing, and how the test split was obtained."""
    if not root.exists():
        if root.is_symlink():
            raise DataError(f"data directory {shown(root)} is a symbolic link to nothing (a "
                            "missing target or a loop)")
        raise DataError(f"data directory {shown(root)} does not exist")
    if not root.is_dir():
        raise DataError(f"--data {shown(root)} is not a directory")
    if not _entries(root):
        raise DataError(f"data directory {shown(root)} is empty")
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir():
        classes, train = _list_split(train_dir)
        if test_dir.is_dir():
            _, test = _list_split(test_dir, classes)
            return classes, train, test, shown(test_dir)
    else:
        classes, train = _list_split(root)
    kept, held = stratified_split(train.labels, TEST_FRACTION, seed + 1)
    test = Listing([train.files[i] for i in held], train.labels[held])
    train = Listing([train.files[i] for i in kept], train.labels[kept])
    return classes, train, test, f"stratified {TEST_FRACTION:.0%} of {shown(root)}"


def _probe(path: str) -> tuple[int, int, int]:
    """Height, width and channel count of the first image: the run's training resolution."""
    try:
        with quiet_pil(), Image.open(path) as img:
            channels = 1 if img.mode in {"1", "L", "I", "I;16", "F"} else 3
            return img.height, img.width, channels
    except Exception as err:  # noqa: BLE001 - PIL raises many types on a malformed header
        raise DataError(f"cannot read image {shown(path)}: {one_line(err)}") from None


def _check_room(files: list[str], height: int, width: int, channels: int) -> None:
    """Refuse a decode that cannot fit in memory before starting it: every image is decoded
    at the first one's size, so one huge first image multiplies by the file count."""
    need = len(files) * height * width * channels
    room = decode_room()
    if need > room:
        raise DataError(f"decoding {len(files):,} images at {width}x{height} (the size of "
                        f"{shown(files[0])}) needs {need / 2**30:.1f} GiB, more than the "
                        f"{room / 2**30:.1f} GiB free for it (half the available memory, at "
                        "most the free space in /dev/shm)")


def load(root: Path | None, seed: int, threads: int,
         check: Callable[[DataShape], None] | None = None) -> Dataset:
    """Discover, split and decode (once) the dataset at `root`, or the embedded digits.

    `check` sees the data's shape before the (slow) decode, so a run that cannot go ahead,
    e.g. a parameter cap no model fits, fails in a second rather than after decoding."""
    if root is None:
        data = _digits(seed)
        if check is not None:
            check(data.shape)
        return data
    classes, train, test, test_source = discover(Path(root), seed)
    height, width, channels = _probe(train.files[0])
    if check is not None:
        check(DataShape(channels, height, width, len(classes)))
    _check_room(train.files + test.files, height, width, channels)
    pixels = pipeline.decode(train.files + test.files, height, width, channels, threads)
    x_all, x_test = pixels[: len(train.files)], pixels[len(train.files):]
    return _with_val(str(root), classes, x_all, train.labels, x_test, test.labels, seed,
                     f"train {shown(root)}, test {test_source}")


def _with_val(name: str, classes: list[str], x: np.ndarray, y: np.ndarray, x_test: np.ndarray,
              y_test: np.ndarray, seed: int, source: str) -> Dataset:
    kept, held = stratified_split(y, VAL_FRACTION, seed, cap=MAX_VAL)
    held = np.random.default_rng(seed).permutation(held)  # any prefix is a fair sample
    return Dataset(name=name, classes=classes, x_train=x[kept], y_train=y[kept], x_val=x[held],
                   y_val=y[held], x_test=x_test, y_test=y_test, source=source)


def _digits(seed: int) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), 1 channel."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.clip(digits.images * 16.0, 0, 255).astype(np.uint8)[..., None]
    y = digits.target.astype(np.int64)
    kept, held = stratified_split(y, TEST_FRACTION, seed + 1)
    data = _with_val("digits", [str(c) for c in range(10)], x[kept], y[kept], x[held], y[held],
                     seed, "scikit-learn digits (embedded)")
    data.notes.append("embedded 8x8 digits are arrays already: DALI augments, nothing to decode")
    return data

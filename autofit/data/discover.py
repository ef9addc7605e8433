"""List a dataset's image files and labels, split by split, before anything is decoded: an
image folder (with or without a test split) or label CSVs; each file is checked by its header
(autofit.data.images), unreadable ones are set aside with their reason, and the splits that
are missing are held out, stratified and seeded."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autofit.data import sources
from autofit.data.images import ImageInfo, check_image_file
from autofit.errors import DataError, UnreadableData
from autofit.files import IMAGE_SUFFIXES, printable

TEST_FRACTION = 0.2


VAL_FRACTION = 0.1


MAX_VAL = 5000


@dataclass(frozen=True)
class Listing:
    """Image files of one split with their class indices."""

    files: list[str]
    labels: np.ndarray


@dataclass
class Found:
    """What listing the data found besides the images it keeps."""

    infos: list[ImageInfo] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable: (file, reason)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # not images: (file, reason)


MAX_UNREADABLE = 0.01  # the share of unreadable images a run skips rather than refuses


def unreadable_allowance(total: int) -> int:
    """How many unreadable images a run skips before it refuses the data."""
    return int(total * MAX_UNREADABLE)


def too_many_unreadable(bad: list[tuple[str, str]], total: int) -> UnreadableData:
    return UnreadableData(
        f"{len(bad):,} of {total:,} images cannot be read ({len(bad) / max(total, 1):.1%}, "
        f"over the {MAX_UNREADABLE:.0%} autofit skips); the first: {bad[0][1]}", bad)


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


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    """A folder's entries by name; scandir's entries know their type without a stat each,
    which matters at 50,000 files."""
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as err:
        raise DataError(f"cannot list {printable(folder)}: {err.strerror or err}") from None


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
        raise DataError(f"{printable(root)} has no class folders (expected "
                        f"{printable(root)}/<class>/<image>)")
    names = [d.name for d in dirs]
    if classes is not None:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise DataError(f"{printable(root)} has classes not in train: "
                            f"{', '.join(map(printable, unknown))}")
    index = {name: i for i, name in enumerate(classes or names)}
    files: list[str] = []
    labels: list[int] = []
    for d in dirs:
        entries = [e for e in _entries(d) if _is(e, "file") and not e.name.startswith(".")]
        images = [e.path for e in entries if _suffix(e.name) in IMAGE_SUFFIXES]
        found.ignored += [(e.path, "not an image file (by its name)") for e in entries
                          if _suffix(e.name) not in IMAGE_SUFFIXES]
        if not images:
            raise DataError(f"class folder {printable(d)} has no images")
        files += images
        labels += [index[d.name]] * len(images)
    if classes is None and len(names) < 2:
        raise DataError(f"{printable(root)} has {len(names)} class folder; at least 2 classes are "
                        "needed")
    listing = _checked(files, labels, found)
    for d in dirs:
        if not np.any(listing.labels == index[d.name]):
            raise DataError(f"class folder {printable(d)} has no readable images")
    return names, listing


def _csv_split(path: Path, found: Found, classes: list[str] | None = None
               ) -> tuple[list[str], Listing]:
    """A label CSV's rows: missing files are skipped and counted like unreadable ones."""
    rows = sources.read_csv(path)
    found.skipped += rows.missing
    names = classes or sorted(set(rows.labels))
    unknown = sorted(set(rows.labels) - set(names))
    if unknown:
        raise DataError(f"{printable(path)} has labels not in train: {', '.join(unknown[:5])}")
    if classes is None and len(names) < 2:
        raise DataError(f"{printable(path)} names {len(names)} label; "
                        "at least 2 classes are needed")
    index = {name: i for i, name in enumerate(names)}
    listing = _checked(rows.files, [index[label] for label in rows.labels], found)
    if not len(listing.files):
        raise DataError(f"{printable(path)} names no readable images")
    return names, listing


def discover(root: Path, seed: int, found: Found | None = None
             ) -> tuple[list[str], Listing, Listing, str]:
    """Classes, train listing, test listing, and how the test split was obtained.

    `root` is a folder of class folders (optionally under train/ and test/), a label CSV, or
    a folder holding train.csv (and optionally test.csv). Files left out go to `found`."""
    found = found if found is not None else Found()
    if not root.exists():
        if root.is_symlink():
            raise DataError(f"data directory {printable(root)} is a symbolic link to nothing (a "
                            "missing target or a loop)")
        raise DataError(f"data directory {printable(root)} does not exist")
    if root.is_file() and root.suffix.lower() == ".csv":
        classes, train = _csv_split(root, found)
        return (classes, *_held_out(train, seed), f"stratified {TEST_FRACTION:.0%} of "
                f"{printable(root)}")
    if not root.is_dir():
        raise DataError(f"--data {printable(root)} is not a directory, a .csv or a .npz file")
    if not _entries(root):
        raise DataError(f"data directory {printable(root)} is empty")
    if (root / "train.csv").is_file():
        classes, train = _csv_split(root / "train.csv", found)
        if (root / "test.csv").is_file():
            _, test = _csv_split(root / "test.csv", found, classes)
            return classes, train, test, printable(root / "test.csv")
        return (classes, *_held_out(train, seed), f"stratified {TEST_FRACTION:.0%} of "
                f"{printable(root / 'train.csv')}")
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir():
        classes, train = _list_split(train_dir, found)
        if test_dir.is_dir():
            _, test = _list_split(test_dir, found, classes)
            return classes, train, test, printable(test_dir)
    else:
        classes, train = _list_split(root, found)
    return classes, *_held_out(train, seed), f"stratified {TEST_FRACTION:.0%} of {printable(root)}"


def _held_out(train: Listing, seed: int) -> tuple[Listing, Listing]:
    """(train, test) when the data has no test split: a stratified, seeded share of train."""
    kept, held = stratified_split(train.labels, TEST_FRACTION, seed + 1)
    return (Listing([train.files[i] for i in kept], train.labels[kept]),
            Listing([train.files[i] for i in held], train.labels[held]))

"""Read labelled data that comes as a label CSV, a .npz of arrays, or a named dataset on disk.

Named datasets are read from torchvision's on-disk layout under a root folder; autofit never
downloads them. CIFAR batches are Python pickles: `autofit.data.plaindata` reads them, building only
plain values and numeric arrays, so a planted file cannot run code (nothing in autofit imports
pickle).
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple, TypeVar
from zipfile import BadZipFile

import numpy as np

from autofit.data import plaindata
from autofit.errors import DataError, one_line
from autofit.files import printable

T = TypeVar("T")
NAMED: tuple[str, ...] = ("cifar10", "cifar100", "mnist", "fashion-mnist")
HEADER_PATHS = frozenset({"path", "file", "filename", "image"})
HEADER_LABELS = frozenset({"label", "class"})
MAX_CLASSES = 100_000  # a stray huge label in a .npz would otherwise name millions of classes
IDX_CHUNK = 1 << 24
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
IDX_FILES = (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))


class _Layout(NamedTuple):
    folder: str
    url: str


LAYOUTS = MappingProxyType({
    "cifar10": _Layout("cifar-10-batches-py",
                       "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": _Layout("cifar-100-python",
                        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
    "mnist": _Layout("MNIST/raw", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    "fashion-mnist": _Layout("FashionMNIST/raw",
                             "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
})


@dataclass(frozen=True)
class Arrays:
    """A dataset that comes as arrays: nothing to decode."""

    classes: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    source: str


@dataclass(frozen=True)
class Rows:
    """Image files a label CSV names, paths resolved against the CSV's folder."""

    files: list[str]
    labels: list[str]
    missing: list[tuple[str, str]]


def default_named_root() -> Path:
    """Where named datasets are looked for: $AUTOFIT_DATA_ROOT, else a per-user cache."""
    env = os.environ.get("AUTOFIT_DATA_ROOT")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autofit" / "datasets"


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{what} {printable(path)} does not exist") from None
    except OSError as err:
        reason = err.strerror or one_line(err)
        raise DataError(f"cannot read {what} {printable(path)}: {reason}") from None


def read_csv(path: Path) -> Rows:
    """Rows of a `path,label` CSV. A row naming a file that is not there goes to `missing`
    rather than failing, so the caller can skip a few strays and stop only when too many are."""
    raw = _read_bytes(path, "label file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise DataError(f"{printable(path)} is not valid UTF-8 (line {line}); save it as UTF-8") \
            from None
    folder = path.absolute().parent
    files: list[str] = []
    labels: list[str] = []
    missing: list[tuple[str, str]] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    first = True
    try:
        for row in reader:
            if len(row) <= 1 and not "".join(row).strip():
                continue
            line, fields = reader.line_num, [field.strip() for field in row]
            if first and len(fields) == 2 and fields[0].lower() in HEADER_PATHS \
                    and fields[1].lower() in HEADER_LABELS:
                first = False
                continue
            first = False
            if len(fields) != 2:
                raise DataError(f"{printable(path)} line {line}: expected 'path,label' but found "
                                f"{len(fields)} fields")
            name, label = fields
            if not name or not label:
                raise DataError(f"{printable(path)} line {line} has an empty "
                                f"{'path' if not name else 'label'}")
            file = folder / name
            absent = _absent(file)
            if absent:
                missing.append((printable(file), f"{printable(path.name)} line {line} names "
                                             f"{printable(name)}, which {absent}"))
            else:
                files.append(str(file))
                labels.append(label)
    except csv.Error as err:
        raise DataError(f"{printable(path)} line {reader.line_num}: {one_line(err)}") from None
    if not files and not missing:
        raise DataError(f"{printable(path)} has no rows (expected lines of 'path,label')")
    return Rows(files, labels, missing)


def _absent(file: Path) -> str:
    """Why a named file cannot be used, or '' when it is a file."""
    try:
        if file.is_file():
            return ""
        return "is not a file" if file.exists() else "does not exist"
    except OSError as err:
        return f"cannot be read ({err.strerror or one_line(err)})"


def load_npz(path: Path) -> Arrays:
    """Arrays from a numpy .npz (x_train, y_train, and optionally x_test with y_test)."""
    head = _read_head(path)
    if not head.startswith(b"PK"):
        raise DataError(f"{printable(path)} is not a .npz file (a zip of .npy arrays, as "
                        "numpy.savez "
                        "writes)")
    where = printable(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            found = {key: _member(npz, key, where) for key in ("x_train", "y_train", "x_test",
                                                               "y_test") if key in names}
    except (OSError, EOFError, ValueError, KeyError, NotImplementedError, BadZipFile) as err:
        raise DataError(f"{where} is not a readable .npz file "
                        f"({printable(one_line(err))})") from None
    for key in ("x_train", "y_train"):
        if key not in found:
            raise DataError(f"{where} has no {key} array (it holds: "
                            f"{printable(', '.join(sorted(names))) or 'nothing'})")
    if ("x_test" in found) != ("y_test" in found):
        has, lacks = ("x_test", "y_test") if "x_test" in found else ("y_test", "x_test")
        raise DataError(f"{where} has {has} but no {lacks}; give both or neither")
    x_train = _images(found["x_train"], "x_train", where)
    y_train = _labels(found["y_train"], "y_train", len(x_train), where)
    classes = int(y_train.max()) + 1
    x_test = y_test = None
    if "x_test" in found:
        x_test = _images(found["x_test"], "x_test", where)
        if x_test.shape[1:] != x_train.shape[1:]:
            raise DataError(f"{where}: x_test images are {_hwc(x_test)} but x_train images are "
                            f"{_hwc(x_train)}")
        y_test = _labels(found["y_test"], "y_test", len(x_test), where)
        if int(y_test.max()) >= classes:
            raise DataError(f"{where}: y_test has label {int(y_test.max())}, but y_train's "
                            f"labels stop at {classes - 1}")
    return Arrays([str(c) for c in range(classes)], x_train, y_train, x_test, y_test,
                  f"arrays from {where}")


def _read_head(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(4)
    except FileNotFoundError:
        raise DataError(f"{printable(path)} does not exist") from None
    except OSError as err:
        raise DataError(f"cannot read {printable(path)}: {err.strerror or one_line(err)}") from None


def _member(npz: np.lib.npyio.NpzFile, key: str, where: str) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise DataError(f"{where}: {key} is an object array, which autofit does not load "
                            "(it would have to unpickle it)") from None
        raise


def _hwc(x: np.ndarray) -> str:
    return "x".join(str(n) for n in x.shape[1:])


def _images(x: np.ndarray, key: str, where: str) -> np.ndarray:
    if x.dtype != np.uint8:
        raise DataError(f"{where}: {key} has dtype {x.dtype}; autofit needs uint8 pixels (0-255)")
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim == 4 and x.shape[3] == 4:
        raise DataError(f"{where}: {key} has 4 channels (RGBA?); autofit needs 1 (grey) or 3 "
                        "(RGB): drop the alpha channel")
    if x.ndim != 4 or x.shape[3] not in (1, 3) or 0 in x.shape[1:]:
        raise DataError(f"{where}: {key} has shape {x.shape}; autofit needs N x H x W or "
                        "N x H x W x C with C 1 or 3")
    if len(x) == 0:
        raise DataError(f"{where}: {key} has no images")
    return np.ascontiguousarray(x)


def _labels(y: np.ndarray, key: str, count: int, where: str) -> np.ndarray:
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{where}: {key} is a {y.dtype} array of shape {y.shape}; autofit needs "
                        "a 1-D array of integer class indices")
    if len(y) != count:
        raise DataError(f"{where}: x_{key[2:]} has {count} images but {key} has {len(y)} labels")
    if y.min() < 0:
        raise DataError(f"{where}: {key} has a negative label ({int(y.min())})")
    if y.max() >= MAX_CLASSES:
        raise DataError(f"{where}: {key} has label {int(y.max())}; class indices must be below "
                        f"{MAX_CLASSES:,}")
    return y.astype(np.int64)


def load_named(name: str, root: Path) -> Arrays:
    """A dataset by name, from torchvision's files under `root` (never downloaded)."""
    key = name.lower()
    if key not in LAYOUTS:
        raise DataError(f"unknown dataset {printable(name)}; autofit knows {', '.join(NAMED)}")
    layout = LAYOUTS[key]
    folder = root / layout.folder
    hint = f"(from {layout.url}) or pass --data-root DIR; autofit does not download"
    if not folder.is_dir():
        raise DataError(f"{key} is not under {printable(root)}: put torchvision's {layout.folder} "
                        f"folder there {hint}")

    def need(*names: str) -> Path:
        for file in names:
            if (folder / file).is_file():
                return folder / file
        raise DataError(f"{key} is incomplete: {printable(folder / names[0])} is missing; put "
                        f"torchvision's {layout.folder} folder under {printable(root)} {hint}")

    if key == "cifar10":
        classes = _names(need("batches.meta"), "label_names")
        train = [_batch(need(f"data_batch_{i}"), "labels") for i in range(1, 6)]
        test = [_batch(need("test_batch"), "labels")]
    elif key == "cifar100":
        classes = _names(need("meta"), "fine_label_names")
        train, test = [_batch(need("train"), "fine_labels")], [_batch(need("test"), "fine_labels")]
    else:
        classes = [str(c) for c in range(10)] if key == "mnist" else list(FASHION_CLASSES)
        train, test = ([_idx_pair(need(images, images + ".gz"), need(labels, labels + ".gz"))]
                       for images, labels in IDX_FILES)
    x_train, y_train = (np.concatenate(part) for part in zip(*train, strict=True))
    x_test, y_test = (np.concatenate(part) for part in zip(*test, strict=True))
    for y, split in ((y_train, "train"), (y_test, "test")):
        if not len(y):
            raise DataError(f"{key} in {printable(folder)} has no {split} images")
        if int(y.max()) >= len(classes):
            raise DataError(f"{key} in {printable(folder)}: the {split} split has label "
                            f"{int(y.max())}"
                            f" but there are only {len(classes)} classes")
    return Arrays(classes, x_train, y_train, x_test, y_test, f"{key} from {printable(folder)}")


def _names(path: Path, key: str) -> list[str]:
    names = _unpickle_dict(path).get(key)
    if not isinstance(names, list) or not names \
            or not all(isinstance(n, str | bytes) for n in names):
        raise DataError(f"{printable(path)} has no {key} list of class names")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def _batch(path: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch as N x 32 x 32 x 3 pixels and int64 labels."""
    entry = _unpickle_dict(path)
    data, labels = entry.get("data"), entry.get(key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{printable(path)} is not a CIFAR batch: its 'data' is not a uint8 array "
                        "of N x 3072 pixels")
    if not isinstance(labels, list) or len(labels) != len(data) \
            or not all(type(v) is int and v >= 0 for v in labels):
        raise DataError(f"{printable(path)} is not a CIFAR batch: its {key!r} is not a list of "
                        f"{len(data)} class indices")
    pixels = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # R, G, B planes -> NHWC
    return np.ascontiguousarray(pixels), np.asarray(labels, dtype=np.int64)


def _idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = _idx(images, 3), _idx(labels, 1)
    if len(x) != len(y):
        raise DataError(f"{printable(images)} has {len(x)} images but {printable(labels)} has "
                        f"{len(y)} "
                        "labels")
    return x[..., np.newaxis], y.astype(np.int64)


def _idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST's format), plain or gzipped, read in chunks so a
    header that lies about its size cannot make one huge allocation."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4 + 4 * ndim)
            if len(head) < 4 + 4 * ndim or head[:4] != bytes((0, 0, 8, ndim)):
                raise DataError(f"{printable(path)} is not an IDX file of {ndim}-D unsigned bytes "
                                f"(magic 0x{0x800 + ndim:08x})")
            dims = struct.unpack(f">{ndim}I", head[4:])
            size, body = math.prod(dims), bytearray()
            while len(body) < size and (chunk := f.read(min(IDX_CHUNK, size - len(body)))):
                body += chunk
            extra = f.read(1)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise DataError(f"{printable(path)} is truncated or corrupt ({one_line(err)})") from None
    except OSError as err:
        raise DataError(f"cannot read {printable(path)}: {err.strerror or one_line(err)}") from None
    if len(body) != size or extra:
        raise DataError(f"{printable(path)} is truncated or corrupt: its header says "
                        f"{' x '.join(map(str, dims))} bytes but it holds "
                        f"{len(body):,}{' or more' if extra else ''}")
    return np.frombuffer(body, np.uint8).reshape(dims)


def _unpickle_dict(path: Path) -> dict[str, object]:
    data = _read_bytes(path, "file")
    try:
        obj = plaindata.loads(data)
    except plaindata.Unsafe as err:
        raise DataError(f"{printable(path)} is not a CIFAR batch autofit can read safely "
                        f"({printable(err)})") from None
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError) as err:
        raise DataError(f"{printable(path)} is truncated or not a CIFAR batch "
                        f"({printable(one_line(err))})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{printable(path)} is not a CIFAR batch (it holds a {type(obj).__name__}, "
                        "not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}

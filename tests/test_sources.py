"""Label CSVs, .npz arrays and named datasets, read from small files the tests write."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from autofit.data.sources import NAMED, default_named_root, load_named, load_npz, read_csv
from autofit.errors import DataError

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded here")
    return path


def one_line_error(call, *args) -> str:
    with pytest.raises(DataError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- label CSV ---------------------------------------------------------------------------


def test_csv_header_relative_and_absolute_paths(tmp_path: Path):
    elsewhere = touch(tmp_path / "elsewhere" / "b.png")
    touch(tmp_path / "d" / "img" / "a.png")
    csv = tmp_path / "d" / "train.csv"
    csv.write_text(f"Path,Label\nimg/a.png,cat\n\n{elsewhere},dog\n")
    rows = read_csv(csv)
    assert rows.files == [str(tmp_path / "d" / "img" / "a.png"), str(elsewhere)]
    assert rows.labels == ["cat", "dog"]
    assert rows.missing == []


def test_csv_without_header_keeps_first_row(tmp_path: Path):
    touch(tmp_path / "a.png")
    touch(tmp_path / "b.png")
    csv = tmp_path / "labels.csv"
    csv.write_text("a.png,0\r\nb.png, 1\r\n")
    rows = read_csv(csv)
    assert [Path(f).name for f in rows.files] == ["a.png", "b.png"]
    assert rows.labels == ["0", "1"]


def test_csv_missing_file_is_reported_with_line(tmp_path: Path):
    touch(tmp_path / "img" / "1.png")
    csv = tmp_path / "train.csv"
    csv.write_text("file,class\nimg/1.png,a\nimg/7.png,b\n")
    rows = read_csv(csv)
    assert rows.labels == ["a"]
    assert rows.missing == [(str(tmp_path / "img" / "7.png"),
                             "train.csv line 3 names img/7.png, which does not exist")]


def test_csv_malformed_row_names_file_and_line(tmp_path: Path):
    touch(tmp_path / "a.png")
    csv = tmp_path / "train.csv"
    csv.write_text("a.png,x\na.png,x,extra\n")
    message = one_line_error(read_csv, csv)
    assert f"{csv} line 2" in message and "3 fields" in message


def test_csv_empty_label_names_line(tmp_path: Path):
    touch(tmp_path / "a.png")
    csv = tmp_path / "train.csv"
    csv.write_text("a.png,x\n\na.png,\n")
    assert one_line_error(read_csv, csv) == f"{csv} line 3 has an empty label"


@pytest.mark.parametrize("text", ["", "\n\n", "path,label\n"])
def test_csv_without_rows_is_refused(tmp_path: Path, text: str):
    csv = tmp_path / "train.csv"
    csv.write_text(text)
    assert "has no rows" in one_line_error(read_csv, csv)


def test_csv_not_utf8_or_absent_is_refused(tmp_path: Path):
    csv = tmp_path / "train.csv"
    csv.write_bytes(b"a.png,x\n\xff\xfe.png,y\n")
    assert one_line_error(read_csv, csv).startswith(f"{csv} is not valid UTF-8 (line 2)")
    assert "does not exist" in one_line_error(read_csv, tmp_path / "nope.csv")


# --- .npz --------------------------------------------------------------------------------


def test_npz_greyscale_round_trip(tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 5, 7), dtype=np.uint8)
    y = np.arange(12, dtype=np.uint8) % 3
    np.savez(tmp_path / "data.npz", x_train=x, y_train=y)
    arrays = load_npz(tmp_path / "data.npz")
    assert arrays.x_train.shape == (12, 5, 7, 1) and arrays.x_train.flags.c_contiguous
    assert np.array_equal(arrays.x_train[..., 0], x)
    assert arrays.y_train.dtype == np.int64 and arrays.y_train.tolist() == y.tolist()
    assert arrays.classes == ["0", "1", "2"]
    assert arrays.x_test is None and arrays.y_test is None
    assert str(tmp_path / "data.npz") in arrays.source


def test_npz_rgb_with_test_split(tmp_path: Path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    xt = rng.integers(0, 256, (4, 4, 4, 3), dtype=np.uint8)
    np.savez_compressed(tmp_path / "data.npz", x_train=x, y_train=np.arange(10) % 5,
                        x_test=xt, y_test=np.array([0, 1, 4, 4]))
    arrays = load_npz(tmp_path / "data.npz")
    assert np.array_equal(arrays.x_train, x) and np.array_equal(arrays.x_test, xt)
    assert arrays.classes == ["0", "1", "2", "3", "4"]
    assert arrays.y_test.tolist() == [0, 1, 4, 4]


def save_npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def test_npz_length_mismatch_message(tmp_path: Path):
    path = save_npz(tmp_path, x_train=np.zeros((100, 2, 2), np.uint8),
                    y_train=np.zeros(99, np.int64))
    assert one_line_error(load_npz, path) == \
        f"{path}: x_train has 100 images but y_train has 99 labels"


@pytest.mark.parametrize(("arrays", "expected"), [
    ({"x_train": np.zeros((3, 2, 2), np.float32), "y_train": np.zeros(3, int)},
     "x_train has dtype float32; autofit needs uint8"),
    ({"x_train": np.zeros((3, 2, 2, 4), np.uint8), "y_train": np.zeros(3, int)},
     "x_train has 4 channels"),
    ({"x_train": np.zeros((3, 2), np.uint8), "y_train": np.zeros(3, int)},
     "x_train has shape (3, 2)"),
    ({"x_train": np.zeros((0, 2, 2), np.uint8), "y_train": np.zeros(0, int)},
     "x_train has no images"),
    ({"x_train": np.zeros((3, 2, 2), np.uint8), "y_train": np.array([0, -1, 1])},
     "y_train has a negative label (-1)"),
    ({"x_train": np.zeros((3, 2, 2), np.uint8), "y_train": np.zeros(3, np.float64)},
     "y_train is a float64 array"),
    ({"x_train": np.zeros((3, 2, 2), np.uint8), "y_train": np.zeros(3, int),
      "x_test": np.zeros((1, 2, 2), np.uint8)},
     "has x_test but no y_test; give both or neither"),
    ({"x_train": np.zeros((3, 2, 2), np.uint8), "y_train": np.zeros(3, int),
      "x_test": np.zeros((1, 2, 3), np.uint8), "y_test": np.zeros(1, int)},
     "x_test images are 2x3x1 but x_train images are 2x2x1"),
    ({"x_train": np.zeros((3, 2, 2), np.uint8), "y_train": np.array([0, 1, 1]),
      "x_test": np.zeros((1, 2, 2), np.uint8), "y_test": np.array([2])},
     "y_test has label 2, but y_train's labels stop at 1"),
    ({"y_train": np.zeros(3, int)}, "has no x_train array (it holds: y_train)"),
])
def test_npz_refusals(tmp_path: Path, arrays: dict[str, np.ndarray], expected: str):
    path = save_npz(tmp_path, **arrays)
    assert expected in one_line_error(load_npz, path)


def test_npz_object_array_is_not_unpickled(tmp_path: Path):
    path = save_npz(tmp_path, x_train=np.array([object()], dtype=object),
                    y_train=np.zeros(1, int))
    assert "x_train is an object array" in one_line_error(load_npz, path)


def test_npz_that_is_not_a_zip_is_refused(tmp_path: Path):
    npy = tmp_path / "data.npz"
    np.save(npy.with_suffix(".npy"), np.zeros(3, np.uint8))
    npy.with_suffix(".npy").rename(npy)
    assert one_line_error(load_npz, npy).startswith(f"{npy} is not a .npz file")
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 but then nothing")
    assert one_line_error(load_npz, broken).startswith(f"{broken} is not a readable .npz")


# --- CIFAR -------------------------------------------------------------------------------


def planes(count: int, offset: int) -> np.ndarray:
    """CIFAR rows: image k's channel c holds (pixel index + 7c + k + offset) % 256, plane by
    plane (all R, then all G, then all B), as the CIFAR files store them."""
    index = np.arange(1024)
    return np.stack([np.concatenate([(index + 7 * c + k + offset) % 256 for c in range(3)])
                     for k in range(count)]).astype(np.uint8)


def expected_nhwc(count: int, offset: int) -> np.ndarray:
    k = np.arange(count)[:, None, None, None]
    r = np.arange(32)[None, :, None, None]
    col = np.arange(32)[None, None, :, None]
    c = np.arange(3)[None, None, None, :]
    return ((r * 32 + col + 7 * c + k + offset) % 256).astype(np.uint8)


def py2_pickle(entry: dict[str, object]) -> bytes:
    """A dict as Python 2's cPickle wrote CIFAR (protocol 2: str keys as SHORT_BINSTRING, the
    array through numpy.core.multiarray._reconstruct with its bytes as one BINSTRING)."""
    def string(text: str | bytes) -> bytes:
        raw = text if isinstance(text, bytes) else text.encode("latin1")
        return b"U" + bytes([len(raw)]) + raw if len(raw) < 256 else \
            b"T" + struct.pack("<i", len(raw)) + raw

    def value(v: object) -> bytes:
        if isinstance(v, np.ndarray):
            shape = b"".join(b"J" + struct.pack("<i", n) for n in v.shape)
            return (b"cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04"
                    b"K\x00\x85" + string("b") + b"\x87R(K\x01" + shape + b"\x86"
                    b"cnumpy\ndtype\nq\x05" + string("u1") + b"K\x00K\x01\x87R"
                    b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
                    b"\x89" + string(v.tobytes()) + b"tb")
        if isinstance(v, str | bytes):
            return string(v)
        if isinstance(v, int):
            return b"J" + struct.pack("<i", v)
        items = b"".join(value(i) for i in v)
        return b"](" + items + b"e"

    body = b"".join(string(k) + value(v) for k, v in entry.items())
    return b"\x80\x02}q\x01(" + body + b"u."


def write_pickle(path: Path, entry: dict[str, object], style: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if style == "py2":
        path.write_bytes(py2_pickle({k.decode(): v for k, v in entry.items()}))
    else:
        path.write_bytes(pickle.dumps(entry, protocol=int(style)))


def write_cifar10(root: Path, style: str, per_batch: int = 4) -> Path:
    folder = root / "cifar-10-batches-py"
    for i in range(1, 6):
        write_pickle(folder / f"data_batch_{i}", {
            b"batch_label": b"training batch", b"data": planes(per_batch, 10 * i),
            b"labels": [(i + k) % 10 for k in range(per_batch)],
            b"filenames": [b"x.png"] * per_batch}, style)
    write_pickle(folder / "test_batch", {b"batch_label": b"testing batch",
                                         b"data": planes(3, 99), b"labels": [9, 0, 1]}, style)
    names = [b"plane", b"car", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship",
             b"truck"]
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072}, style)
    return folder


def test_py2_fixture_is_what_pickle_reads():
    """The hand-written Python 2 pickle is valid: the real unpickler agrees with it."""
    entry = {"data": planes(2, 5), "labels": [3, 1], "label_names": ["a", "b"]}
    loaded = pickle.loads(py2_pickle(entry), encoding="latin1")
    assert np.array_equal(loaded["data"], entry["data"])
    assert loaded["labels"] == [3, 1] and loaded["label_names"] == ["a", "b"]


@pytest.mark.parametrize("style", ["py2", "0", "2", "4", "5"])
def test_cifar10_pixels_land_nhwc(tmp_path: Path, style: str):
    folder = write_cifar10(tmp_path, style)
    arrays = load_named("cifar10", tmp_path)
    assert arrays.classes[:3] == ["plane", "car", "bird"] and len(arrays.classes) == 10
    assert arrays.x_train.shape == (20, 32, 32, 3) and arrays.x_train.dtype == np.uint8
    assert arrays.x_train.flags.c_contiguous
    assert np.array_equal(arrays.x_train[:4], expected_nhwc(4, 10))
    assert np.array_equal(arrays.x_train[16:], expected_nhwc(4, 50))
    assert arrays.y_train.dtype == np.int64 and arrays.y_train[:4].tolist() == [1, 2, 3, 4]
    assert np.array_equal(arrays.x_test, expected_nhwc(3, 99))
    assert arrays.y_test.tolist() == [9, 0, 1]
    assert arrays.source == f"cifar10 from {folder}"


@pytest.mark.parametrize("style", ["py2", "2", "4"])
def test_cifar100_uses_fine_labels_and_meta(tmp_path: Path, style: str):
    folder = tmp_path / "cifar-100-python"
    write_pickle(folder / "train", {b"data": planes(6, 0), b"fine_labels": [0, 1, 2, 2, 1, 0],
                                    b"coarse_labels": [5] * 6}, style)
    write_pickle(folder / "test", {b"data": planes(2, 1), b"fine_labels": [2, 0],
                                   b"coarse_labels": [5] * 2}, style)
    write_pickle(folder / "meta", {b"fine_label_names": [b"apple", b"bee", b"cup"],
                                   b"coarse_label_names": [b"x"]}, style)
    arrays = load_named("cifar100", tmp_path)
    assert arrays.classes == ["apple", "bee", "cup"]
    assert arrays.y_train.tolist() == [0, 1, 2, 2, 1, 0] and arrays.y_test.tolist() == [2, 0]
    assert np.array_equal(arrays.x_train, expected_nhwc(6, 0))


class Planted:
    """Unpickling this would create `marker`: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path: Path):
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(Planted(live), protocol=2))  # the payload does run under pickle
    assert live.exists()
    marker = tmp_path / "ran"
    folder = write_cifar10(tmp_path, "4")
    for protocol in (2, 4):
        (folder / "data_batch_2").write_bytes(pickle.dumps(
            {b"data": planes(1, 0), b"labels": [Planted(marker)]}, protocol=protocol))
        message = one_line_error(load_named, "cifar10", tmp_path)
        assert message.startswith(f"{folder / 'data_batch_2'} is not a CIFAR batch autofit "
                                  "can read safely (global ")
        assert not marker.exists()


def test_cifar_pickle_of_a_class_instance_is_refused(tmp_path: Path):
    folder = write_cifar10(tmp_path, "2")
    (folder / "batches.meta").write_bytes(pickle.dumps(
        {b"label_names": [Planted(tmp_path / "ran")]}, protocol=4))
    assert "read safely (global " in one_line_error(load_named, "cifar10", tmp_path)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [1.5]}, protocol=2))
    assert "read safely (opcode BINFLOAT)" in one_line_error(load_named, "cifar10", tmp_path)
    assert not (tmp_path / "ran").exists()


def test_cifar_truncated_or_malformed_batch_is_refused(tmp_path: Path):
    folder = write_cifar10(tmp_path, "py2")
    batch = folder / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:2000])
    assert one_line_error(load_named, "cifar10", tmp_path).startswith(
        f"{batch} is truncated or not a CIFAR batch")
    batch.write_bytes(pickle.dumps({b"data": planes(2, 0), b"labels": [1]}, protocol=2))
    assert "its 'labels' is not a list of 2 class indices" in \
        one_line_error(load_named, "cifar10", tmp_path)
    batch.write_bytes(pickle.dumps([1, 2], protocol=2))
    assert "it holds a list" in one_line_error(load_named, "cifar10", tmp_path)


def test_cifar_label_beyond_the_class_names_is_refused(tmp_path: Path):
    folder = write_cifar10(tmp_path, "2")
    write_pickle(folder / "batches.meta", {b"label_names": [b"a", b"b"]}, "2")
    assert "only 2 classes" in one_line_error(load_named, "cifar10", tmp_path)


# --- MNIST -------------------------------------------------------------------------------


def idx(array: np.ndarray) -> bytes:
    return struct.pack(">I", 0x800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) \
        + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, gz: bool, train: int = 6, test: int = 2) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for prefix, count in (("train", train), ("t10k", test)):
        files = {f"{prefix}-images-idx3-ubyte": rng.integers(0, 256, (count, 28, 28)),
                 f"{prefix}-labels-idx1-ubyte": np.arange(count) % 10}
        for name, array in files.items():
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(idx(array)))
            else:
                (folder / name).write_bytes(idx(array))


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(("name", "folder", "classes"), [
    ("mnist", "MNIST", [str(c) for c in range(10)]),
    ("fashion-mnist", "FashionMNIST", FASHION),
])
def test_mnist_idx_files(tmp_path: Path, gz: bool, name: str, folder: str, classes: list[str]):
    write_mnist(tmp_path / folder / "raw", gz)
    arrays = load_named(name, tmp_path)
    assert arrays.classes == classes
    assert arrays.x_train.shape == (6, 28, 28, 1) and arrays.x_test.shape == (2, 28, 28, 1)
    expected = np.random.default_rng(2).integers(0, 256, (6, 28, 28)).astype(np.uint8)
    assert np.array_equal(arrays.x_train[..., 0], expected)
    assert arrays.y_train.tolist() == [0, 1, 2, 3, 4, 5] and arrays.y_train.dtype == np.int64


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_is_refused(tmp_path: Path, gz: bool):
    folder = tmp_path / "MNIST" / "raw"
    write_mnist(folder, gz=False)
    images = folder / "train-images-idx3-ubyte"
    data = images.read_bytes()[:-5]
    if gz:
        images.unlink()
        images = images.with_name(images.name + ".gz")
        data = gzip.compress(data)
    images.write_bytes(data)
    message = one_line_error(load_named, "mnist", tmp_path)
    assert message.startswith(f"{images} is truncated or corrupt")


def test_idx_with_wrong_magic_or_counts_is_refused(tmp_path: Path):
    folder = tmp_path / "MNIST" / "raw"
    write_mnist(folder, gz=False)
    labels = folder / "train-labels-idx1-ubyte"
    labels.write_bytes(idx(np.arange(5)))
    assert "has 6 images but" in one_line_error(load_named, "mnist", tmp_path)
    labels.write_bytes(b"\x00\x00\x08\x03" + bytes(16))
    assert "is not an IDX file" in one_line_error(load_named, "mnist", tmp_path)
    gz = folder / "t10k-images-idx3-ubyte"
    gz.unlink()
    gz.with_name(gz.name + ".gz").write_bytes(b"\x1f\x8b not really gzip")
    labels.write_bytes(idx(np.arange(6)))
    assert "is truncated or corrupt" in one_line_error(load_named, "mnist", tmp_path)


# --- named datasets: where they are ------------------------------------------------------


def test_missing_named_dataset_says_where_to_put_it(tmp_path: Path):
    root = tmp_path / "nothing here"
    message = one_line_error(load_named, "cifar10", root)
    assert message.startswith(f"cifar10 is not under {root}: put torchvision's "
                              "cifar-10-batches-py folder there")
    assert "--data-root" in message and "does not download" in message


def test_incomplete_named_dataset_names_the_missing_file(tmp_path: Path):
    folder = write_cifar10(tmp_path, "2")
    (folder / "data_batch_3").unlink()
    message = one_line_error(load_named, "cifar10", tmp_path)
    assert message.startswith(f"cifar10 is incomplete: {folder / 'data_batch_3'} is missing")
    assert "--data-root" in message


def test_unknown_name_lists_known_ones(tmp_path: Path):
    message = one_line_error(load_named, "imagenet", tmp_path)
    assert all(name in message for name in NAMED)


def test_default_named_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("AUTOFIT_DATA_ROOT", str(tmp_path))
    assert default_named_root() == tmp_path
    monkeypatch.delenv("AUTOFIT_DATA_ROOT")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_named_root() == tmp_path / "home" / ".cache" / "autofit" / "datasets"

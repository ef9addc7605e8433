"""Hostile data: whatever sits in the data directory, loading ends in a correct dataset or in
one `DataError` line naming the file or folder, never in a traceback, a crash or a hang."""

from __future__ import annotations

import ast
import io
import os
import signal
import struct
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import write_folder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import autofit
from autofit.data import dataset
from autofit.data.dataset import load
from autofit.data.images import MAGIC, MAX_PIXELS, check_image_file
from autofit.errors import DataError

TWO = {"cat": (200, 40, 40), "dog": (40, 60, 200)}


@contextmanager
def no_hang(seconds: float) -> Iterator[None]:
    """Fail, rather than hang the suite, when the body runs longer than `seconds`."""
    def expire(*_: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _folder(root: Path, per_class: int = 4, suffix: str = ".png") -> Path:
    return write_folder(root, per_class, size=16, suffix=suffix, classes=TWO)


def _load(root: Path) -> dataset.Dataset:
    with no_hang(60):
        return load(root, seed=0, threads=2)


def _refused(root: Path, names: str | Path) -> str:
    """The one-line message of the DataError that loading `root` must raise, naming `names`."""
    with pytest.raises(DataError) as caught:
        _load(root)
    message = str(caught.value)
    assert "\n" not in message and str(names) in message, message
    return message


def _encoded(fmt: str, size: int = 16, **options: object) -> bytes:
    rng = np.random.default_rng(7)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
        buffer, format=fmt, **options)
    return buffer.getvalue()


VALID = {fmt: _encoded(fmt) for fmt in ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "PPM")}
VALID["JPEG-progressive"] = _encoded("JPEG", progressive=True)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("cut", ["empty", "magic", "header", "half", "last byte"])
def test_truncated_images_are_named(tmp_path: Path, fmt: str, cut: str):
    """Cut short anywhere, from nothing left to one byte missing."""
    good = VALID[fmt]
    header = 20 if fmt == "JPEG" else 33  # after APP0 / after IHDR
    keep = {"empty": 0, "magic": 3, "header": header, "half": len(good) // 2,
            "last byte": len(good) - 1}[cut]
    root = _folder(tmp_path / "d")
    bad = root / "cat" / "0001.png"
    bad.write_bytes(good[:keep])
    _refused(root, bad)


def test_png_cut_inside_its_last_chunk_is_named(tmp_path: Path):
    """`IEND` is there but its checksum is not: PIL decodes the file, DALI refuses it, and the
    error must still name it rather than a range of files."""
    root = _folder(tmp_path / "d")
    bad = root / "dog" / "0002.png"
    bad.write_bytes(VALID["PNG"][:-2])
    assert "cannot decode image" in _refused(root, bad)


def _marker_broken(n: int, byte: bytes) -> bytes:
    """The JPEG sample with the 0xFF of its `n`th Huffman-table marker replaced by `byte`."""
    jpeg = VALID["JPEG"]
    at = [i for i in range(len(jpeg) - 1) if jpeg[i:i + 2] == b"\xff\xc4"][n]
    return jpeg[:at] + byte + jpeg[at + 1:]


@pytest.mark.parametrize("content", [_marker_broken(0, b"\x00"), _marker_broken(3, b"\x99")],
                         ids=["DALI crashes", "DALI errs without naming it"])
def test_a_jpeg_only_dali_fails_on_is_named(tmp_path: Path, content: bytes):
    """PIL decodes these (libjpeg skips the stray bytes); DALI 2.4 dies of the first with
    SIGSEGV in a batch and fails the batch on the second with a message naming no file. Either
    way the batch is decoded again one file at a time, which names it."""
    root = _folder(tmp_path / "d")
    bad = root / "dog" / "0002.jpg"
    bad.write_bytes(content)
    assert "cannot decode image" in _refused(root, bad)


def _tiff(samples_per_pixel: int) -> bytes:
    """A 1x1 TIFF header claiming `samples_per_pixel`; PIL logs an ERROR about a large one."""
    tags = [(0x0100, 1), (0x0101, 1), (0x0115, samples_per_pixel)]  # width, height, samples
    ifd = b"".join(struct.pack("<HHIHH", tag, 3, 1, value, 0) for tag, value in tags)
    return b"II*\x00" + struct.pack("<IH", 8, len(tags)) + ifd + bytes(4)


@pytest.mark.parametrize("name,content", [
    ("0001.jpg", b""),
    ("0001.jpg", np.random.default_rng(1).bytes(600)),
    ("0001.png", b"this is a text file with an image's name\n" * 20),
    ("0001.jpg", b"\xff\xd8\xff" + bytes(range(256)) * 3 + b"\xff\xd9"),
    ("0001.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 200 + b"IEND\xaeB`\x82"),
    ("0001.bmp", b"BM" + b"\x07" * 300),
    ("0001.tif", b"II*\x00" + b"\xff" * 300),
    ("0001.webp", b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x01" * 50),
    ("0001.ppm", b"P6\n100000 100000\n255\n" + b"\x00" * 64),
    ("0001.tif", _tiff(256)),
], ids=["empty", "random bytes", "text", "JPEG magic, junk", "PNG without IHDR", "BMP junk",
        "TIFF junk", "WebP junk", "PPM 100000x100000", "TIFF 256 samples"])
def test_non_images_with_image_names_are_named(tmp_path: Path, caplog, name: str,
                                               content: bytes):
    """...and the error line is all: PIL logs and warns about such files, which on a terminal
    would be more lines on stderr."""
    root = _folder(tmp_path / "d")
    bad = root / "dog" / name
    bad.write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _refused(root, bad)
    assert not [r for r in caplog.records if r.name.startswith("PIL")], caplog.text


def test_files_and_folders_that_are_not_images_are_ignored(tmp_path: Path):
    root = _folder(tmp_path / "d")
    (root / "cat" / "notes.txt").write_text("collected by hand\n")
    (root / "cat" / ".DS_Store").write_bytes(VALID["PNG"][:64])
    (root / "cat" / "more.png").mkdir()
    os.mkfifo(root / "dog" / "pipe.png")
    (root / ".hidden").mkdir()
    data = _load(root)
    assert data.classes == ["cat", "dog"] and sum(data.sizes().values()) == 8


def test_a_jpeg_named_png_loads(tmp_path: Path):
    root = _folder(tmp_path / "d")
    (root / "cat" / "0001.png").write_bytes(VALID["JPEG"])
    assert sum(_load(root).sizes().values()) == 8


@pytest.mark.parametrize("name", ["0003.jpg", "!first.jpg"])
def test_a_huge_image_among_small_ones_is_refused_fast(tmp_path: Path, name: str):
    """10000 x 10000 from its header alone, before anything decodes it, wherever it sorts."""
    root = _folder(tmp_path / "d")
    huge = root / "cat" / name
    Image.new("L", (10_000, 10_000), 90).save(huge)
    start = time.perf_counter()
    message = _refused(root, huge)
    assert "10000x10000" in message and f"{MAX_PIXELS:,}" in message
    assert time.perf_counter() - start < 2.0


def test_a_decode_that_cannot_fit_in_memory_is_refused(tmp_path: Path, monkeypatch):
    root = _folder(tmp_path / "d")
    monkeypatch.setattr(dataset, "decode_room", lambda: 1000)
    assert "GiB free for it" in _refused(root, root)


def _link(path: Path, target: str | Path) -> Path:
    path.symlink_to(target)
    return path


def test_symlink_loops_and_dangling_links_are_ignored(tmp_path: Path):
    """No walk follows links into loops: a link in a class folder is an image file or it is
    skipped, and a class folder is never searched below its own files."""
    root = _folder(tmp_path / "d")
    _link(root / "cat" / "loop", "..")
    _link(root / "cat" / "self", ".")
    _link(root / "dog" / "again.png", "again.png")
    _link(root / "dog" / "gone.png", "missing.png")
    _link(root / "ouro", "boros")
    _link(root / "boros", "ouro")
    _link(root / ".snapshot", root)
    data = _load(root)
    assert data.classes == ["cat", "dog"] and sum(data.sizes().values()) == 8


def test_a_class_linked_to_its_parent_is_refused(tmp_path: Path):
    root = _folder(tmp_path / "d")
    _link(root / "parent", root)
    _refused(root, root / "parent")


def test_data_dir_that_is_a_symlink_loop_is_refused(tmp_path: Path):
    loop = _link(tmp_path / "loop", tmp_path / "loop")
    assert "symbolic link" in _refused(loop, loop)


def test_spaces_and_non_ascii_names_load(tmp_path: Path):
    classes = {"chat noir é": (20, 20, 20), "狗 dog": (220, 200, 40)}
    root = write_folder(tmp_path / "données d'été", 4, size=16, classes=classes)
    for image in (root / "chat noir é").iterdir():
        image.rename(image.with_name(f"ïmage {image.stem[-1]}.png"))
    data = _load(root)
    assert data.classes == ["chat noir é", "狗 dog"] and sum(data.sizes().values()) == 8
    assert np.bincount(np.concatenate([data.y_train, data.y_val, data.y_test])).tolist() == [4, 4]


def test_a_newline_in_a_name_stays_on_one_line(tmp_path: Path):
    root = _folder(tmp_path / "d")
    (root / "cat" / "two\nlines.png").write_bytes(b"")
    message = _refused(root, root / "cat")
    assert "two\\nlines.png is empty" in message


def test_a_name_that_is_not_utf8_is_refused(tmp_path: Path):
    root = _folder(tmp_path / "d")
    os.rename(os.fsencode(root / "dog" / "0001.png"), os.fsencode(root / "dog") + b"/\xff.png")
    message = _refused(root, root / "dog")
    assert "\\xff.png" in message and "UTF-8" in message


def _overwritten(data: bytes, at: int, junk: bytes) -> bytes:
    """`junk` written over `data` at `at` (wrapped into the file)."""
    at %= len(data)
    return data[:at] + junk + data[at + len(junk):]


def _holed(data: bytes, at: int, size: int) -> bytes:
    """`data` with up to `size` bytes cut out of it, its first and last 8 bytes kept: head and
    tail look whole, so the file gets past the cheap checks to the decoder."""
    at = 8 + at % (len(data) - 16)
    return data[:at] + data[min(at + size, len(data) - 8):]


SAMPLES = st.sampled_from(sorted(VALID))
DAMAGED = st.one_of(
    st.builds(lambda fmt, at, junk: _overwritten(VALID[fmt], at, junk), SAMPLES,
              st.integers(24, 4000), st.binary(min_size=1, max_size=64)),
    st.builds(lambda fmt, at, size: _holed(VALID[fmt], at, size), SAMPLES,
              st.integers(0, 4000), st.integers(1, 800)),
)
CONTENTS = st.one_of(
    st.binary(max_size=1500),
    st.builds(lambda fmt, n: VALID[fmt][:n], SAMPLES, st.integers(0, 2000)),
    st.builds(lambda magic, junk: magic + junk,
              st.sampled_from([*MAGIC, b"RIFF\x00\x01\x00\x00WEBPVP8L"]), st.binary(max_size=600)),
    DAMAGED,
)


@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("fuzz") / "d", 4, size=16, classes=TWO)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=CONTENTS)
def test_fuzzed_file_passes_the_check_or_is_named(fuzz_folder: Path, content: bytes):
    slot = fuzz_folder / "dog" / "slot.png"
    slot.write_bytes(content)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a warning would be a second line on stderr
            check_image_file(slot)
    except DataError as err:
        assert "\n" not in str(err) and str(slot) in str(err), err


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=DAMAGED)
def test_damaged_file_loads_or_is_named(fuzz_folder: Path, content: bytes):
    """Damage inside the file reaches DALI in its child process: decoded, or one error naming
    the file (the cheap checks above see random bytes and cut files 400 times over)."""
    slot = fuzz_folder / "dog" / "slot.png"
    slot.write_bytes(content)
    try:
        data = _load(fuzz_folder)
    except DataError as err:
        assert "\n" not in str(err) and str(slot) in str(err), err
    else:
        assert sum(data.sizes().values()) == 9 and data.x_train.dtype == np.uint8


def _cli(data: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autofit", "run", "--data", str(data), "--minutes", "0.5",
         "--max-params", "100k", "--out", str(out)],
        capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name,content,shown", [
    ("dog/0002.png", VALID["PNG"][:-2], "dog/0002.png"),
    ("dog/bad\nname.jpg", b"", "dog/bad\\nname.jpg"),
], ids=["PNG only DALI refuses", "newline in the name"])
def test_cli_reports_bad_data_on_one_line(tmp_path: Path, name: str, content: bytes, shown: str):
    root = _folder(tmp_path / "d")
    (root / name).write_bytes(content)
    named = root / shown
    proc = _cli(root, tmp_path / "run")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autofit: error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and str(named) in lines[0]


def _calls(tree: ast.AST, module: set[str], name: str) -> Iterator[ast.Call]:
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == name and isinstance(node.func.value, ast.Name)
                and node.func.value.id in module):
            yield node


def _keyword(call: ast.Call, name: str) -> object:
    return next((k.value.value for k in call.keywords
                 if k.arg == name and isinstance(k.value, ast.Constant)), None)


def test_nothing_unpickles_what_it_loads():
    """Checkpoints load with weights_only=True, arrays with allow_pickle=False, and nothing
    imports pickle: a file planted in a data or run directory must not run code."""
    unpicklers = {"pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}
    for source in sorted(Path(autofit.__file__).parent.rglob("*.py")):
        tree = ast.parse(source.read_text(), str(source))
        for call in _calls(tree, {"torch"}, "load"):
            assert _keyword(call, "weights_only") is True, f"{source}:{call.lineno}"
        for call in _calls(tree, {"np", "numpy"}, "load"):
            assert _keyword(call, "allow_pickle") is False, f"{source}:{call.lineno}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not imported & unpicklers, f"{source}:{node.lineno} imports {imported}"

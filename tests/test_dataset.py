from pathlib import Path

import numpy as np
import pytest
from conftest import write_folder
from PIL import Image

from autofit.data.dataset import load
from autofit.data.discover import discover, stratified_split
from autofit.errors import DataError


def test_split_layout_uses_given_test(split_folder: Path):
    data = load(split_folder, seed=0, threads=2)
    assert data.classes == ["blue", "green", "red", "yellow"]
    assert data.sizes() == {"train": 216, "val": 24, "test": 80}
    assert data.x_train.shape[1:] == (16, 16, 3) and data.x_train.dtype == np.uint8
    assert np.bincount(data.y_val).tolist() == [6, 6, 6, 6]
    assert "test" in data.source


def test_flat_layout_holds_out_stratified_test(flat_folder: Path):
    data = load(flat_folder, seed=0, threads=1)
    assert data.sizes() == {"train": 88, "val": 8, "test": 24}  # 20% test, 10% of the rest val
    assert np.bincount(data.y_test).tolist() == [6, 6, 6, 6]
    assert np.bincount(data.y_val).tolist() == [2, 2, 2, 2]
    assert "stratified" in data.source


def test_dali_decode_is_pixel_exact_for_png(tmp_path: Path):
    root = write_folder(tmp_path / "d", 3, size=12, suffix=".png", seed=4)
    _, train, _, _ = discover(root, seed=0)
    data = load(root, seed=0, threads=1)
    originals = {np.asarray(Image.open(f)).tobytes() for f in train.files}
    decoded = [x.tobytes() for x in np.concatenate([data.x_train, data.x_val])]
    assert len(decoded) == len(train.files) and set(decoded) == originals


def test_greyscale_stays_one_channel(tmp_path: Path):
    root = tmp_path / "grey"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((10, 10), 40 * i, np.uint8), "L").save(root / c / f"{i}.png")
    data = load(root, seed=0, threads=1)
    assert data.shape.channels == 1 and data.x_train.shape[-1] == 1


def test_splits_are_seeded_and_disjoint():
    labels = np.repeat(np.arange(5), 40)
    kept, held = stratified_split(labels, 0.2, seed=3)
    again = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(kept, again[0]) and np.array_equal(held, again[1])
    assert not set(kept) & set(held) and len(kept) + len(held) == 200
    assert np.bincount(labels[held]).tolist() == [8] * 5


def test_a_dataset_scaled_to_a_side_keeps_its_labels_aspect_and_pixels(split_folder: Path):
    """`Dataset.at_side` (bench/batch_steps.py --sides): every split scaled down, the aspect
    kept, each image's mean kept, and nearer the 2x2 blocks' means than a sample of every
    other pixel is (an antialiased downscale); a side at or over the data's own returns the
    data as it is."""
    data = load(split_folder, seed=0, threads=2)
    half = data.at_side(8, "halved by the test")
    assert half.shape.height == half.shape.width == 8
    for before, after in ((data.x_train, half.x_train), (data.x_val, half.x_val),
                          (data.x_test, half.x_test)):
        assert after.shape == (len(before), 8, 8, 3) and after.dtype == np.uint8
        blocks = before.reshape(len(before), 8, 2, 8, 2, 3).mean(axis=(2, 4))
        sampled = before[:, ::2, ::2].astype(float)
        assert np.abs(after - blocks).mean() < 0.5 * np.abs(sampled - blocks).mean()
        assert np.abs(after.mean(axis=(1, 2)) - before.mean(axis=(1, 2))).max() < 2.0
    assert half.y_train is data.y_train and half.classes == data.classes
    assert half.resolution.how.endswith("; halved by the test")
    assert data.at_side(16, "as it is") is data


def test_embedded_digits():
    data = load(None, seed=0, threads=1)
    assert data.classes == [str(i) for i in range(10)]
    assert data.shape == (1, 8, 8, 10)
    assert sum(data.sizes().values()) == 1797


def _corrupt(root: Path, name: str, content: bytes | None) -> Path:
    write_folder(root, 6, size=8, suffix=".jpg")
    target = root / "red" / name
    target.write_bytes(target.read_bytes()[:120] if content is None else content)
    return root


def _mk(root: Path, spec: dict[str, int]) -> Path:
    for name, count in spec.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (4, 4)).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("build,message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "is empty"),
    (lambda p: _mk(p / "d", {"a": 3, "b": 0}), "class folder .*b has no images"),
    (lambda p: _mk(p / "d", {"a": 3}), "at least 2 classes"),
    (lambda p: (p / "f").mkdir() or (p / "f" / "x.png").write_bytes(b"") or p / "f",
     "has no class folders"),
    (lambda p: _mk(p / "d" / "train", {"a": 2, "b": 2}) and _mk(p / "d" / "test", {"c": 1})
     and p / "d", "classes not in train: c"),
    (lambda p: _corrupt(p / "d", "0001.jpg", b""), "red/0001.jpg is empty"),
    (lambda p: _corrupt(p / "d", "0002.jpg", b"hello, not a picture"),
     "red/0002.jpg is not a JPEG, PNG"),
    (lambda p: _corrupt(p / "d", "0003.jpg", None), "red/0003.jpg is a truncated JPEG"),
])
def test_bad_layouts_name_the_problem(tmp_path: Path, build, message):
    with pytest.raises(DataError, match=message):
        load(build(tmp_path), seed=0, threads=1)


def test_corrupt_jpeg_body_is_named_and_never_crashes_the_run(tmp_path: Path):
    """Head and tail look fine, the middle is zeroed: DALI errors or crashes in its child
    process; either way the run gets one error naming the file."""
    root = write_folder(tmp_path / "d", 6, size=32, suffix=".jpg")
    bad = root / "blue" / "0001.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[:40] + b"\0" * 200 + data[240:])
    with pytest.raises(DataError, match="cannot decode image .*blue/0001.jpg"):
        load(root, seed=0, threads=2)


def test_decoder_crash_is_reported_with_the_file(tmp_path: Path, monkeypatch):
    from autofit.data import decoder

    root = write_folder(tmp_path / "d", 4, size=8, suffix=".png")
    (root / "red" / "0002.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64 + b"IEND")
    monkeypatch.setattr(decoder, "_run_child", lambda *a: {"status": "crash", "reason": "boom"})
    with pytest.raises(DataError, match="cannot decode image .*red/0002.png"):
        load(root, seed=0, threads=1)

"""The data layer on real files: every source a user can pass, mixed sizes, greyscale, the
bad-data rules (skip and count up to 1%, then stop), cutout and the path a run says it took."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import COLOURS, draw, write_folder
from PIL import Image

import autofit
from autofit.data import pipeline
from autofit.data.dataset import MAX_SIDE, load
from autofit.data.inputs import prepare
from autofit.errors import DataError, UnreadableData
from autofit.records import Summary
from autofit.train import precision


def _sized_folder(root: Path, sizes: list[int], per_size: int = 4) -> Path:
    """Two colour classes drawn at each of `sizes` (squares), as PNGs."""
    rng = np.random.default_rng(0)
    for name in ("red", "blue"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k, size in enumerate(sizes):
            for i in range(per_size):
                Image.fromarray(draw(COLOURS[name], size, rng)).save(
                    root / name / f"{k}-{size}-{i}.png")
    return root


def test_mixed_sizes_train_at_the_median_size_and_say_so(tmp_path: Path):
    data = load(_sized_folder(tmp_path / "d", [12, 16, 16, 40]), seed=0, threads=1)
    res = data.resolution
    assert (res.height, res.width, res.channels) == (16, 16, 3)
    assert data.x_train.shape[1:] == (16, 16, 3) and data.x_test.shape[1:] == (16, 16, 3)
    assert "median of 32 image sizes (3 distinct, 12x12 to 40x40)" in res.how


def test_large_images_are_scaled_to_the_largest_trained_side(tmp_path: Path):
    root = tmp_path / "big"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (300, 150), (i * 40, 0, 0)).save(root / name / f"{i}.jpg")
    res = load(root, seed=0, threads=1).resolution
    assert (res.width, res.height) == (MAX_SIDE, MAX_SIDE // 2)
    assert f"scaled to at most {MAX_SIDE} pixels a side" in res.how


def test_greyscale_with_some_rgb_images_trains_in_rgb(tmp_path: Path):
    root = tmp_path / "g"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (8, 8), 30 * i).save(root / name / f"{i}.png")
    Image.new("RGB", (8, 8), (255, 0, 0)).save(root / "a" / "colour.jpg")
    assert load(root, seed=0, threads=1).resolution.channels == 3
    (root / "a" / "colour.jpg").unlink()
    Image.new("L", (8, 8), 9).save(root / "a" / "grey.jpg")  # a greyscale JPEG: one plane
    assert load(root, seed=0, threads=1).x_train.shape[-1] == 1


def _with_bad_files(root: Path, per_class: int) -> tuple[Path, list[Path]]:
    """A folder of JPEGs with one empty file (caught by its header) and one whose body is
    zeroed (header and tail look fine: only the decode finds it)."""
    write_folder(root, per_class, size=32, suffix=".jpg")
    empty, zeroed = root / "red" / "0001.jpg", root / "blue" / "0002.jpg"
    empty.write_bytes(b"")
    body = zeroed.read_bytes()
    zeroed.write_bytes(body[:40] + b"\0" * 200 + body[240:])
    return root, [empty, zeroed]


def test_unreadable_images_are_skipped_and_listed_up_to_one_percent(tmp_path: Path):
    root, bad = _with_bad_files(tmp_path / "d", 60)  # 2 of 240: 0.8%
    (root / "green" / "notes.txt").write_text("labelled by hand")
    data = load(root, seed=0, threads=2)
    assert sum(data.sizes().values()) == 238
    skipped = dict(data.skipped)
    assert set(skipped) == {str(p) for p in bad}
    assert "is empty" in skipped[str(bad[0])] and "cannot decode" in skipped[str(bad[1])]
    assert [f for f, _ in data.ignored] == [str(root / "green" / "notes.txt")]
    assert any("skipped unreadable files: 2" in n for n in data.notes)


def test_more_than_one_percent_unreadable_stops_before_training(tmp_path: Path):
    root, bad = _with_bad_files(tmp_path / "d", 40)  # 2 of 160: 1.25%
    with pytest.raises(UnreadableData) as caught:
        load(root, seed=0, threads=2)
    message = str(caught.value)
    assert "\n" not in message and "2 of 160 images cannot be read (1.2%" in message
    assert str(bad[0]) in message
    assert {f for f, _ in caught.value.bad} == {str(p) for p in bad}


def _csv_data(root: Path) -> Path:
    """Images in one folder, labels in train.csv and test.csv (relative paths)."""
    rng = np.random.default_rng(1)
    (root / "img").mkdir(parents=True)
    for split, count in (("train", 40), ("test", 8)):
        lines = ["path,label"]
        for i in range(count):
            name = ("red", "green")[i % 2]
            Image.fromarray(draw(COLOURS[name], 12, rng)).save(root / "img" / f"{split}{i}.png")
            lines.append(f"img/{split}{i}.png,{name}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def test_csv_per_split_and_a_row_naming_a_missing_file(tmp_path: Path):
    root = _csv_data(tmp_path / "c")
    data = load(root, seed=0, threads=1)
    assert data.classes == ["green", "red"] and len(data.y_test) == 8
    assert sum(data.sizes().values()) == 48
    with open(root / "train.csv", "a") as handle:
        handle.write("img/gone.png,red\n")
    with pytest.raises(UnreadableData, match=r"train.csv line 42 names img/gone.png"):
        load(root, seed=0, threads=1)  # 1 of 49 is over 1%: named, with its line


def test_a_single_csv_gets_a_held_out_test_split(tmp_path: Path):
    root = _csv_data(tmp_path / "c")
    data = load(root / "train.csv", seed=0, threads=1)
    assert sum(data.sizes().values()) == 40 and len(data.y_test) == 8
    (root / "test.csv").write_text("img/test0.png,blue\n")
    with pytest.raises(DataError, match="labels not in train: blue"):
        load(root, seed=0, threads=1)


def test_npz_arrays_load_without_decoding(tmp_path: Path):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 255, (50, 10, 10), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(50) % 5)
    data = load(tmp_path / "d.npz", seed=0, threads=1)
    assert data.shape == (1, 10, 10, 5) and sum(data.sizes().values()) == 50
    np.savez(tmp_path / "bad.npz", x_train=x, y_train=np.arange(49) % 5)
    with pytest.raises(DataError, match="bad.npz: x_train has 50 images but y_train has 49"):
        load(tmp_path / "bad.npz", seed=0, threads=1)


def _idx(path: Path, array: np.ndarray) -> None:
    magic = (0x0800 | array.ndim).to_bytes(4, "big")
    dims = b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(magic + dims + array.astype(np.uint8).tobytes())


def test_named_mnist_from_a_local_root(tmp_path: Path):
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for prefix, n in (("train", 60), ("t10k", 20)):
        _idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    data = load("mnist", seed=0, threads=1, data_root=tmp_path / "root")
    assert data.shape == (1, 28, 28, 10) and len(data.y_test) == 20
    with pytest.raises(DataError, match=r"cifar10 is not under .*--data-root"):
        load("cifar10", seed=0, threads=1, data_root=tmp_path / "root")


def test_cutout_zeroes_one_square_per_image_and_is_seeded():
    x = np.full((16, 16, 16, 3), 200, np.uint8)
    y = np.arange(16)

    def first_batch(seed: int) -> torch.Tensor:
        loader = pipeline.loader(pipeline.DALI_CPU, x, y, 16, train=True, hflip=False,
                                 cutout=0.25, seed=seed)
        return next(iter(loader))[0]

    batch = first_batch(5)
    assert torch.equal(batch, first_batch(5)) and not torch.equal(batch, first_batch(6))
    for image in batch:
        zero = (image == 0).all(0)  # crop padding and the cutout square are both zero
        rows, cols = torch.nonzero(zero, as_tuple=True)
        assert len(rows) > 0
    no_cutout = next(iter(pipeline.loader(pipeline.DALI_CPU, x, y, 16, train=True,
                                          hflip=False, seed=5)))[0]
    assert (batch == 0).sum() > (no_cutout == 0).sum()


def test_without_dali_the_torch_path_is_chosen_and_says_why(monkeypatch):
    assert pipeline.choose("cpu").name == pipeline.DALI_CPU
    monkeypatch.setenv("AUTOFIT_FAULTS", "no-dali@data")
    path = pipeline.choose("cpu")
    assert path.name == pipeline.TORCH and "no-dali" in path.reason and "slower" in path.reason
    x = np.zeros((8, 6, 6, 1), np.uint8)
    assert isinstance(pipeline.loader(path.name, x, np.arange(8), 4, train=True),
                      pipeline.torch_data.TorchBatchLoader)


NO_DALI = """\
import importlib.abc
import sys


class NoDali(importlib.abc.MetaPathFinder):
    \"\"\"A platform without DALI's wheel (macOS, Windows, some ARM machines).\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name == "nvidia.dali" or name.startswith("nvidia.dali."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


sys.meta_path.insert(0, NoDali())
"""


def _cli_run(data: Path, out: Path, env: dict[str, str] | None = None) -> tuple[str, Summary]:
    proc = subprocess.run([sys.executable, "-m", "autofit", "run", "--data", str(data),
                           "--minutes", "0.75", "--max-params", "50k", "--out", str(out)],
                          capture_output=True, text=True, timeout=150, env=env)  # 0.5: on a
    # slow day set-up and Ray's start took 19 of its 30 s, and its one trial trained no step
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = Summary.read(out / "summary.json")
    assert summary is not None and summary.status == "finished"
    assert summary.elapsed_s <= 45.0 + 5.0  # the deadline holds on either path
    return proc.stdout, summary


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Summary]:
    """One whole run on mixed sizes, with an unreadable image and a stray text file, on the
    DALI path: shared by the tests that check what it recorded and compare the torch path."""
    tmp = tmp_path_factory.mktemp("mixed")
    root = _sized_folder(tmp / "d", [14, 16, 16, 16, 16, 16, 20], per_size=8)  # 112
    (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (root / "blue" / "README").write_text("not an image")
    _, summary = _cli_run(root, tmp / "run")
    return root, tmp / "run", summary


def test_run_records_resolution_skips_and_resize_in_summary_and_onnx(mixed_run):
    root, out, summary = mixed_run
    assert summary.data_path == "dali-cpu"
    data = summary.data
    assert data is not None
    assert data.resolution["height"] == 16 and "median" in data.resolution["how"]
    assert [s.file for s in data.skipped] == [str(root / "red" / "broken.png")]
    assert [s.file for s in data.ignored] == [str(root / "blue" / "README")]
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    resize = json.loads(meta["resize"])
    assert (resize["height"], resize["width"], resize["channels"]) == (16, 16, 3)
    log = (out / "run.log").read_text()
    assert "data path dali-cpu" in log and "skipped unreadable files: 1" in log
    amp = precision.choose("cpu")  # bf16 on a CPU with AMX, said in log and summary
    assert summary.precision == amp.name and f"precision {amp.reason}" in log

    files = sorted(p for p in root.rglob("*.png") if p.name != "broken.png")
    x = prepare(files, out / "model.onnx")  # the run's own resize, from the model's metadata
    assert x.shape == (len(files), 3, 16, 16) and x.dtype == np.float32
    logits = ort.InferenceSession(str(out / "model.onnx")).run(["logits"], {"input": x})[0]
    truth = [summary.classes.index(p.parent.name) for p in files]
    assert (logits.argmax(1) == truth).mean() > 0.8

    predicted = autofit.load(out / "model.onnx").predict([root / "red"], top_k=2)
    unreadable = [p for p in predicted if p.error is not None]
    assert [p.image for p in unreadable] == [str(root / "red" / "broken.png")]
    readable = [p for p in predicted if p.error is None]
    assert len(readable) == 56 and [p.labels[0] for p in readable].count("red") > 40
    assert all(abs(sum(p.probabilities) - 1) < 1e-6 for p in readable)  # 2 classes: all mass
    cli = subprocess.run([sys.executable, "-m", "autofit", "predict", str(out / "model.onnx"),
                          str(files[0]), "--top-k", "3", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    (one,) = json.loads(cli.stdout)
    assert one["image"] == str(files[0]) and len(one["top"]) == 2  # top-k capped at 2 classes
    shown = subprocess.run([sys.executable, "-m", "autofit", "inspect", str(out / "model.onnx")],
                           capture_output=True, text=True, timeout=60)
    facts = dict(line.split(None, 1) for line in shown.stdout.strip().splitlines())
    assert facts["classes"] == "blue, red" and facts["input_shape"] == "[3, 16, 16]"
    assert float(facts["test_accuracy"]) == summary.test_accuracy
    assert float(facts["latency_ms_batch1"]) > 0 and facts["opset"] == "18"


def test_a_run_where_dali_cannot_be_imported_takes_the_torch_path(mixed_run, tmp_path: Path):
    """Importing nvidia.dali really raises (as where no DALI wheel exists) in the run's process
    and every process it starts: the run completes on the torch path, says so in the log and
    the summary, keeps and skips the same files and scores like the DALI run on the same data.
    """
    root, _, dali = mixed_run
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(NO_DALI)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(tmp_path / "site"), os.environ.get("PYTHONPATH")]))}
    check = subprocess.run([sys.executable, "-c", "import nvidia.dali"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode != 0 and "No module named 'nvidia.dali'" in check.stderr
    stdout, summary = _cli_run(root, tmp_path / "run", env)
    assert "data path torch: NVIDIA DALI cannot be imported" in stdout
    assert "data path torch" in (tmp_path / "run" / "run.log").read_text()
    assert summary.data_path == "torch" and summary.versions["dali"] == "not importable"
    assert summary.data == dali.data  # the same sizes, resolution, skipped and ignored files
    assert summary.test_accuracy is not None and dali.test_accuracy is not None
    assert summary.test_accuracy > 0.8  # two classes: chance is 0.5
    assert abs(summary.test_accuracy - dali.test_accuracy) <= 0.1  # 2 of 22 test images


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU self-test passes on a GPU")
def test_a_gpu_path_that_fails_its_self_test_falls_back_to_dali_cpu_and_says_why():
    """Here, with no GPU, nvJPEG really fails: the run must say so, not take the GPU path."""
    path = pipeline.choose("cuda")
    assert path.name == pipeline.DALI_CPU
    assert "DALI's GPU backend failed its self-test (" in path.reason
    assert "batches are copied to the GPU" in path.reason

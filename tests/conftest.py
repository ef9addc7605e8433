"""Shared fixtures: small, learnable image folders written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autofit.data.dataset import Dataset, Resolution

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200),
           "yellow": (210, 200, 40)}


def draw(colour: tuple[int, int, int], size: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy background with a class-coloured square at a random place."""
    img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
    side = size // 2
    top, left = rng.integers(0, size - side + 1, 2)
    patch = np.array(colour, dtype=np.int16) + rng.integers(-25, 26, 3)
    img[top:top + side, left:left + side] = np.clip(patch, 0, 255)
    return img


def write_folder(root: Path, per_class: int, size: int = 16, suffix: str = ".png",
                 seed: int = 0, classes: dict[str, tuple[int, int, int]] = COLOURS) -> Path:
    rng = np.random.default_rng(seed)
    for name, colour in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(draw(colour, size, rng)).save(folder / f"{i:04d}{suffix}")
    return root


def two_class(n: int = 256, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Greyscale arrays a tiny model learns in a few steps: class 1 has a bright top half."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    x = rng.integers(0, 60, (n, size, size, 1), dtype=np.uint8)
    x[y == 1, : size // 2] += 150
    return x, y


class NaNNet(torch.nn.Module):
    """Fault injection: a network whose output turns NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1)[:, :2] * self.w) * float("nan")


@pytest.fixture
def split_folder(tmp_path: Path) -> Path:
    """DIR/train/<class>/*.jpg (60 per class) and DIR/test/<class>/*.jpg (20 per class)."""
    root = tmp_path / "shapes"
    write_folder(root / "train", 60, suffix=".jpg", seed=1)
    write_folder(root / "test", 20, suffix=".jpg", seed=2)
    return root


@pytest.fixture
def flat_folder(tmp_path: Path) -> Path:
    """DIR/<class>/*.png, 30 per class: autofit holds out its own test split."""
    return write_folder(tmp_path / "flat", 30, suffix=".png", seed=3)


def progress(**given):
    """A trial report with the given fields; the rest as an unremarkable trial's."""
    from autofit.records import Progress

    fields = {"val_accuracy": 0.5, "val_images": 100, "train_seconds": 1.0, "epoch": 1.0,
              "steps": 10, "images_per_s": 100.0, "eval_images_per_s": 500.0, "loss": 1.0,
              "state": "completed", "batch_size": 64, "oom_retries": 0}
    return Progress(**{**fields, **given})


def made_dataset(x: np.ndarray, y: np.ndarray) -> Dataset:
    """Images and labels made by a test as a Dataset, a quarter of them the validation and
    test splits."""
    n_val = len(y) // 4
    _, height, width, channels = x.shape
    return Dataset(name="made", classes=[str(c) for c in range(int(y.max()) + 1)],
                   x_train=x[n_val:], y_train=y[n_val:], x_val=x[:n_val], y_val=y[:n_val],
                   x_test=x[:n_val], y_test=y[:n_val], source="made by the test",
                   resolution=Resolution(height, width, channels, "made"))


def blocks(n: int = 1200, side: int = 128) -> Dataset:
    """A coloured square on dark noise, its colour the label: a few steps learn it, and
    nothing a half side loses."""
    rng = np.random.default_rng(1)
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]])
    y = rng.integers(0, len(colours), n)
    x = rng.integers(0, 60, (n, side, side, 3)).astype(np.uint8)
    for i in range(n):
        top, left = rng.integers(0, side // 2, 2)
        x[i, top:top + side // 2, left:left + side // 2] = colours[y[i]]
    return made_dataset(x, y)

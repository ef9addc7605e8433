"""Whether a mirror image keeps its label, measured on the data before anything trains.

Flip augmentation and mirror test-time views are right for photos and wrong where a mirror
changes what an image shows (digits, letters, arrows). A linear probe, ridge regression on
the training images shrunk to 16x16, is fitted in a fraction of a second and scored on
validation images and on their mirrors. The share of its lead over chance that survives the
mirror says which kind of data this is. Measured (`bench/mirror.py`, 5,000 training and 2,000
validation images at most): the embedded digits 0.24, Fashion-MNIST 0.65 (its shoes all face
one way, yet a mirrored shoe is still a shoe), CIFAR-10 1.02, the clothing photos 0.95. Under
MIRROR_KEEPS the mirror is taken to change labels: hflip and the mirror views are pinned off.
A probe too close to chance to tell (a hard dataset for a linear model) decides nothing.
"""

from __future__ import annotations

import numpy as np

from autofit.data.dataset import Dataset
from autofit.records import Decision

MIRROR_KEEPS = 0.5  # the share of the probe's lead over chance a label-keeping mirror keeps
MIN_LEAD = 0.1  # below this lead over chance the probe cannot tell
SIDE = 16  # the probe's images are this many pixels a side
TRAIN_IMAGES, VAL_IMAGES = 5000, 2000
RIDGE = 1.0  # per 1,000 training images


def decide(dataset: Dataset, seed: int) -> Decision:
    """The mirror decision for `dataset`: hflip and tta pinned off where a mirror changes the
    label, nothing pinned otherwise; the evidence in one line either way."""
    rng = np.random.default_rng(seed)
    n = min(TRAIN_IMAGES, len(dataset.y_train))
    picked = np.sort(rng.choice(len(dataset.y_train), n, replace=False))
    x_val, y_val = dataset.x_val[:VAL_IMAGES], dataset.y_val[:VAL_IMAGES]
    classes = len(dataset.classes)
    chance = 1.0 / classes
    weights, mean = _fit(_small(dataset.x_train[picked]), dataset.y_train[picked], classes)
    small_val = _small(x_val)
    accuracy = _accuracy(small_val, y_val, weights, mean)
    mirrored = _accuracy(small_val[:, :, ::-1], y_val, weights, mean)
    lead = accuracy - chance
    kept = (mirrored - chance) / lead if lead > 0 else 1.0
    measured = {"probe_accuracy": round(accuracy, 4), "mirrored_accuracy": round(mirrored, 4),
                "chance": round(chance, 4), "kept": round(kept, 3),
                "train_images": float(n), "val_images": float(len(y_val))}
    probe = (f"a linear probe fitted on {n:,} training images ({SIDE}x{SIDE}) scores "
             f"{accuracy:.3f} on {len(y_val):,} validation images and {mirrored:.3f} on their "
             f"mirrors (chance {chance:.3f})")
    if len(y_val) == 0 or lead < MIN_LEAD:
        return Decision(name="mirror", pinned={}, measured=measured, evidence=(
            f"mirroring not judged: {probe}, too close to chance to tell; hflip stays as the "
            "space has it"))
    if kept < MIRROR_KEEPS:
        return Decision(name="mirror", pinned={"hflip": False, "tta": False},
                        measured=measured, evidence=(
                            f"a mirror changes the label here: {probe}, keeping {kept:.2f} of its "
                            f"lead over chance (under {MIRROR_KEEPS:g}); hflip and the mirror "
                            "test-time view are off"))
    return Decision(name="mirror", pinned={}, measured=measured, evidence=(
        f"a mirror keeps the label here: {probe}, keeping {kept:.2f} of its lead over chance "
        f"({MIRROR_KEEPS:g} or more); hflip stays in the space"))


def _small(images: np.ndarray) -> np.ndarray:
    """N x H x W x C uint8 images as N x SIDE x SIDE x C floats in [0, 1], area-averaged (each
    output pixel the mean of the input pixels it covers)."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return F.interpolate(tensor, size=(SIDE, SIDE), mode="area").permute(0, 2, 3, 1).numpy()


def _fit(images: np.ndarray, labels: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression onto one-hot labels, with a bias: the weights and the pixel mean."""
    features = images.reshape(len(images), -1).astype(np.float64)
    mean = features.mean(axis=0)
    x = np.hstack([features - mean, np.ones((len(features), 1))])
    y = np.eye(classes)[labels]
    ridge = RIDGE * len(x) / 1000.0 * np.eye(x.shape[1])
    return np.linalg.solve(x.T @ x + ridge, x.T @ y), mean


def _accuracy(images: np.ndarray, labels: np.ndarray, weights: np.ndarray,
              mean: np.ndarray) -> float:
    if len(labels) == 0:
        return 0.0
    features = images.reshape(len(images), -1).astype(np.float64) - mean
    x = np.hstack([features, np.ones((len(features), 1))])
    return float(np.mean((x @ weights).argmax(axis=1) == labels))

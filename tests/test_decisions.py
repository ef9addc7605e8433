"""Choices made from the data before training: whether a mirror keeps the label
(autofit/data/mirror.py), said with its evidence, and the space's knobs pinned by it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from autofit import Budget, models, run
from autofit.data import mirror
from autofit.data.dataset import load
from autofit.models import DataShape
from autofit.presets import preset
from autofit.records import Decision, Summary
from autofit.search import decided, steps
from autofit.search.space import SearchSpace

SIDE = 32


def _npz(path: Path, make, classes: int, per_class: int = 150, seed: int = 0) -> Path:
    """A .npz of 32x32 RGB images, `make(label, rng)` drawing one of class `label`."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label in range(classes):
        for _ in range(per_class):
            xs.append(make(label, rng))
            ys.append(label)
    x, y = np.stack(xs).astype(np.uint8), np.array(ys, dtype=np.int64)
    order = rng.permutation(len(y))
    cut = len(y) * 4 // 5
    np.savez(path, x_train=x[order[:cut]], y_train=y[order[:cut]], x_test=x[order[cut:]],
             y_test=y[order[cut:]])
    return path


def _arrow(label: int, rng: np.random.Generator) -> np.ndarray:
    """Three classes told apart by where a bright bar is: the left third, the right third (a
    mirror swaps those two), or both."""
    image = rng.integers(0, 60, (SIDE, SIDE, 3))
    top = int(rng.integers(2, SIDE - 12))
    cols = {0: [slice(2, 10)], 1: [slice(SIDE - 10, SIDE - 2)],
            2: [slice(2, 10), slice(SIDE - 10, SIDE - 2)]}[label]
    for col in cols:
        image[top:top + 10, col] = 230
    return image


def _colour(label: int, rng: np.random.Generator) -> np.ndarray:
    """Three classes told apart by the colour of a blob that sits anywhere: a mirror keeps the
    label."""
    image = rng.integers(0, 60, (SIDE, SIDE, 3))
    top, left = (int(v) for v in rng.integers(2, SIDE - 12, 2))
    image[top:top + 10, left:left + 10, label] = 230
    return image


def _noise(label: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (SIDE, SIDE, 3))


@pytest.fixture(scope="module")
def arrows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _npz(tmp_path_factory.mktemp("mirror") / "arrows.npz", _arrow, 3)


def test_a_mirror_that_swaps_classes_pins_hflip_and_the_mirror_view_off(arrows: Path):
    decision = mirror.decide(load(arrows, 0, 2), 0)
    assert decision.pinned == {"hflip": False, "tta": False}
    assert decision.measured["probe_accuracy"] > 0.9  # the probe sees the classes...
    # ...and the mirrors of two of them as each other: only the third, both bars, survives,
    # a third right as chance is
    assert decision.measured["kept"] < 0.1
    assert "a mirror changes the label here" in decision.evidence
    assert f"{decision.measured['mirrored_accuracy']:.3f} on their mirrors" in decision.evidence


def test_a_mirror_that_keeps_labels_pins_nothing(tmp_path: Path):
    decision = mirror.decide(load(_npz(tmp_path / "colour.npz", _colour, 3), 0, 2), 0)
    assert decision.pinned == {} and decision.measured["kept"] > 0.8
    assert "a mirror keeps the label here" in decision.evidence


def test_the_embedded_digits_are_judged_mirror_sensitive():
    decision = mirror.decide(load(None, 0, 2), 0)
    assert decision.pinned == {"hflip": False, "tta": False}
    assert 0 < decision.measured["kept"] < mirror.MIRROR_KEEPS


def test_a_probe_at_chance_decides_nothing(tmp_path: Path):
    decision = mirror.decide(load(_npz(tmp_path / "noise.npz", _noise, 4), 0, 2), 0)
    assert decision.pinned == {} and "mirroring not judged" in decision.evidence
    assert decision.measured["probe_accuracy"] - decision.measured["chance"] < mirror.MIN_LEAD


def test_pinned_knobs_hold_in_every_draw_and_in_the_prior():
    space = SearchSpace.load(preset("search_spaces", "default"))
    assert len(space.training["hflip"].choices) == 2  # the shipped space searches it
    decision = Decision(name="mirror", pinned={"hflip": False, "tta": False}, evidence="",
                        measured={})
    narrowed = decided.pinned(space, [decision])
    assert narrowed.training["hflip"].choices == [False]
    assert narrowed.training["tta"].choices == [False]
    assert narrowed.first is not None and narrowed.first.training["hflip"] is False
    assert narrowed.first.training["tta"] is False
    assert decided.pinned(space, [decision.model_copy(update={"pinned": {}})]) is space


def test_a_run_trains_without_mirrors_where_the_data_says_so(arrows: Path, tmp_path: Path):
    result = run(arrows, Budget(minutes=0.5, max_params="100k"), out=tmp_path / "run",
                 seed=0, quiet=True)
    summary = Summary.read(result.run_dir / "summary.json")
    assert summary is not None
    assert [d.name for d in summary.decisions] == ["mirror", "resolution", "lr", "price", "batch"]
    assert summary.decisions[0].pinned == {"hflip": False, "tta": False}
    assert summary.best_config is not None
    assert summary.best_config.recipe.hflip is False and summary.best_config.recipe.tta is False
    log = (result.run_dir / "run.log").read_text()
    assert "a mirror changes the label here" in log
    # the search ran, and every trial took the batch its refit's planned images call for
    assert summary.plan is not None and summary.plan.searched and summary.trials
    assert summary.plan.cost is not None  # the search's plan prices at the checked scale
    assert summary.plan.cost.scale == summary.decisions[3].measured["scale"]
    assert "plan: the training loader (dali-cpu) takes " in log
    assert "; priced by timing the planned model alone: fastnet" in log
    assert "every trial's batch is capped the same way" in log
    with open(result.run_dir / "leaderboard.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        arch = dict(part.split("=") for part in row["arch"].split())
        work = models.count_work(row["family"], {k: int(v) for k, v in arch.items()},
                                 DataShape(3, SIDE, SIDE, 3))
        images, batch = summary.plan.images_for(work), int(row["batch_size"])
        fewest = steps.fewest_steps(row["optimizer"])
        assert images is not None and (batch <= steps.MIN_BATCH
                                       or images / batch >= fewest), row

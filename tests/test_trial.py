import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from autofit import models
from autofit.models import Classifier, DataShape
from autofit.pipeline import BatchLoader
from autofit.space import Recipe
from autofit.trial import WARMUP, lr_factor, train

RECIPE = Recipe(batch_size=32, lr=0.1, weight_decay=5e-4)


def _data(n=256, size=8):
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    x = rng.integers(0, 60, (n, size, size, 1), dtype=np.uint8)
    x[y == 1, : size // 2] += 150  # class 1: bright top half
    return x, y


def _model(size=8):
    shape = DataShape(1, size, size, 2)
    return Classifier(models.build_for("resnet", {"depth": 8, "width": 8}, shape), [0.3], [0.3])


def test_lr_schedule_warms_up_then_anneals_to_zero():
    assert lr_factor(0.0) == 0.0 and lr_factor(WARMUP) == pytest.approx(1.0)
    assert lr_factor(1.0) == 0.0 and lr_factor(1.5) == 0.0
    values = [lr_factor(p / 100) for p in range(int(WARMUP * 100), 101)]
    assert values == sorted(values, reverse=True)


def test_schedule_in_steps_completes_and_learns():
    x, y = _data()
    torch.manual_seed(0)
    model = _model()
    reports = []
    final = train(model, BatchLoader(x, y, 32, train=True), RECIPE, stop_at=time.time() + 60,
                  total_steps=48, val=BatchLoader(x, y, 64, train=False),
                  report=lambda p, state: reports.append(p))
    assert final.state == "completed" and final.steps == 48 and final.epoch == 6.0
    assert [r.epoch for r in reports[:-1]] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert reports[-1].state == "completed" and final.val_accuracy > 0.9


def test_hard_stop_is_kept():
    x, y = _data(2048, size=32)
    model = _model(size=32)
    start = time.time()
    final = train(model, BatchLoader(x, y, 64, train=True), RECIPE, stop_at=start + 1.5,
                  total_seconds=1000, val=BatchLoader(x, y, 256, train=False))
    assert final.state == "deadline" and final.steps > 0
    assert time.time() - start < 1.5 + 1.0  # at most one step and a cut-short evaluation


def test_time_schedule_ends_on_time():
    x, y = _data()
    start = time.time()
    final = train(_model(), BatchLoader(x, y, 32, train=True), RECIPE, stop_at=start + 60,
                  total_seconds=1.0)
    assert final.state == "completed" and 1.0 <= final.train_seconds < 1.5
    assert math.isnan(final.val_accuracy)


class _NaNNet(nn.Module):
    """Fault injection: a network whose output turns NaN."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return (x.flatten(1)[:, :2] * self.w) * float("nan")


def test_nan_loss_stops_as_diverged():
    x, y = _data()
    final = train(_NaNNet(), BatchLoader(x, y, 32, train=True), RECIPE, stop_at=time.time() + 60,
                  total_steps=100)
    assert final.state == "diverged" and final.steps == 1

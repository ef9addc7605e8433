import math
import time

import pytest
import torch
from conftest import NaNNet, two_class

from autofit import models
from autofit.config import Recipe
from autofit.data.pipeline import BatchLoader
from autofit.models import Classifier, DataShape
from autofit.train.loop import train
from autofit.train.optim import WARMUP, lr_factor

RECIPE = Recipe(batch_size=32, lr=0.1, weight_decay=5e-4)




def _model(size=8):
    shape = DataShape(1, size, size, 2)
    return Classifier(models.build_for("resnet", {"depth": 8, "width": 8}, shape), [0.3], [0.3])


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_lr_schedule_warms_up_then_anneals_to_zero(schedule):
    assert lr_factor(0.0, schedule) == 0.0
    assert lr_factor(WARMUP / 2, schedule) == pytest.approx(0.5)
    assert lr_factor(WARMUP, schedule) == pytest.approx(1.0)
    assert lr_factor(1.0, schedule) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(1.5, schedule) == pytest.approx(0.0, abs=1e-12)
    values = [lr_factor(p / 100, schedule) for p in range(int(WARMUP * 100), 101)]
    assert values == sorted(values, reverse=True)
    assert lr_factor(0.99, schedule) < 0.02  # annealed to ~0 by the end of the allotment


def test_cosine_holds_the_peak_longer_than_onecycle():
    assert lr_factor(0.3, "cosine") > lr_factor(0.3, "onecycle")
    assert lr_factor(0.55, "cosine") == pytest.approx(lr_factor(0.55, "onecycle"))  # midpoint
    assert lr_factor(0.8, "cosine") < lr_factor(0.8, "onecycle")


def test_schedule_in_steps_completes_and_learns():
    x, y = two_class()
    torch.manual_seed(0)
    model = _model()
    reports = []
    final = train(model, BatchLoader(x, y, 32, train=True), RECIPE, stop_at=time.time() + 60,
                  total_steps=48, val=BatchLoader(x, y, 64, train=False),
                  report=lambda p, state: reports.append(p))
    assert final.state == "completed" and final.steps == 48 and final.epoch == 6.0
    assert [r.epoch for r in reports[:-1]] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert reports[-1].state == "completed" and final.val_accuracy > 0.9


def test_a_batch_capped_at_the_data_scales_the_learning_rate_down_with_it():
    """40 images cannot fill a batch of 160, and the recipe's lr 0.4 is for batches of 160:
    the batch of 40 trains at a quarter of it, weight for weight as a recipe for batches of 40
    at lr 0.1 does."""
    x, y = two_class(40)

    def weights(recipe: Recipe) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = _model()
        train(model, BatchLoader(x, y, recipe.batch_size, train=True, seed=0), recipe,
              stop_at=time.time() + 60, total_steps=6)
        return [p.detach().clone() for p in model.parameters()]

    capped = weights(RECIPE.model_copy(update={"batch_size": 160, "lr": 0.4}))
    same = weights(RECIPE.model_copy(update={"batch_size": 40, "lr": 0.1}))
    unscaled = weights(RECIPE.model_copy(update={"batch_size": 40, "lr": 0.4}))
    assert all(torch.equal(a, b) for a, b in zip(capped, same, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(capped, unscaled, strict=True))


def test_hard_stop_is_kept():
    x, y = two_class(2048, size=32)
    model = _model(size=32)
    start = time.time()
    final = train(model, BatchLoader(x, y, 64, train=True), RECIPE, stop_at=start + 1.5,
                  total_seconds=1000, val=BatchLoader(x, y, 256, train=False))
    assert final.state == "deadline" and final.steps > 0
    assert time.time() - start < 1.5 + 1.0  # at most one step and a cut-short evaluation


def test_time_schedule_ends_on_time():
    x, y = two_class()
    start = time.time()
    final = train(_model(), BatchLoader(x, y, 32, train=True), RECIPE, stop_at=start + 60,
                  total_seconds=1.0)
    assert final.state == "completed" and 1.0 <= final.train_seconds < 1.5
    assert math.isnan(final.val_accuracy)




def test_nan_loss_stops_as_diverged():
    x, y = two_class()
    final = train(NaNNet(), BatchLoader(x, y, 32, train=True), RECIPE, stop_at=time.time() + 60,
                  total_steps=100)
    assert final.state == "diverged" and final.steps == 1


@pytest.mark.parametrize("ema", [False, True])
def test_a_whitened_stem_is_fitted_in_training_stays_frozen_and_reaches_the_ema(ema):
    """The whitening filters are fitted by the first step and never trained after it; with EMA
    the averaged weights, what is evaluated and exported, hold the same fitted filters."""
    x, y = two_class()
    torch.manual_seed(0)
    shape = DataShape(1, 8, 8, 2)
    net = models.build_for("fastnet", {"width": 8, "depth": 2, "whiten": 2}, shape)
    model = Classifier(net, [0.3], [0.3])
    recipe = RECIPE.model_copy(update={"ema": ema})
    untrained = net.stem[0].conv.weight.clone()
    fitted = []
    net.stem[0].register_forward_hook(lambda m, i, o: fitted.append(m.conv.weight.clone()))
    final = train(model, BatchLoader(x, y, 32, train=True), recipe,
                  stop_at=time.time() + 60, total_steps=24, val=BatchLoader(x, y, 64, train=False))
    assert net.stem[0].fitted and not torch.equal(fitted[0], untrained)
    assert all(torch.equal(w, fitted[0]) for w in fitted)  # frozen from the first step on
    assert torch.equal(net.stem[0].conv.weight, fitted[0]) and final.val_accuracy > 0.9

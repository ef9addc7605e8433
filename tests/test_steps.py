"""The prior's batch from the images its refit will see (autofit/search/steps.py): kept where
they make enough steps, halved with its learning rate where they do not, never under the
floor; the model is the same."""

from __future__ import annotations

import pytest

from autofit.models import DataShape
from autofit.presets import preset
from autofit.search import steps
from autofit.search.space import SearchSpace

SHAPE = DataShape(3, 32, 32, 10)


def _prior():
    config = SearchSpace.load(preset("search_spaces", "default")).first_config(SHAPE, 2_000_000)
    assert config is not None and config.recipe.batch_size == 256
    return config


def test_a_refit_with_enough_images_keeps_the_prior_batch():
    prior = _prior()
    images = 256 * steps.TARGET_STEPS
    kept, decision = steps.batch_for(prior, images)
    assert kept == prior and decision.pinned == {} and decision.name == "batch"
    assert decision.measured["steps"] == steps.TARGET_STEPS
    assert "batch 256 kept" in decision.evidence


@pytest.mark.parametrize(("images", "batch"), [(256 * steps.TARGET_STEPS - 1, 128),
                                                (128 * steps.TARGET_STEPS - 1, 64),
                                                (40 * steps.TARGET_STEPS, 64)])
def test_fewer_images_halve_the_batch_and_scale_the_learning_rate(images: float, batch: int):
    prior = _prior()
    scaled, decision = steps.batch_for(prior, images)
    assert scaled.recipe.batch_size == batch == decision.pinned["batch_size"]
    assert scaled.recipe.lr == pytest.approx(prior.recipe.lr * batch / 256)
    assert decision.pinned["lr"] == scaled.recipe.lr
    assert scaled.arch == prior.arch and scaled.params == prior.params
    assert scaled.recipe.model_copy(update={"batch_size": 256, "lr": prior.recipe.lr}) == \
        prior.recipe  # nothing else changed
    assert images / batch >= steps.TARGET_STEPS or batch == steps.MIN_BATCH
    assert f"batch {batch}, learning rate" in decision.evidence


def test_the_batch_stops_at_the_floor():
    scaled, decision = steps.batch_for(_prior(), 1000.0)
    assert scaled.recipe.batch_size == steps.MIN_BATCH
    assert decision.measured["steps"] < steps.TARGET_STEPS

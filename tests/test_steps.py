"""The prior's and every trial's batch from the images its refit will see
(autofit/search/steps.py): kept where they make enough steps, halved with its learning rate
where they do not, never under the floor; the model is the same."""

from __future__ import annotations

import json
import time

import pytest

from autofit import models
from autofit.budget import Budget, Clock, Cost, Plan
from autofit.models import DataShape
from autofit.presets import preset
from autofit.search import steps
from autofit.search.searcher import SpaceSearcher
from autofit.search.space import SearchSpace
from autofit.search.trainable import parse_config

SHAPE = DataShape(3, 32, 32, 10)
COST = Cost(s_per_mac=2e-11, s_per_act=2e-9, reference_s=1e-3)


def _prior():
    config = SearchSpace.load(preset("search_spaces", "default")).first_config(SHAPE, 2_000_000)
    assert config is not None and config.recipe.batch_size == 256
    return config


TARGET = steps.target_steps(_prior().recipe.optimizer)
FEWEST = steps.fewest_steps(_prior().recipe.optimizer)


def test_a_refit_with_enough_images_keeps_the_prior_batch():
    prior = _prior()
    images = 256 * TARGET
    kept, decision = steps.batch_for(prior, images)
    assert kept == prior and decision.pinned == {} and decision.name == "batch"
    assert decision.measured["steps"] == TARGET
    assert "batch 256 kept" in decision.evidence


def test_a_refit_within_the_slack_of_the_target_keeps_the_prior_batch():
    """A plan 2% short of the target (a 10-minute CIFAR-10 refit's 1,952 steps at 256) is
    within the plan's error: the batch stays, and the log says the target and the slack."""
    prior = _prior()
    kept, decision = steps.batch_for(prior, 256 * TARGET * 0.976)
    assert kept == prior and decision.pinned == {}
    assert f"at least {TARGET:,} for muon, less 10% for the plan's error" in decision.evidence
    halved, _ = steps.batch_for(prior, 256 * FEWEST - 1)
    assert halved.recipe.batch_size == 128


@pytest.mark.parametrize(("images", "batch"), [(256 * FEWEST - 1, 128),
                                                (128 * FEWEST - 1, 64),
                                                (40 * TARGET, 64)])
def test_fewer_images_halve_the_batch_and_scale_the_learning_rate(images: float, batch: int):
    prior = _prior()
    scaled, decision = steps.batch_for(prior, images)
    assert scaled.recipe.batch_size == batch == decision.pinned["batch_size"]
    assert scaled.recipe.lr == pytest.approx(prior.recipe.lr * batch / 256)
    assert decision.pinned["lr"] == scaled.recipe.lr
    assert scaled.arch == prior.arch and scaled.params == prior.params
    assert scaled.recipe.model_copy(update={"batch_size": 256, "lr": prior.recipe.lr}) == \
        prior.recipe  # nothing else changed
    assert images / batch >= FEWEST or batch == steps.MIN_BATCH
    assert f"batch {batch}, learning rate" in decision.evidence


def test_the_batch_stops_at_the_floor():
    scaled, decision = steps.batch_for(_prior(), 1000.0)
    assert scaled.recipe.batch_size == steps.MIN_BATCH
    assert decision.measured["steps"] < FEWEST


def test_every_trial_of_a_search_takes_the_batch_its_refit_would_call_for(tmp_path):
    """The searcher caps each draw's batch from the images its refit would see (the plan's
    refit and trial seconds at the draw's price), its learning rate scaled with it; without a
    plan its draws are as drawn."""
    budget = Budget(minutes=5, max_params="2M", search_share=0.5)
    plan = Plan.make(budget, Clock(budget.seconds), 300, n_train=3_400, cost=COST)
    assert plan.searched and plan.trial_s > 0
    journal = tmp_path / "journal.json"
    journal.write_text(json.dumps({"search_clock": {"stop_suggesting_at": time.time() + 3600}}))
    space = SearchSpace.load(preset("search_spaces", "default"))
    capped = SpaceSearcher(space, SHAPE, 2_000_000, 0, journal, plan)
    drawn = SpaceSearcher(space, SHAPE, 2_000_000, 0, journal)
    for number in range(1, 7):
        config, raw = (parse_config(s.suggest(str(number)))[1] for s in (capped, drawn))
        assert config.arch == raw.arch and config.family == raw.family
        work = models.count_work(config.family, config.arch, SHAPE)
        images = (plan.refit_s + plan.trial_s) / COST.seconds(work)
        assert plan.images_for(work) == pytest.approx(images)
        assert config == steps.batch_for(raw, images)[0]
        assert config.recipe.lr == pytest.approx(
            raw.recipe.lr * config.recipe.batch_size / raw.recipe.batch_size)
        assert config.recipe.batch_size < raw.recipe.batch_size  # 3,400 images in 5 minutes


def test_a_fine_tuned_network_and_an_unpriced_plan_keep_their_batch():
    prior = _prior()
    budget = Budget(minutes=5, max_params="2M")
    unpriced = Plan.make(budget, Clock(budget.seconds), 300, n_train=3_400)
    assert steps.fit_batch(prior, unpriced, SHAPE) == (prior, None)
    space = SearchSpace.load(preset("search_spaces", "pretrained"))
    tuned = space.first_config(DataShape(3, 64, 64, 10), 30_000_000)
    assert tuned is not None
    priced = Plan.make(budget, Clock(budget.seconds), 300, n_train=3_400, cost=COST)
    assert steps.fit_batch(tuned, priced, DataShape(3, 64, 64, 10)) == (tuned, None)


def test_muon_keeps_a_larger_batch_than_sgd_for_the_same_images():
    """Muon's steps have a set size however noisy the gradient, so it takes fewer, larger
    batches: images that give 2,500 steps at 256 keep Muon's batch and halve SGD's."""
    muon = _prior()
    assert muon.recipe.optimizer == "muon"
    sgd = muon.model_copy(update={"recipe": muon.recipe.model_copy(update={"optimizer": "sgd"})})
    images = 256 * 2500.0
    assert steps.batch_for(muon, images)[0].recipe.batch_size == 256
    halved, decision = steps.batch_for(sgd, images)
    assert halved.recipe.batch_size == 128 and "at least 3,000 for sgd" in decision.evidence

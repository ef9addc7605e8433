"""The learning rate's scale, decided from the data by a range test (search/learning_rate.py),
and the space it scales: the prior's rate and the search's range together."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from conftest import blocks

from autofit.search import decided, learning_rate
from autofit.search.knobs import Range
from autofit.search.space import SearchSpace

SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "default.yaml"


def _space_at(factor: float) -> SearchSpace:
    """The default space with its prior's learning rate multiplied by `factor` (a fault)."""
    space = SearchSpace.load(SPACE)
    assert space.first is not None
    first = space.first.model_copy(update={"training": {
        **space.first.training, "lr": float(space.first.training["lr"]) * factor}})
    return space.model_copy(update={"first": first})


@pytest.mark.parametrize(("factor", "says"), [
    (300.0, "turning up at once, at"), (1.0, "turning up past"), (1 / 30, "finds the loss")])
def test_the_prior_rate_is_scaled_to_the_data_far_off_or_not(factor: float, says: str):
    """A prior 300x too high or 30x too low (a fault) is scaled back to where the default's
    own is, within 8x."""
    space = _space_at(factor)
    decision = learning_rate.decide(blocks(800, 32), space, 200.0, "cpu", 2, seed=0)
    scale = decision.pinned.get(decided.LR_SCALE)
    assert scale is not None, decision.evidence
    assert 1 / 8 < scale * factor < 8, decision.evidence
    assert decision.evidence.startswith(f"learning rates scaled by {scale:.3g}")
    assert says in decision.evidence
    assert "a range test (fastnet width 16, batch 64" in decision.evidence
    measured = decision.measured
    assert measured["found_lr"] == pytest.approx(measured["prior_lr"] * scale, rel=1e-3)
    scaled = decided.pinned(space, [decision])
    assert scaled.first is not None and space.first is not None
    assert scaled.first.training["lr"] == pytest.approx(space.first.training["lr"] * scale)
    old, new = space.training["lr"], scaled.training["lr"]
    assert isinstance(old, Range) and isinstance(new, Range) and new.log
    assert (new.low, new.high) == pytest.approx((old.low * scale, old.high * scale))
    prior = scaled.first_config(blocks(800, 32).shape, 2_000_000)
    assert prior is not None and prior.recipe.lr == pytest.approx(scaled.first.training["lr"])


def test_a_prior_within_the_band_of_the_rate_found_is_kept():
    data = blocks(800, 32)
    found = learning_rate.decide(data, _space_at(1.0), 200.0, "cpu", 2, seed=0)
    scale = found.pinned.get(decided.LR_SCALE, 1.0)
    decision = learning_rate.decide(data, _space_at(scale * 1.2), 200.0, "cpu", 2, seed=0)
    assert decision.pinned == {}, decision.evidence
    assert 0.5 <= decision.measured["scale"] <= 2.0
    assert decision.evidence.startswith(
        f"learning rate {decision.measured['prior_lr']:.3g} at batch 64 kept: a range test")
    assert decision.evidence.endswith("within 2x of the prior's")


def test_the_range_test_stops_where_the_loss_diverges():
    data = blocks(800, 32)
    recipe = _space_at(1.0).first_config(data.shape, 2_000_000).recipe
    lrs, losses = learning_rate.range_test(data, recipe.model_copy(update={"lr": 30.0}), "cpu",
                                           2, 0, 1, stop_at=time.time() + 60)
    assert len(lrs) == learning_rate.STEPS and len(losses) < learning_rate.STEPS
    smooth = learning_rate._smoothed(losses)
    assert not np.isfinite(smooth[-1]) or smooth[-1] > learning_rate.DIVERGED * smooth.min()


@pytest.mark.parametrize(("budget_s", "says"), [
    (60.0, "learning rate not tested: 3% of the budget is 1.8s, under the 3s the range test"),
])
def test_a_short_budget_tests_nothing(budget_s: float, says: str):
    decision = learning_rate.decide(blocks(64, 32), SearchSpace.load(SPACE), budget_s, "cpu",
                                    2, seed=0)
    assert decision.pinned == {} and decision.evidence.startswith(says), decision.evidence


def test_a_choice_of_rates_scales_each():
    space = SearchSpace.load(SPACE)
    space = space.model_copy(update={"training": {
        **space.training, "lr": decided.Choice(choices=[0.1, 0.4])}})
    decision = learning_rate.Decision(name="lr", pinned={decided.LR_SCALE: 0.5}, evidence="",
                                      measured={})
    assert decided.pinned(space, [decision]).training["lr"].values() == [0.05, 0.2]


def test_a_test_cut_short_before_the_loss_turns_decides_nothing(monkeypatch: pytest.MonkeyPatch):
    real = learning_rate.range_test

    def slow(*args, stop_at: float):  # a machine so slow the test's time runs out at once
        return real(*args, stop_at=time.time())

    monkeypatch.setattr(learning_rate, "range_test", slow)
    decision = learning_rate.decide(blocks(800, 32), SearchSpace.load(SPACE), 200.0, "cpu", 2,
                                    seed=0)
    assert decision.pinned == {} and decision.measured["steps"] == 1.0
    assert decision.evidence.startswith("learning rate not judged: a range test"), \
        decision.evidence


def test_a_muon_prior_is_range_tested_on_sgd_whose_turn_the_rule_was_measured_on():
    data = blocks(800, 32)
    recipe = _space_at(1.0).first_config(data.shape, 2_000_000).recipe
    assert recipe.optimizer == "muon"
    tested = [learning_rate.range_test(data, r, "cpu", 2, 0, 1, stop_at=time.time() + 60)
              for r in (recipe, recipe.model_copy(update={"optimizer": "sgd"}))]
    assert tested[0] == tested[1]

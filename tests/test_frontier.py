"""The compute frontier sizes the model from the time, the data and this machine's measured
prices: it matches the grid it was fitted on, and the plan's compute cap follows it."""

from __future__ import annotations

import numpy as np
import pytest

from autofit import models
from autofit.budget import MIN_REFIT_IMAGES, Budget, Clock, Cost, Plan
from autofit.models import DataShape
from autofit.presets import preset
from autofit.records import Decision
from autofit.search import frontier
from autofit.search.space import SearchSpace

CIFAR = DataShape(3, 32, 32, 10)
FRONTIER = frontier.load()
CIFAR_POINTS = [p for p in FRONTIER.points
                if p.dataset == "cifar10-jpg" and p.unique == 50_000]


def grid_cost(points: list[frontier.Point] = CIFAR_POINTS) -> Cost:
    """The grid machine's prices (AMD EPYC, float32), fitted to the seconds per image measured
    at these points: the frontier's choices can be compared with what that machine measured."""
    work = np.array([models.count_work(frontier.FAMILY, {**frontier.ARCH, "width": p.width},
                                       CIFAR) for p in points], dtype=float)
    prices, *_ = np.linalg.lstsq(work, np.array([p.image_s for p in points]), rcond=None)
    assert (prices > 0).all()
    return Cost(s_per_mac=float(prices[0]), s_per_act=float(prices[1]),
                reference_s=float(np.median([p.image_s for p in points])))


def test_the_packaged_frontier_fits_the_grid_it_was_measured_on():
    assert len(CIFAR_POINTS) >= 12 and FRONTIER.command.startswith("python bench/frontier.py")
    assert FRONTIER.rms < 0.006
    for p in FRONTIER.points:
        law = FRONTIER.law(dataset=p.dataset)
        assert law.dataset == p.dataset
        assert FRONTIER.accuracy(law, p.macs, p.epochs * p.unique, p.unique) == pytest.approx(
            p.fitted, abs=1e-4)
        assert abs(p.fitted - p.accuracy) < 0.015, p  # worst: 1.3 points (3 epochs; 5k images)


def test_at_each_measured_budget_the_frontier_picks_near_the_measured_best():
    """Points trained for about the same seconds on one machine compete (a `group` of the
    grid, bench/frontier.py): the width the frontier puts first for those seconds at that
    machine's measured prices is within a grid step of the one that scored best."""
    groups: dict[int, list[frontier.Point]] = {}
    for p in CIFAR_POINTS:
        groups.setdefault(p.group, []).append(p)
    compared = [g for g in groups.values() if len(g) >= 3]
    assert len(compared) >= 3, {k: [(p.width, p.epochs) for p in g] for k, g in groups.items()}
    for points in compared:
        cost = grid_cost(points)
        seconds = float(np.median([cost.seconds(models.count_work(
            frontier.FAMILY, {**frontier.ARCH, "width": p.width}, CIFAR)) * p.epochs * p.unique
            for p in points]))
        measured = sorted(p.width for p in points)
        best = max(points, key=lambda p: p.accuracy).width
        chosen = frontier.size(FRONTIER, cost, CIFAR, 50_000, seconds, 2_000_000,
                                 dataset="cifar10-jpg")
        step = measured.index(best)
        near = measured[max(step - 1, 0):step + 2]
        assert min(near) <= chosen.width <= max(near), (seconds, chosen, best, measured)


def test_more_time_or_a_faster_machine_buys_a_wider_model():
    cost = grid_cost()
    sizes = [frontier.size(FRONTIER, cost, CIFAR, 50_000, s, 2_000_000) for s in (60, 300, 1800)]
    assert [s.width for s in sizes] == sorted(s.width for s in sizes)
    assert sizes[0].width < sizes[-1].width and sizes[0].images < sizes[-1].images
    faster = Cost(s_per_mac=cost.s_per_mac / 4, s_per_act=cost.s_per_act / 4,
                  reference_s=cost.reference_s / 4)
    assert frontier.size(FRONTIER, faster, CIFAR, 50_000, 300, 2_000_000).width > sizes[1].width
    capped = frontier.size(FRONTIER, faster, CIFAR, 50_000, 1800, 100_000)
    assert models.count_for(frontier.FAMILY, {**frontier.ARCH, "width": capped.width},
                            CIFAR) <= 100_000


def test_a_small_dataset_is_not_asked_for_a_hundred_epochs():
    """2,000 images for a 1-minute refit: the old 250,000-image floor asked for 125 epochs and
    took the narrowest model; repeated passes are worth less, so the frontier trains fewer
    epochs of a wider model than the same seconds on CIFAR-10's 50,000 would."""
    cost = grid_cost()
    small = frontier.size(FRONTIER, cost, CIFAR, 2_000, 40, 2_000_000)
    assert small.epochs < 125 and small.width > frontier.WIDTHS[0]
    assert small.width >= frontier.size(FRONTIER, cost, CIFAR, 50_000, 40, 2_000_000).width


def test_the_plan_caps_compute_at_the_width_the_frontier_puts_first():
    cost = grid_cost()
    space = SearchSpace.load(preset("search_spaces", "default"))
    budget = Budget(minutes=10, max_params="2M")  # min_epochs auto
    images = frontier.refit_images(set(space.families), CIFAR, 50_000, 2_000_000, cost)
    plan = Plan.make(budget, Clock(budget.seconds), 10_000, n_train=50_000, cost=cost,
                     prior=True, test_passes=6, frontier=images)
    sizing = frontier.size(FRONTIER, cost, CIFAR, 50_000, plan.refit_s + plan.trial_s, 2_000_000)
    assert plan.max_image_s == pytest.approx(sizing.image_s)
    assert plan.sized.startswith(f"the compute frontier puts fastnet width {sizing.width} ")
    prior = space.first_config(CIFAR, 2_000_000, plan.cap)
    assert prior is not None and prior.arch["width"] == sizing.width
    assert Plan.make(budget, Clock(budget.seconds), 10_000, n_train=50_000,
                     cost=cost).cap is None  # auto, and no frontier given: no cap
    fixed = Budget(minutes=10, max_params="2M", min_epochs=20)
    floor = Plan.make(fixed, Clock(fixed.seconds), 10_000, n_train=50_000, cost=cost,
                      prior=True, test_passes=6, frontier=images)
    assert floor.max_image_s == pytest.approx((floor.refit_s + floor.trial_s) / 1_000_000)
    assert "min_epochs 20" in floor.sized
    # the split is not the frontier's: it spends all the time it is given on its width, so a
    # split by its images gave the refit the most on 96 images and skipped their search
    small = frontier.refit_images(set(space.families), CIFAR, 1_400, 2_000_000, cost)
    cheap = [Plan.make(b, Clock(600.0), 300, n_train=1_400, cost=cost, prior=True,
                       frontier=small) for b in (budget, fixed)]
    assert cheap[0].search_share == cheap[1].search_share == pytest.approx(0.7)
    assert cheap[0].searched and cheap[0].split == cheap[1].split


@pytest.mark.parametrize("shape", [CIFAR, DataShape(1, 28, 28, 10)])
def test_the_width_the_frontier_puts_first_is_the_one_the_prior_trains_at_every_budget(shape):
    """The frontier's width sits exactly on the cap it sets; a price rounded a hair over it
    (one budget in 18) had left the 2-minute Fashion-MNIST refit a width narrower."""
    cost, space = grid_cost(), SearchSpace.load(preset("search_spaces", "default"))
    images = frontier.refit_images(set(space.families), shape, 50_000, 2_000_000, cost)
    for seconds in np.linspace(60, 1200, 60):
        budget = Budget(minutes=float(seconds) / 60, max_params="2M")
        plan = Plan.make(budget, Clock(budget.seconds), 10_000, n_train=50_000, cost=cost,
                         prior=True, frontier=images)
        width = int(plan.sized.split("fastnet width ")[1].split()[0])
        prior = space.first_config(shape, 2_000_000, plan.cap)
        assert prior is not None and prior.arch["width"] == max(width, 8), (seconds, width)


def test_a_pretrained_space_keeps_a_fixed_floor():
    images = frontier.refit_images({"pretrained"}, CIFAR, 3_000, 2_000_000, grid_cost())
    seen, why = images(100.0)
    assert seen == max(frontier.FINE_TUNE_EPOCHS * 3_000, MIN_REFIT_IMAGES)
    assert "pretrained" in why


def test_min_epochs_reads_auto_and_numbers():
    assert Budget(min_epochs="auto").min_epochs is None
    assert Budget(min_epochs=10).min_epochs == 10
    with pytest.raises(ValueError):
        Budget(min_epochs=-1)


def test_the_law_is_the_one_of_the_dataset_a_linear_probe_finds_nearest():
    laws = FRONTIER.laws
    assert len(laws) >= 2 and [law.probe for law in laws] == sorted(law.probe for law in laws)
    for law in laws:
        assert FRONTIER.law(probe=law.probe + 0.01) == law == FRONTIER.law(dataset=law.dataset)
    assert FRONTIER.law() == laws[0]  # nothing probed
    measured = {"probe_accuracy": 0.82, "chance": 0.1, "val_images": 2000.0}
    decision = Decision(name="mirror", pinned={}, evidence="", measured=measured)
    assert frontier.linear_probe([decision]) == pytest.approx(0.8)
    unjudged = decision.model_copy(update={"measured": {**measured, "val_images": 0.0}})
    assert frontier.linear_probe([unjudged]) is None
    sized = frontier.size(FRONTIER, grid_cost(), CIFAR, 50_000, 300, 2_000_000, probe=0.8)
    assert sized.law == FRONTIER.law(probe=0.8).dataset and "linear probe" in sized.describe()


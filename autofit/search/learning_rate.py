"""The learning rate's scale, from a range test on the data (Smith 2017; fastai's lr_find).

The space's prior trains at 0.4 at batch 256, 0.1 at 64 by the batch rule (search/steps.py),
and the search draws around it; nothing there looks at the data. A range test does, in a few
seconds: a small model trains STEPS steps at batch BATCH while the rate grows geometrically
from BELOW times under the prior's to ABOVE times over it. The smoothed loss falls, flattens,
then turns up where the steps overshoot; the valley's edge (the last rate within EDGE of the
loss's fall of its minimum) was the steadiest mark between seeds (within 15%, where the
minimum itself moved 6x on the digits). The best peak rate sits EDGE_TO_PEAK under it,
measured on four datasets (bench/lr_range.py; bench/README.md, "The learning rate's scale"):
the prior at width 20, batch 64, 45 s at rates 0.025-0.4, against three range tests each,
float32 on a 2-core AMD EPYC:

    data          edges (3 seeds)   best of 0.025-0.4 (val)   edge / best
    CIFAR-10      1.69 1.90 1.79    0.2 (0.763; 0.1: 0.756)    9.0
    Fashion-MNIST 1.13 1.13 1.01    0.2 (0.922; 0.1: 0.917)    5.5
    clothing      2.39 2.01 2.01    0.2 (0.815; 0.1: 0.804)    10.6
    digits        1.51 1.60 1.90    0.1 and 0.2 (0.993)        11.8

The ratio spreads 1.4x between them (one geometric standard deviation), so a rate the test
finds within BAND (two of those) of the prior's, which longer runs chose on CIFAR-10
(bench/prior.py), does not say the prior is wrong, and it stands: on CIFAR-10 the test finds
1.75x, and at that rate the 10-minute run scored 87.40% where the prior's had 87.92% (the
hand recipe 86.23% and 86.28% in those two bench/compare.py runs). Further off, every
learning rate of the space, the prior's and the search's range, is scaled by the edge /
EDGE_TO_PEAK over the prior's rate at that batch. Where the loss is still low at the top of
the sweep, that is a floor and is taken, and where it rises from the first step a ceiling;
where a time limit cut the test first, nothing is taken.
A budget too short for MIN_S tests nothing.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from autofit.config import Recipe
from autofit.data import pipeline
from autofit.data.dataset import Dataset
from autofit.models import pretrained
from autofit.records import Decision
from autofit.search.decided import LR_SCALE
from autofit.search.space import SearchSpace
from autofit.search.steps import prior_recipe, probe_config
from autofit.train import optim, precision
from autofit.train.loop import make_model

SHARE = 0.03  # of the budget the test may take
MIN_S = 3.0  # a budget whose share is shorter decides nothing
BATCH, WIDTH = 64, 16
BELOW, ABOVE = 30.0, 300.0  # the test's rates run from the prior's / BELOW to its x ABOVE ...
PER_DECADE = 40  # ... in this many steps per tenfold (the loss turns up near 20x on photos)
STEPS = round(PER_DECADE * math.log10(BELOW * ABOVE)) + 1
SMOOTH = 0.9  # the loss's exponential smoothing per step
DIVERGED = 3.0  # the test stops once the smoothed loss is this many times its minimum
EDGE = 0.1  # the valley: within this share of the loss's fall of its minimum
EDGE_TO_PEAK = 9.0  # the valley's edge over the best peak rate, measured on four datasets
BAND = 2.0  # two of that ratio's geometric standard deviations between the datasets (1.4x)


def decide(dataset: Dataset, space: SearchSpace, budget_s: float, device: str, threads: int,
           seed: int, shrink: int = 1) -> Decision:
    """The learning-rate decision: `lr_scale` pinned to the range test's rate over the
    prior's, nothing pinned where the test could not tell; the evidence in one line."""
    share = SHARE * budget_s
    measured: dict[str, float] = {"test_s": round(share, 2)}
    if set(space.families) == {pretrained.FAMILY}:
        return Decision(name="lr", pinned={}, measured=measured, evidence=(
            "learning rate not tested: the fine-tuned networks keep their recipes' rates"))
    if share < MIN_S:
        return Decision(name="lr", pinned={}, measured=measured, evidence=(
            f"learning rate not tested: {SHARE:.0%} of the budget is {share:.1f}s, under the "
            f"{MIN_S:g}s the range test needs; the prior's rate stands"))
    recipe = prior_recipe(space, dataset.shape, BATCH)
    prior = recipe.lr
    lrs, losses = range_test(dataset, recipe, device, threads, seed, shrink,
                             stop_at=time.time() + 2 * share)
    edge, turned = _edge(_smoothed(losses))
    found = lrs[edge] / EDGE_TO_PEAK
    measured.update({"prior_lr": prior, "edge_lr": round(lrs[edge], 5),
                     "found_lr": round(found, 5), "scale": round(found / prior, 4),
                     "steps": float(len(losses))})
    test = (f"a range test (fastnet width {WIDTH}, batch {BATCH}, {len(losses)} steps, rate "
            f"{lrs[0]:.2g} to {lrs[len(losses) - 1]:.2g}) finds the loss")
    if not turned and len(losses) < STEPS:
        return Decision(name="lr", pinned={}, measured=measured, evidence=(
            f"learning rate not judged: {test} still low at {lrs[edge]:.3g} when the test "
            "was cut short; the prior's rate stands"))
    edge_is = "still low at the top of the sweep," if not turned else \
        "turning up at once, at" if edge == 0 else "turning up past"
    if 1 / BAND <= found / prior <= BAND:
        return Decision(name="lr", pinned={}, measured=measured, evidence=(
            f"learning rate {prior:.3g} at batch {BATCH} kept: {test} {edge_is} "
            f"{lrs[edge]:.3g}, so a peak of {found:.3g} ({EDGE_TO_PEAK:g}x under the turn), "
            f"within {BAND:g}x of the prior's"))
    return Decision(name="lr", pinned={LR_SCALE: round(found / prior, 4)}, measured=measured,
                    evidence=(f"learning rates scaled by {found / prior:.3g} ({prior:.3g} at "
                              f"batch {BATCH} becomes {found:.3g}): {test} {edge_is} "
                              f"{lrs[edge]:.3g}, and the best peak is {EDGE_TO_PEAK:g}x "
                              "under the loss's turn" + (" (at least)" if not turned else
                                                          " (at most)" if edge == 0 else "")))


def range_test(dataset: Dataset, recipe: Recipe, device: str, threads: int, seed: int, shrink: int,
               stop_at: float) -> tuple[list[float], list[float]]:
    """The rates of a geometric sweep around `recipe.lr` and the training loss at each step
    taken: STEPS at most, fewer where the loss diverged or `stop_at` came."""
    if recipe.optimizer == "muon":  # its knob is on SGD's scale (optim.MUON_LR_FACTOR), and
        recipe = recipe.model_copy(update={"optimizer": "sgd"})  # EDGE_TO_PEAK SGD's
    config = probe_config(dataset.shape, recipe, WIDTH, shrink)
    torch.manual_seed(seed)
    model = make_model(config, dataset.shape, *dataset.mean_std, device=device)
    model.train()
    opt = optim.build(model, recipe)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    bf16 = precision.choose(device).bf16
    own_scale = optim.peak_lr(recipe) / recipe.lr  # an adaptive optimizer's rates are smaller
    lrs = [recipe.lr / BELOW * 10 ** (i / PER_DECADE) for i in range(STEPS)]
    loader = pipeline.training_loader(dataset.data_path, dataset.x_train, dataset.y_train,
                                      recipe, seed=seed, threads=threads, device=device)
    losses: list[float] = []
    while len(losses) < STEPS:
        for x, y in loader:
            for group in opt.param_groups:
                group["lr"] = lrs[len(losses)] * own_scale
            with precision.autocast(device, bf16):
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            smooth = _smoothed(losses)
            if (not math.isfinite(losses[-1]) or smooth[-1] > DIVERGED * smooth.min()
                    or len(losses) >= STEPS or time.time() >= stop_at):
                return lrs, losses
    return lrs, losses


def _edge(smooth: np.ndarray) -> tuple[int, bool]:
    """The valley's edge: the last step whose smoothed loss is within EDGE of the way from
    the first step's down to the minimum (the last, not the first past it: a noisy bump
    inside the valley moved the first 6x between seeds on the digits); and whether the loss
    rose past that before the test ended."""
    best = float(smooth.min())
    limit = best + EDGE * (float(smooth[0]) - best)
    edge = int(np.flatnonzero(smooth <= limit).max())
    return edge, edge + 1 < len(smooth)


def _smoothed(losses: list[float]) -> np.ndarray:
    """The losses, exponentially smoothed and bias-corrected (a non-finite loss is infinite)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = SMOOTH * avg + (1 - SMOOTH) * (loss if math.isfinite(loss) else math.inf)
        out.append(avg / (1 - SMOOTH ** (i + 1)))
    return np.asarray(out)

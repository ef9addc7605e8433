"""The prior's batch size and learning rate, from the images its refit will see.

The space's prior trains at batch 256 and learning rate 0.4, set where a refit sees hundreds of
thousands of images. A short budget, or a small dataset of large photos, gives that recipe a
few hundred steps, too few to train. Measured on a 2-core AMD EPYC in float32, the prior at
width 20 for the same seconds, learning rate scaled with the batch (bench/batch_steps.py;
bench/README.md, "The clothing photos, and batch size from the steps"):

- clothing photos (3,068 at 96x128), 40 s: batch 256 (120 steps) 0.28, 64 (840) 0.82;
  120 s: 256 (389 steps) 0.80, 64 (2,737) 0.85, 32 (4,696) 0.81;
- CIFAR-10, 40 s: 256 (288 steps) 0.65, 64 (1,183) 0.72; 150 s: 256 (914) 0.825,
  128 (1,996) 0.837; width 32, 400 s: 256 (1,379) 0.858, 128 (3,737) 0.873, at 1.13 and 0.84
  ms per image (bench/results/batch-cifar-400s.json).

In float32 on a CPU a smaller batch costs no more per image (at 96x128 it costs less). Under
bf16 on a 2-core Xeon with AMX it does: batch 64 trained at 0.81-0.83x the images/s of batch
256 at widths 12 and 24, 0.95x at width 40 (bench/results/precision-batch.json), still four
times the steps for the images. So the prior takes the largest batch that gives its refit
TARGET_STEPS steps, not under MIN_BATCH, and scales the learning rate with it (Goyal et al.
2017); the plan prices the model by timing it at that batch (search/phase.py), so the cost
lands in the width it picks. Every trial of a search takes the same cap, from the images its
refit would see: at 5 minutes on the clothing photos the search's first trial, the prior at
batch 256, reached 0.36 validation accuracy in its 65 s, and the run 50.00%.

Muon, whose filter steps have the same size however noisy the gradient, wants fewer, larger
batches: on CIFAR-10 in bf16 on a 2-core Xeon with AMX, width 40 for 300 s, batch 512 (684
steps) 0.870, 256 (2,078 steps) 0.889, 128 (3,684 steps) 0.885, at 0.86, 0.56 and 0.64 ms
per image (bench/results/batch-muon-cifar-300s.json). So Muon's target is MUON_TARGET_STEPS.

A batch is halved only where its steps fall short of the target by more than STEP_SLACK: the
planned images are an estimate (a 10-minute CIFAR-10 refit planned 10.0 epochs and trained
9.14), and in bf16 the halved batch costs each image more (13% at width 40, above). That refit
planned 1,952 steps at 256, 2% short of 2,000, so it trained width 48 at 128 and scored 89.40%.
"""

from __future__ import annotations

from autofit import models
from autofit.budget import Plan
from autofit.config import Recipe, TrialConfig
from autofit.models import DataShape, pretrained
from autofit.records import Decision
from autofit.search import frontier
from autofit.search.space import SearchSpace

TARGET_STEPS = 3000  # the steps a refit should take at least: 2,000-3,700 beat 900-1,400
MUON_TARGET_STEPS = 2000  # 256 at 2,078 steps beat 128 at 3,684; 512 at 684 lost
STEP_SLACK = 0.9  # halve only under 90% of the target: within the plan's error, keep
MIN_BATCH = 64  # 32 lost to 64 at 120 s on the clothing photos (0.81 against 0.85)


def at_batch(recipe: Recipe, batch: int) -> Recipe:
    """`recipe` at `batch`, its learning rate scaled by the same factor (the linear rule)."""
    return recipe.model_copy(update={"batch_size": batch,
                                     "lr": recipe.lr * batch / recipe.batch_size})


def target_steps(optimizer: str) -> int:
    """The steps a refit should take at least with `optimizer`."""
    return MUON_TARGET_STEPS if optimizer == "muon" else TARGET_STEPS


def fewest_steps(optimizer: str) -> float:
    """The planned steps under which `batch_for` halves a batch: the target less the slack."""
    return target_steps(optimizer) * STEP_SLACK


def batch_for(config: TrialConfig, images: float) -> tuple[TrialConfig, Decision]:
    """`config` at the largest batch (the prior's halved, down to MIN_BATCH) whose `images`
    make its optimizer's `fewest_steps`, its learning rate scaled by the same factor; and the
    decision, with its evidence in one line."""
    recipe = config.recipe
    batch, target = recipe.batch_size, target_steps(recipe.optimizer)
    while batch > MIN_BATCH and images / batch < fewest_steps(recipe.optimizer):
        batch //= 2
    scaled = at_batch(recipe, batch)
    steps = images / max(recipe.batch_size, 1)
    measured = {"images": round(images, 1), "prior_batch": float(recipe.batch_size),
                "prior_lr": recipe.lr, "prior_steps": round(steps, 1),
                "steps": round(images / batch, 1), "target_steps": float(target)}
    if batch == recipe.batch_size:
        return config, Decision(name="batch", pinned={}, measured=measured, evidence=(
            f"batch {batch} kept: the refit's ~{images:,.0f} planned images make "
            f"{steps:,.0f} steps (at least {target:,} for {recipe.optimizer}, less "
            f"{1 - STEP_SLACK:.0%} for the plan's error)"))
    lr = scaled.lr
    return config.model_copy(update={"recipe": scaled}), Decision(
        name="batch", pinned={"batch_size": batch, "lr": lr}, measured=measured, evidence=(
        f"batch {batch}, learning rate {lr:.3g} (the prior's {recipe.batch_size} and "
        f"{recipe.lr:.3g}, scaled): the refit's ~{images:,.0f} planned images make "
        f"{steps:,.0f} steps at {recipe.batch_size}, {images / batch:,.0f} at {batch} "
        f"(at least {target:,} for {recipe.optimizer}, less {1 - STEP_SLACK:.0%} for the "
        f"plan's error, where the batch allows, down to {MIN_BATCH})"))


def fit_batch(config: TrialConfig, plan: Plan,
              shape: DataShape) -> tuple[TrialConfig, Decision | None]:
    """`config` at the batch its refit's planned images call for (`batch_for`), with the
    decision; as is, with None, without a measured cost or for a fine-tuned network, which
    keeps its own batch."""
    if config.family == pretrained.FAMILY:
        return config, None
    images = plan.images_for(models.count_work(config.family, config.arch, shape))
    if images is None:
        return config, None
    return batch_for(config, images)


def probe_config(shape: DataShape, recipe: Recipe, width: int, shrink: int) -> TrialConfig:
    """The small model setup's data tests train (the frontier's fastnet at `width`, its input
    averaged down by `shrink`) with `recipe`."""
    arch = {**frontier.ARCH, "width": width, models.SHRINK: shrink}
    return TrialConfig(family=frontier.FAMILY, arch=arch, recipe=recipe,
                       params=models.count_for(frontier.FAMILY, arch, shape))


def prior_recipe(space: SearchSpace, shape: DataShape, batch: int) -> Recipe:
    """The space's prior's recipe (its augmentation as the data's decisions pinned it) at
    `batch`, its learning rate scaled with the batch; without a from-scratch prior, the
    speed-run recipe's (batch 256, lr 0.4). What setup trains or times before the plan."""
    prior = space.first_config(shape, 10**9)
    recipe = Recipe(batch_size=256, lr=0.4, weight_decay=1e-3, label_smoothing=0.2) \
        if prior is None or prior.family == pretrained.FAMILY else prior.recipe
    return at_batch(recipe, batch)

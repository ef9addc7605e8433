"""Whether large photos train at their loaded side or at half of it, from a short A/B on the data.

The models lay themselves out for their input side (models/layout.py): above 48 px the stem
strides, above 96 it pools as well, so a 96x128 photo halved (models.SHRINK 2: averaged 2x2
inside the model) leaves the blocks' feature maps as they were and takes the stem's detail
and most of its cost: fastnet width 28 trained at 0.615 ms per image on the clothing photos
at 48x64 against 1.139 at 96x128 (float32, 2-core AMD EPYC). Whether that detail carries the
labels is a property of the data (bench/batch_steps.py --sides; bench/README.md, "Training
resolution"): at the same width and seconds the clothing photos scored 0.815 at 96x128 and
0.809 at 48x64 in 95 s, 0.839 and 0.824 in 240 s, each within the 2.9-point standard error of
341 validation images. So where the longest side is over MAX_AS_LOADED, a small model trains
at the full side for ARM_SHARE of the budget, then for as many steps at half side, and both
are scored on validation images. The same images, not the same seconds: in the same seconds
the half side sees twice the images, and in a few seconds that decided the A/B (clothing
photos, 9 s a side: 0.628 at half side against 0.437) where longer runs tie. The half side is
kept unless the full side wins by more than the standard error of the difference; its images
cost less, so the plan gives the refit more of them or a wider model. A budget too short for
MIN_ARM_S decides nothing.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from autofit import models
from autofit.config import Recipe
from autofit.data import pipeline
from autofit.data.dataset import Dataset
from autofit.models import pretrained
from autofit.records import Decision
from autofit.search import frontier
from autofit.search.space import SearchSpace
from autofit.search.steps import prior_recipe, probe_config
from autofit.train.loop import evaluate, make_model, train

# At most 96 a side the stem strides and does not pool, and halving leaves the same maps at the
# same cost (a 2x2 average, then the stem at stride 1: 0.38 against 0.37 ms per image at 64).
MAX_AS_LOADED = 96
ARM_SHARE = 0.03  # of the budget, per side
MIN_ARM_S = 3.0  # seconds a side must train for its score to say anything
WIDTH, BATCH = 16, 64  # the A/B's model (the frontier's fastnet) and batch
VAL_IMAGES = 2000
FACTOR = 2


def decide(dataset: Dataset, space: SearchSpace, budget_s: float, device: str, threads: int,
           seed: int) -> Decision:
    """The resolution decision: `shrink` 2 pinned unless the full side's detail trains
    better on the same images by more than the error, nothing pinned then; the evidence in
    one line."""
    shape = dataset.shape
    size = f"{shape.width}x{shape.height}"
    arm_s = ARM_SHARE * budget_s
    measured: dict[str, float] = {"side": float(shape.size), "arm_s": round(arm_s, 2)}
    if shape.size <= MAX_AS_LOADED:
        return Decision(name="resolution", pinned={}, measured=measured, evidence=(
            f"images {size} train as loaded (at most {MAX_AS_LOADED} a side, halving would "
            "save nothing: the stem strides)"))
    if set(space.families) == {pretrained.FAMILY}:
        return Decision(name="resolution", pinned={}, measured=measured, evidence=(
            f"images {size} are resized by each pretrained net to its own resolution"))
    if arm_s < MIN_ARM_S:
        return Decision(name="resolution", pinned={}, measured=measured, evidence=(
            f"resolution not judged: {ARM_SHARE:.0%} of the budget is {arm_s:.1f}s, under the "
            f"{MIN_ARM_S:g}s a side needs; images {size} train as loaded"))
    recipe = prior_recipe(space, shape, BATCH).model_copy(update={
        "tta": False, "tta_translate": False})  # scored on the plain views: faster
    full, full_s, n, steps = _arm(dataset, recipe, 1, device, threads, seed, seconds=arm_s)
    half, half_s, _, _ = _arm(dataset, recipe, FACTOR, device, threads, seed, seconds=arm_s,
                              steps=steps)
    error = math.sqrt((full * (1 - full) + half * (1 - half)) / max(n, 1))
    halved = f"{shape.width // FACTOR}x{shape.height // FACTOR}"
    measured.update({"full_accuracy": round(full, 4), "half_accuracy": round(half, 4),
                     "standard_error": round(error, 4), "val_images": float(n),
                     "steps": float(steps), "full_ms": round(full_s * 1e3, 4),
                     "half_ms": round(half_s * 1e3, 4)})
    ab = (f"{frontier.FAMILY} width {WIDTH} trained {steps:,} steps at each side ({arm_s:.1f}s "
          f"at the full side) scores {full:.3f} at {size} and {half:.3f} at {halved} on {n:,} "
          f"validation images (standard error of the difference {error:.3f}), at "
          f"{full_s * 1e3:.3g} and {half_s * 1e3:.3g} ms per training image")
    if full - half > error:
        return Decision(name="resolution", pinned={}, measured=measured, evidence=(
            f"images train at their loaded {size}: {ab}; the full side's detail wins by more "
            "than the error"))
    return Decision(name="resolution", pinned={models.SHRINK: FACTOR}, measured=measured,
                    evidence=(f"images train at half side, {halved} (averaged 2x2 in the model, "
                              f"which still takes {size}): {ab}; the full side does not win by "
                              "more than the error, and the half side's images cost less"))


def _arm(dataset: Dataset, recipe: Recipe, shrink: int, device: str, threads: int, seed: int,
         seconds: float, steps: int | None = None) -> tuple[float, float, int, int]:
    """Validation accuracy after training at 1/`shrink` of the side for `seconds` (or `steps`
    steps, within twice `seconds`), seconds per training image, the validation images scored
    and the steps taken."""
    config = probe_config(dataset.shape, recipe, WIDTH, shrink)
    torch.manual_seed(seed)
    model = make_model(config, dataset.shape, *dataset.mean_std, device=device)
    loader = pipeline.training_loader(dataset.data_path, dataset.x_train, dataset.y_train,
                                      recipe, seed=seed, threads=threads, device=device)
    start = time.time()
    progress = train(model, loader, recipe, stop_at=start + 2 * seconds, **(
        {"total_steps": steps} if steps else {"total_seconds": seconds}))
    image_s = progress.train_seconds / max(progress.steps * loader.batch_size, 1)
    x_val, y_val = dataset.x_val[:VAL_IMAGES], dataset.y_val[:VAL_IMAGES]
    val = pipeline.loader(dataset.data_path, x_val, np.asarray(y_val), 256, train=False,
                          threads=threads, device=device)
    accuracy, _, seen = evaluate(model, val)
    return accuracy, image_s, seen, progress.steps

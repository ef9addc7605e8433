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
for the same seconds at each side on the training split and is scored on validation images,
and the higher score decides (a tie goes to the half side, which affords the refit more
images or a wider model). The log gives both scores and the standard error of their
difference. Each side trains for ARM_SHARE of the budget; a budget too short for MIN_ARM_S
decides nothing.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from autofit import models
from autofit.config import Recipe, TrialConfig
from autofit.data import pipeline
from autofit.data.dataset import Dataset
from autofit.models import pretrained
from autofit.records import Decision
from autofit.search import frontier
from autofit.search.space import SearchSpace
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
    """The resolution decision: `shrink` 2 pinned where the half side trains as well as the
    full one in the same seconds or better, nothing pinned otherwise; the evidence in one
    line."""
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
    recipe = _recipe(space, dataset)
    scores = {shrink: _arm(dataset, recipe, shrink, arm_s, device, threads, seed)
              for shrink in (1, FACTOR)}
    (full, full_s, n), (half, half_s, _) = scores[1], scores[FACTOR]
    error = math.sqrt((full * (1 - full) + half * (1 - half)) / max(n, 1))
    halved = f"{shape.width // FACTOR}x{shape.height // FACTOR}"
    measured.update({"full_accuracy": round(full, 4), "half_accuracy": round(half, 4),
                     "standard_error": round(error, 4), "val_images": float(n),
                     "full_ms": round(full_s * 1e3, 4), "half_ms": round(half_s * 1e3, 4)})
    ab = (f"{frontier.FAMILY} width {WIDTH} trained {arm_s:.1f}s at each side scores "
          f"{full:.3f} at {size} and {half:.3f} at {halved} on {n:,} validation images "
          f"(standard error of the difference {error:.3f}), at {full_s * 1e3:.3g} and "
          f"{half_s * 1e3:.3g} ms per training image")
    close = "within" if abs(full - half) <= error else "beyond"
    if full > half:
        return Decision(name="resolution", pinned={}, measured=measured, evidence=(
            f"images train at their loaded {size}: {ab}; the full side scores higher "
            f"({close} the error)"))
    return Decision(name="resolution", pinned={models.SHRINK: FACTOR}, measured=measured,
                    evidence=(f"images train at half side, {halved} (averaged 2x2 in the model, "
                              f"which still takes {size}): {ab}; the half side scores as high or "
                              f"higher ({close} the error)"))


def _recipe(space: SearchSpace, dataset: Dataset) -> Recipe:
    """The prior's recipe (its mirroring as the data decided it) at BATCH, its learning rate
    scaled with the batch; without a prior, the speed-run recipe's; no test-time views."""
    prior = space.first_config(dataset.shape, 10**9)
    recipe = Recipe(batch_size=256, lr=0.4, weight_decay=1e-3, label_smoothing=0.2) \
        if prior is None or prior.family == pretrained.FAMILY else prior.recipe
    return recipe.model_copy(update={"batch_size": BATCH, "lr": recipe.lr * BATCH /
                                     recipe.batch_size, "tta": False, "tta_translate": False})


def _arm(dataset: Dataset, recipe: Recipe, shrink: int, seconds: float, device: str,
         threads: int, seed: int) -> tuple[float, float, int]:
    """Validation accuracy after `seconds` of training at 1/`shrink` of the side, seconds per
    training image, and the validation images scored."""
    shape = dataset.shape
    arch = {**frontier.ARCH, "width": WIDTH, models.SHRINK: shrink}
    config = TrialConfig(family=frontier.FAMILY, arch=arch, recipe=recipe,
                         params=models.count_for(frontier.FAMILY, arch, shape))
    torch.manual_seed(seed)
    model = make_model(config, shape, *dataset.mean_std, device=device)
    loader = pipeline.training_loader(dataset.data_path, dataset.x_train, dataset.y_train,
                                      recipe, seed=seed, threads=threads, device=device)
    start = time.time()
    progress = train(model, loader, recipe, stop_at=start + 2 * seconds, total_seconds=seconds)
    image_s = progress.train_seconds / max(progress.steps * loader.batch_size, 1)
    x_val, y_val = dataset.x_val[:VAL_IMAGES], dataset.y_val[:VAL_IMAGES]
    val = pipeline.loader(dataset.data_path, x_val, np.asarray(y_val), 256, train=False,
                          threads=threads, device=device)
    accuracy, _, seen = evaluate(model, val)
    return accuracy, image_s, seen

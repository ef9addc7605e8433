"""Retrain the search's winner on train+val, sized to end before the final reserve.

The epoch count comes from the throughput the winning trial measured; the schedule is also
bounded by the seconds left, so a slower refit still anneals and stops on time.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from autofit.dataset import Dataset
from autofit.models import Classifier
from autofit.pipeline import BatchLoader
from autofit.search import TrialRecord
from autofit.trial import make_model, train


@dataclass(frozen=True)
class RefitInfo:
    seconds_planned: float
    epochs_planned: float | None
    epochs: float
    steps: int
    seconds: float
    state: str
    train_images: int


def refit(dataset: Dataset, best: TrialRecord, *, stop_at: float, device: str, threads: int,
          seed: int, log: logging.Logger) -> tuple[Classifier, RefitInfo]:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    x = np.concatenate([dataset.x_train, dataset.x_val])
    y = np.concatenate([dataset.y_train, dataset.y_val])
    mean, std = dataset.mean_std
    model = make_model(best.config, dataset.shape, mean, std, device)
    recipe = best.config.recipe
    loader = BatchLoader(x, y, recipe.batch_size, train=True, hflip=recipe.hflip, seed=seed,
                         threads=threads, device=device)
    seconds = max(stop_at - time.time(), 0.0)
    rate = float(best.metrics.get("images_per_s") or 0.0)
    if rate > 0:
        steps_planned: float = max(1, math.floor(seconds * rate / loader.batch_size))
        epochs_planned: float | None = steps_planned * loader.batch_size / len(x)
        log.info("refit: %s on %d train+val images, %.1f epochs planned in %.1fs (%.0f img/s "
                 "measured)", best.config.describe(), len(x), epochs_planned, seconds, rate)
    else:  # the winner never finished a step in the search: size the refit by time alone
        steps_planned, epochs_planned = math.inf, None
        log.info("refit: %s on %d train+val images for %.1fs (no throughput was measured in "
                 "the search)", best.config.describe(), len(x), seconds)
    start = time.time()
    final = train(model, loader, recipe, stop_at=stop_at, total_steps=steps_planned,
                  total_seconds=seconds)
    info = RefitInfo(seconds_planned=round(seconds, 3),
                     epochs_planned=None if epochs_planned is None else round(epochs_planned, 3),
                     epochs=final.epoch, steps=final.steps,
                     seconds=round(time.time() - start, 3), state=final.state,
                     train_images=len(x))
    log.info("refit done: %.2f epochs, %d steps in %.1fs (%s)", info.epochs, info.steps,
             info.seconds, info.state)
    return model.eval().to("cpu", memory_format=torch.contiguous_format), info

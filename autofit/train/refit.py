"""Retrain the search's winner on train+val, sized to end before the final reserve.

The refit starts from the winning trial's weights, so the seconds the search spent on the
winner are not thrown away (on a CPU they are a large part of what a model can train in a
short budget), and runs its recipe's schedule again over train+val, a warm restart. The
schedule follows the seconds left, so the refit anneals and stops on time however fast it
runs, and uses all of them (sized by steps from the trial's throughput, which counts the
trial's evaluations too, it ended 40 s early in a 10-minute CIFAR-10 run). The winner's
throughput gives the epochs to expect, and skips a refit too short to restart the winner's
schedule (under a tenth of the epochs it trained). Its state is saved every few seconds, so
a resumed run continues it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from autofit.data import pipeline
from autofit.data.dataset import Dataset
from autofit.errors import one_line
from autofit.models import Classifier
from autofit.records import RefitInfo, TrialRecord
from autofit.storage import readable
from autofit.train.loop import (
    EpochEnd,
    TrainState,
    load_checkpoint,
    load_pretrained,
    load_state,
    make_model,
    save_state,
    train,
    weights,
)

SAVE_EVERY_S = 10.0  # at most; a short refit saves every tenth of its time (1 s at least)
SKIP_BELOW = 0.1  # of the winner's epochs: a warm restart that short could not anneal back
SCHEDULE_SHARE = 0.99  # of the wall seconds: saves are not training time (0.97 left 12 s of 400)


def refit(dataset: Dataset, best: TrialRecord, *, stop_at: float, device: str, threads: int,
          seed: int, log: logging.Logger, checkpoint: Path,
          on_epoch: Callable[[EpochEnd], None] | None = None, exports_s: float = 0.0,
          on_save: Callable[[], None] | None = None) -> tuple[Classifier, RefitInfo]:
    """Train the winner on train+val until `stop_at`, saving its state to `checkpoint`
    every few seconds; a checkpoint already there (a resumed run) is continued. `on_epoch`
    gets each epoch's end (best_so_far.onnx is exported from there), and `exports_s` of the
    time is left to it; `on_save` follows each save (a copy to the run's storage). The
    model returned holds the weights to export: their EMA when the
    recipe keeps one."""
    torch.set_num_threads(threads)
    x = np.concatenate([dataset.x_train, dataset.x_val])
    y = np.concatenate([dataset.y_train, dataset.y_val])
    mean, std = dataset.mean_std
    resume = load_state(checkpoint, device) if checkpoint.is_file() else None
    offset = resume["counters"]["steps"] if resume else 0
    torch.manual_seed(seed + offset)
    model = make_model(best.config, dataset.shape, mean, std, device)
    recipe = best.config.recipe
    loader = pipeline.training_loader(dataset.data_path, x, y, recipe, seed=seed + offset,
                                      threads=threads, device=device)
    rate = best.images_per_s
    if resume is not None:
        seconds, steps_planned = resume["plan"]["seconds"], resume["plan"]["steps"]
        log.info("refit: resuming %s at step %d of its %.1fs", best.config.describe(), offset,
                 seconds)
    else:
        seconds = max(stop_at - time.time(), 0.0)
        steps_planned = max(1, math.floor(seconds * rate / loader.batch_size)) if rate > 0 \
            else math.inf
    epochs_planned = None if math.isinf(steps_planned) else \
        steps_planned * loader.batch_size / len(x)
    if resume is None and epochs_planned is not None:
        log.info("refit: %s on %d train+val images for %.1fs, about %.1f epochs (%.0f img/s "
                 "measured in %s)", best.config.describe(), len(x), seconds, epochs_planned, rate,
                 "the search" if best.number else "the parent run's refit")
    elif resume is None:  # no trial measured this model's speed: its schedule follows time
        log.info("refit: %s on %d train+val images for %.1fs (no trial measured its "
                 "throughput: the schedule follows time)", best.config.describe(), len(x),
                 seconds)
    plan = {"seconds": seconds, "steps": steps_planned}
    trained = best.epochs
    if resume is None and best.checkpoint and epochs_planned is not None \
            and epochs_planned < SKIP_BELOW * trained:
        log.info("refit: skipped, %.1f epochs fit in the time left and the winner trained %.1f, "
                 "too few to restart its schedule; its own weights are the model",
                 epochs_planned, trained)
        with readable(best.checkpoint) as where:
            model.load_state_dict(weights(load_checkpoint(where, device)))
        return _cpu(model), RefitInfo(
            seconds_planned=round(seconds, 3), epochs_planned=round(epochs_planned, 3),
            epochs=trained, steps=0, seconds=0.0, state="kept the winning trial's weights",
            train_images=len(dataset.y_train))

    warm = None
    if resume is None and best.checkpoint:
        try:
            with readable(best.checkpoint) as where:
                model.load_state_dict(load_checkpoint(where, device)["model"])
        except OSError as err:  # its checkpoint is gone: the refit starts afresh, and says so
            log.warning("refit: no warm start, trial %d's checkpoint is unreadable (%s)",
                        best.number, one_line(err))
        else:
            warm = f"trial {best.number} ({trained:.2f} epochs on train)" if best.number else \
                f"the parent run ({trained:.2f} epochs on train+val)"  # autofit extend
            log.info("refit: warm start from the weights of %s", warm)
    if resume is None and warm is None and (start := load_pretrained(model, best.config)):
        log.info("refit: starts from the pretrained weights in %s", start)
    if recipe.freeze_epochs and (warm or (resume or {}).get("warm_start")):
        recipe = recipe.model_copy(update={"freeze_epochs": 0.0})
        log.info("refit: the backbone is not frozen again: the warm start's head is trained")

    def save(state: TrainState) -> None:
        save_state({**state, "plan": plan, "warm_start": warm}, checkpoint)
        if on_save is not None:
            on_save()

    start = time.time()
    final = train(model, loader, recipe, stop_at=stop_at,
                  total_seconds=max(SCHEDULE_SHARE * seconds - exports_s, 0.5 * seconds),
                  resume=resume, save=save, save_every_s=min(SAVE_EVERY_S, max(1.0, seconds / 10)),
                  on_epoch=on_epoch)
    info = RefitInfo(seconds_planned=round(seconds, 3),
                     epochs_planned=None if epochs_planned is None else round(epochs_planned, 3),
                     epochs=final.epoch, steps=final.steps,
                     seconds=round(time.time() - start, 3), state=final.state,
                     train_images=len(x),
                     warm_start=resume.get("warm_start") if resume is not None else warm)
    log.info("refit done: %.2f epochs, %d steps in %.1fs (%s)", info.epochs, info.steps,
             info.seconds, info.state)
    return _cpu(model), info


def _cpu(model: Classifier) -> Classifier:
    return model.eval().to("cpu", memory_format=torch.contiguous_format)

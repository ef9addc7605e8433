"""One training loop for every model autofit trains: search trials and the final refit.

The loop is bounded twice: by its schedule (`total_seconds` of training, or `total_steps`),
which drives the learning rate so a cut-short run still anneals, and by `stop_at`, a hard
wall-clock stop that leaves time for the final evaluation. `trainable` wraps it for Ray Tune.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from autofit import models
from autofit.models import Classifier, DataShape
from autofit.pipeline import BatchLoader
from autofit.space import Recipe, TrialConfig

WARMUP = 0.1
EVAL_BATCH = 512
MIN_EVAL_S = 2.0  # an evaluation may always take this long ...
EVAL_SHARE = 0.25  # ... or this share of the training time so far, whichever is longer


@dataclass(frozen=True)
class Progress:
    """One report: what ASHA ranks on (`val_accuracy` at `train_seconds`) and what the plan
    needs (throughputs, for sizing the refit and the final evaluation)."""

    val_accuracy: float
    val_images: int
    train_seconds: float
    epoch: float
    steps: int
    images_per_s: float
    eval_images_per_s: float
    loss: float
    state: str  # "running", "completed", "deadline" or "diverged"

    def as_metrics(self) -> dict[str, float | int | str]:
        return dict(self.__dict__)


def lr_factor(progress: float) -> float:
    """Linear warm-up, then linear decay to zero at progress 1."""
    if progress < WARMUP:
        return progress / WARMUP
    return max(0.0, (1.0 - progress) / (1.0 - WARMUP))


def make_model(config: TrialConfig, shape: DataShape, mean: list[float], std: list[float],
               device: str = "cpu") -> Classifier:
    """The config's model on `device`, channels_last (what the loaders feed), with its
    parameter count checked against the one the search fitted to the cap."""
    model = Classifier(models.build_for(config.family, config.arch, shape), mean, std)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if params != config.params:
        raise RuntimeError(f"{config.describe()}: built {params} params, counted {config.params}")
    return model.to(device, memory_format=torch.channels_last)


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader,
             stop_at: float = math.inf) -> tuple[float, float, int]:
    """Accuracy on `loader`, the images/s it ran at, and how many images it saw: it stops
    early (after at least one batch) at `stop_at`, so a deadline also bounds evaluation.
    Loaders keep a seeded shuffled order, so a cut-short pass is still a fair sample."""
    model.eval()
    correct = total = 0
    start = time.perf_counter()
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
        if time.time() >= stop_at:
            break
    model.train()
    return correct / max(total, 1), total / max(time.perf_counter() - start, 1e-9), total


def train(model: nn.Module, loader: BatchLoader, recipe: Recipe, *, stop_at: float,
          total_seconds: float = math.inf, total_steps: float = math.inf,
          val: BatchLoader | None = None, milestones: tuple[float, ...] = (),
          report: Callable[[Progress], None] | None = None) -> Progress:
    """Train until the schedule completes or `stop_at`; report after every epoch and each
    `milestones` second of training (when `val` is given), and return the final state."""
    if math.isinf(total_seconds) and math.isinf(total_steps):
        raise ValueError("train needs total_seconds or total_steps")
    total_seconds, total_steps = max(total_seconds, 1e-6), max(total_steps, 1)
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": recipe.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=recipe.lr, momentum=recipe.momentum, nesterov=True)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    pending = sorted(m for m in milestones if m < total_seconds)
    n_val = len(val.images) if val is not None else 0
    steps, seen, train_s, eval_s, loss_sum, loss_n = 0, 0, 0.0, 0.0, 0.0, 0
    eval_rate = math.nan
    state, last = "running", None
    model.train()
    began = time.perf_counter()

    def progress() -> float:
        return max(steps / total_steps, train_s / total_seconds)

    def eval_limit() -> float:
        return max(MIN_EVAL_S, EVAL_SHARE * train_s)

    def eval_reserve() -> float:
        """Seconds the next evaluation will take: measured, or guessed from training speed,
        and never more than its limit."""
        if not n_val or not seen:
            return 0.0
        rate = eval_rate if not math.isnan(eval_rate) else 3 * seen / max(train_s, 1e-9)
        return min(1.2 * n_val / max(rate, 1.0), eval_limit())

    def snapshot(final_state: str) -> Progress:
        nonlocal eval_rate, eval_s
        acc, val_images = math.nan, 0
        if val is not None:
            tick = time.perf_counter()
            eval_until = min(stop_at, time.time() + eval_limit())
            acc, eval_rate, val_images = evaluate(model, val, eval_until)
            eval_s += time.perf_counter() - tick
        p = Progress(val_accuracy=acc, val_images=val_images, train_seconds=round(train_s, 3),
                     epoch=round(seen / len(loader.images), 4), steps=steps,
                     images_per_s=seen / max(train_s, 1e-9), eval_images_per_s=eval_rate,
                     loss=loss_sum / max(loss_n, 1), state=final_state)
        if report is not None:
            report(p)
        return p

    while state == "running":
        for x, y in loader:
            if progress() >= 1.0:
                state = "completed"
                break
            if time.time() + eval_reserve() >= stop_at:
                state = "deadline"
                break
            for group in opt.param_groups:
                group["lr"] = recipe.lr * lr_factor(progress())
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = loss.item()
            train_s = time.perf_counter() - began - eval_s  # wall time, data loading included
            steps, seen = steps + 1, seen + len(y)
            loss_sum, loss_n = loss_sum + value, loss_n + 1
            if not math.isfinite(value):
                state = "diverged"
                break
            if val is not None and pending and train_s >= pending[0]:
                pending = [m for m in pending if m > train_s]
                last = snapshot("running")
        else:
            if val is not None:
                last = snapshot("running")
    if last is not None and last.steps == steps:
        final = replace(last, state=state)
        if report is not None:
            report(final)
        return final
    return snapshot(state)


@dataclass(frozen=True)
class TrialData:
    """Everything a Ray trial needs besides its config; shipped once through the object store."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    shape: DataShape
    mean: list[float]
    std: list[float]
    trial_seconds: float
    milestones: tuple[float, ...]
    search_deadline: float
    threads: int
    device: str
    seed: int


def trainable(config: dict, data: TrialData) -> None:
    """Ray Tune function trainable: train one sampled config, reporting to the scheduler."""
    from ray import tune

    torch.set_num_threads(data.threads)
    trial = TrialConfig.model_validate(config)
    torch.manual_seed(data.seed)
    model = make_model(trial, data.shape, data.mean, data.std, data.device)
    loader = BatchLoader(data.x_train, data.y_train, trial.recipe.batch_size, train=True,
                         hflip=trial.recipe.hflip, seed=data.seed, threads=data.threads,
                         device=data.device)
    val = BatchLoader(data.x_val, data.y_val, EVAL_BATCH, train=False, threads=data.threads,
                      device=data.device)
    train(model, loader, trial.recipe, stop_at=data.search_deadline,
          total_seconds=data.trial_seconds, val=val, milestones=data.milestones,
          report=lambda p: tune.report(p.as_metrics()))

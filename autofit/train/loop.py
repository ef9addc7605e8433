"""One training loop for every model autofit trains: search trials and the final refit.

The loop is bounded twice: by its schedule (`total_seconds` of training, or `total_steps`),
which drives the learning rate so a cut-short run still anneals, and by `stop_at`, a hard
wall-clock stop that leaves time for the final evaluation. `trainable` wraps it for Ray Tune.
The recipe's optimizer, schedule, SAM and weight EMA come from autofit/train/optim.py; the forward
pass and loss run under bf16 autocast where the device computes bf16 natively
(autofit/train/precision.py), with float32 weights and optimizer state.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autofit import models, stopping
from autofit.config import Recipe, TrialConfig
from autofit.data.pipeline import Loader
from autofit.errors import UsageError
from autofit.models import Classifier, DataShape
from autofit.models import pretrained as pretrained_nets
from autofit.records import Progress
from autofit.train import optim, precision

EVAL_BATCH = 512
MIN_EVAL_S = 2.0  # an evaluation may always take this long ...
EVAL_SHARE = 0.25  # ... or this share of the training time so far, whichever is longer
MAX_OOM_RETRIES = 2
CHECKPOINT_FILE = "state.pt"


TrainState = dict[str, Any]


@dataclass(frozen=True)
class EpochEnd:
    """Where a training run stands at the end of a pass over its data, and its weights then
    (their EMA when the recipe keeps one: what it would export)."""

    progress: float  # of the schedule, 0-1
    epoch: float
    train_s: float
    weights: Callable[[], dict[str, torch.Tensor]]


@dataclass
class Counters:
    """Where a training run stands; saved in checkpoints so a resumed run continues its
    schedule rather than restarting it."""

    batch_size: int
    steps: int = 0
    seen: int = 0
    train_s: float = 0.0
    loss_sum: float = 0.0
    loss_n: int = 0
    eval_rate: float = math.nan
    lr_scale: float = 1.0
    oom_retries: int = 0


def make_model(config: TrialConfig, shape: DataShape, mean: list[float], std: list[float],
               device: str = "cpu", pretrained: bool = False) -> Classifier:
    """The config's model on `device`, channels_last (what the loaders feed), with its
    parameter count checked against the one the search fitted to the cap. `pretrained`: a
    model about to train from its start, which loads the weights its family starts from
    (`load_pretrained`); not for a model about to load trained weights."""
    recipe = config.recipe
    net = models.build_for(config.family, config.arch, shape, dropout=recipe.dropout)
    model = Classifier(net, mean, std, tta=recipe.mirror_tta,
                       translate=recipe.tta_translate)
    params = sum(p.numel() for p in model.parameters())
    if params != config.params:
        raise RuntimeError(f"{config.describe()}: built {params} params, counted {config.params}")
    if pretrained:
        load_pretrained(model, config)
    return model.to(device, memory_format=torch.channels_last)


def load_pretrained(model: Classifier, config: TrialConfig) -> str | None:
    """The weights `config`'s family starts from, loaded into `model` (made for it): the
    pretrained family's file (`config.weights`, found when the run started), its head aside.
    The file loaded, or None for a family that starts from scratch."""
    if config.family != pretrained_nets.FAMILY:
        return None
    if config.weights is None:
        raise UsageError(f"{config.describe()}: the pretrained family starts from weights, "
                         "and this configuration names none")
    pretrained_nets.load(model.net, config.weights)
    return config.weights


def on_gpu(model: nn.Module) -> bool:
    return any(p.is_cuda for p in model.parameters())


def weights(state: TrainState) -> dict[str, torch.Tensor]:
    """The weights a checkpoint is evaluated and exported with: its EMA when it kept one."""
    return state.get("ema") or state["model"]


@torch.no_grad()
def evaluate(model: nn.Module, loader: Loader,
             stop_at: float = math.inf) -> tuple[float, float, int]:
    """Accuracy on `loader`, the images/s it ran at, and how many images it saw: it stops
    early (after at least one batch) at `stop_at`, so a deadline also bounds evaluation.
    Loaders keep a seeded shuffled order, so a cut-short pass is still a fair sample. On a
    CPU it runs in float32, as the exported model does (autofit/train/precision.py)."""
    model.eval()
    correct = total = 0
    gpu = on_gpu(model)
    start = time.perf_counter()
    for x, y in loader:
        with precision.autocast("cuda") if gpu else contextlib.nullcontext():
            logits = model(x)
        correct += int((logits.argmax(1) == y).sum())
        total += len(y)
        if time.time() >= stop_at:
            break
    model.train()
    return correct / max(total, 1), total / max(time.perf_counter() - start, 1e-9), total


def train(model: nn.Module, loader: Loader, recipe: Recipe, *, stop_at: float,
          total_seconds: float = math.inf, total_steps: float = math.inf,
          val: Loader | None = None, milestones: tuple[float, ...] = (),
          report: Callable[[Progress, Callable[[], TrainState]], None] | None = None,
          resume: TrainState | None = None,
          save: Callable[[TrainState], None] | None = None,
          save_every_s: float = math.inf,
          on_epoch: Callable[[EpochEnd], None] | None = None) -> Progress:
    """Train until the schedule completes or `stop_at`; return the final state.

    With `val`, it reports after every epoch and each `milestones` second of training (with a
    callable giving the full training state, for checkpoints); `save` gets that state every
    `save_every_s`; `on_epoch` is called at the end of each pass over the data (the refit
    exports its weights from there), its time paused like a save's. `resume` (such a state)
    continues where it was taken, schedule and EMA included. Out of memory, it retries with
    half the batch (and half the learning rate), twice at most. A batch the loader capped at
    the training set's size scales the learning rate down the same way (Goyal et al.'s linear
    rule): the recipe's lr is for its batch. A step is one forward and backward pass, two with
    SAM. With `recipe.ema`, evaluations use the averaged weights, and the model holds them
    when this returns (what the refit exports). With `recipe.freeze_epochs`, only the head
    trains until that many epochs were seen (optim.freeze_backbone).
    """
    if math.isinf(total_seconds) and math.isinf(total_steps):
        raise ValueError("train needs total_seconds or total_steps")
    total_seconds, total_steps = max(total_seconds, 1e-6), max(total_steps, 1)
    opt = optim.build(model, recipe)
    sam = optim.SAM(opt, model) if recipe.optimizer == "sam" else None
    peak, gpu = optim.peak_lr(recipe), on_gpu(model)
    device_type = "cuda" if gpu else "cpu"
    bf16 = precision.choose(device_type).bf16
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    n_val = len(val.images) if val is not None else 0
    c = Counters(batch_size=loader.batch_size,
                 lr_scale=min(1.0, loader.batch_size / recipe.batch_size))
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        c = Counters(**resume["counters"])
        if c.batch_size != loader.batch_size:
            loader = loader.rebatched(c.batch_size)
    ema = optim.EMA(model, resume.get("ema") if resume is not None else None) \
        if recipe.ema else None
    pending = sorted(m for m in milestones if c.train_s < m < total_seconds)
    state, last = "running", None
    freeze_images, frozen = recipe.freeze_epochs * len(loader.images), False
    model.train()
    began, paused_s, trained_before, seen_before = time.perf_counter(), 0.0, c.train_s, c.seen
    saved_at, step_s = time.time(), 0.0

    def forward_backward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with precision.autocast(device_type, bf16):
            loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    def progress() -> float:
        return max(c.steps / total_steps, c.train_s / total_seconds)

    def eval_limit() -> float:
        return max(MIN_EVAL_S, EVAL_SHARE * c.train_s)

    def eval_reserve() -> float:
        """Seconds the next evaluation will take: measured, or guessed from training speed,
        and never more than its limit."""
        if not n_val or not c.seen:
            return 0.0
        rate = c.eval_rate if not math.isnan(c.eval_rate) else 3 * c.seen / max(c.train_s, 1e-9)
        return min(1.2 * n_val / max(rate, 1.0), eval_limit())

    def full_state() -> TrainState:
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                 "counters": asdict(c)}
        return state if ema is None else {**state, "ema": ema.state}

    def snapshot(final_state: str) -> Progress:
        nonlocal paused_s
        acc, val_images = math.nan, 0
        if val is not None:
            tick = time.perf_counter()
            eval_until = min(stop_at, time.time() + eval_limit())
            with ema.applied(model) if ema is not None else contextlib.nullcontext():
                acc, c.eval_rate, val_images = evaluate(model, val, eval_until)
            paused_s += time.perf_counter() - tick
        p = Progress(val_accuracy=acc, val_images=val_images, train_seconds=round(c.train_s, 3),
                     epoch=round(c.seen / len(loader.images), 4), steps=c.steps,
                     images_per_s=(c.seen - seen_before) / max(c.train_s - trained_before, 1e-9),
                     eval_images_per_s=c.eval_rate, loss=c.loss_sum / max(c.loss_n, 1),
                     state=final_state, batch_size=c.batch_size, oom_retries=c.oom_retries)
        if report is not None:
            report(p, full_state)
        return p

    while state == "running":
        for x, y in loader:
            if progress() >= 1.0:
                state = "completed"
                break
            if time.time() + step_s + eval_reserve() >= stop_at:  # no step may end late
                state = "deadline"
                break
            stopping.check()  # the run was asked to stop: its best model is kept instead
            if (now_frozen := c.seen < freeze_images) != frozen:
                frozen = now_frozen
                optim.freeze_backbone(opt, frozen)
            for group in opt.param_groups:
                group["lr"] = peak * c.lr_scale * optim.lr_factor(progress(), recipe.schedule) \
                    * group.get("lr_scale", 1.0)
            try:
                opt.zero_grad(set_to_none=True)
                loss = forward_backward(x, y)
                if sam is not None:  # a second forward and backward pass, at perturbed weights
                    sam.step(lambda x=x, y=y: forward_backward(x, y))
                else:
                    opt.step()
            except torch.OutOfMemoryError:
                opt.zero_grad(set_to_none=True)
                if c.oom_retries >= MAX_OOM_RETRIES or c.batch_size < 2:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                c.oom_retries, c.batch_size = c.oom_retries + 1, c.batch_size // 2
                c.lr_scale /= 2
                loader = loader.rebatched(c.batch_size)
                break  # the next pass of the while loop iterates the smaller batches
            value = loss.item()
            train_s = trained_before + time.perf_counter() - began - paused_s  # data included
            step_s, c.train_s = train_s - c.train_s, train_s
            c.steps, c.seen = c.steps + 1, c.seen + len(y)
            c.loss_sum, c.loss_n = c.loss_sum + value, c.loss_n + 1
            if not math.isfinite(value):
                state = "diverged"
                break
            if ema is not None:  # not a diverged step: the average keeps the weights before it
                ema.update(c.steps)
            if val is not None and pending and c.train_s >= pending[0]:
                pending = [m for m in pending if m > c.train_s]
                last = snapshot("running")
            if save is not None and time.time() - saved_at >= save_every_s:
                tick = time.perf_counter()
                save(full_state())
                paused_s += time.perf_counter() - tick  # not training time, nor a step's
                saved_at = time.time()
        else:
            if val is not None:
                last = snapshot("running")
            if on_epoch is not None:
                tick = time.perf_counter()
                on_epoch(EpochEnd(progress=progress(), epoch=c.seen / len(loader.images),
                                  train_s=c.train_s,
                                  weights=lambda: ema.state if ema is not None
                                  else model.state_dict()))
                paused_s += time.perf_counter() - tick
    if last is not None and last.steps == c.steps:
        final = last.model_copy(update={"state": state})
        if report is not None:
            report(final, full_state)
    else:
        final = snapshot(state)
    if frozen:
        optim.freeze_backbone(opt, False)
    if ema is not None:
        model.load_state_dict(ema.state)
    return final


def save_state(state: dict[str, Any], path: Path) -> None:
    """torch.save to a temp file, then rename: a kill mid-write leaves the previous file."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path, device: str = "cpu") -> dict[str, Any]:
    """Tensors and numbers only (weights_only), so loading unpickles no code."""
    return torch.load(path, map_location=device, weights_only=True)


def load_checkpoint(directory: str | Path, device: str = "cpu") -> TrainState:
    """A trial checkpoint, from the directory Ray Tune keeps it in."""
    return load_state(Path(directory) / CHECKPOINT_FILE, device)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """The refit weights (a plain state_dict, loadable with weights_only=True), kept so the
    trained model survives even if its export fails."""
    save_state(model.state_dict(), path)

"""The Ray Tune trainable: one sampled configuration trained by autofit's one training loop,
reporting to the scheduler with a checkpoint each time and continuing from the last one when
Tune resumes it."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autofit import faults
from autofit.config import TrialConfig
from autofit.data import pipeline
from autofit.environment import ray_node
from autofit.models import DataShape
from autofit.records import Progress
from autofit.train.loop import (
    CHECKPOINT_FILE,
    EVAL_BATCH,
    TrainState,
    load_checkpoint,
    make_model,
    save_state,
    train,
)

TRIAL_KEY = "trial"


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
    data_path: str
    # trial number -> the newest complete state found on disk at a resume (None: none left);
    # it overrides Tune's own pointer (autofit/search/checkpoints.py)
    resume_from: dict[int, str | None] = field(default_factory=dict)


def parse_config(config: dict[str, Any]) -> tuple[int, TrialConfig]:
    """A Tune config is a TrialConfig plus the trial's number (stable across resumes)."""
    fields = dict(config)
    return int(fields.pop(TRIAL_KEY, 0)), TrialConfig.model_validate(fields)


def trainable(config: dict[str, Any], data: TrialData) -> None:
    """Ray Tune function trainable: train one sampled config, reporting to the scheduler
    with a checkpoint each time, and continuing from the last one when Tune resumes it."""
    from ray import tune

    torch.set_num_threads(data.threads)
    number, trial = parse_config(config)
    resume = None
    if number in data.resume_from:
        where = data.resume_from[number]
        resume = None if where is None else load_checkpoint(where, data.device)
    elif (checkpoint := tune.get_checkpoint()) is not None:
        with checkpoint.as_directory() as directory:
            resume = load_checkpoint(directory, data.device)
    offset = resume["counters"]["steps"] if resume else 0  # a resumed trial sees new batches
    torch.manual_seed(data.seed + offset)
    model = make_model(trial, data.shape, data.mean, data.std, data.device,
                       pretrained=resume is None)  # a resumed trial loads its own weights
    loader = pipeline.training_loader(data.data_path, data.x_train, data.y_train, trial.recipe,
                                      seed=data.seed + offset, threads=data.threads,
                                      device=data.device)
    faults.install(model, number, loader.batch_size)  # the batch it trains at: small data caps it
    val = pipeline.loader(data.data_path, data.x_val, data.y_val, EVAL_BATCH, train=False,
                          threads=data.threads, device=data.device)

    node = ray_node()

    def report(progress: Progress, state: Callable[[], TrainState]) -> None:
        with tempfile.TemporaryDirectory() as directory:
            save_state(state(), Path(directory) / CHECKPOINT_FILE)
            tune.report({**progress.model_dump(), "node": node},
                        checkpoint=tune.Checkpoint.from_directory(directory))

    train(model, loader, trial.recipe, stop_at=data.search_deadline,
          total_seconds=data.trial_seconds, val=val, milestones=data.milestones,
          report=report, resume=resume)

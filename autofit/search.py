"""Architecture and recipe search with Ray Tune: a seeded sampler, ASHA, a hard deadline.

Every configuration comes from `SpaceSearcher`, which fits it to the parameter cap before
Tune ever schedules it. ASHA ranks trials on validation accuracy at milestones measured in
training seconds; trials stop themselves at the search deadline, and the searcher stops
suggesting once too little time is left for a trial to reach its first milestone.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from autofit.budget import Plan
from autofit.dataset import Dataset
from autofit.errors import AutofitError
from autofit.space import SearchSpace, TrialConfig
from autofit.trial import TrialData, trainable

METRIC = "val_accuracy"
LOG_EVERY_S = 5.0
STATUS = {"completed": "completed", "deadline": "stopped at search deadline",
          "diverged": "diverged", "running": "stopped by ASHA"}


@dataclass
class TrialRecord:
    """One trial as the leaderboard shows it."""

    number: int
    trial_id: str
    config: TrialConfig
    metrics: dict[str, Any] = field(default_factory=dict)
    status: str = "no result"
    error: str | None = None
    logged_at: float = 0.0

    @property
    def score(self) -> float:
        value = self.metrics.get(METRIC, math.nan)
        ok = self.error is None and self.status != "diverged"
        return float(value) if ok and value is not None and math.isfinite(value) else -1.0


@dataclass
class SearchOutcome:
    records: list[TrialRecord]
    overrun_s: float  # how long after the search deadline Tune handed back (negative: before)

    @property
    def best(self) -> TrialRecord:
        return max(self.records, key=lambda r: (r.score, r.metrics.get("train_seconds", 0)))


def make_searcher(space: SearchSpace, dataset: Dataset, max_params: int, seed: int,
                  stop_suggesting_at: float):  # type: ignore[no-untyped-def]
    from ray.tune.search import Searcher

    class SpaceSearcher(Searcher):
        """Seeded random sampling from the space, each draw fitted to the parameter cap."""

        def __init__(self) -> None:
            super().__init__(metric=METRIC, mode="max")
            self.rng = np.random.default_rng(seed)
            self.configs: dict[str, TrialConfig] = {}

        def set_search_properties(self, metric, mode, config, **spec):  # type: ignore[no-untyped-def]
            return True

        def suggest(self, trial_id: str):  # type: ignore[no-untyped-def]
            if time.time() >= stop_suggesting_at:
                return Searcher.FINISHED
            config = space.sample(self.rng, dataset.shape, max_params)
            self.configs[trial_id] = config
            return config.model_dump()

        def on_trial_complete(self, trial_id, result=None, error=False):  # type: ignore[no-untyped-def]
            return None

    return SpaceSearcher()


def make_progress_callback(log: logging.Logger, records: dict[str, TrialRecord]):  # type: ignore[no-untyped-def]
    from ray import tune

    class ProgressLog(tune.Callback):
        """One log line per trial event, so a long search shows what it is doing."""

        def on_trial_start(self, iteration, trials, trial, **info):  # type: ignore[no-untyped-def]
            config = TrialConfig.model_validate(trial.config)
            record = TrialRecord(len(records) + 1, trial.trial_id, config)
            records[trial.trial_id] = record
            log.info("trial %d start: %s", record.number, config.describe())

        def on_trial_result(self, iteration, trials, trial, result, **info):  # type: ignore[no-untyped-def]
            record = records[trial.trial_id]
            record.metrics = {k: result[k] for k in result if k in _METRIC_KEYS}
            now = time.time()
            if result["state"] == "running" and now - record.logged_at < LOG_EVERY_S:
                return
            record.logged_at = now
            log.info("trial %d: epoch %.2f  %.1fs trained  val_acc %.4f  %.0f img/s",
                     record.number, result["epoch"], result["train_seconds"],
                     result[METRIC], result["images_per_s"])

        def on_trial_error(self, iteration, trials, trial, **info):  # type: ignore[no-untyped-def]
            record = records[trial.trial_id]
            record.error = _last_line(str(trial.get_error() or "unknown error"))
            record.status = "error"
            log.warning("trial %d failed: %s", record.number, record.error)

    return ProgressLog()


_METRIC_KEYS = ("val_accuracy", "val_images", "train_seconds", "epoch", "steps", "images_per_s",
                "eval_images_per_s", "loss", "state")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


@dataclass(frozen=True)
class Workers:
    """Where trials run and what each gets: a whole node's CPUs (one trial per node), or one
    GPU per trial when training on GPUs."""

    where: str
    trial_cpus: int
    trial_gpus: int
    concurrency: int


def run_search(dataset: Dataset, space: SearchSpace, max_params: int, plan: Plan, *,
               seed: int, out_dir: Path, device: str, workers: Workers,
               log: logging.Logger) -> SearchOutcome:
    """Run the Ray Tune search until `plan.search_deadline`; return every trial's record."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    data = TrialData(
        x_train=dataset.x_train, y_train=dataset.y_train, x_val=dataset.x_val,
        y_val=dataset.y_val, shape=dataset.shape, mean=dataset.mean_std[0],
        std=dataset.mean_std[1], trial_seconds=plan.trial_s, milestones=plan.milestones,
        search_deadline=plan.search_deadline, threads=workers.trial_cpus, device=device,
        seed=seed,
    )
    resources = {"cpu": workers.trial_cpus, "gpu": workers.trial_gpus}
    scheduler = ASHAScheduler(time_attr="train_seconds", max_t=plan.trial_s,
                              grace_period=plan.milestones[0] if plan.milestones else plan.trial_s,
                              reduction_factor=3)
    stop_suggesting_at = plan.search_deadline - max(plan.milestones[:1] or (plan.trial_s,))
    records: dict[str, TrialRecord] = {}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, data=data), resources),
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="max", scheduler=scheduler, num_samples=100_000,
            search_alg=make_searcher(space, dataset, max_params, seed, stop_suggesting_at),
            max_concurrent_trials=workers.concurrency, time_budget_s=plan.search_s + 5.0,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name="search", storage_path=str((out_dir / "tune").resolve()), verbose=0,
            callbacks=[make_progress_callback(log, records)],
        ),
    )
    tuner.fit()
    overrun = time.time() - plan.search_deadline
    for record in records.values():
        if record.error is None and record.metrics:
            state = str(record.metrics.get("state"))
            if state == "running" and record.metrics["train_seconds"] >= plan.trial_s:
                state = "completed"  # ASHA ends a trial at max_t before its own last report
            record.status = STATUS.get(state, "no result")
    outcome = SearchOutcome(sorted(records.values(), key=lambda r: r.number), round(overrun, 3))
    if not outcome.records:
        raise AutofitError("the search ran no trial before its deadline; give a larger budget")
    if outcome.best.score < 0:
        first = next((r.error for r in outcome.records if r.error), "no trial reported a result")
        raise AutofitError(f"every trial failed; first error: {first}")
    return outcome


@contextmanager
def ray_session(address: str | None, threads: int, device: str) -> Iterator[Workers]:
    """Connect to `address` (an existing cluster) or start a local Ray; yield its workers.

    Only a Ray this call started is shut down. Tune's per-trial loggers are off (the
    leaderboard and summary are autofit's record of the search).
    """
    import ray

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ctrl-C must stop the whole run: Tune's own handler would end only the search.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": logging.ERROR}
        if address:
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = threads
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise AutofitError(f"cannot start or reach Ray at {address or 'local'}: "
                               f"{_last_line(str(err))}") from None
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    cpus = int(max(node.get("CPU", 1) for node in nodes))
    if device == "cuda":
        workers = Workers("", cpus, 1, max(1, int(sum(n.get("GPU", 0) for n in nodes))))
    else:
        workers = Workers("", cpus, 0, sum(1 for n in nodes if n.get("CPU", 0) >= cpus))
    where = f"ray cluster at {address}" if address else "local ray"
    try:
        yield replace(workers, where=f"{where}: {len(nodes)} node(s), {workers.concurrency} "
                                     f"trial(s) at a time, {cpus} CPUs each")
    finally:
        if started:
            ray.shutdown()

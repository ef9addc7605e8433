"""Architecture and recipe search with Ray Tune: a seeded sampler, ASHA, a hard deadline.

Every configuration comes from `SpaceSearcher`, which fits it to the parameter cap before
Tune ever schedules it. ASHA ranks trials on validation accuracy at milestones measured in
training seconds; trials stop themselves at the search deadline, and the searcher stops
suggesting once too little time is left for a trial to reach its first milestone.

Durability: every report carries a checkpoint, Tune snapshots its experiment after each, so
a killed search resumes with its finished trials kept; a failing trial is recorded and the
search goes on, unless the first trials all fail.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

from ray import tune

from autofit.budget import Plan
from autofit.config import TrialConfig
from autofit.data.dataset import Dataset
from autofit.errors import AutofitError, SearchFailed
from autofit.events import emit
from autofit.journal import Journal
from autofit.records import Progress, SearchClock, SearchOutcome, TrialRecord
from autofit.search.cluster import Workers, last_line
from autofit.search.searcher import METRIC, SpaceSearcher
from autofit.search.space import SearchSpace
from autofit.search.trainable import TrialData, parse_config, trainable

LOG_EVERY_S = 5.0
EXPERIMENT = "search"
STATUS = {"completed": "completed", "deadline": "stopped at search deadline",
          "diverged": "diverged", "running": "stopped by ASHA"}


class BestKeeper(Protocol):
    """What keeps the best finished trial as a model (autofit.deliver.best.BestSoFar): the
    search offers each finished trial's checkpoint."""

    def offer(self, number: int, config: TrialConfig, val_accuracy: float,
              checkpoint_dir: str, log: logging.Logger) -> bool: ...


def status_of(metrics: dict[str, Any], trial_s: float) -> str:
    """A trial's leaderboard status from its last report."""
    state = str(metrics.get("state"))
    if state == "running" and float(metrics.get("train_seconds", 0.0)) >= trial_s:
        state = "completed"  # ASHA ends a trial at max_t before its own last report
    return STATUS.get(state, "no result")


class ProgressLog(tune.Callback):
    """Every trial event as a run event (text views get at most one report line per trial
    every few seconds), and the best finished trial exported as it appears. The logger is
    found by name after a resume."""

    def __init__(self, log: logging.Logger, best: BestKeeper, trial_s: float) -> None:
        self.log, self.best, self.trial_s = log, best, trial_s
        self.logged_at: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info):  # type: ignore[no-untyped-def]
        number, config = parse_config(trial.config)
        emit(self.log, "trial_start", "trial %d start: %s", number, config.describe(),
             trial=number, family=config.family, arch=config.arch, params=config.params,
             recipe=config.recipe.model_dump())

    def on_trial_result(self, iteration, trials, trial, result, **info):  # type: ignore[no-untyped-def]
        now = time.time()
        quiet_since = now - self.logged_at.get(trial.trial_id, 0.0)
        show = result["state"] != "running" or quiet_since >= LOG_EVERY_S
        if show:
            self.logged_at[trial.trial_id] = now
        emit(self.log, "trial_result",
             "trial %d: epoch %.2f  %.1fs trained  val_acc %.4f  %.0f img/s%s",
             parse_config(trial.config)[0], result["epoch"], result["train_seconds"],
             result[METRIC], result["images_per_s"],
             f"  batch {result['batch_size']} after out-of-memory"
             if result.get("oom_retries") else "", show=show,
             trial=parse_config(trial.config)[0],
             **{k: result[k] for k in Progress.model_fields if k in result})

    def on_trial_error(self, iteration, trials, trial, **info):  # type: ignore[no-untyped-def]
        number, error = parse_config(trial.config)[0], last_line(_error_text(trial))
        emit(self.log, "trial_end", "trial %d failed: %s", number, error,
             level=logging.WARNING, trial=number, status="error", error=error)

    def on_trial_complete(self, iteration, trials, trial, **info):  # type: ignore[no-untyped-def]
        result, checkpoint = trial.last_result or {}, trial.checkpoint
        number, config = parse_config(trial.config)
        status = status_of(result, self.trial_s)
        emit(self.log, "trial_end", "trial %d %s", number, status, show=False, trial=number,
             status=status, val_accuracy=result.get(METRIC),
             train_seconds=result.get("train_seconds"))
        if checkpoint is None or result.get("state") == "diverged":
            return
        with checkpoint.as_directory() as directory:
            self.best.offer(number, config, float(result.get(METRIC, math.nan)), directory,
                            self.log)


def _error_text(trial: Any) -> str:
    """The trial's error as Tune wrote it on this node (its synced copy may lag)."""
    try:
        return Path(trial.error_file).read_text()
    except (OSError, TypeError):
        return str(trial.get_error() or "unknown error")


def _record(result: Any, trial_s: float,
            configs: dict[str, dict[str, Any]]) -> TrialRecord | None:
    """A Tune result as a leaderboard row; None for a trial that never ran. A trial that
    failed before its first report has no config in its result: `configs` (by trial id, from
    Tune's trial objects) has it."""
    if not result.metrics and result.error is None:
        return None
    reported = result.metrics or {}
    number, config = parse_config(result.config or configs[reported["trial_id"]])
    metrics = Progress.model_validate(reported) if METRIC in reported else None
    status, error = "no result", None
    if result.error is not None:
        status, error = "error", last_line(str(result.error))
    elif metrics is not None:
        status = status_of(reported, trial_s)
    return TrialRecord(number=number, trial_id=str(reported.get("trial_id", number)),
                       config=config, metrics=metrics, status=status, error=error,
                       checkpoint=result.checkpoint.path if result.checkpoint else None)


def run_search(dataset: Dataset, space: SearchSpace, max_params: int, plan: Plan, *,
               seed: int, journal: Journal, device: str, workers: Workers, best: BestKeeper,
               log: logging.Logger) -> SearchOutcome:
    """Run the Ray Tune search until `plan.search_deadline`; return every trial's record.

    A search that was interrupted is restored from Tune's experiment state (finished trials
    kept, unfinished ones continued from their last checkpoint); one killed before Tune's
    first snapshot has nothing to keep and starts again.
    """
    from ray.tune.schedulers import ASHAScheduler

    data = TrialData(
        x_train=dataset.x_train, y_train=dataset.y_train, x_val=dataset.x_val,
        y_val=dataset.y_val, shape=dataset.shape, mean=dataset.mean_std[0],
        std=dataset.mean_std[1], trial_seconds=plan.trial_s, milestones=plan.milestones,
        search_deadline=plan.search_deadline, threads=workers.trial_cpus, device=device,
        seed=seed, data_path=dataset.data_path,
    )
    stop_suggesting_at = plan.search_deadline - max(plan.milestones[:1] or (plan.trial_s,))
    journal.set(search_clock=SearchClock(stop_suggesting_at=stop_suggesting_at))
    runnable = tune.with_resources(tune.with_parameters(trainable, data=data),
                                   {"cpu": workers.trial_cpus, "gpu": workers.trial_gpus})
    experiment = (journal.run_dir / "tune" / EXPERIMENT).resolve()
    if tune.Tuner.can_restore(str(experiment)):
        log.info("search: resuming the Ray Tune experiment in %s", experiment)
        tuner = tune.Tuner.restore(str(experiment), runnable, resume_unfinished=True,
                                   resume_errored=False)
    else:
        shutil.rmtree(experiment, ignore_errors=True)
        scheduler = ASHAScheduler(time_attr="train_seconds", max_t=plan.trial_s,
                                  grace_period=(plan.milestones or (plan.trial_s,))[0],
                                  reduction_factor=3)
        tuner = tune.Tuner(
            runnable,
            tune_config=tune.TuneConfig(
                metric=METRIC, mode="max", scheduler=scheduler, num_samples=100_000,
                search_alg=SpaceSearcher(space, dataset.shape, max_params, seed, journal.path,
                                         cap=plan.cap),
                max_concurrent_trials=workers.concurrency, time_budget_s=plan.search_s + 5.0,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT, storage_path=str(experiment.parent), verbose=0,
                callbacks=[ProgressLog(log, best, plan.trial_s)],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    grid = tuner.fit()
    overrun = time.time() - plan.search_deadline
    configs = {t.trial_id: t.config for t in grid._experiment_analysis.trials}
    records = [r for r in (_record(result, plan.trial_s, configs) for result in grid)
               if r is not None]
    outcome = SearchOutcome(records=sorted(records, key=lambda r: r.number),
                            overrun_s=round(overrun, 3))
    if not outcome.records:
        raise AutofitError("the search ran no trial before its deadline; give a larger budget")
    if outcome.best.score < 0:
        first = next((r.error for r in outcome.records if r.error), "no trial reported a result")
        raise SearchFailed(f"every trial failed; first error: {first}", outcome)
    return outcome



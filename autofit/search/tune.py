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
from contextlib import suppress
from pathlib import Path
from typing import Any, Protocol

from ray import tune

from autofit import events, faults, stopping
from autofit.budget import Plan
from autofit.config import TrialConfig
from autofit.data.dataset import Dataset
from autofit.errors import SearchFailed, last_line
from autofit.events import emit
from autofit.journal import Journal
from autofit.records import Progress, SearchClock, SearchOutcome, TrialRecord
from autofit.search.checkpoints import Found, find_newest, repair_state
from autofit.search.cluster import Workers
from autofit.search.searcher import METRIC, SpaceSearcher
from autofit.search.space import SearchSpace
from autofit.search.trainable import TrialData, parse_config, trainable
from autofit.storage import EXPERIMENT, Storage

LOG_EVERY_S = 5.0
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
    every few seconds), and the best finished trial that reached the first rung exported as
    it appears. The logger is found by name after a resume. Its checkpoint hooks are where
    faults.py kills the run at Tune's checkpoint boundaries."""

    def __init__(self, log: logging.Logger, best: BestKeeper, trial_s: float,
                 first_rung_s: float) -> None:
        self.log, self.best, self.trial_s, self.first_rung_s = log, best, trial_s, first_rung_s
        self.logged_at: dict[str, float] = {}
        self.saves: dict[int, int] = {}  # checkpoints per trial number, in this life

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

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):  # type: ignore[no-untyped-def]
        """A trial's new checkpoint is on disk; Tune has not yet recorded it, nor deleted the
        one before it (fault point `saved:T:K`, trial T's K-th checkpoint in this life)."""
        number = parse_config(trial.config)[0]
        self.saves[number] = self.saves.get(number, 0) + 1
        faults.kill_at(f"saved:{number}:{self.saves[number]}")

    def on_trial_save(self, iteration, trials, trial, **info):  # type: ignore[no-untyped-def]
        """Tune has recorded the new checkpoint and deleted the one before it; its experiment
        state on disk still names the deleted one until its next snapshot (`rotated:T:K`)."""
        number = parse_config(trial.config)[0]
        faults.kill_at(f"rotated:{number}:{self.saves.get(number, 0)}")

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
        trained = float(result.get("train_seconds", 0.0)) >= self.first_rung_s
        if checkpoint is not None and trained and result.get("state") != "diverged":
            with checkpoint.as_directory() as directory:
                self.best.offer(number, config, float(result.get(METRIC, math.nan)),
                                directory, self.log)
        faults.kill_at(f"ended:{number}")  # before Tune's snapshot records the trial as done


def _error_text(trial: Any) -> str:
    """The trial's error as Tune wrote it on this node (its synced copy may lag)."""
    with suppress(OSError, TypeError):
        text = Path(trial.error_file).read_text()
        if text.strip():  # Tune may not have written it yet
            return text
    return str(trial.get_error() or "unknown error")


def _record(result: Any, trial_s: float, configs: dict[str, dict[str, Any]], storage: Storage,
            unfinished: dict[int, Found] | None = None) -> TrialRecord | None:
    """A Tune result as a leaderboard row; None for a trial that never ran. A trial that
    failed before its first report has no config in its result: `configs` (by trial id, from
    Tune's trial objects) has it. `unfinished` (a search that was not continued) holds the
    trials the deadline stopped, with their newest state on disk."""
    if not result.metrics and result.error is None:
        return None
    reported = result.metrics or {}
    number, config = parse_config(result.config or configs[reported["trial_id"]])
    metrics = Progress.model_validate(reported) if METRIC in reported else None
    status, error = "no result", None
    checkpoint = storage.uri(result.checkpoint.path) if result.checkpoint else None
    if result.error is not None:
        status, error = "error", last_line(str(result.error))
    elif unfinished is not None and number in unfinished:
        status, newest = STATUS["deadline"], unfinished[number].newest
        checkpoint = None if newest is None else str(newest)
    elif metrics is not None:
        status = status_of(reported, trial_s)
    return TrialRecord(number=number, trial_id=str(reported.get("trial_id", number)),
                       config=config, metrics=metrics, status=status, error=error,
                       checkpoint=checkpoint, node=str(reported.get("node", "")))


def restart_s(run_dir: Path) -> float:
    """Seconds from the search's start to its first trial's first report, less the training
    in it: what a trial restored by a resume pays (Tune, a worker, its data pipeline, an
    evaluation) before it reports. A resume 1.7 s before the deadline had restarted a trial
    and ended 4.7 s past it. 0 when no trial reported (the run's events.jsonl says)."""
    start = None
    for event in events.read(run_dir):
        if event.get("kind") == "plan" and start is None:
            start = float(event["t"])
        elif event.get("kind") == "trial_result" and start is not None:
            return max(0.0, float(event["t"]) - start - float(event["train_seconds"]))
    return 0.0


def run_search(dataset: Dataset, space: SearchSpace, max_params: int, plan: Plan, *,
               seed: int, journal: Journal, device: str, workers: Workers, best: BestKeeper,
               storage: Storage, log: logging.Logger) -> SearchOutcome:
    """Run the Ray Tune search until `plan.search_deadline`; return every trial's record.

    A search that was interrupted is restored from Tune's experiment state (finished trials
    kept, unfinished ones continued from their newest complete checkpoint); one killed before
    Tune's first snapshot has nothing to keep and starts again. A resume left less time than
    the first rung is not continued: restarting trials would only overrun the deadline, and
    what they had trained stands.
    """
    first_rung = (plan.milestones or (plan.trial_s,))[0]
    journal.set(search_clock=SearchClock(stop_suggesting_at=plan.search_deadline - first_rung))
    experiment, local = storage.experiment, storage.local
    if local is not None and (local / EXPERIMENT).is_dir():
        repair_state(local / EXPERIMENT, log)
    restoring = tune.Tuner.can_restore(experiment)
    found = find_newest(local / EXPERIMENT, log) if restoring and local is not None else {}
    if restoring and local is None:
        log.info("search: resuming from %s as Ray Tune recorded it (the check for checkpoints "
                 "it lost at a kill reads a filesystem path, not a URI)", experiment)
    left, restart = plan.search_deadline - time.time(), restart_s(journal.run_dir)
    if restoring and left < first_rung + restart:
        from ray.tune import ExperimentAnalysis, ResultGrid

        log.info("search: %.1fs of its time left after the interruption, under the first "
                 "rung's %.1fs and the %.1fs a trial took to report in the first life: not "
                 "continued, its %d unfinished trial(s) stand as they were", max(left, 0.0),
                 first_rung, restart, len(found))
        analysis = ExperimentAnalysis(experiment)
        return _outcome(ResultGrid(analysis), analysis.trials, plan, first_rung, storage, found)
    data = TrialData(
        x_train=dataset.x_train, y_train=dataset.y_train, x_val=dataset.x_val,
        y_val=dataset.y_val, shape=dataset.shape, mean=dataset.mean_std[0],
        std=dataset.mean_std[1], trial_seconds=plan.trial_s, milestones=plan.milestones,
        search_deadline=plan.search_deadline, threads=workers.trial_cpus, device=device,
        seed=seed, data_path=dataset.data_path,
        resume_from={n: None if f.newest is None else str(f.newest) for n, f in found.items()},
    )
    runnable = tune.with_resources(tune.with_parameters(trainable, data=data),
                                   {"cpu": workers.trial_cpus, "gpu": workers.trial_gpus})
    if restoring:
        log.info("search: resuming the Ray Tune experiment in %s", experiment)
        tuner = tune.Tuner.restore(experiment, runnable, resume_unfinished=True,
                                   resume_errored=False)
    else:
        if local is not None:
            shutil.rmtree(local / EXPERIMENT, ignore_errors=True)
        tuner = _new_tuner(runnable, dataset, space, max_params, plan, seed=seed,
                           journal=journal, workers=workers, storage=storage,
                           callback=ProgressLog(log, best, plan.trial_s, first_rung))
    grid = tuner.fit()
    return _outcome(grid, grid._experiment_analysis.trials, plan, first_rung, storage)


def _new_tuner(runnable: Any, dataset: Dataset, space: SearchSpace, max_params: int,
               plan: Plan, *, seed: int, journal: Journal, workers: Workers, storage: Storage,
               callback: ProgressLog) -> tune.Tuner:
    from ray.tune.schedulers import ASHAScheduler

    scheduler = ASHAScheduler(time_attr="train_seconds", max_t=plan.trial_s,
                              grace_period=(plan.milestones or (plan.trial_s,))[0],
                              reduction_factor=3)
    return tune.Tuner(
        runnable,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="max", scheduler=scheduler, num_samples=100_000,
            search_alg=SpaceSearcher(space, dataset.shape, max_params, seed, journal.path,
                                     plan),
            max_concurrent_trials=workers.concurrency, time_budget_s=plan.search_s + 5.0,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT, storage_path=storage.root, verbose=0,
            callbacks=[callback], stop=StopOnRequest(),
            # one checkpoint per trial on disk; a kill between Tune's deleting the previous
            # one and its next snapshot is repaired at resume (autofit/search/checkpoints.py)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


class StopOnRequest(tune.Stopper):
    """Ends every trial when the run is asked to stop (autofit/stopping.py): Tune then returns
    what the trials had, and the run keeps its best model."""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return stopping.pending()


def _outcome(grid: Any, trials: list[Any], plan: Plan, first_rung: float, storage: Storage,
             unfinished: dict[int, Found] | None = None) -> SearchOutcome:
    """Every trial's record (none when no trial ran before the deadline: the phase then
    trains the prior); an error when every trial failed. Trials that reported no score and no
    error (a 0.5-minute run's one trial had reported only at its deadline, unevaluated) are not
    failures: with no contender, the phase trains the prior."""
    overrun = time.time() - plan.search_deadline
    configs = {t.trial_id: t.config for t in trials}
    records = [r for r in (_record(result, plan.trial_s, configs, storage, unfinished)
                           for result in grid) if r is not None]
    outcome = SearchOutcome(records=sorted(records, key=lambda r: r.number),
                            overrun_s=round(overrun, 3), min_trained_s=first_rung)
    first = next((r.error for r in outcome.records if r.error), None)
    if first is not None and outcome.best.score < 0:
        raise SearchFailed(f"every trial failed; first error: {first}", outcome)
    return outcome

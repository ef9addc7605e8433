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

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ray import tune
from ray.tune.search import Searcher

from autofit import packing
from autofit.best import BestSoFar
from autofit.budget import ComputeCap, Plan
from autofit.dataset import Dataset
from autofit.errors import AutofitError
from autofit.events import emit, ranked
from autofit.journal import Journal
from autofit.models import DataShape
from autofit.packing import Probe, gpu_share, trials_per_gpu
from autofit.space import SearchSpace, TrialConfig
from autofit.trial import TRIAL_KEY, TrialData, parse_config, trainable

if TYPE_CHECKING:
    from autofit.tpe import TpeSampler

METRIC = "val_accuracy"
LOG_EVERY_S = 5.0
EXPERIMENT = "search"
PROBE_TIMEOUT_S = 120.0  # the GPU memory probe: Ray worker and CUDA start-up, a few steps
FAILURES_BEFORE_GIVING_UP = 3  # failed trials, with none succeeding, that end the search
STATUS = {"completed": "completed", "deadline": "stopped at search deadline",
          "diverged": "diverged", "running": "stopped by ASHA"}
UNTRAINED = "not trained: search skipped"  # the space's prior when the plan skips the search


@dataclass
class TrialRecord:
    """One trial as the leaderboard shows it."""

    number: int
    trial_id: str
    config: TrialConfig
    metrics: dict[str, Any] = field(default_factory=dict)
    status: str = "no result"
    error: str | None = None
    checkpoint: str | None = None  # the trial's last checkpoint directory

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "config": self.config.model_dump()}

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> TrialRecord:
        return cls(**{**fields, "config": TrialConfig.model_validate(fields["config"])})

    @property
    def score(self) -> float:
        return ranked(self.metrics.get(METRIC), self.error is None and self.status != "diverged")

    @property
    def trained_s(self) -> float:
        return float(self.metrics.get("train_seconds") or 0.0)


@dataclass
class SearchOutcome:
    records: list[TrialRecord]
    overrun_s: float  # how long after the search deadline Tune handed back (negative: before)
    prior: TrialRecord | None = None  # with no records: the untrained config the refit trains

    @property
    def searched(self) -> bool:
        return self.prior is None

    @property
    def top(self) -> TrialRecord:
        """The highest validation accuracy (the leaderboard's first row); the prior when the
        search was skipped."""
        if self.prior is not None:
            return self.prior
        return max(self.records, key=lambda r: (r.score, r.trained_s))

    @property
    def best(self) -> TrialRecord:
        """The winner: of the trials within one standard error of the top validation accuracy
        (a difference the validation set cannot tell from noise), the one trained the longest:
        its score is the surest and the refit continues more of its training. A 5-minute CIFAR
        run had refitted a 0.71-epoch draw over the prior's full trial on 0.4352 against 0.4350
        (71.9% against the prior's recipe at 78.2%)."""
        top = self.top
        images = float(top.metrics.get("val_images") or 0)
        if top.score < 0 or images <= 0:
            return top
        noise = math.sqrt(top.score * (1 - top.score) / images)
        ties = [r for r in self.records if r.score >= top.score - noise]
        return max(ties, key=lambda r: (r.trained_s, r.score))


class SearchFailed(AutofitError):
    """Every trial failed: the message shows the first error; the records go to the report."""

    def __init__(self, message: str, outcome: SearchOutcome) -> None:
        super().__init__(message)
        self.outcome = outcome


class SpaceSearcher(Searcher):
    """Draws from the space, each draw fitted to the parameter cap: seeded random sampling, or
    with `searcher: tpe` Optuna's TPE, told each finished trial's score (autofit/tpe.py).

    It numbers trials, stops suggesting when no new trial could reach a milestone before the
    search deadline (read from the journal, so a resumed search uses the new one), and stops
    early when the first trials all fail. Its state is saved with Tune's experiment state.
    """

    def __init__(self, space: SearchSpace, shape: DataShape, max_params: int, seed: int,
                 journal: Path, cap: ComputeCap | None = None) -> None:
        super().__init__(metric=METRIC, mode="max")
        self.space, self.shape, self.max_params, self.journal = space, shape, max_params, journal
        self.cap = cap
        self.rng = np.random.default_rng(seed)
        self.count = self.failures = self.successes = 0
        self.stop_at = self._stop_at()
        self.tpe: TpeSampler | None = None
        if space.searcher == "tpe":  # imported only then: random search needs no Optuna
            from autofit.tpe import TpeSampler

            self.tpe = TpeSampler(space, shape, max_params, seed, cap)

    def _stop_at(self) -> float:
        return float(json.loads(self.journal.read_text())["search_clock"]["stop_suggesting_at"])

    def set_search_properties(self, metric, mode, config, **spec):  # type: ignore[no-untyped-def]
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if time.time() >= self.stop_at:
            return Searcher.FINISHED
        if self.failures >= FAILURES_BEFORE_GIVING_UP and not self.successes:
            return Searcher.FINISHED
        first = self.space.first_config(self.shape, self.max_params, self.cap) \
            if self.count == 0 else None
        if first is not None:
            config = first
        elif self.tpe is not None:
            config = self.tpe.suggest(trial_id)
        else:
            config = self.space.sample(self.rng, self.shape, self.max_params, cap=self.cap)
        self.count += 1
        return {**config.model_dump(), TRIAL_KEY: self.count}

    def on_trial_complete(self, trial_id, result=None, error=False):  # type: ignore[no-untyped-def]
        value = float((result or {}).get(METRIC, math.nan))
        diverged = bool(result) and result.get("state") == "diverged"
        if error:
            self.failures += 1
        elif result and not diverged and math.isfinite(value):
            self.successes += 1
        if self.tpe is not None:  # an ASHA-stopped trial: the score of its last rung
            state = "FAIL" if error else "PRUNED" if diverged else "COMPLETE"
            self.tpe.tell(trial_id, value, state)

    def save(self, checkpoint_path: str) -> None:
        state = {"rng": self.rng.bit_generator.state, "count": self.count,
                 "failures": self.failures, "successes": self.successes,
                 "tpe": self.tpe.history if self.tpe is not None else None}
        Path(checkpoint_path).write_text(json.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.rng.bit_generator.state = state["rng"]
        self.count, self.failures = state["count"], state["failures"]
        self.successes = state["successes"]
        self.stop_at = self._stop_at()
        if self.tpe is not None and state.get("tpe") is not None:
            self.tpe.load(state["tpe"])


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

    def __init__(self, log: logging.Logger, best: BestSoFar, trial_s: float) -> None:
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
             **{k: result[k] for k in _METRIC_KEYS if k in result})

    def on_trial_error(self, iteration, trials, trial, **info):  # type: ignore[no-untyped-def]
        number, error = parse_config(trial.config)[0], _last_line(_error_text(trial))
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


_METRIC_KEYS = ("val_accuracy", "val_images", "train_seconds", "epoch", "steps", "images_per_s",
                "eval_images_per_s", "loss", "state", "batch_size", "oom_retries")


def _error_text(trial: Any) -> str:
    """The trial's error as Tune wrote it on this node (its synced copy may lag)."""
    try:
        return Path(trial.error_file).read_text()
    except (OSError, TypeError):
        return str(trial.get_error() or "unknown error")


def _last_line(text: str) -> str:
    """The line of an error that says what happened (Ray's worker-death text is a page)."""
    if "worker process has died" in text or "actor died" in text:
        return "its Ray worker process died (killed, out of host memory, or crashed)"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def _record(result: Any, trial_s: float,
            configs: dict[str, dict[str, Any]]) -> TrialRecord | None:
    """A Tune result as a leaderboard row; None for a trial that never ran. A trial that
    failed before its first report has no config in its result: `configs` (by trial id, from
    Tune's trial objects) has it."""
    if not result.metrics and result.error is None:
        return None
    number, config = parse_config(result.config or configs[result.metrics["trial_id"]])
    metrics = {k: result.metrics[k] for k in _METRIC_KEYS if k in (result.metrics or {})}
    record = TrialRecord(number, str(result.metrics.get("trial_id", number)), config, metrics,
                         checkpoint=result.checkpoint.path if result.checkpoint else None)
    if result.error is not None:
        record.error, record.status = _last_line(str(result.error)), "error"
    elif metrics:
        record.status = status_of(metrics, trial_s)
    return record


@dataclass(frozen=True)
class Workers:
    """Where trials run and what each gets: a whole node's CPUs (one trial per node), or on
    GPUs a share of one, as many trials per GPU as the memory probe says fit (autofit/
    packing.py), with that GPU's CPUs split between them. `packing` records the probe."""

    where: str
    trial_cpus: int
    trial_gpus: float
    concurrency: int
    packing: dict[str, Any] | None = None  # GPU runs: the probe and trials per GPU


def plan_workers(nodes: list[dict[str, float]], device: str,
                 measured: tuple[int, int] | None = None, why: str | None = None) -> Workers:
    """Trial resources for the live Ray nodes' resources. On CUDA, `measured` is the probe's
    (bytes one trial holds, bytes a GPU has); without it (`why` says why), one trial per GPU
    with a node's CPUs, as before packing existed."""
    cpus = int(max(node.get("CPU", 1) for node in nodes))
    if device != "cuda":
        return Workers("", cpus, 0, sum(1 for n in nodes if n.get("CPU", 0) >= cpus))
    gpus = max(1, int(sum(n.get("GPU", 0) for n in nodes)))
    if measured is None:
        return Workers("", cpus, 1, gpus, packing={
            "trials_per_gpu": 1, "peak_bytes": None, "gpu_bytes": None,
            "note": why or "no memory probe"})
    peak, total = measured
    per_gpu = trials_per_gpu(peak, total)
    gpu_cpus = min((int(n.get("CPU", 1)) // int(n["GPU"]) for n in nodes if n.get("GPU", 0) >= 1),
                   default=cpus)
    trial_cpus = cpus if per_gpu == 1 else max(1, gpu_cpus // per_gpu)
    return Workers("", trial_cpus, 1 if per_gpu == 1 else gpu_share(per_gpu), per_gpu * gpus,
                   packing={"trials_per_gpu": per_gpu, "peak_bytes": peak, "gpu_bytes": total,
                            "note": why})


def describe_workers(workers: Workers, where: str, nodes: int) -> str:
    """The line the plan shows (and the summary keeps) about where trials run."""
    text = (f"{where}: {nodes} node(s), {workers.concurrency} trial(s) at a time, "
            f"{workers.trial_cpus} CPUs each")
    packing = workers.packing
    if packing is None:
        return text
    if packing["peak_bytes"] is None:
        return f"{text}, 1 per GPU ({packing['note']})"
    return (f"{text}, {packing['trials_per_gpu']} per GPU (memory probe: "
            f"{packing['peak_bytes'] / 2**30:.2f} GiB per trial of "
            f"{packing['gpu_bytes'] / 2**30:.0f} GiB)")


def run_search(dataset: Dataset, space: SearchSpace, max_params: int, plan: Plan, *,
               seed: int, journal: Journal, device: str, workers: Workers, best: BestSoFar,
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
    journal.set(search_clock={"stop_suggesting_at": stop_suggesting_at})
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
    outcome = SearchOutcome(sorted(records, key=lambda r: r.number), round(overrun, 3))
    if not outcome.records:
        raise AutofitError("the search ran no trial before its deadline; give a larger budget")
    if outcome.best.score < 0:
        first = next((r.error for r in outcome.records if r.error), "no trial reported a result")
        raise SearchFailed(f"every trial failed; first error: {first}", outcome)
    return outcome


class _Fold(logging.Handler):
    """Ray's own log records, as lines of the run's log (and so of its console view)."""

    def __init__(self, log: logging.Logger) -> None:
        super().__init__()
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log.log(max(record.levelno, logging.WARNING), "ray: %s", record.getMessage())


@contextmanager
def _ray_logs_into(log: logging.Logger) -> Iterator[None]:
    ray_log = logging.getLogger("ray")
    own = list(ray_log.handlers)
    ray_log.handlers = [_Fold(log)]
    try:
        yield
    finally:
        ray_log.handlers = own


@contextmanager
def ray_session(address: str | None, threads: int, device: str, log: logging.Logger,
                probe: Probe | None = None) -> Iterator[Workers]:
    """Connect to `address` (an existing cluster) or start a local Ray; yield its workers.

    Only a Ray this call started is shut down. Tune's per-trial loggers are off (the
    leaderboard and summary are autofit's record of the search), and what Ray logs goes into
    the run's log instead of beside it. On CUDA, `probe` (the space, cap and data) sizes how
    many trials share a GPU; without it each trial gets a whole GPU.
    """
    with _ray_logs_into(log):
        yield from _ray_session(address, threads, device, probe)


def _measure(probe: Probe) -> tuple[tuple[int, int] | None, str | None]:
    """The memory probe, run in a Ray task holding one GPU (the device trials will use, in a
    process of its own whose CUDA context ends with it): its result, or why there is none."""
    import ray

    task = ray.remote(num_gpus=1, num_cpus=1, max_calls=1)(packing.measure)
    ref = task.remote(probe)
    try:
        measured = ray.get(ref, timeout=PROBE_TIMEOUT_S)
    except Exception as err:  # noqa: BLE001 - any failure: one trial per GPU, as before
        ray.cancel(ref, force=True)
        return None, f"memory probe failed: {_last_line(str(err))}"
    return measured, None if measured is not None else "memory probe found no CUDA device"


def _ray_session(address: str | None, threads: int, device: str,
                 probe: Probe | None = None) -> Iterator[Workers]:
    import ray

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ctrl-C must stop the whole run: Tune's own handler would end only the search.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    # Every trial report carries a checkpoint and Tune snapshots its state after each (that is
    # what makes a resume lose nothing); its warning about frequent snapshots is moot here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": logging.ERROR}
        if address:
            kwargs["address"] = address
        else:  # a Ray of its own, even when another run's Ray is up on this machine
            kwargs.update(address="local", num_cpus=threads)
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise AutofitError(f"cannot start or reach Ray at {address or 'local'}: "
                               f"{_last_line(str(err))}") from None
    try:
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        measured, why = None, None if probe is not None else "no memory probe asked for"
        if device == "cuda" and probe is not None:
            if any(n.get("GPU", 0) >= 1 for n in nodes):
                measured, why = _measure(probe)
            else:
                why = "no Ray node has a whole GPU to probe"
        workers = plan_workers(nodes, device, measured, why)
        where = f"ray cluster at {address}" if address else "local ray"
        yield replace(workers, where=describe_workers(workers, where, len(nodes)))
    finally:
        if started:
            ray.shutdown()

"""`run()`: the whole job, in order, inside the budget.

setup (data, device) -> search (Ray Tune trials, or the space's prior alone) -> refit ->
export -> evaluate -> report. Every phase takes its time from one `Clock`; the phases tile
the run and are recorded. A killed run resumes (`resume`) at the phase it was in.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

from autofit import __version__, delivery, events, extension, faults, stopping
from autofit.budget import Budget, Clock
from autofit.config import RunArgs, TrialConfig
from autofit.context import RunContext
from autofit.data import mirror, pipeline
from autofit.data.dataset import Dataset, load
from autofit.data.sources import NAMED
from autofit.deliver import best as best_so_far
from autofit.deliver import latency, quantize
from autofit.deliver.evaluate import untrained_speed
from autofit.deliver.export import model_metadata
from autofit.environment import scoped_environment
from autofit.errors import (
    AutofitError,
    Interrupted,
    SearchFailed,
    Stopped,
    StopRequested,
    UsageError,
)
from autofit.journal import Journal, prepare_run_dir
from autofit.latency_budget import LatencyCap
from autofit.models import DataShape
from autofit.presets import preset
from autofit.records import Decision, Summary
from autofit.reporting import summary as summaries
from autofit.reporting.leaderboard import write_leaderboard
from autofit.reporting.logs import close_logger, run_logger
from autofit.search import decided, learning_rate, resolution
from autofit.search.cluster import check_address
from autofit.search.latency_fit import check_latency, latency_work
from autofit.search.space import SearchSpace
from autofit.stopping import StopSwitch
from autofit.storage import run_folder, storage_root
from autofit.train import precision

LEADERBOARD = "leaderboard.csv"


@dataclass
class RunResult:
    """What a finished run gives back; `export` copies the verified, scored ONNX model."""

    run_dir: Path
    model_path: Path
    test_accuracy: float
    val_accuracy: float | None  # None: the search was skipped, no trial was scored
    params: int
    best_config: TrialConfig
    summary: Summary = field(repr=False)

    def export(self, path: str | Path) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.model_path, target)
        return target


def run(data: str | Path | None = None, budget: Budget | None = None, *,
        out: str | Path | None = None, seed: int = 0, space: str | Path = "default",
        ray_address: str | None = None, storage: str | None = None,
        started_at: float | None = None, quiet: bool = False,
        data_root: str | Path | None = None, weights: str | Path | None = None) -> RunResult:
    """Search, refit, export and score a model for the dataset at `data` within `budget`.

    `data` is a folder, a label CSV, a .npz, or a dataset name (`cifar10`, ...) found under
    `data_root` in torchvision's layout; `data=None` uses the embedded 8x8 digits.
    `ray_address` (default $RAY_ADDRESS, as Ray sets it for a job's driver) runs on a cluster;
    `storage` (a path every Ray node mounts, or a URI such as s3://bucket/dir) holds Tune's
    state and the checkpoints, as a cluster of more than one node needs.
    `started_at` (a time.time() value) lets the CLI count its own start-up against the budget.
    `weights` (a state_dict file or a folder of them) is where the space's `pretrained` family
    finds its starting weights; without it, torch's hub cache (autofit/models/pretrained.py).
    If the run is killed, `resume(out)` goes on.
    """
    weights = weights_where(weights)  # before the run directory is made
    ray_address = ray_address or os.environ.get("RAY_ADDRESS") or None  # as `ray job submit` sets
    check_address(ray_address)
    budget = budget or Budget.from_yaml(preset("budgets", "default"))
    space_path = preset("search_spaces", space)
    root = None if storage is None else storage_root(storage)
    out_dir = prepare_run_dir(out)
    args = run_args(data, budget, seed=seed, space_path=space_path, data_root=data_root,
                    weights=weights, ray_address=ray_address,
                    storage=None if root is None else run_folder(root, out_dir.name))
    return _execute(Journal.create(out_dir, args), started_at, quiet)


def run_args(data: str | Path | None, budget: Budget, *, seed: int, space_path: Path,
             data_root: str | Path | None, weights: str | Path | None,
             ray_address: str | None = None, storage: str | None = None) -> RunArgs:
    """What a run is asked to do, its paths made absolute as the journal keeps them."""
    return RunArgs(data=data_where(data), data_root=None if data_root is None else
                   str(Path(data_root).resolve()), budget=budget, seed=seed,
                   space=str(space_path.resolve()), ray_address=ray_address, storage=storage,
                   weights=weights_where(weights))


def weights_where(weights: str | Path | None) -> str | None:
    """--weights as the journal keeps it: an absolute path; an error where there is none."""
    if weights is not None and not Path(weights).exists():
        raise UsageError(f"--weights {weights} does not exist")
    return None if weights is None else str(Path(weights).resolve())


def data_where(data: str | Path | None) -> str | None:
    """The data as the journal keeps it: a dataset's name, else an absolute path, so a resume
    from another directory finds the same data."""
    if data is None or (str(data) in NAMED and not Path(data).exists()):
        return None if data is None else str(data)
    return str(Path(data).resolve())


def resume(run_dir: str | Path, *, ray_address: str | None = None,
           started_at: float | None = None, quiet: bool = False) -> RunResult:
    """Continue a run that was killed or interrupted, with the budget it had left.

    Finished trials are kept, unfinished ones and the refit continue from their last
    checkpoint; the time the run lay dead does not count against its budget.
    """
    check_address(ray_address)
    journal = Journal.open(Path(run_dir))
    if ray_address is not None:
        journal.set(args=journal.args.model_copy(update={"ray_address": ray_address}))
    return _execute(journal, started_at, quiet)


def extend(parent: str | Path, minutes: float, *, out: str | Path | None = None,
           quantize: str | None = None, started_at: float | None = None,
           quiet: bool = False) -> RunResult:
    """Train the finished run at `parent` for `minutes` more, from its refit weights, as a new
    run that names it; the better model on validation is kept (autofit/extension.py), and
    quantized where `quantize` (or the parent's budget) asks."""
    args = extension.Parent(Path(parent)).args(minutes, quantize)
    return _execute(Journal.create(prepare_run_dir(out), args), started_at, quiet)


def _execute(journal: Journal, started_at: float | None, quiet: bool) -> RunResult:
    budget_s = journal.args.budget.seconds
    clock = Clock(budget_s, started_at, spent=journal.state.spent)
    ctx = RunContext(journal, clock, run_logger(journal.run_dir, clock, budget_s, quiet),
                     threads=os.cpu_count() or 1)
    switch = StopSwitch(journal.run_dir)
    try:
        with journal.heartbeat(clock, on_beat=switch.poll), scoped_environment(), \
                switch.active():
            try:
                if journal.state.status == "tested":
                    return _report_only(ctx)
                return _run(ctx)
            except StopRequested:
                return _stopped(ctx)
    except SearchFailed as err:
        write_leaderboard(ctx.run_dir / LEADERBOARD, err.outcome.records)
        _record_failure(ctx, "search", err)
        raise
    except Stopped:
        raise  # its summary says so: stopped on request, before any model was exported
    except AutofitError as err:
        _record_failure(ctx, clock.phase, err)
        raise
    except KeyboardInterrupt:
        message = (f"interrupted after {clock.elapsed():.1f}s of {budget_s:.0f}s; "
                   f"resume with: autofit run --resume {ctx.run_dir}")
        ctx.log.warning("%s", message)
        raise Interrupted(message) from None
    finally:
        close_logger(ctx.log)


def _record_failure(ctx: RunContext, phase: str, err: AutofitError) -> None:
    """Say why the run stopped, in the log and in summary.json; on a full disk even the summary
    may fail to write, and the error stands."""
    ctx.log.error("error: %s", err)
    with suppress(OSError):
        summaries.write(summaries.failed(ctx, phase, err), ctx.run_dir)


def _run(ctx: RunContext) -> RunResult:
    _say_start(ctx)
    space, weights_found = SearchSpace.load(Path(ctx.args.space)).with_weights(ctx.args.weights)
    if weights_found is not None:
        ctx.log.info("%s", weights_found)
    dataset = ctx.dataset = load_data(ctx, space)
    if not ctx.args.parent:  # an extension trains its parent's configuration as it was
        space = decide(ctx, space, dataset)
    stopping.check()  # from here a stop request has test images to score the best model on
    metadata = model_metadata(dataset, ctx.budget)
    if ctx.args.parent:
        metadata["parent"] = ctx.args.parent
    keeper = best_so_far.BestSoFar(ctx.run_dir, dataset.shape, *dataset.mean_std,
                                   images=dataset.x_val[:best_so_far.PARITY_IMAGES],
                                   metadata=metadata, threads=ctx.threads)
    from autofit.search.phase import ray_for, search_phase  # Ray: only where it is used

    with ExitStack() as stack:
        if ctx.args.ray_address:  # on a cluster, Ray stays up: the refit and export run there
            ctx.cluster = stack.enter_context(ray_for(ctx, dataset, space))
        if ctx.args.parent:
            ctx.outcome, ctx.plan = extension.extension_phase(ctx, dataset)
        else:
            ctx.outcome, ctx.plan = search_phase(ctx, dataset, space, keeper)
        stopping.check()
        write_leaderboard(ctx.run_dir / LEADERBOARD, ctx.outcome.records)
        ctx.start_phase("refit")
        if ctx.cluster is None:
            delivery.deliver_here(ctx, dataset, keeper, metadata)
        else:
            delivery.deliver_on_cluster(ctx, dataset, keeper, metadata)
        if ctx.args.parent:
            ctx.extension = extension.keep_better(ctx, dataset)
            if quantize.wanted(ctx):  # the model kept, whichever it is
                quantize.deliver_int8(ctx, dataset)

    ctx.start_phase("report")
    summary = summaries.finished(ctx, dataset, space.source)
    summaries.write(summary, ctx.run_dir)
    ctx.journal.set(status="tested")
    return _finish(ctx, summary)


def _say_start(ctx: RunContext) -> None:
    budget, clock = ctx.budget, ctx.clock
    fields = _start_fields(ctx, budget.seconds, budget.max_params)
    if ctx.resumed:
        events.emit(ctx.log, "start", "autofit %s: resuming %s with %.1fs of %.0fs left (phase "
                    "%s when it stopped)", __version__, ctx.run_dir, clock.left(),
                    budget.seconds, ctx.journal.state.phase, **fields)
    else:
        events.emit(ctx.log, "start", "autofit %s: budget %.4g min, %s params max, seed %d, "
                    "run dir %s", __version__, budget.minutes, f"{budget.max_params:,}",
                    ctx.seed, ctx.run_dir, **fields)


def load_data(ctx: RunContext, space: SearchSpace) -> Dataset:
    """The device, data path and precision, said in the log; the data, loaded and checked
    against the caps, and on a resume against the data the run started with."""
    import torch

    ctx.device = "cuda" if torch.cuda.is_available() else "cpu"
    path, amp = pipeline.choose(ctx.device), precision.choose(ctx.device)
    ctx.data_path, ctx.precision = path.name, amp.name
    where = f"cuda ({torch.cuda.get_device_name(0)})" if ctx.device == "cuda" else \
        "cpu (no GPU found)"
    level = logging.WARNING if path.name == pipeline.TORCH else logging.INFO
    events.emit(ctx.log, "device", "device: %s; data path %s: %s; precision %s", where,
                path.name, path.reason, amp.reason, level=level, device=ctx.device,
                data_path=path.name, reason=path.reason, precision=amp.name,
                summary=f"device {where} · data path {path.name} · {amp.name}")
    args = ctx.args
    dataset = load(args.data, ctx.seed, ctx.threads,
                   check=lambda shape: _check_caps(ctx, space, shape), path=path,
                   data_root=None if args.data_root is None else Path(args.data_root))
    for note in dataset.notes:
        ctx.log.info("data: %s", note)
    res = dataset.resolution
    ctx.log.info("data: %s, %d classes, %s, images %dx%d, %d channel%s (%s)", dataset.source,
                 len(dataset.classes), dataset.sizes(), res.width, res.height, res.channels,
                 "" if res.channels == 1 else "s", res.how)
    fingerprint, recorded = dataset.fingerprint(), ctx.journal.state.data
    if recorded is not None and recorded != fingerprint:
        raise UsageError(f"--resume {ctx.run_dir}: the data at {args.data} changed since the "
                         f"run started ({recorded.model_dump()} then, "
                         f"{fingerprint.model_dump()} now)")
    ctx.journal.set(data=fingerprint)
    ctx.test_speed = functools.partial(untrained_speed, dataset=dataset, run_dir=ctx.run_dir,
                                       threads=ctx.threads)
    return dataset


def decide(ctx: RunContext, space: SearchSpace, dataset: Dataset) -> SearchSpace:
    """The choices made from the data (data/mirror.py, then search/resolution.py with the
    mirror's pins, then search/learning_rate.py with both), said in the log, kept for the
    summary and in the journal (a resumed run keeps them: the resolution A/B and the range
    test are timed, and may not come out the same twice); the space they fix and scale."""
    recorded = ctx.journal.state.data_decided
    if recorded is not None:
        ctx.decisions = list(recorded)
        ctx.log.info("data: the decisions made before the interruption stand: %s",
                     "; ".join(d.name for d in recorded))
        return decided.pinned(space, ctx.decisions)
    ctx.decisions = []
    makers: dict[str, Callable[[SearchSpace], Decision]] = {
        "mirror": lambda now: mirror.decide(dataset, ctx.seed),
        "resolution": lambda now: resolution.decide(
            dataset, now, ctx.budget.seconds, ctx.device, ctx.threads, ctx.seed),
        "lr": lambda now: learning_rate.decide(
            dataset, now, ctx.budget.seconds, ctx.device, ctx.threads, ctx.seed,
            shrink=decided.shrink(now))}
    for name, make in makers.items():
        ctx.decisions.append(_said(ctx, make(decided.pinned(space, ctx.decisions))
                                   if name in space.decide else decided.left_out(name, space)))
    ctx.journal.set(data_decided=list(ctx.decisions))
    return decided.pinned(space, ctx.decisions)


def _said(ctx: RunContext, decision: Decision) -> Decision:
    """`decision`, said in the log and the event stream."""
    events.emit(ctx.log, "decision", "data: %s", decision.evidence, name=decision.name,
                pinned=decision.pinned, measured=decision.measured)
    return decision


def _check_caps(ctx: RunContext, space: SearchSpace, shape: DataShape) -> None:
    """The caps against the data's shape, before the decode: the parameter cap; with
    --max-latency-ms, this machine's latency model, calibrated here (a plan an earlier life
    made keeps its own), and the fastest model of the space against the cap."""
    space.check_fits(shape, ctx.budget.max_params)
    max_ms = ctx.budget.max_latency_ms
    if max_ms is None or ctx.journal.state.plan is not None:
        return
    model = latency.calibrate(shape, list(space.families), ctx.threads, latency_work)
    ctx.log.info("latency: onnxruntime batch-1 latency on %d threads, calibrated in %.1fs on %d "
                 "reference networks: %s", model.threads, model.seconds, len(model.references),
                 model.describe())
    unpriced = [family for family in space.families if family not in latency.REFERENCES]
    if unpriced:
        ctx.log.warning("latency: %s has no reference networks of its own: it is priced at "
                        "the others' prices", ", ".join(unpriced))
    family, arch, passes, ms = check_latency(space, shape, ctx.budget.max_params,
                                             LatencyCap(model=model, max_ms=max_ms))
    ctx.latency = model
    ctx.log.info("latency: every model must take at most %g ms per image; the fastest the space "
                 "has (%s %s, %d forward pass%s) takes about %.3g ms", max_ms, family,
                 " ".join(f"{k}={v}" for k, v in arch.items()), passes,
                 "" if passes == 1 else "es", ms)


def _finish(ctx: RunContext, summary: Summary) -> RunResult:
    """Render the report and close the run. The scored summary is on disk before this, so a
    run killed here resumes into this step alone, with no data to load or model to retrain."""
    faults.kill_at("report")
    from autofit.reporting.html_report import render_or_warn  # matplotlib: only here

    render_or_warn(ctx.run_dir, ctx.log)
    summary = summary.model_copy(update={  # the report's own seconds included
        **summaries.times(ctx.clock, ctx.journal), "resumes": len(ctx.journal.state.lives) - 1,
        "lives": ctx.journal.state.lives})
    with suppress(OSError):  # the first write stands
        summaries.write(summary, ctx.run_dir)
    ctx.journal.set(status=summary.status)
    events.emit(ctx.log, "done", "%s in %.1fs of %.1fs: %s",
                "done" if summary.status == "finished" else summary.status, summary.elapsed_s,
                summary.budget_s, ctx.run_dir, elapsed_s=summary.elapsed_s,
                test_accuracy=summary.test_accuracy, status=summary.status)
    assert summary.test_accuracy is not None and summary.params is not None
    assert summary.best_config is not None
    return RunResult(run_dir=ctx.run_dir, model_path=ctx.run_dir / delivery.MODEL,
                     test_accuracy=summary.test_accuracy, val_accuracy=summary.val_accuracy,
                     params=summary.params, best_config=summary.best_config, summary=summary)


def _stopped(ctx: RunContext) -> RunResult:
    """A stop request: the best model exported so far, scored, summarised and reported."""
    summary = delivery.stopped(ctx)
    ctx.start_phase("report")
    return _finish(ctx, summary)


def _start_fields(ctx: RunContext, budget_s: float, max_params: int) -> dict[str, object]:
    """What a run's `start` event carries, in a first life or a resumed one."""
    return {"t": ctx.clock.spent_before, "version": __version__, "run_dir": str(ctx.run_dir),
            "budget_s": budget_s, "max_params": max_params, "resumed": ctx.resumed}


def _report_only(ctx: RunContext) -> RunResult:
    """The rest of a run killed after its test pass: the report, from the summary it wrote."""
    path = ctx.run_dir / summaries.FILE
    summary = Summary.read(path)
    if summary is None or summary.status != "finished":
        raise AutofitError(f"--resume {ctx.run_dir}: {path} is unreadable; the model is "
                           f"{ctx.run_dir / delivery.MODEL}")
    events.emit(ctx.log, "start", "autofit %s: resuming %s after its test pass; rendering the "
                "report", __version__, ctx.run_dir,
                **_start_fields(ctx, ctx.budget.seconds, ctx.budget.max_params))
    ctx.start_phase("report")
    return _finish(ctx, summary)



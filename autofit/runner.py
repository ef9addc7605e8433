"""`run()`: the whole job, in order, inside the budget.

budget -> space -> data -> search (Ray Tune trials) -> refit -> export -> evaluate -> report.
Every phase takes its time from one `Clock`; the phases tile the run and are recorded.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from autofit import __version__, events, faults, live, pipeline, precision, probe
from autofit import best as best_module
from autofit.best import BestSoFar
from autofit.budget import (
    EVAL_RATE_GUESS,
    Budget,
    Clock,
    Cost,
    Plan,
    final_reserve,
    test_pass_rate,
)
from autofit.dataset import Dataset, load
from autofit.errors import AutofitError, Interrupted, UnreadableData, UsageError, one_line
from autofit.evaluate import onnx_rate, score_onnx
from autofit.events import emit
from autofit.export import export_onnx
from autofit.journal import TESTED, Journal, RunArgs
from autofit.models import count_work
from autofit.packing import Probe
from autofit.presets import preset
from autofit.refit import RefitInfo, refit
from autofit.report import save_weights, write_json, write_leaderboard
from autofit.search import (
    UNTRAINED,
    SearchFailed,
    SearchOutcome,
    TrialRecord,
    ray_session,
    run_search,
)
from autofit.sources import NAMED
from autofit.space import SearchSpace, TrialConfig
from autofit.trial import load_state, make_model

RUN_MARKERS = ("journal.json", "summary.json", "model.onnx", "best_so_far.onnx",
               "leaderboard.csv", "tune")


@dataclass
class RunResult:
    """What a finished run gives back; `export` copies the verified, scored ONNX model."""

    run_dir: Path
    model_path: Path
    test_accuracy: float
    val_accuracy: float | None  # None: the search was skipped, no trial was scored
    params: int
    best_config: dict[str, Any]
    summary: dict[str, Any] = field(repr=False)

    def export(self, path: str | Path) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.model_path, target)
        return target


class _Elapsed(logging.Formatter):
    """Prefix each line with the budget seconds used (earlier lives of a resumed run included)."""

    def __init__(self, budget_time: events.BudgetTime) -> None:
        super().__init__()
        self.budget_time = budget_time

    def format(self, record: logging.LogRecord) -> str:
        return f"[{self.budget_time.of(record):7.1f}s] {record.getMessage()}"


def prepare_out(out: str | Path | None) -> Path:
    """Create the run directory, refusing one that already holds a run or cannot be written."""
    path = Path(out) if out is not None else Path("runs") / datetime.now().strftime(
        "%Y%m%d-%H%M%S")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"--out {path} is not writable: {err.strerror or err}") from None
    taken = [m for m in RUN_MARKERS if (path / m).exists()]
    if taken:
        hint = " (resume it with --resume)" if "journal.json" in taken else ""
        raise UsageError(f"--out {path} already holds a run ({', '.join(taken)}){hint}; "
                         "choose another directory")
    return path


def _logger(out_dir: Path, clock: Clock, budget_s: float, quiet: bool) -> logging.Logger:
    """The run's logger, named after its directory so Tune's restored callbacks find it.

    Its handlers are the views of the run's events: run.log, events.jsonl, and on the console
    the live view at a terminal, plain lines otherwise (CI logs), nothing with `quiet`.
    """
    log = logging.getLogger(f"autofit.run:{out_dir.resolve()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    budget_time = events.BudgetTime(clock.spent_before, clock.started_at)
    log.addFilter(budget_time)
    text = _Elapsed(budget_time)
    run_log = logging.FileHandler(out_dir / "run.log")
    handlers: list[logging.Handler] = [run_log, events.EventFile(out_dir / events.FILE)]
    if live.wanted(quiet, sys.stdout):
        handlers.append(live.LiveView(budget_s, clock.elapsed))
    elif not quiet:
        console = logging.StreamHandler(sys.stdout)  # errors reach stderr from the CLI, once
        console.addFilter(lambda record: record.levelno < logging.ERROR)
        handlers.append(console)
    for handler in handlers:
        handler.setFormatter(text)
        if not isinstance(handler, events.EventFile | live.LiveView):
            handler.addFilter(events.shown)
        log.addHandler(handler)
    return log


def _phase(clock: Clock, log: logging.Logger, name: str) -> None:
    clock.start_phase(name)
    emit(log, "phase", "phase: %s", name, show=False, phase=name)


def _device(log: logging.Logger) -> tuple[str, pipeline.DataPath]:
    """The device trials train on, the data path that feeds them and the precision they train
    at, all said in the log."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = pipeline.choose(device)
    amp = precision.choose(device)
    where = f"cuda ({torch.cuda.get_device_name(0)})" if device == "cuda" else \
        "cpu (no GPU found)"
    level = logging.WARNING if path.name == pipeline.TORCH else logging.INFO
    emit(log, "device", "device: %s; data path %s: %s; precision %s", where, path.name,
         path.reason, amp.reason, level=level, device=device, data_path=path.name,
         reason=path.reason, precision=amp.name,
         summary=f"device {where} · data path {path.name} · {amp.name}")
    return device, path


def run(data: str | Path | None = None, budget: Budget | None = None, *,
        out: str | Path | None = None, seed: int = 0, space: str | Path = "default",
        ray_address: str | None = None, started_at: float | None = None,
        quiet: bool = False, data_root: str | Path | None = None) -> RunResult:
    """Search, refit, export and score a model for the dataset at `data` within `budget`.

    `data` is a folder, a label CSV, a .npz, or a dataset name (`cifar10`, ...) found under
    `data_root` in torchvision's layout; `data=None` uses the embedded 8x8 digits.
    `started_at` (a time.time() value) lets the CLI count its own start-up against the budget.
    If the run is killed, `resume(out)` goes on.
    """
    budget = budget or Budget.from_yaml(preset("budgets", "default"))
    space_path = preset("search_spaces", space)
    out_dir = prepare_out(out)
    args = RunArgs(data=_where(data), data_root=None if data_root is None else
                   str(Path(data_root).resolve()), budget=budget, seed=seed,
                   space=str(space_path.resolve()), ray_address=ray_address)
    return _execute(Journal.create(out_dir, args), started_at, quiet)


def _where(data: str | Path | None) -> str | None:
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
    journal = Journal.open(Path(run_dir))
    if ray_address is not None:
        journal.set(args={**journal.state["args"], "ray_address": ray_address})
    return _execute(journal, started_at, quiet)


def _execute(journal: Journal, started_at: float | None, quiet: bool) -> RunResult:
    args = journal.args
    clock = Clock(args.budget.seconds, started_at, spent=journal.spent)
    out_dir = journal.run_dir
    log = _logger(out_dir, clock, args.budget.seconds, quiet)
    try:
        with journal.heartbeat(clock):
            if journal.get("status") == TESTED:
                return _report_only(journal, clock, log)
            return _run(args, clock, journal, log)
    except SearchFailed as err:
        write_leaderboard(out_dir / "leaderboard.csv", err.outcome.records)
        _write_failure(out_dir, clock, "search", err, log)
        raise
    except AutofitError as err:
        _write_failure(out_dir, clock, clock.phase, err, log)
        raise
    except KeyboardInterrupt:
        message = (f"interrupted after {clock.elapsed():.1f}s of {args.budget.seconds:.0f}s; "
                   f"resume with: autofit run --resume {out_dir}")
        log.warning("%s", message)
        raise Interrupted(message) from None
    finally:
        close_logger(log)


def close_logger(log: logging.Logger) -> None:
    """Detach every view (the live view stops drawing), so a resume in this process starts
    afresh with its own budget time."""
    for handler in list(log.handlers):
        handler.close()
        log.removeHandler(handler)
    for stamp in list(log.filters):
        log.removeFilter(stamp)


def _write_failure(out_dir: Path, clock: Clock, phase: str, err: AutofitError,
                   log: logging.Logger) -> None:
    """Record why the run stopped; on a full disk even this may fail, and the error stands."""
    log.error("error: %s", err)
    summary = {"status": "failed", "failed_phase": phase, "error": str(err),
               "elapsed_s": round(clock.elapsed(), 3), "phases": clock.phases(),
               "best_so_far": _best_so_far(out_dir)}
    if isinstance(err, UnreadableData):
        summary["unreadable"] = [{"file": f, "reason": r} for f, r in err.bad]
    with suppress(OSError):
        write_json(out_dir / "summary.json", summary)


def _best_so_far(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / best_module.RECORD
    try:
        return {**json.loads(path.read_text()), "model": str(out_dir / best_module.MODEL)}
    except (OSError, ValueError):
        return None


def _run(args: RunArgs, clock: Clock, journal: Journal, log: logging.Logger) -> RunResult:
    threads = os.cpu_count() or 1
    budget, seed, out_dir = args.budget, args.seed, journal.run_dir
    resumed = bool(clock.spent_before)
    start = _start_fields(clock, out_dir, budget.seconds, budget.max_params)
    if resumed:
        emit(log, "start", "autofit %s: resuming %s with %.1fs of %.0fs left (phase %s when it "
             "stopped)", __version__, out_dir, clock.left(), budget.seconds,
             journal.get("phase"), **start)
    else:
        emit(log, "start", "autofit %s: budget %.4g min, %s params max, seed %d, run dir %s",
             __version__, budget.minutes, f"{budget.max_params:,}", seed, out_dir, **start)
    space = SearchSpace.load(Path(args.space))
    device, data_path = _device(log)
    dataset = load(args.data, seed, threads,
                   check=lambda shape: space.check_fits(shape, budget.max_params),
                   path=data_path, data_root=None if args.data_root is None else
                   Path(args.data_root))
    for note in dataset.notes:
        log.info("data: %s", note)
    res = dataset.resolution
    log.info("data: %s, %d classes, %s, images %dx%d, %d channel%s (%s)", dataset.source,
             len(dataset.classes), dataset.sizes(), res.width, res.height, res.channels,
             "" if res.channels == 1 else "s", res.how)
    fingerprint = {"classes": dataset.classes, "sizes": dataset.sizes(),
                   "shape": list(dataset.shape)}
    if journal.get("data", fingerprint) != fingerprint:
        raise UsageError(f"--resume {out_dir}: the data at {args.data} changed since the run "
                         f"started ({journal.get('data')} then, {fingerprint} now)")
    journal.set(data=fingerprint)
    metadata = {
        "classes": dataset.classes, "input_shape": list(dataset.shape[:3]),
        "input": "float32 NCHW, pixels in [0, 1], normalisation inside the graph",
        "resize": {"height": res.height, "width": res.width, "channels": res.channels,
                   "method": pipeline.RESIZE_METHOD, "chosen": res.how},
        "budget": {"minutes": budget.minutes, "max_params": budget.max_params},
        "autofit_version": __version__,
    }

    outcome, plan = _search(journal, dataset, space, budget, clock, device, threads, metadata,
                            log)
    best = outcome.best

    _phase(clock, log, "refit")
    model_pt = out_dir / "model.pt"
    if journal.get("refit") is not None and model_pt.is_file():
        model = make_model(best.config, dataset.shape, *dataset.mean_std)
        model.load_state_dict(load_state(model_pt))
        model.eval()
        refit_info = RefitInfo(**journal.get("refit"))
        log.info("refit: done before the interruption; weights from %s", model_pt)
    else:
        eval_rate = _eval_rate(out_dir, best, dataset, threads, plan.cost)
        reserve = final_reserve(len(dataset.y_test), eval_rate)
        log.info("refit: %.1fs kept for export, the test pass (%.0f images/s) and the report",
                 reserve, eval_rate)
        checkpoint = out_dir / "refit.pt"
        model, refit_info = refit(dataset, best, stop_at=clock.deadline - reserve,
                                  device=device, threads=threads, seed=seed, log=log,
                                  checkpoint=checkpoint)
        save_weights(model, model_pt)
        journal.set(refit=asdict(refit_info))
        checkpoint.unlink(missing_ok=True)

    _phase(clock, log, "export")
    model_path = out_dir / "model.onnx"
    try:
        faults.check_export()
        exported = export_onnx(model, model_path, dataset.x_test,
                               {**metadata, "params": best.config.params,
                                "val_accuracy": _val_accuracy(outcome)}, threads)
    except OSError as err:
        raise AutofitError(f"cannot write {model_path}: {err.strerror or err}; "
                           f"the refit weights are in {model_pt}") from None
    log.info("export: %s (%s exporter, opset %d), onnxruntime matches PyTorch to %.1e",
             model_path, exported.exporter, exported.opset, exported.parity_max_abs_diff)

    _phase(clock, log, "evaluate")
    test = score_onnx(model_path, dataset.x_test, dataset.y_test, threads,
                      len(dataset.classes))
    test_accuracy = test.accuracy
    emit(log, "test", "test accuracy (ONNX, onnxruntime): %.4f on %d images", test_accuracy,
         len(dataset.y_test), accuracy=test_accuracy, images=len(dataset.y_test))

    _phase(clock, log, "report")
    summary = _summary(budget, clock, plan, dataset, outcome, refit_info, exported,
                       test_accuracy, device, seed, space, journal)
    summary["test"] = test.as_dict(dataset.classes)
    write_json(out_dir / "summary.json", summary)
    journal.set(status=TESTED)
    return _finish(journal, clock, log, summary)


def _finish(journal: Journal, clock: Clock, log: logging.Logger,
            summary: dict[str, Any]) -> RunResult:
    """Render the report and close the run. The scored summary is on disk before this, so a
    run killed here resumes into this step alone, with no data to load or model to retrain."""
    out_dir = journal.run_dir
    faults.kill_at("report")
    _render_report(out_dir, log)
    summary.update(_times(clock, journal), resumes=len(journal.get("lives", [])) - 1,
                   lives=journal.get("lives", []))  # the report's own seconds included
    with suppress(OSError):  # the first write stands if this one fails
        write_json(out_dir / "summary.json", summary)
    journal.set(status="finished")
    emit(log, "done", "done in %.1fs of %.1fs: %s", summary["elapsed_s"], summary["budget_s"],
         out_dir, elapsed_s=summary["elapsed_s"], test_accuracy=summary["test_accuracy"])
    return RunResult(run_dir=out_dir, model_path=out_dir / "model.onnx",
                     test_accuracy=summary["test_accuracy"],
                     val_accuracy=summary["val_accuracy"], params=summary["params"],
                     best_config=summary["best_config"], summary=summary)


def _start_fields(clock: Clock, out_dir: Path, budget_s: float,
                  max_params: int) -> dict[str, Any]:
    """What a run's `start` event carries, in a first life or a resumed one."""
    return {"t": clock.spent_before, "version": __version__, "run_dir": str(out_dir),
            "budget_s": budget_s, "max_params": max_params,
            "resumed": bool(clock.spent_before)}


def _report_only(journal: Journal, clock: Clock, log: logging.Logger) -> RunResult:
    """The rest of a run killed after its test pass: the report, from the summary it wrote."""
    try:
        summary = json.loads((journal.run_dir / "summary.json").read_text())
    except (OSError, ValueError) as err:
        raise AutofitError(f"--resume {journal.run_dir}: summary.json is unreadable "
                           f"({one_line(err)}); the model is {journal.run_dir / 'model.onnx'}"
                           ) from None
    emit(log, "start", "autofit %s: resuming %s after its test pass; rendering the report",
         __version__, journal.run_dir, **_start_fields(clock, journal.run_dir,
                                                       summary["budget_s"],
                                                       summary["budget"]["max_params"]))
    _phase(clock, log, "report")
    return _finish(journal, clock, log, summary)


def _eval_rate(out_dir: Path, best: TrialRecord, dataset: Dataset, threads: int,
               cost: Cost | None) -> float:
    """Test-pass speed for sizing the final reserve: onnxruntime's, timed on the winner's own
    best_so_far.onnx when that is the winner; else the trial's PyTorch evaluation speed
    (float32, as the test pass); for a model no trial trained, onnxruntime's on the model
    untrained, or where that cannot be timed, predicted from the probe's cost of its work."""
    record = _best_so_far(out_dir)
    if record is not None and record.get("trial") == best.number:
        with suppress(OSError, RuntimeError, ValueError):  # cannot be timed: fall back
            return onnx_rate(Path(record["model"]), dataset.x_val, threads)
    measured = float(best.metrics.get("eval_images_per_s") or 0.0)
    if measured:
        return measured
    config = best.config
    with suppress(OSError, RuntimeError, ValueError, AutofitError):
        return _untrained_rate(config, dataset, out_dir, threads)
    if cost is None:
        return EVAL_RATE_GUESS
    return test_pass_rate(cost.seconds(count_work(config.family, config.arch, dataset.shape)),
                          config.recipe.test_passes)


def _untrained_rate(config: TrialConfig, dataset: Dataset, out_dir: Path,
                    threads: int) -> float:
    """onnxruntime's speed on `config`'s model with its initial weights (the speed does not
    depend on them): the probe prices training, which may run in bf16 while the test pass runs
    in float32. From the bf16 price, a 10-minute run's reserve assumed 450 images/s for a
    test pass of fastnet width 64 that ran at 186 and ended the run 18 s late."""
    model = make_model(config, dataset.shape, *dataset.mean_std)
    with tempfile.TemporaryDirectory(prefix=".timing-", dir=out_dir) as tmp:
        path = Path(tmp) / "untrained.onnx"
        export_onnx(model, path, dataset.x_val, {}, threads)
        return onnx_rate(path, dataset.x_val, threads)


def _val_accuracy(outcome: SearchOutcome) -> float | None:
    """The winner's validation accuracy; none when no trial was trained (search skipped)."""
    return outcome.best.score if outcome.searched else None


def _render_report(out_dir: Path, log: logging.Logger) -> None:
    """report.html and its plots; the run's results stand without them, so a failure here is
    a warning with the command that renders them again."""
    from autofit.page import render

    try:
        path = render(out_dir)
    except Exception as err:  # noqa: BLE001 - any plotting failure, the model is already safe
        log.warning("report.html not written (%s); render it with: autofit report %s",
                    one_line(err), out_dir)
    else:
        log.info("report: %s", path)


def _new_plan(budget: Budget, clock: Clock, dataset: Dataset, cost: Cost | None,
              space: SearchSpace, prior: bool) -> Plan:
    return Plan.make(budget, clock, len(dataset.y_test),
                     n_train=len(dataset.y_train) + len(dataset.y_val), cost=cost, prior=prior,
                     test_passes=space.prior_test_passes)


def _plan(journal: Journal, budget: Budget, clock: Clock, dataset: Dataset,
          cost: Cost | None, space: SearchSpace) -> Plan:
    """The split decided when the run began. A resumed search gets the search time it had
    left, cut to its planned share of what is left now (the restart's own set-up is not the
    refit's loss), and keeps its trial length, milestones and compute cap so ASHA compares
    like with like. Whether to search was decided before Ray started (`_search`), so a plan
    made here always searches, even if Ray's start-up left too little for a useful rung.
    """
    recorded = journal.get("plan")
    if recorded is None:
        plan = _new_plan(budget, clock, dataset, cost, space, prior=False)
        journal.set(plan=plan.model_dump())
        return plan
    plan = Plan.model_validate(recorded)
    share = plan.search_s / max(plan.search_s + plan.refit_s, 1e-9)
    search_left = min(plan.search_s - clock.phases().get("search", 0.0),
                      share * (clock.left() - plan.final_reserve_s))
    return plan.model_copy(update={"search_deadline": time.time() + max(0.0, search_left)})


def _search(journal: Journal, dataset: Dataset, space: SearchSpace, budget: Budget,
            clock: Clock, device: str, threads: int, metadata: dict[str, Any],
            log: logging.Logger) -> tuple[SearchOutcome, Plan]:
    """The search's records and plan: from the journal when it finished before an
    interruption. The plan is made once Ray is up, so Ray's start-up is not search time."""
    args, out_dir = journal.args, journal.run_dir
    done = journal.get("search")
    if done is not None:
        prior = done.get("prior")
        outcome = SearchOutcome([TrialRecord.from_dict(r) for r in done["records"]],
                                done["overrun_s"],
                                prior=None if prior is None else TrialRecord.from_dict(prior))
        log.info("search: done before the interruption (%d trials)", len(outcome.records))
        return outcome, Plan.model_validate(journal.get("plan"))
    cost, recorded = None, journal.get("plan")
    early = None if recorded is None else Plan.model_validate(recorded)  # an earlier life's
    if early is None and budget.min_epochs > 0:  # whether to search is decided before Ray
        cost = probe.cost(dataset.shape, device, threads)  # starts: no search needs none
        early = _new_plan(budget, clock, dataset, cost, space, prior=space.first is not None)
    prior = None if early is None or early.searched else \
        space.first_config(dataset.shape, budget.max_params, early.cap)
    if early is not None and prior is not None:  # a prior over the caps: the search runs
        journal.set(plan=early.model_dump())
        return _prior_only(journal, prior, early, log)
    gpu_cache = dataset.x_train.nbytes + dataset.x_val.nbytes \
        if dataset.data_path == pipeline.DALI_GPU else 0
    packing_probe = Probe(space, dataset.shape, budget.max_params, data_bytes=gpu_cache,
                          train_images=len(dataset.y_train), seed=args.seed)
    with ray_session(args.ray_address, threads, device, log, packing_probe) as workers:
        journal.set(workers={"where": workers.where, "packing": workers.packing})
        plan = _plan(journal, budget, clock, dataset, cost, space)
        cap = "no compute cap" if plan.max_image_s is None else (
            f"compute cap {plan.max_image_s * 1e3:.2f} ms per training image "
            f"({budget.min_epochs:g} refit epochs)")
        log.info("plan: search share %.0f%%, %s", 100 * (plan.search_share or 0), plan.split)
        emit(log, "plan", "plan: setup %.1fs, search %.1fs (trials of %.1fs, ASHA milestones "
             "%s), refit ~%.1fs, final reserve %.1fs, %s; %s", plan.setup_s, plan.search_s,
             plan.trial_s, list(plan.milestones), plan.refit_s, plan.final_reserve_s, cap,
             workers.where, plan=plan.model_dump(), workers=workers.where,
             summary=f"plan: search {plan.search_s:.0f}s in trials of {plan.trial_s:.1f}s, "
                     f"refit ~{plan.refit_s:.0f}s · {workers.where}")
        _phase(clock, log, "search")
        best = BestSoFar(out_dir, dataset.shape, *dataset.mean_std,
                         images=dataset.x_val[:best_module.PARITY_IMAGES], metadata=metadata,
                         threads=threads)
        outcome = run_search(dataset, space, budget.max_params, plan, seed=args.seed,
                             journal=journal, device=device, workers=workers, best=best,
                             log=log)
    journal.set(search={"records": [r.as_dict() for r in outcome.records],
                        "overrun_s": outcome.overrun_s})
    write_leaderboard(out_dir / "leaderboard.csv", outcome.records)
    best_record, top = outcome.best, outcome.top
    log.info("search: %d trials (ended %+.1fs from its deadline), best trial %d val_acc %.4f: "
             "%s", len(outcome.records), outcome.overrun_s, best_record.number,
             best_record.score, best_record.config.describe())
    if top is not best_record:
        log.info("search: trial %d's val_acc %.4f is within one standard error of it, and trial "
                 "%d trained longer (%.1fs against %.1fs): a tie goes to the surer score",
                 top.number, top.score, best_record.number, best_record.trained_s, top.trained_s)
    return outcome, plan


def _prior_only(journal: Journal, config: TrialConfig, plan: Plan,
                log: logging.Logger) -> tuple[SearchOutcome, Plan]:
    """The outcome of a skipped search: no trials, the space's prior (`config`, fitted to
    both caps) as the model the refit trains from scratch."""
    outcome = SearchOutcome([], 0.0, prior=TrialRecord(0, "", config, status=UNTRAINED))
    emit(log, "plan", "plan: setup %.1fs, no search (%s), refit ~%.1fs, final reserve %.1fs",
         plan.setup_s, plan.split, plan.refit_s, plan.final_reserve_s, plan=plan.model_dump(),
         workers=None, summary=f"plan: no search, the prior trains ~{plan.refit_s:.0f}s")
    journal.set(search={"records": [], "overrun_s": 0.0, "prior": outcome.best.as_dict()})
    write_leaderboard(journal.run_dir / "leaderboard.csv", [])
    log.info("search: skipped; the refit trains the space's prior %s", config.describe())
    return outcome, plan


def _times(clock: Clock, journal: Journal) -> dict[str, Any]:
    """Budget seconds used (in all and per phase) and wall seconds since the first life began."""
    lives = journal.get("lives", [])
    return {"elapsed_s": round(clock.elapsed(), 3),
            "wall_s": round(time.time() - lives[0]["started_at"], 3) if lives else None,
            "phases": clock.phases()}


def _summary(budget: Budget, clock: Clock, plan: Plan, dataset: Dataset, outcome: SearchOutcome,
             refit_info: Any, exported: Any, test_accuracy: float, device: str, seed: int,
             space: SearchSpace, journal: Journal) -> dict[str, Any]:
    import nvidia.dali
    import ray
    import torch

    best = outcome.best
    lives = journal.get("lives", [])
    statuses: dict[str, int] = {}
    for record in outcome.records:
        statuses[record.status] = statuses.get(record.status, 0) + 1
    return {
        "status": "finished",
        "test_accuracy": test_accuracy,
        "val_accuracy": _val_accuracy(outcome),
        "params": best.config.params,
        "onnx_params": exported.onnx_params,
        "budget": {"minutes": budget.minutes, "max_params": budget.max_params,
                   "search_share": budget.search_share},
        "budget_s": budget.seconds,
        **_times(clock, journal),
        "resumes": len(lives) - 1,
        "lives": lives,
        "plan": plan.model_dump(),
        "search_overrun_s": outcome.overrun_s,
        "trials": len(outcome.records),
        "trial_status": statuses,
        "best_trial": best.number if outcome.searched else None,
        "best_config": best.config.model_dump(),
        "best_metrics": best.metrics,
        "best_so_far": _best_so_far(journal.run_dir),
        "refit": asdict(refit_info),
        "export": asdict(exported),
        "device": device,
        "workers": journal.get("workers"),
        "data_pipeline": dataset.data_path,
        "precision": precision.choose(device).name,
        "threads": os.cpu_count(),
        "data": {"name": dataset.name, "source": dataset.source, "sizes": dataset.sizes(),
                 "resolution": dataset.resolution._asdict(),
                 "skipped": [{"file": f, "reason": r} for f, r in dataset.skipped],
                 "ignored": [{"file": f, "reason": r} for f, r in dataset.ignored]},
        "classes": dataset.classes,
        "input_shape": list(dataset.shape[:3]),
        "search_space": space.source,
        "seed": seed,
        "autofit_version": __version__,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "ray": ray.__version__, "dali": nvidia.dali.__version__},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

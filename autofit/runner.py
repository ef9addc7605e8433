"""`run()`: the whole job, in order, inside the budget.

budget -> space -> data -> search (Ray Tune trials) -> refit -> export -> evaluate -> report.
Every phase takes its time from one `Clock`; the phases tile the run and are recorded.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from autofit import __version__, pipeline
from autofit.budget import EVAL_RATE_GUESS, Budget, Clock, Plan, final_reserve
from autofit.dataset import Dataset, load
from autofit.errors import AutofitError, UsageError
from autofit.evaluate import onnx_accuracy
from autofit.export import export_onnx
from autofit.presets import preset
from autofit.refit import refit
from autofit.report import save_weights, write_json, write_leaderboard
from autofit.search import SearchOutcome, ray_session, run_search
from autofit.space import SearchSpace

RUN_MARKERS = ("summary.json", "model.onnx", "leaderboard.csv", "tune")


@dataclass
class RunResult:
    """What a finished run gives back; `export` copies the verified, scored ONNX model."""

    run_dir: Path
    model_path: Path
    test_accuracy: float
    val_accuracy: float
    params: int
    best_config: dict[str, Any]
    summary: dict[str, Any] = field(repr=False)

    def export(self, path: str | Path) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.model_path, target)
        return target


class _Elapsed(logging.Formatter):
    def __init__(self, started_at: float) -> None:
        super().__init__()
        self.started_at = started_at

    def format(self, record: logging.LogRecord) -> str:
        return f"[{record.created - self.started_at:7.1f}s] {record.getMessage()}"


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
        raise UsageError(f"--out {path} already holds a run ({', '.join(taken)}); "
                         "choose another directory")
    return path


def _logger(out_dir: Path, started_at: float, quiet: bool) -> logging.Logger:
    log = logging.getLogger(f"autofit.run.{id(out_dir)}")
    log.setLevel(logging.INFO)
    log.propagate = False
    formatter = _Elapsed(started_at)
    handlers: list[logging.Handler] = [logging.FileHandler(out_dir / "run.log")]
    if not quiet:
        console = logging.StreamHandler(sys.stdout)  # errors reach stderr from the CLI, once
        console.addFilter(lambda record: record.levelno < logging.ERROR)
        handlers.append(console)
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)
    return log


def _device(log: logging.Logger) -> str:
    import torch

    if torch.cuda.is_available():
        log.info("device: cuda (%s); data path %s: DALI decodes on the CPU backend, batches are "
                 "copied to the GPU", torch.cuda.get_device_name(0), pipeline.backend_name())
        return "cuda"
    log.info("device: cpu (no GPU found); data path %s", pipeline.backend_name())
    return "cpu"


def run(data: str | Path | None = None, budget: Budget | None = None, *,
        out: str | Path | None = None, seed: int = 0, space: str | Path = "default",
        ray_address: str | None = None, started_at: float | None = None,
        quiet: bool = False) -> RunResult:
    """Search, refit, export and score a model for the dataset at `data` within `budget`.

    `data=None` uses the embedded 8x8 digits. `started_at` (a time.time() value) lets the CLI
    count its own start-up against the budget.
    """
    budget = budget or Budget.from_yaml(preset("budgets", "default"))
    clock = Clock(budget.seconds, started_at)
    out_dir = prepare_out(out)
    log = _logger(out_dir, clock.started_at, quiet)
    try:
        return _run(data, budget, clock, out_dir, seed, space, ray_address, log)
    except AutofitError as err:
        log.error("error: %s", err)
        raise
    finally:
        for handler in list(log.handlers):
            handler.close()
            log.removeHandler(handler)


def _run(data: str | Path | None, budget: Budget, clock: Clock, out_dir: Path, seed: int,
         space_name: str | Path, ray_address: str | None, log: logging.Logger) -> RunResult:
    threads = os.cpu_count() or 1
    log.info("autofit %s: budget %.4g min, %s params max, seed %d, run dir %s", __version__,
             budget.minutes, f"{budget.max_params:,}", seed, out_dir)
    space = SearchSpace.load(preset("search_spaces", space_name))
    dataset = load(Path(data) if data is not None else None, seed, threads,
                   check=lambda shape: space.check_fits(shape, budget.max_params))
    for note in dataset.notes:
        log.info("data: %s", note)
    log.info("data: %s, %d classes, %s, images %s", dataset.source, len(dataset.classes),
             dataset.sizes(), "x".join(map(str, dataset.shape[:3])))
    device = _device(log)
    with ray_session(ray_address, threads, device) as workers:
        plan = Plan.make(budget, clock, len(dataset.y_test))
        log.info("plan: setup %.1fs, search %.1fs (trials of %.1fs, ASHA milestones %s), "
                 "refit ~%.1fs, final reserve %.1fs; %s", plan.setup_s, plan.search_s,
                 plan.trial_s, list(plan.milestones), plan.refit_s, plan.final_reserve_s,
                 workers.where)
        clock.start_phase("search")
        outcome = run_search(dataset, space, budget.max_params, plan, seed=seed,
                             out_dir=out_dir, device=device, workers=workers, log=log)
    write_leaderboard(out_dir / "leaderboard.csv", outcome.records)
    best = outcome.best
    log.info("search: %d trials (ended %+.1fs from its deadline), best trial %d val_acc %.4f: "
             "%s", len(outcome.records), outcome.overrun_s, best.number, best.score,
             best.config.describe())

    clock.start_phase("refit")
    eval_rate = float(best.metrics.get("eval_images_per_s") or 0.0) or EVAL_RATE_GUESS
    reserve = final_reserve(len(dataset.y_test), eval_rate)
    model, refit_info = refit(dataset, best, stop_at=clock.deadline - reserve, device=device,
                              threads=threads, seed=seed, log=log)

    save_weights(model, out_dir / "model.pt")

    clock.start_phase("export")
    model_path = out_dir / "model.onnx"
    metadata = {
        "classes": dataset.classes, "input_shape": list(dataset.shape[:3]),
        "input": "float32 NCHW, pixels in [0, 1], normalisation inside the graph",
        "budget": {"minutes": budget.minutes, "max_params": budget.max_params},
        "params": best.config.params, "autofit_version": __version__,
        "val_accuracy": best.score,
    }
    exported = export_onnx(model, model_path, dataset.x_test, metadata, threads)
    log.info("export: %s (%s exporter, opset %d), onnxruntime matches PyTorch to %.1e",
             model_path, exported.exporter, exported.opset, exported.parity_max_abs_diff)

    clock.start_phase("evaluate")
    test_accuracy = onnx_accuracy(model_path, dataset.x_test, dataset.y_test, threads)
    log.info("test accuracy (ONNX, onnxruntime): %.4f on %d images", test_accuracy,
             len(dataset.y_test))

    clock.start_phase("report")
    summary = _summary(budget, clock, plan, dataset, outcome, refit_info, exported,
                       test_accuracy, device, seed, space)
    write_json(out_dir / "summary.json", summary)
    log.info("done in %.1fs of %.1fs: %s", summary["elapsed_s"], budget.seconds, out_dir)
    return RunResult(run_dir=out_dir, model_path=model_path, test_accuracy=test_accuracy,
                     val_accuracy=best.score, params=best.config.params,
                     best_config=best.config.model_dump(), summary=summary)


def _summary(budget: Budget, clock: Clock, plan: Plan, dataset: Dataset, outcome: SearchOutcome,
             refit_info: Any, exported: Any, test_accuracy: float, device: str, seed: int,
             space: SearchSpace) -> dict[str, Any]:
    import nvidia.dali
    import ray
    import torch

    best = outcome.best
    statuses: dict[str, int] = {}
    for record in outcome.records:
        statuses[record.status] = statuses.get(record.status, 0) + 1
    return {
        "test_accuracy": test_accuracy,
        "val_accuracy": best.score,
        "params": best.config.params,
        "onnx_params": exported.onnx_params,
        "budget": {"minutes": budget.minutes, "max_params": budget.max_params,
                   "search_share": budget.search_share},
        "budget_s": budget.seconds,
        "elapsed_s": round(clock.elapsed(), 3),
        "phases": clock.phases(),
        "plan": plan.model_dump(),
        "search_overrun_s": outcome.overrun_s,
        "trials": len(outcome.records),
        "trial_status": statuses,
        "best_trial": best.number,
        "best_config": best.config.model_dump(),
        "best_metrics": best.metrics,
        "refit": asdict(refit_info),
        "export": asdict(exported),
        "device": device,
        "data_pipeline": pipeline.backend_name(),
        "threads": os.cpu_count(),
        "data": {"name": dataset.name, "source": dataset.source, "sizes": dataset.sizes()},
        "classes": dataset.classes,
        "input_shape": list(dataset.shape[:3]),
        "search_space": space.source,
        "seed": seed,
        "autofit_version": __version__,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "ray": ray.__version__, "dali": nvidia.dali.__version__},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

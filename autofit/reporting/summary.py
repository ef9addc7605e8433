"""`RUN_DIR/summary.json`, built from the run's context: a finished run's results, or why a
failed one stopped. Both are a `records.Summary`."""

from __future__ import annotations

import importlib
import os
import platform
import time
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

from autofit import __version__
from autofit.budget import Clock
from autofit.context import RunContext
from autofit.data.dataset import Dataset
from autofit.deliver import best as best_so_far
from autofit.errors import AutofitError, UnreadableData
from autofit.journal import Journal
from autofit.records import BudgetFacts, FileIssue, Summary

FILE = "summary.json"


def finished(ctx: RunContext, dataset: Dataset, space_source: str) -> Summary:
    """The summary of a run that was scored; `ctx` holds every phase's result."""
    outcome, plan, refit, export, test = ctx.outcome, ctx.plan, ctx.refit, ctx.export, ctx.test
    if outcome is None or plan is None or refit is None or export is None or test is None:
        raise ValueError("a run is summarised once it was scored")
    best, budget = outcome.best, ctx.budget
    return Summary(
        status="finished", **times(ctx.clock, ctx.journal),
        test_accuracy=test.accuracy, val_accuracy=outcome.val_accuracy,
        params=best.config.params, onnx_params=export.onnx_params,
        budget=BudgetFacts(minutes=budget.minutes, max_params=budget.max_params,
                           search_share=budget.search_share),
        budget_s=budget.seconds, resumes=len(ctx.journal.state.lives) - 1,
        lives=ctx.journal.state.lives, plan=plan, search_overrun_s=outcome.overrun_s,
        trials=len(outcome.records),
        trial_status=dict(Counter(record.status for record in outcome.records)),
        trial_nodes=dict(Counter(record.node for record in outcome.records if record.node)),
        best_node=best.node or None,
        best_trial=best.number if outcome.searched else None, best_config=best.config,
        best_metrics=best.metrics, best_so_far=best_so_far.read(ctx.run_dir), refit=refit,
        extension=ctx.extension,
        int8=ctx.journal.state.int8 if budget.quantize is not None else None,
        latency=ctx.latency_info, decisions=ctx.decisions,
        export=export, test=test, device=ctx.device, workers=ctx.journal.state.workers,
        data_path=ctx.data_path, precision=ctx.precision, threads=os.cpu_count(),
        data=dataset.facts(), classes=dataset.classes, input_shape=list(dataset.shape[:3]),
        search_space=space_source, seed=ctx.seed, autofit_version=__version__,
        versions=versions(), finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def failed(ctx: RunContext, phase: str, err: AutofitError) -> Summary:
    """Why the run stopped, and the best model it had left by then."""
    return Summary(status="failed", failed_phase=phase, error=str(err),
                   elapsed_s=round(ctx.clock.elapsed(), 3), phases=ctx.clock.phases(),
                   best_so_far=best_so_far.read(ctx.run_dir),
                   unreadable=[FileIssue(file=f, reason=r) for f, r in err.bad]
                   if isinstance(err, UnreadableData) else [])


def times(clock: Clock, journal: Journal) -> dict[str, Any]:
    """Budget seconds used (in all and per phase) and wall seconds since the first life began."""
    lives = journal.state.lives
    return {"elapsed_s": round(clock.elapsed(), 3),
            "wall_s": round(time.time() - lives[0].started_at, 3) if lives else None,
            "phases": clock.phases()}


def versions() -> dict[str, str]:
    """The versions that made the model. Ray's is read from its metadata (a run whose plan
    skipped the search never imports it); a library that cannot be imported says so (DALI has
    no wheel for macOS or Windows)."""
    try:
        ray = metadata.version("ray")
    except metadata.PackageNotFoundError:
        ray = "not installed"
    return {"python": platform.python_version(), "torch": _imported_version("torch"),
            "ray": ray, "dali": _imported_version("nvidia.dali")}


def _imported_version(module: str) -> str:
    try:
        return str(importlib.import_module(module).__version__)
    except Exception:  # noqa: BLE001 - missing, or a broken native library
        return "not importable"


def write(summary: Summary, run_dir: Path) -> None:
    summary.write(run_dir / FILE)

"""Refit, export and test: in this process, or as Ray work on a node of the cluster; and, when a
run is stopped, its best exported model scored and reported instead (`stopped`).

The runner calls these once the search phase has its winner; each fills the context's `refit`,
`export` and `test`, from which the summary is built.
"""

from __future__ import annotations

import time
from typing import Any

from autofit import events, extension, faults
from autofit.context import RunContext
from autofit.data.dataset import Dataset
from autofit.deliver import best as best_so_far
from autofit.deliver import latency, quantize
from autofit.deliver.evaluate import Score, score_onnx, test_pass_speed
from autofit.deliver.export import export_onnx
from autofit.deliver.refit_exports import RefitExports
from autofit.errors import AutofitError, Stopped
from autofit.files import write_atomic
from autofit.latency_budget import latency_reserve
from autofit.models import Classifier
from autofit.records import BestSoFarRecord, BudgetFacts, ExportInfo, Summary
from autofit.reporting import summary as summaries
from autofit.reserves import final_reserve
from autofit.search.latency_fit import latency_work
from autofit.storage import REFIT
from autofit.train.loop import load_state, make_model, save_state, save_weights
from autofit.train.refit import refit

MODEL, WEIGHTS, REFIT_STATE = "model.onnx", "model.pt", "refit.pt"


def deliver_here(ctx: RunContext, dataset: Dataset, keeper: best_so_far.BestSoFar,
                  metadata: dict[str, Any]) -> None:
    """Refit, export and test in this process."""
    model = _refit(ctx, dataset, keeper)
    ctx.start_phase("export")
    model_path = ctx.run_dir / MODEL
    try:
        faults.check_export()
        export = export_onnx(model, model_path, dataset.x_test, _model_metadata(ctx, metadata),
                             ctx.threads)
    except OSError as err:
        raise AutofitError(f"cannot write {model_path}: {err.strerror or err}; "
                           f"the refit weights are in {ctx.run_dir / WEIGHTS}") from None
    _exported(ctx, export)
    _within_latency(ctx, dataset, metadata, model)
    ctx.start_phase("evaluate")
    if quantize.wanted(ctx) and not ctx.args.parent:  # the test pass keeps its predictions
        tested = quantize.float_test_pass(model_path, dataset, ctx.threads)
        _tested(ctx, dataset, tested.score)
        quantize.deliver_int8(ctx, dataset, tested)
        return
    _tested(ctx, dataset, score_onnx(model_path, dataset.x_test, dataset.y_test, ctx.threads,
                                     len(dataset.classes)))


def deliver_on_cluster(ctx: RunContext, dataset: Dataset, keeper: best_so_far.BestSoFar,
                        metadata: dict[str, Any]) -> None:
    """Refit, export and test as Ray work on a node of the cluster (deliver/on_cluster.py);
    the run directory gets what this process gets back, as it comes."""
    from autofit.deliver import on_cluster

    assert ctx.outcome is not None and ctx.plan is not None and ctx.cluster is not None
    best, weights = ctx.outcome.best, ctx.run_dir / WEIGHTS
    done = _refit_finished(ctx)
    stop_at = ctx.clock.deadline - _reserve(ctx, dataset)
    record = keeper.run_dir / best_so_far.RECORD
    job = on_cluster.Job(
        best=best, stop_at=stop_at, storage=ctx.storage.root, device=ctx.device,
        threads=ctx.cluster.trial_cpus, seed=ctx.seed, budget_s=ctx.budget.seconds,
        metadata=_model_metadata(ctx, metadata), keeper_metadata=keeper.metadata,
        best_record=record.read_text() if record.is_file() else None,
        weights=load_state(weights) if done else None, submitted_at=time.time())
    node = on_cluster.Started(node="", start_s=0.0)
    if done:
        ctx.refit = ctx.journal.state.refit
        ctx.log.info("refit: done before the interruption; weights from %s", weights)
        ctx.start_phase("export")
    for message in on_cluster.deliver(job, dataset, ctx.run_dir, cpus=ctx.cluster.trial_cpus,
                                      gpus=1 if ctx.cluster.trial_gpus else 0,
                                      deadline=ctx.clock.deadline, log=ctx.log):
        if isinstance(message, on_cluster.Started):
            node = message
            ctx.log.info("cluster: the %s runs on node %s, started %.1fs after it was asked for",
                         "export and test pass" if done else "refit, export and test pass",
                         node.node, node.start_s)
        elif isinstance(message, on_cluster.RefitDone):
            ctx.refit = message.info.model_copy(update={"node": node.node,
                                                        "start_s": round(node.start_s, 3)})
            save_state(message.weights, weights)
            ctx.journal.set(refit=ctx.refit)
            ctx.storage.delete(REFIT)  # only once the weights are here: a kill loses nothing
            ctx.start_phase("export")
        elif isinstance(message, on_cluster.Exported):
            write_atomic(ctx.run_dir / MODEL, message.onnx)
            _exported(ctx, message.info.model_copy(update={"path": str(ctx.run_dir / MODEL)}))
            _within_latency(ctx, dataset, metadata, None)
            ctx.start_phase("evaluate")
        elif isinstance(message, on_cluster.Tested):
            _tested(ctx, dataset, message.score)
    if ctx.test is None:
        raise AutofitError("the refit and export on the cluster ended without a test score")
    if quantize.wanted(ctx) and not ctx.args.parent:  # model.onnx is here: quantized here
        quantize.deliver_int8(ctx, dataset)


def _model_metadata(ctx: RunContext, metadata: dict[str, Any]) -> dict[str, Any]:
    """model.onnx's metadata: the run's, with the winner's size and validation accuracy."""
    assert ctx.outcome is not None
    return {**metadata, "params": ctx.outcome.best.config.params,
            "val_accuracy": ctx.outcome.val_accuracy}


def _exported(ctx: RunContext, export: ExportInfo) -> None:
    ctx.export = export
    ctx.log.info("export: %s (%s exporter, opset %d), onnxruntime matches PyTorch to %.1e",
                 export.path, export.exporter, export.opset, export.parity_max_abs_diff)


def _within_latency(ctx: RunContext, dataset: Dataset, metadata: dict[str, Any],
                    model: Classifier | None) -> None:
    """With --max-latency-ms, model.onnx timed against the cap before it is scored; on a miss,
    re-exported without its test-time views where the weights are here (deliver/latency.py)."""
    max_ms = ctx.budget.max_latency_ms
    if max_ms is None:
        return
    assert ctx.outcome is not None and ctx.plan is not None
    config = ctx.outcome.best.config
    ctx.latency_info, export = latency.enforce(
        ctx.run_dir / MODEL, model, dataset.x_test, _model_metadata(ctx, metadata), ctx.threads,
        max_ms, ctx.plan.latency, latency_work(config.family, config.arch, dataset.shape),
        config.recipe.test_passes if model is None else latency.view_passes(model), ctx.log)
    if export is not None:
        _exported(ctx, export)


def _tested(ctx: RunContext, dataset: Dataset, score: Score) -> None:
    ctx.test = score.result(dataset.classes)
    events.emit(ctx.log, "test", "test accuracy (ONNX, onnxruntime): %.4f on %d images",
                score.accuracy, len(dataset.y_test), accuracy=score.accuracy,
                images=len(dataset.y_test))


def _reserve(ctx: RunContext, dataset: Dataset) -> float:
    """Seconds kept after the refit for export, the test pass and the report, said."""
    assert ctx.outcome is not None and ctx.plan is not None
    speed = test_pass_speed(ctx.run_dir, ctx.outcome.best, dataset, ctx.threads, ctx.plan.cost)
    scored = len(dataset.y_test) + (extension.extra_scored(dataset) if ctx.args.parent else 0)
    reserve = final_reserve(scored, speed) + latency_reserve(ctx.budget.max_latency_ms)
    int8_s = quantize.reserve_s(ctx, dataset, speed, reserve)
    if int8_s:
        reserve += int8_s
        ctx.log.info("refit: %.1fs of the reserve kept for model.int8.onnx: calibration, "
                     "quantization, its test pass and the latency timings", int8_s)
    ctx.log.info("refit: %.1fs kept for export, the test pass (%.0f images/s) and the report",
                 reserve, speed)
    return reserve


def _refit(ctx: RunContext, dataset: Dataset, keeper: best_so_far.BestSoFar) -> Classifier:
    """The winner trained on train+val until the final reserve, exporting best_so_far.onnx as
    it goes; a refit that finished before an interruption is read back instead."""
    assert ctx.outcome is not None and ctx.plan is not None  # the search phase came first
    best, weights = ctx.outcome.best, ctx.run_dir / WEIGHTS
    if _refit_finished(ctx):
        model = make_model(best.config, dataset.shape, *dataset.mean_std)
        model.load_state_dict(load_state(weights))
        ctx.refit = ctx.journal.state.refit
        ctx.log.info("refit: done before the interruption; weights from %s", weights)
        return model.eval()
    checkpoint, stop_at = ctx.run_dir / REFIT_STATE, ctx.clock.deadline - _reserve(ctx, dataset)
    exports = RefitExports.make(keeper, best.config, best.number, dataset.x_val, dataset.y_val,
                                len(dataset.classes), refit_s=max(stop_at - time.time(), 0.0),
                                budget_s=ctx.budget.seconds, log=ctx.log)
    model, ctx.refit = refit(dataset, best, stop_at=stop_at, device=ctx.device,
                             threads=ctx.threads, seed=ctx.seed, log=ctx.log,
                             checkpoint=checkpoint, on_epoch=exports,
                             exports_s=exports.allowance_s)
    ctx.refit = ctx.refit.model_copy(update={"exports": exports.count,
                                             "exports_s": round(exports.spent_s, 3)})
    save_weights(model, weights)
    ctx.journal.set(refit=ctx.refit)
    checkpoint.unlink(missing_ok=True)
    return model


def _refit_finished(ctx: RunContext) -> bool:
    """Whether an earlier life finished the refit: its record and its weights are both here."""
    return ctx.journal.state.refit is not None and (ctx.run_dir / WEIGHTS).is_file()




def stopped(ctx: RunContext) -> Summary:
    """A run asked to stop: its final model if the export had written it, else the best model
    exported so far (a trial's or the refit's part-way), scored on the test images and
    summarised as `stopped`. With no model yet, the summary says so and `Stopped` is raised."""
    phase, dataset = ctx.clock.phase, ctx.dataset
    model_path, record = ctx.run_dir / MODEL, best_so_far.read(ctx.run_dir)
    final = ctx.export is not None and model_path.is_file()
    source = ctx.run_dir / best_so_far.MODEL
    if dataset is None or not (final or (record is not None and source.is_file())):
        summary = Summary(status="stopped", stopped_phase=phase, **summaries.times(
            ctx.clock, ctx.journal), error=f"stopped in the {phase} phase before any model was "
                                           f"exported", budget_s=ctx.budget.seconds)
        ctx.log.warning("stop: %s", summary.error)
        summaries.write(summary, ctx.run_dir)
        ctx.journal.set(status="stopped")
        raise Stopped(str(summary.error))
    if not final:
        write_atomic(model_path, source.read_bytes())
    what = "the final model" if final else f"best_so_far.onnx ({_origin(record)})"
    ctx.log.warning("stop: asked to stop in the %s phase; scoring %s as %s", phase, what,
                    model_path)
    ctx.start_phase("evaluate")
    _tested(ctx, dataset, score_onnx(model_path, dataset.x_test, dataset.y_test, ctx.threads,
                                     len(dataset.classes)))
    assert ctx.test is not None
    config = ctx.outcome.best.config if final and ctx.outcome is not None else \
        record.config if record is not None else None
    return Summary(
        status="stopped", stopped_phase=phase, **summaries.times(ctx.clock, ctx.journal),
        test_accuracy=ctx.test.accuracy,
        val_accuracy=record.val_accuracy if record is not None and not final else
        ctx.outcome.val_accuracy if ctx.outcome is not None else None,
        params=None if config is None else config.params, best_config=config,
        budget=BudgetFacts(minutes=ctx.budget.minutes, max_params=ctx.budget.max_params,
                           search_share=ctx.budget.search_share),
        budget_s=ctx.budget.seconds, best_so_far=record, plan=ctx.plan, refit=ctx.refit,
        decisions=ctx.decisions,
        export=ctx.export, test=ctx.test, device=ctx.device, data_path=ctx.data_path,
        precision=ctx.precision, data=dataset.facts(), classes=dataset.classes,
        input_shape=list(dataset.shape[:3]), seed=ctx.seed, versions=summaries.versions(),
        trials=None if ctx.outcome is None else len(ctx.outcome.records),
        resumes=len(ctx.journal.state.lives) - 1, lives=ctx.journal.state.lives,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def _origin(record: BestSoFarRecord | None) -> str:
    if record is None:
        return "unrecorded"
    if record.source == "refit":
        return f"the refit at epoch {record.epoch or 0:.1f}"
    return f"trial {record.trial}, val_acc {record.val_accuracy or 0:.4f}"

"""`autofit extend`: more minutes for a finished run, as a new run that names its parent.

The extension trains the parent's model (its configuration, from its refit weights) on the
same train+val images for its own budget, a warm restart of the recipe's schedule as the refit
is, and keeps whichever of the two models scores better on the validation images. Both models
were trained on those images (the parent's refit included them), so the comparison guards
against a restart that ended worse, not an unbiased estimate; the summary gives the test
accuracy of both so a user sees what the top-up bought.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from autofit.budget import Budget, Plan
from autofit.config import RunArgs
from autofit.context import RunContext
from autofit.data.dataset import Dataset
from autofit.deliver.evaluate import Score, score_onnx
from autofit.errors import UsageError, one_line
from autofit.journal import FILE as JOURNAL
from autofit.records import (
    ExtensionInfo,
    JournalState,
    Progress,
    SearchOutcome,
    Summary,
    TrialRecord,
)
from autofit.train.loop import CHECKPOINT_FILE, load_state, save_state

MODEL, WEIGHTS, SUMMARY = "model.onnx", "model.pt", "summary.json"
PARENT_WEIGHTS = "parent-weights"  # in the extension's run directory: the warm start
FROM_PARENT = "not trained here: the parent run's refit"


class Parent:
    """A finished run to extend: its journal, its summary and the files the extension needs."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir.resolve()
        what = f"autofit extend {run_dir}"
        if not (run_dir / JOURNAL).is_file():
            raise UsageError(f"{what}: no {JOURNAL} there; not an autofit run directory")
        try:
            self.state = JournalState.parse((run_dir / JOURNAL).read_bytes())
        except (OSError, ValueError) as err:
            raise UsageError(f"{what}: {JOURNAL} is unreadable: {one_line(err)}") from None
        summary = Summary.read(run_dir / SUMMARY)
        if summary is None or summary.status != "finished" or summary.best_config is None:
            status = "no readable summary" if summary is None else f"status {summary.status}"
            raise UsageError(f"{what}: only a finished run can be extended ({status}); resume "
                             f"an unfinished one with autofit run --resume {run_dir}")
        for name in (MODEL, WEIGHTS):
            if not (run_dir / name).is_file():
                raise UsageError(f"{what}: {run_dir / name} is missing; the extension starts "
                                 f"from the parent's refit weights and compares with its model")
        self.summary = summary

    def args(self, minutes: float, quantize: str | None = None) -> RunArgs:
        """The parent's arguments with the extension's minutes (and `quantize` where given),
        run on this machine."""
        parent = self.state.args
        budget = Budget(**{**parent.budget.model_dump(), "minutes": minutes,
                           **({"quantize": quantize} if quantize else {})})
        return parent.model_copy(update={"budget": budget, "parent": str(self.run_dir),
                                         "ray_address": None, "storage": None})


def extension_phase(ctx: RunContext, dataset: Dataset) -> tuple[SearchOutcome, Plan]:
    """What the search phase gives a run, for an extension: no search, the parent's model as
    the winner the refit warm-starts from, and a plan that gives the refit all the time."""
    state = ctx.journal.state
    if state.search is not None and state.plan is not None:  # an earlier life's
        return state.search, state.plan
    parent = Parent(Path(str(ctx.args.parent)))
    recorded = parent.state.data
    if recorded is not None and recorded != dataset.fingerprint():
        raise UsageError(f"autofit extend {parent.run_dir}: the data at {ctx.args.data} changed "
                         f"since the parent run ({recorded.model_dump()} then, "
                         f"{dataset.fingerprint().model_dump()} now)")
    folder = ctx.run_dir / PARENT_WEIGHTS
    folder.mkdir(exist_ok=True)
    save_state({"model": load_state(parent.run_dir / WEIGHTS)}, folder / CHECKPOINT_FILE)
    summary, refit = parent.summary, parent.summary.refit
    assert summary.best_config is not None
    trained = Progress(  # the parent refit's figures: the extension's refit sizes its schedule
        val_accuracy=summary.val_accuracy or 0.0, val_images=0,  # by them
        train_seconds=refit.seconds if refit else 0.0, epoch=refit.epochs if refit else 0.0,
        steps=refit.steps if refit else 0, loss=0.0, state="completed",
        images_per_s=refit.epochs * refit.train_images / refit.seconds
        if refit and refit.seconds > 0 else 0.0,
        eval_images_per_s=0.0, batch_size=summary.best_config.recipe.batch_size)
    outcome = SearchOutcome(records=[], overrun_s=0.0, prior=TrialRecord(
        number=0, trial_id="parent", config=summary.best_config, metrics=trained,
        status=FROM_PARENT, checkpoint=str(folder)))
    plan = _plan(ctx, dataset, parent)
    ctx.journal.set(plan=plan, search=outcome)
    ctx.log.info("extend: %s from the refit weights of %s (%.4f test accuracy, %.1f epochs "
                 "in its refit), %.0fs of training here; the better model on validation is "
                 "kept", summary.best_config.describe(), parent.run_dir,
                 summary.test_accuracy or 0.0, trained.epoch, plan.refit_s)
    return outcome, plan


def _plan(ctx: RunContext, dataset: Dataset, parent: Parent) -> Plan:
    made = Plan.make(ctx.budget, ctx.clock, len(dataset.y_test) + extra_scored(dataset),
                     n_train=len(dataset.y_train) + len(dataset.y_val))
    return made.model_copy(update={
        "search_s": 0.0, "trial_s": 0.0, "milestones": (), "search_share": 0.0,
        "refit_s": round(made.search_s + made.refit_s, 3), "searched": False,
        "split": f"extension of {parent.run_dir}: no search, the refit gets all the time"})


def extra_scored(dataset: Dataset) -> int:
    """Images the extension scores beyond a run's test pass: both models' validation passes,
    and the test pass again where the parent's model is kept."""
    return 2 * len(dataset.y_val) + len(dataset.y_test)


def keep_better(ctx: RunContext, dataset: Dataset) -> ExtensionInfo:
    """Score the extended and the parent model on the validation images and keep the better
    (a tie keeps the parent's: more training that bought nothing is not a new model); the
    parent's model replaces the extended one in the run directory, and its test score the
    extended one's, where it wins."""
    assert ctx.test is not None
    parent = Parent(Path(str(ctx.args.parent)))
    mine = _val(ctx, ctx.run_dir / MODEL, dataset)
    theirs = _val(ctx, parent.run_dir / MODEL, dataset)
    extended_test = ctx.test.accuracy
    kept = "extended" if mine.accuracy > theirs.accuracy else "parent"
    if kept == "parent":
        shutil.copyfile(ctx.run_dir / MODEL, ctx.run_dir / "model.extended.onnx")
        shutil.copyfile(parent.run_dir / MODEL, ctx.run_dir / MODEL)
        shutil.copyfile(parent.run_dir / WEIGHTS, ctx.run_dir / WEIGHTS)
        ctx.test = score_onnx(ctx.run_dir / MODEL, dataset.x_test, dataset.y_test, ctx.threads,
                              len(dataset.classes)).result(dataset.classes)
    info = ExtensionInfo(parent=str(parent.run_dir), kept=kept, val_images=len(dataset.y_val),
                         val_accuracy=mine.accuracy, parent_val_accuracy=theirs.accuracy,
                         test_accuracy=extended_test,
                         parent_test_accuracy=parent.summary.test_accuracy)
    ctx.log.info("extend: validation accuracy %.4f extended, %.4f parent: %s", mine.accuracy,
                 theirs.accuracy, "the extended model is kept" if kept == "extended" else
                 f"the parent's model is kept as {ctx.run_dir / MODEL} (the extended one is "
                 f"model.extended.onnx)")
    return info


def _val(ctx: RunContext, path: Path, dataset: Dataset) -> Score:
    return score_onnx(path, dataset.x_val, dataset.y_val, ctx.threads, len(dataset.classes))

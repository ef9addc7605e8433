"""`autofit plan`: what `autofit run` would do with this data, budget and space on this machine,
decided as a run decides it (the data's checks and decisions, the probe's prices, the split,
the compute frontier's model and the batch), before any of the budget is spent on training.

The setup is timed as a run's is (the data, the decisions and the probe happen here too); a
run that searches makes its plan once Ray is up, so its split moves by Ray's start-up. The
frontier's figure is for the data its law was measured on (autofit/search/frontier.py): on
other data it sizes the model, it does not forecast the accuracy (bench/README.md, "autofit
plan").
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from autofit import models
from autofit.budget import Budget, Clock, Plan
from autofit.config import TrialConfig
from autofit.context import RunContext
from autofit.environment import scoped_environment
from autofit.journal import Journal
from autofit.presets import preset
from autofit.records import Decision
from autofit.reporting.logs import close_logger, run_logger
from autofit.runner import decide, load_data, run_args
from autofit.search import frontier, steps
from autofit.search.space import SearchSpace


class FrontierFigure(BaseModel):
    """What the compute frontier's law says the planned model and training score, on the data
    the law was measured on."""

    model_config = ConfigDict(frozen=True)

    law: str  # the dataset whose law it is
    accuracy: float
    rms: float  # the fit's error on its own points


class Preview(BaseModel):
    """A run's plan before the run: what `autofit plan` prints (or writes with --json)."""

    model_config = ConfigDict(frozen=True)

    data: str
    images: int  # train+val: what the refit trains on
    shape: models.DataShape
    device: str
    data_path: str
    precision: str
    plan: Plan
    decisions: list[Decision]
    model: TrialConfig | None  # the prior the refit (or the search's first trial) trains
    model_images: float | None  # what its refit would see
    frontier: FrontierFigure | None

    def lines(self) -> list[str]:
        """The plan as a user reads it: a line for each of its parts, each decision its own."""
        p = self.plan
        out = [f"data: {self.data}, {self.images:,} training images, {self.shape.width}x"
               f"{self.shape.height}x{self.shape.channels}, {self.shape.num_classes} classes; "
               f"{self.device}, data path {self.data_path}, {self.precision}",
               f"setup: {p.setup_s:.1f}s of {p.budget_s:.0f}s (data, decisions, the probe)"]
        out += [f"decision: {d.evidence}" for d in self.decisions]
        if p.searched:
            out.append(f"search: {p.search_s:.0f}s in trials of {p.trial_s:.1f}s (ASHA "
                       f"milestones {list(p.milestones)}); {p.split}")
        else:
            out.append(f"search: none; {p.split}")
        out.append(f"model size: {p.sized or 'no compute cap'}")
        if self.model is not None:
            role = "the search's first trial (the refit trains the winner)" if p.searched \
                else "the refit trains"
            epochs = "" if self.model_images is None else \
                f", ~{self.model_images / max(self.images, 1):.1f} epochs"
            out.append(f"model: {role} {self.model.describe()}{epochs}")
        out.append(f"refit: ~{p.refit_s:.0f}s; kept for export, the test pass and the report: "
                   f"{p.final_reserve_s:.0f}s")
        if self.frontier is not None:
            f = self.frontier
            out.append(f"frontier: {f.accuracy:.1%} on {f.law} for this model and training "
                       f"(the fit's rms {f.rms:.1%}); a figure for the data the law was "
                       "measured on, not a forecast for this data")
        return out


def preview(data: str | Path | None = None, budget: Budget | None = None, *, seed: int = 0,
            space: str | Path = "default", data_root: str | Path | None = None,
            weights: str | Path | None = None, started_at: float | None = None) -> Preview:
    """The plan `run(data, budget, ...)` would make on this machine, without training; the
    scratch run directory it works in is removed."""
    budget = budget or Budget.from_yaml(preset("budgets", "default"))
    space_path = preset("search_spaces", space)
    args = run_args(data, budget, seed=seed, space_path=space_path, data_root=data_root,
                    weights=weights)
    with tempfile.TemporaryDirectory(prefix="autofit-plan-") as scratch:
        clock = Clock(budget.seconds, started_at)
        ctx = RunContext(Journal.create(Path(scratch), args), clock,
                         run_logger(Path(scratch), clock, budget.seconds, quiet=True),
                         threads=os.cpu_count() or 1)
        try:
            with scoped_environment():
                chosen = SearchSpace.load(space_path).with_weights(args.weights)[0]
                dataset = load_data(ctx, chosen)
                chosen = decide(ctx, chosen, dataset)
                from autofit.search.phase import new_plan, priced_plan  # Ray: as a run does

                plan = priced_plan(ctx, dataset, chosen)[1] if budget.min_epochs != 0 else \
                    new_plan(ctx, dataset, None, chosen, prior=chosen.first is not None)
        finally:
            close_logger(ctx.log)
    images = len(dataset.y_train) + len(dataset.y_val)
    decisions = list(ctx.decisions)
    model = chosen.first_config(dataset.shape, budget.max_params, plan.cap)
    model_images = figure = None
    if model is not None:
        model, decision = steps.fit_batch(model, plan, dataset.shape)
        decisions += [] if decision is None else [decision]
        work = models.count_work(model.family, model.arch, dataset.shape)
        model_images = plan.images_for(work)
        if model_images is not None and budget.min_epochs is None and \
                model.family == frontier.FAMILY and \
                all(model.arch.get(k) == v for k, v in frontier.ARCH.items()):
            laws = frontier.load()
            law = laws.law(frontier.linear_probe(decisions))
            figure = FrontierFigure(law=law.dataset, rms=laws.rms, accuracy=laws.accuracy(
                law, work[0], model_images, images))
    return Preview(data=dataset.source, images=images, shape=dataset.shape, device=ctx.device,
                   data_path=ctx.data_path, precision=ctx.precision, plan=plan,
                   decisions=decisions, model=model, model_images=model_images,
                   frontier=figure)

"""The run's search phase: plan the budget, then search with Ray Tune or, where the plan says a
search cannot rank anything in the time there is, train the space's prior alone.

Whether to search is decided before Ray starts (a run that does not search needs no Ray); the
plan of a search is made once Ray is up, so Ray's start-up is not search time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

from autofit import events
from autofit.budget import Cost, Plan
from autofit.config import TrialConfig
from autofit.context import RunContext
from autofit.data import pipeline
from autofit.data.dataset import Dataset
from autofit.errors import AutofitError, one_line
from autofit.models import DataShape, pretrained
from autofit.records import (
    NO_CONTENDER,
    UNTRAINED,
    Decision,
    SearchOutcome,
    TrialRecord,
    WorkerFacts,
)
from autofit.reserves import test_pass_rate
from autofit.search import decided, frontier, steps
from autofit.search.cluster import Workers, ray_session
from autofit.search.packing import Probe
from autofit.search.space import SearchSpace
from autofit.search.tune import BestKeeper, run_search
from autofit.train import probe


def search_phase(ctx: RunContext, dataset: Dataset, space: SearchSpace,
                 best: BestKeeper) -> tuple[SearchOutcome, Plan]:
    """The search's records and plan: from the journal when it finished before an
    interruption. `best` keeps the best finished trial as a model while the search runs."""
    state, log = ctx.journal.state, ctx.log
    if state.search is not None:
        log.info("search: done before the interruption (%d trials)", len(state.search.records))
        assert state.plan is not None  # written before the search started
        ctx.decisions.extend(state.search.decided)
        return state.search, state.plan
    cost, early = None, state.plan  # an earlier life's plan
    priced: list[Decision] = []
    if early is None and ctx.budget.min_epochs != 0:  # whether to search is decided before
        cost, early, priced = priced_plan(ctx, dataset, space)  # Ray starts
    prior = None if early is None or early.searched else \
        space.first_config(dataset.shape, ctx.budget.max_params, early.cap)
    if early is not None and prior is not None:  # a prior over the caps: the search runs
        ctx.journal.set(plan=early)
        return _prior_only(ctx, prior, early, dataset, priced), early
    with ray_for(ctx, dataset, space) as workers:
        plan = _plan(ctx, dataset, cost, space)
        _say_plan(ctx, plan, workers.where)
        ctx.start_phase("search")
        prior = space.first_config(dataset.shape, ctx.budget.max_params, plan.cap)
        prior, decided = (None, []) if prior is None else _batch(ctx, prior, plan, dataset)
        outcome = run_search(dataset, space, ctx.budget.max_params, plan, seed=ctx.seed,
                             journal=ctx.journal, device=ctx.device, workers=workers,
                             best=best, storage=ctx.storage, log=log)
        outcome = outcome.model_copy(update={"decided": priced + decided})
    if not outcome.contenders:
        config = prior or (  # the prior at its batch; no prior: the best-scored trial's,
            outcome.top.config if outcome.records else None)  # capped as it was drawn
        if config is None:
            raise AutofitError("the search ran no trial before its deadline and the space has "
                               "no first: prior to train instead; give a larger budget")
        outcome = outcome.model_copy(update={"prior": TrialRecord(
            number=0, trial_id="", config=config, status=NO_CONTENDER)})
        log.warning("search: %s trained to its first rung (%.1fs), so none is a winner or a "
                    "warm start; the refit trains %s from scratch",
                    "no trial" if outcome.records else "no trial ran, none", outcome.min_trained_s,
                    config.describe())
        ctx.journal.set(search=outcome)
        return outcome, plan
    ctx.journal.set(search=outcome)
    winner, top = outcome.best, outcome.top
    log.info("search: %d trials (ended %+.1fs from its deadline), best trial %d val_acc %.4f: "
             "%s", len(outcome.records), outcome.overrun_s, winner.number, winner.score,
             winner.config.describe())
    if top is not winner:
        log.info("search: trial %d's val_acc %.4f is within one standard error of it, and trial "
                 "%d trained longer (%.1fs against %.1fs): a tie goes to the surer score",
                 top.number, top.score, winner.number, winner.trained_s, top.trained_s)
    return outcome, plan


@contextmanager
def ray_for(ctx: RunContext, dataset: Dataset, space: SearchSpace) -> Iterator[Workers]:
    """Ray and its workers: the cluster session the runner holds for the whole of a run on a
    cluster (`ctx.cluster`), else a Ray of the search's own."""
    if ctx.cluster is not None:
        yield ctx.cluster
        return
    gpu_cache = dataset.x_train.nbytes + dataset.x_val.nbytes \
        if dataset.data_path == pipeline.DALI_GPU else 0
    packing_probe = Probe(space, dataset.shape, ctx.budget.max_params, data_bytes=gpu_cache,
                          train_images=len(dataset.y_train), seed=ctx.seed)
    with ray_session(ctx.args.ray_address, ctx.threads, ctx.device, ctx.log, packing_probe,
                     storage=ctx.storage, shared=ctx.args.storage is not None) as workers:
        ctx.journal.set(workers=WorkerFacts(where=workers.where, packing=workers.packing))
        yield workers


def _say_plan(ctx: RunContext, plan: Plan, where: str) -> None:
    cap = "no compute cap" if plan.max_image_s is None else (
        f"compute cap {plan.max_image_s * 1e3:.2f} ms per training image ({plan.sized})")
    ctx.log.info("plan: search share %.0f%%, %s", 100 * (plan.search_share or 0), plan.split)
    events.emit(ctx.log, "plan", "plan: setup %.1fs, search %.1fs (trials of %.1fs, ASHA "
                "milestones %s), refit ~%.1fs, final reserve %.1fs, %s; %s", plan.setup_s,
                plan.search_s, plan.trial_s, list(plan.milestones), plan.refit_s,
                plan.final_reserve_s, cap, where, plan=plan.model_dump(), workers=where,
                summary=f"plan: search {plan.search_s:.0f}s in trials of {plan.trial_s:.1f}s, "
                        f"refit ~{plan.refit_s:.0f}s · {where}")


def new_plan(ctx: RunContext, dataset: Dataset, cost: Cost | None, space: SearchSpace,
             prior: bool, test_rate: float | None = None) -> Plan:
    """A plan made now: the split, and the compute cap the frontier sizes for this data."""
    n_train = len(dataset.y_train) + len(dataset.y_val)  # the refit's images
    sizing = None if cost is None else frontier.refit_images(
        set(space.families), dataset.shape, n_train, ctx.budget.max_params, cost,
        probe=frontier.linear_probe(ctx.decisions), shrink=decided.shrink(space))
    return Plan.make(ctx.budget, ctx.clock, len(dataset.y_test), n_train=n_train, cost=cost,
                     prior=prior, test_passes=space.prior_test_passes, latency=ctx.latency,
                     frontier=sizing, test_rate=test_rate)


CHECKS = 2  # timings of the planned model: the second checks the width the first re-planned
CHECK_TOLERANCE = 0.1  # a price within 10% of the measured one is kept
# The second timing re-plans nothing: one scale cannot fit every width where the references'
# miss grows with width (8x8 digits: width 44 timed at 1.50x its price, then width 32 at 0.67x
# the scaled one, and a second re-plan went back to width 44 at the probe's own price).
LEFT = "left: a second re-plan can undo the first)"


def priced_plan(ctx: RunContext, dataset: Dataset,
                space: SearchSpace) -> tuple[Cost, Plan, list[Decision]]:
    """This machine's price of a training image, the plan it makes and the `price` decision:
    the run's training loader is timed on its own images (probe.data_seconds: its time is
    added to every model's), the test pass of the model the plan would train first
    (`_test_rate`), then that model (the prior at its batch) is timed alone, and where the
    probe's price misses it by over CHECK_TOLERANCE every model's price is scaled to match
    and the plan made again (train/probe.py, `checked`). On a cluster the price is for the
    CPUs a trial and the refit get there (a 2-core driver pricing for 1-CPU nodes sized a
    3-minute refit 3.9x too large)."""
    shape = dataset.shape
    threads = ctx.threads if ctx.cluster is None else ctx.cluster.trial_cpus
    cost = probe.cost(shape, ctx.device, threads)
    data_s = probe.data_seconds(dataset.data_path, dataset.x_train, dataset.y_train,
                                steps.prior_recipe(space, shape, probe.BATCH), ctx.device,
                                threads)
    cost = cost.model_copy(update={"data_s": data_s})
    plan = new_plan(ctx, dataset, cost, space, prior=space.first is not None)
    tested = _test_rate(ctx, space, plan, shape, len(dataset.y_test))  # before the check:
    rate = None if tested is None else tested[0]  # a smaller plan may take a smaller batch
    if rate is not None:
        plan = new_plan(ctx, dataset, cost, space, prior=space.first is not None, test_rate=rate)
    timed: list[str] = []
    named: set[str] = set()
    measured: dict[str, float] = {}
    for check in range(CHECKS):
        model = space.first_config(shape, ctx.budget.max_params, plan.cap)
        if model is None or model.family == pretrained.FAMILY:
            break
        model, _ = steps.fit_batch(model, plan, shape)
        batch = model.recipe.batch_size
        name = f"{model.model_name} at batch {batch}"
        if name in named:
            timed[-1] += ", and the plan made again names it again"
            break
        named.add(name)
        scaled, seconds = probe.checked(cost, model.family, model.arch, shape, ctx.device, batch,
                                        model.recipe.optimizer)
        ratio = scaled.scale / cost.scale  # measured over priced
        priced = seconds / ratio
        close = abs(math.log(ratio)) <= math.log1p(CHECK_TOLERANCE)
        last = check == CHECKS - 1
        timed.append(f"{name}: {seconds * 1e3:.3g} ms per image against its price of "
                     f"{priced * 1e3:.3g} ({ratio:.2f}x, " + (
                         "kept)" if close else "re-planned)" if not last else LEFT))
        measured = {"priced_ms": priced * 1e3, "measured_ms": seconds * 1e3, "ratio": ratio,
                    "scale": cost.scale if close or last else scaled.scale}
        if close or last:
            break
        cost = scaled
        plan = new_plan(ctx, dataset, cost, space, prior=space.first is not None, test_rate=rate)
    loader = (f"the training loader ({dataset.data_path}) takes {data_s * 1e3:.3g} ms per "
              "image, added to every model's price")
    measured["data_ms"] = data_s * 1e3
    if rate is not None:
        measured["test_images_per_s"] = rate
    decision = Decision(name="price", pinned={}, measured=measured, evidence=loader + (
        "" if not timed else "; priced by timing the planned model alone: " +
        "; then ".join(timed) + f"; every model's price is scaled by {cost.scale:.2f}") +
        ("" if tested is None else f"; {tested[1]}"))
    events.emit(ctx.log, "decision", "plan: %s", decision.evidence, name=decision.name,
                pinned={}, measured=measured)
    ctx.decisions.append(decision)
    return cost, plan, [decision]


TIMED_OVER = 0.01  # of the budget: a test pass guessed shorter is not worth timing (~3 s)


def _test_rate(ctx: RunContext, space: SearchSpace, plan: Plan, shape: DataShape,
               n_test: int) -> tuple[float, str] | None:
    """onnxruntime's test-pass images/s for the model `plan` would train first, timed
    untrained (ctx.test_speed), and what to say of it; None where it cannot be timed, or where
    the probe guesses the pass under TIMED_OVER of the budget (the export and timing took
    2.6 s for 8x8 digits, whose pass takes a fraction of that). The guess, from the training
    price, missed by 4x in bf16: 17.6 s planned for the 10-minute CIFAR-10 pass, 86 s then
    kept by the refit (width 56 in float32 with six test-time views)."""
    model = space.first_config(shape, ctx.budget.max_params, plan.cap)
    if ctx.test_speed is None or model is None or plan.cost is None:
        return None
    guess = n_test / test_pass_rate(plan.cost.reference_s, model.recipe.test_passes)
    if guess < TIMED_OVER * ctx.budget.seconds:
        return None
    try:
        rate = ctx.test_speed(model)
    except (OSError, RuntimeError, ValueError, AutofitError) as err:
        ctx.log.warning("plan: the test pass of %s could not be timed (%s); its time is "
                        "guessed from the training price", model.describe(), one_line(err))
        return None
    return rate, (f"the test pass of {model.model_name} timed at {rate:.0f} images/s in "
                  f"onnxruntime ({model.recipe.test_passes} views), and the plan made again "
                  "with it")


def _plan(ctx: RunContext, dataset: Dataset, cost: Cost | None, space: SearchSpace) -> Plan:
    """The split decided when the run began. A resumed search gets the search time it had
    left, cut to its planned share of what is left now (the restart's own set-up is not the
    refit's loss), and keeps its trial length, milestones and compute cap so ASHA compares
    like with like. Whether to search was decided before Ray started (`search_phase`), so a
    plan made here always searches, even if Ray's start-up left too little for a useful rung.
    """
    recorded, clock = ctx.journal.state.plan, ctx.clock
    if recorded is None:
        plan = new_plan(ctx, dataset, cost, space, prior=False)
        ctx.journal.set(plan=plan)
        return plan
    share = recorded.search_s / max(recorded.search_s + recorded.refit_s, 1e-9)
    search_left = min(recorded.search_s - clock.phases().get("search", 0.0),
                      share * (clock.left() - recorded.final_reserve_s))
    return recorded.model_copy(update={"search_deadline": time.time() + max(0.0, search_left)})


def _prior_only(ctx: RunContext, config: TrialConfig, plan: Plan, dataset: Dataset,
                priced: list[Decision]) -> SearchOutcome:
    """The outcome of a skipped search: no trials, the space's prior (`config`, fitted to
    both caps) as the model the refit trains from scratch, at the batch its planned images
    call for (search/steps.py)."""
    config, decided = _batch(ctx, config, plan, dataset)
    outcome = SearchOutcome(records=[], overrun_s=0.0, decided=priced + decided, prior=TrialRecord(
        number=0, trial_id="", config=config, status=UNTRAINED))
    events.emit(ctx.log, "plan", "plan: setup %.1fs, no search (%s), refit ~%.1fs, final "
                "reserve %.1fs; model size: %s", plan.setup_s, plan.split, plan.refit_s,
                plan.final_reserve_s, plan.sized or "no compute cap", plan=plan.model_dump(),
                workers=None,
                summary=f"plan: no search, the prior trains ~{plan.refit_s:.0f}s")
    ctx.journal.set(search=outcome)
    ctx.log.info("search: skipped; the refit trains the space's prior %s", config.describe())
    return outcome


def _batch(ctx: RunContext, config: TrialConfig, plan: Plan,
           dataset: Dataset) -> tuple[TrialConfig, list[Decision]]:
    """The prior at the batch its refit's planned images call for (search/steps.py), the
    decision said in the log and kept in the run's decisions."""
    config, decision = steps.fit_batch(config, plan, dataset.shape)
    if decision is None:
        return config, []
    more = "" if not plan.searched else "; every trial's batch is capped the same way"
    events.emit(ctx.log, "decision", "plan: %s%s", decision.evidence, more, name=decision.name,
                pinned=decision.pinned, measured=decision.measured)
    ctx.decisions.append(decision)
    return config, [decision]

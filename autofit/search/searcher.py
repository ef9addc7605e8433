"""autofit's Ray Tune searcher: every configuration it suggests is fitted to the caps first."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune.search import Searcher

from autofit.budget import Plan
from autofit.models import DataShape
from autofit.records import Record, SearchClock
from autofit.search import steps
from autofit.search.space import SearchSpace
from autofit.search.trainable import TRIAL_KEY

if TYPE_CHECKING:
    from autofit.search.tpe import TpeSampler

METRIC = "val_accuracy"
FAILURES_BEFORE_GIVING_UP = 3  # failed trials, with none succeeding, that end the search


class _Clocked(Record):
    """The one part of the journal the searcher reads: the search clock a resume moves."""

    search_clock: SearchClock


class SpaceSearcher(Searcher):
    """Draws from the space, each draw fitted to the plan's caps and its batch to the steps its
    refit would take (search/steps.py): seeded random sampling, or with `searcher: tpe`
    Optuna's TPE, told each finished trial's score (autofit/search/tpe.py).

    It numbers trials, stops suggesting when no new trial could reach a milestone before the
    search deadline (read from the journal, so a resumed search uses the new one), and stops
    early when the first trials all fail. Its state is saved with Tune's experiment state.
    """

    def __init__(self, space: SearchSpace, shape: DataShape, max_params: int, seed: int,
                 journal: Path, plan: Plan | None = None) -> None:
        super().__init__(metric=METRIC, mode="max")
        self.space, self.shape, self.max_params, self.journal = space, shape, max_params, journal
        self.plan, self.cap = plan, None if plan is None else plan.cap
        self.rng = np.random.default_rng(seed)
        self.count = self.failures = self.successes = 0
        self.stop_at = self._stop_at()
        self.tpe: TpeSampler | None = None
        if space.searcher == "tpe":  # imported only then: random search needs no Optuna
            from autofit.search.tpe import TpeSampler

            self.tpe = TpeSampler(space, shape, max_params, seed, self.cap)

    def _stop_at(self) -> float:
        return _Clocked.parse(self.journal.read_bytes()).search_clock.stop_suggesting_at

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
        if self.plan is not None:
            config = steps.fit_batch(config, self.plan, self.shape)[0]
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

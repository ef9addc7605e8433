"""Model-based sampling for the search (`searcher: tpe`): Optuna's TPE through ask and tell.

Random sampling spends every trial as if nothing had been learnt; TPE draws where the trials so
far scored well. Each knob of the space is one Optuna parameter: the family is a categorical
and a family's knobs (`<family>.<knob>`) are asked only when that family is drawn, so they are
conditional on it; with `fill:`, the fill target (a share of the cap) is a parameter too and
the fill knob itself is never asked. What TPE proposes is the draw; the model is then fitted
to the parameter cap exactly as a random draw is (`SearchSpace.fit`), so the cap holds.

Tune owns the trials, so the study only ever sees finished results: `tell` gets the last
report of a trial (an ASHA-stopped trial's last rung), a diverged trial is pruned (TPE ranks
it below every scored trial) and a failed one is marked failed (ignored: its config may be
fine). The history of draws and results is the sampler's whole state: it pickles and saves as
plain data, and a restored sampler rebuilds its study from it, so a resumed search continues
where its TPE left off.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import optuna
from optuna.distributions import (
    distribution_to_json,
    json_to_distribution,
)
from optuna.trial import TrialState, create_trial

from autofit.budget import ComputeCap
from autofit.config import TrialConfig
from autofit.errors import BudgetError
from autofit.models import DataShape
from autofit.search.knobs import Choice, Range, Value
from autofit.search.space import SearchSpace

STARTUP_TRIALS = 8  # random draws before TPE models the results (Optuna's default is 10)
TRIES = 100  # draws that fail to fit the cap, as SearchSpace.sample allows
FAMILY = "family"
STATES = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED,
          "FAIL": TrialState.FAIL}


def _suggest(trial: optuna.Trial, name: str, knob: Choice | Range) -> Any:
    """Ask the trial for one knob: a choice is categorical; a stepped range an int (or float)
    grid from its first to its last value; any other range a float range, log or not."""
    if isinstance(knob, Choice):
        return trial.suggest_categorical(name, knob.values())
    if knob.step is not None:
        values = knob.values()
        if all(isinstance(v, int) for v in values) and float(knob.step).is_integer():
            return trial.suggest_int(name, int(values[0]), int(values[-1]), step=int(knob.step))
        return trial.suggest_float(name, float(values[0]), float(values[-1]), step=knob.step)
    return trial.suggest_float(name, knob.low, knob.high, log=knob.log)


def _value(knob: Choice | Range, drawn: Any) -> Value:
    """A drawn value as the knob's own sampler would give it (stepped: its nearest grid value,
    so an int knob stays an int and a float grid has no rounding noise)."""
    if isinstance(knob, Range) and knob.step is not None:
        return min(knob.values(), key=lambda v: abs(float(v) - float(drawn)))
    return drawn


class TpeSampler:
    """Draws configurations with a TPE study and learns from each finished trial."""

    def __init__(self, space: SearchSpace, shape: DataShape, max_params: int, seed: int,
                 cap: ComputeCap | None = None, history: list[dict[str, Any]] | None = None,
                 ) -> None:
        self.space, self.shape, self.max_params, self.seed = space, shape, max_params, seed
        self.cap = cap
        # One entry per suggested trial, in order: its Tune id, params and distributions, and
        # (once told) its state and value. A restored study is rebuilt from this alone.
        self.history: list[dict[str, Any]] = list(history or [])
        self._study, self._numbers = self._rebuild()

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its searcher with the tuner
        return {"space": self.space, "shape": self.shape, "max_params": self.max_params,
                "seed": self.seed, "cap": self.cap, "history": self.history}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def load(self, history: list[dict[str, Any]]) -> None:
        """Continue from a saved history (a resumed search): the study is rebuilt from it."""
        self.history = list(history)
        self._study, self._numbers = self._rebuild()

    def _rebuild(self) -> tuple[optuna.Study, dict[str, int]]:
        """A study holding the history: told trials as they ended, untold ones running (Tune
        resumes them and reports them later). The seed moves on with the history, so a
        resumed search does not repeat the random draws it began with."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # its per-trial lines: noise here
        with warnings.catch_warnings():  # multivariate and group are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=self.seed + len(self.history), n_startup_trials=STARTUP_TRIALS,
                multivariate=True, group=True)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        numbers = {}
        for entry in self.history:
            state = STATES[entry["state"]] if entry.get("state") else TrialState.RUNNING
            study.add_trial(create_trial(
                state=state, value=entry.get("value") if state == TrialState.COMPLETE else None,
                params=entry["params"],
                distributions={k: json_to_distribution(v)
                               for k, v in entry["distributions"].items()}))
            numbers[entry["trial_id"]] = study.trials[-1].number
        return study, numbers

    def suggest(self, trial_id: str) -> TrialConfig:
        """The next configuration, fitted to the caps. A draw that no shrinking can fit is told
        failed (not kept in the history) and drawn again; as in `SearchSpace.sample`, the
        space's cheapest model is taken when no draw meets the compute cap."""
        for attempt in range(TRIES + 1 if self.cap is not None else TRIES):
            trial = self._study.ask()
            config = self._configure(trial, self.cap, cheapest=attempt == TRIES)
            if config is None:
                self._study.tell(trial, state=TrialState.FAIL)
                continue
            self._numbers[trial_id] = trial.number
            self.history.append({
                "trial_id": trial_id, "params": dict(trial.params),
                "distributions": {k: distribution_to_json(d)
                                  for k, d in trial.distributions.items()},
                "state": None, "value": None})
            return config
        self.space.check_fits(self.shape, self.max_params)
        raise BudgetError(f"no model fitting --max-params {self.max_params:,} was drawn from "
                          f"{self.space.source} in {TRIES} tries")

    def _configure(self, trial: optuna.Trial, cap: ComputeCap | None,
                   cheapest: bool = False) -> TrialConfig | None:
        """The trial's draw as a fitted configuration, or None when it cannot fit the caps;
        with `cheapest`, its training knobs on the space's cheapest model."""
        space = self.space
        training = {name: _value(knob, _suggest(trial, f"training.{name}", knob))
                    for name, knob in space.training.items()}
        if cheapest and cap is not None:
            return space.cheapest(training, self.shape, self.max_params, cap)
        family = str(trial.suggest_categorical(FAMILY, list(space.families)))
        knobs = space.families[family]
        fill = next((n for n in space.fill.names() if n in knobs), None) if space.fill else None
        drawn = {name: int(_value(knob, _suggest(trial, f"{family}.{name}", knob)))
                 for name, knob in knobs.items() if name != fill}
        target = None
        if fill is not None and space.fill is not None:
            drawn[fill] = int(max(knobs[fill].values()))  # not drawn: fit sets it afresh
            share = trial.suggest_float(f"{family}.fill", space.fill.low, 1.0, log=True)
            target = int(share * self.max_params)
        return space.configure(family, drawn, training, self.shape, self.max_params, target,
                               cap)

    def tell(self, trial_id: str, value: float | None, state: str = "COMPLETE") -> None:
        """A finished trial's score (`COMPLETE`), or `PRUNED` (diverged) or `FAIL` (errored).
        A trial this sampler did not suggest, or told already, is ignored."""
        number = self._numbers.get(trial_id)
        entry = next((e for e in self.history if e["trial_id"] == trial_id), None)
        if number is None or entry is None or entry["state"] is not None:
            return
        if state == "COMPLETE" and (value is None or not math.isfinite(value)):
            state = "FAIL"
        value = float(value) if state == "COMPLETE" and value is not None else None
        self._study.tell(number, value, state=STATES[state])
        entry.update(state=state, value=value)

    def best(self) -> float | None:
        """The best score told so far (None before any)."""
        scores = [e["value"] for e in self.history if e["state"] == "COMPLETE"]
        return max(scores) if scores else None

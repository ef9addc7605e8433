"""The search space: a YAML file of knobs, validated, sampled, and fitted to the parameter cap.

A sampled architecture over `max_params` never reaches a trainer: its `fit_order` knobs are
shrunk (width first, by default) until the exact count fits, and it is resampled otherwise.
With `fill:`, one knob per family is not drawn but set so the model lands just under a target
near the cap, so trials spend the parameter budget instead of wasting it on tiny models.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from autofit import models
from autofit.budget import ComputeCap
from autofit.config import Recipe, TrialConfig
from autofit.errors import BudgetError, UsageError, one_line
from autofit.models import DataShape, pretrained
from autofit.search.knobs import Choice, Fill, First, Knob, Value, check_training
from autofit.search.latency_fit import fast_enough, fast_recipe, latency_work, with_passes


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")
    families: dict[str, dict[str, Knob]]
    fit_order: list[str] = ["width", "depth"]
    fill: Fill | None = None
    training: dict[str, Knob]
    first: First | None = None
    # How draws are made: seeded random sampling, or Optuna's TPE learning from the trials so
    # far (autofit/search/tpe.py). Random stays the default until a benchmark says otherwise.
    searcher: Literal["random", "tpe"] = "random"
    # The choices autofit makes from the data before the plan (autofit/runner.py `decide`);
    # each may change the prior's knobs, so a space whose `first:` must stand as written drops them.
    decide: list[Literal["mirror", "resolution", "lr"]] = ["mirror", "resolution", "lr"]
    source: str = "<memory>"
    # Exact counts already made: a fill search counts the same few models again and again.
    _counts: dict[tuple[object, ...], int] = PrivateAttr(default_factory=dict)
    _work_counts: dict[tuple[object, ...], tuple[int, ...]] = PrivateAttr(default_factory=dict)
    _weights: dict[int, str] = PrivateAttr(default_factory=dict)  # pretrained net -> its file

    @field_validator("fill")
    @classmethod
    def _fill_knobs(cls, fill: Fill | None, info: ValidationInfo) -> Fill | None:
        families = info.data.get("families")
        if fill is None or not families:
            return fill
        known = sorted({name for family_knobs in families.values() for name in family_knobs})
        for name in fill.names():
            if name not in known:
                raise ValueError(f"knob {name!r} is not a knob of any family in this space "
                                 f"(knobs: {', '.join(known)})")
        for family, family_knobs in families.items():
            mine = [name for name in fill.names() if name in family_knobs]
            if len(mine) != 1:
                raise ValueError(f"knob must name exactly one knob of family {family!r} "
                                 f"(it names {mine or 'none'} of {sorted(family_knobs)})")
        return fill

    @field_validator("searcher", mode="before")
    @classmethod
    def _searcher_name(cls, searcher: object) -> object:
        if searcher not in ("random", "tpe"):
            raise ValueError(f"must be random (seeded random sampling) or tpe (Optuna's TPE), "
                             f"not {searcher!r}")
        return searcher

    @model_validator(mode="after")
    def _known(self) -> SearchSpace:
        if not self.families:
            raise ValueError("families must name at least one model family")
        for family, family_knobs in self.families.items():
            if family not in models.FAMILIES:
                raise ValueError(f"unknown family {family!r} (known: {sorted(models.FAMILIES)})")
            expected, required = models.knobs(family), models.required_knobs(family)
            if not required <= set(family_knobs) <= expected:
                raise ValueError(f"family {family!r} takes knobs {sorted(expected)} (of which "
                                 f"{sorted(required)} must be set), not {sorted(family_knobs)}")
            for name, knob in family_knobs.items():
                try:
                    values = knob.values()
                except ValueError:
                    raise ValueError(f"{family}.{name} must be discrete (choices or a stepped "
                                     "range)") from None
                if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                    raise ValueError(f"{family}.{name} must take integer values")
        check_training(self.training)
        if self.first is not None:
            self._check_first(self.first)
        return self

    def _check_first(self, first: First) -> None:
        if first.family not in self.families:
            raise ValueError(f"first.family {first.family!r} is not a family of this space "
                             f"({', '.join(self.families)})")
        knobs = self.families[first.family]
        fill = self._fill_knob(first.family)
        for where, given, wanted, optional in (
                ("arch", first.arch, knobs, fill), ("training", first.training, self.training,
                                                    None)):
            unknown = sorted(set(given) - set(wanted))
            missing = sorted(set(wanted) - set(given) - {optional})
            if unknown or missing:
                raise ValueError(f"first.{where} must set each knob of the space once "
                                 f"(unknown: {unknown or 'none'}, missing: {missing or 'none'})")
            for name, value in given.items():
                if not wanted[name].admits(value):
                    raise ValueError(f"first.{where}.{name}: {value!r} is outside the space's "
                                     f"knob")

    @classmethod
    def load(cls, path: Path) -> SearchSpace:
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise UsageError(f"cannot read search space {path}: {one_line(err)}") from None
        if not isinstance(raw, dict):
            raise UsageError(f"search space {path} must be a YAML mapping")
        try:
            return cls(**raw, source=str(path))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"] if p not in {"choice", "range"})
            message = first["msg"].removeprefix("Value error, ")
            raise UsageError(f"search space {path}: {where}: {message}") from None

    def with_weights(self, given: str | None) -> tuple[SearchSpace, str | None]:
        """This space with its pretrained family's `net` limited to the nets whose weights
        are found (`--weights`, else torch's hub cache: models/pretrained.py), each config
        naming its file, and a line saying so (None without the family); the prior takes the
        nearest net found."""
        family = pretrained.FAMILY
        if family not in self.families:
            if given is not None:
                raise UsageError(f"--weights {given}: the search space {self.source} has no "
                                 f"{family} family to start from them")
            return self, None
        files, said = pretrained.usable(
            [int(v) for v in self.families[family]["net"].values()], given)
        nets = sorted(files)
        first = self.first
        if first is not None and first.family == family and first.arch.get("net") not in nets:
            net = min(nets, key=lambda v: abs(v - first.arch.get("net", 0)))
            first = first.model_copy(update={"arch": {**first.arch, "net": net}})
        knobs = {**self.families[family], "net": Choice(choices=list(nets))}
        space = self.model_copy(update={"families": {**self.families, family: knobs},
                                        "first": first})
        space._weights = files
        return space, said

    def configure(self, family: str, drawn: dict[str, int], training: dict[str, Value],
                  shape: DataShape, max_params: int, target: int | None = None,
                  cap: ComputeCap | None = None) -> TrialConfig | None:
        """Knob values drawn elsewhere (a model-based searcher: autofit/search/tpe.py) as one
        configuration, fitted as `sample` fits its own draws; None when nothing fits."""
        cap = with_passes(cap, training)  # a latency cap prices the recipe's test-time views
        fitted = self.fit(family, drawn, shape, max_params, target, cap)
        return None if fitted is None else \
            self._config(family, fitted[0], training, shape, max_params)

    @property
    def prior_test_passes(self) -> int:
        """Forward passes per test image of the prior's test-time views (flip TTA's 2 in a
        space without one): what the plan prices the final test pass at before a model is
        chosen; a skipped search exports the prior itself."""
        return 2 if self.first is None else Recipe(**self.first.training).test_passes

    def first_config(self, shape: DataShape, max_params: int,
                     cap: ComputeCap | None = None) -> TrialConfig | None:
        """The `first:` configuration fitted to the caps (filled to the parameter cap, then
        narrowed to the compute cap); None when the space has none or it cannot fit."""
        if self.first is None:
            return None
        first = self.first
        knobs = self.families[first.family]
        drawn = {name: int(first.arch.get(name, max(knob.values())))
                 for name, knob in knobs.items()}
        config = self.configure(first.family, drawn, dict(first.training), shape, max_params,
                                max_params, cap)
        fill = self._fill_knob(first.family)
        if config is None and cap is not None:  # the prior, narrowest (without fill: as is)
            narrowest = {**drawn, fill: int(min(knobs[fill].values()))} if fill else drawn
            config = self._config(first.family, narrowest, dict(first.training), shape,
                                  max_params)
            if config is not None and not fast_enough(cap, first.training, self._work(
                    config.family, config.arch, shape)):
                config = None  # the latency cap is hard: the search draws instead
        return config

    def cheapest(self, training: dict[str, Value], shape: DataShape, max_params: int,
                 cap: ComputeCap) -> TrialConfig | None:
        """The space's cheapest model to train (every knob of a family at its smallest, the
        family costing least at `cap`'s prices, of those within `max_params`) with `training`:
        what the search tries when nothing the budget affords can be drawn."""
        fitting = [(family, arch) for family, arch in self._floors().items()
                   if self._count(family, arch, shape) <= max_params]
        if cap.latency is not None:  # a hard cap: the drawn views, or none if they cannot meet it
            training = fast_recipe(self, training, shape, max_params, cap)
            fitting = [fa for fa in fitting if fast_enough(cap, training, self._work(*fa, shape))]
        if not fitting:
            return None
        family, arch = min(fitting, key=lambda fa: cap.cost.seconds(self._work(*fa, shape)))
        return self._config(family, arch, training, shape, max_params)

    def _floors(self) -> dict[str, dict[str, int]]:
        """Each family's smallest model: every knob at its lowest value."""
        return {family: {name: int(min(knob.values())) for name, knob in knobs.items()}
                for family, knobs in self.families.items()}

    def _config(self, family: str, arch: dict[str, int], training: dict[str, Value],
                shape: DataShape, max_params: int) -> TrialConfig | None:
        params = self._count(family, arch, shape)
        if params > max_params:
            return None
        return TrialConfig(family=family, arch=arch, recipe=Recipe(**training), params=params,
                           macs=self._work(family, arch, shape)[0],
                           weights=self._weights.get(arch["net"]) if family == pretrained.FAMILY
                           else None)

    def smallest(self, shape: DataShape) -> tuple[str, dict[str, int], int]:
        """The smallest model the space can build: the floor any parameter cap must clear."""
        family, arch = min(self._floors().items(), key=lambda fa: self._count(*fa, shape))
        return family, arch, self._count(family, arch, shape)

    def check_fits(self, shape: DataShape, max_params: int) -> None:
        family, arch, params = self.smallest(shape)
        if params > max_params:
            knobs = " ".join(f"{k}={v}" for k, v in arch.items())
            raise BudgetError(
                f"--max-params {max_params:,} is below every model in {self.source}: the "
                f"smallest ({family} {knobs}) has {params:,} parameters for this data"
            )

    def sample(self, rng: np.random.Generator, shape: DataShape, max_params: int,
               tries: int = 100, cap: ComputeCap | None = None) -> TrialConfig:
        """Draw one configuration whose model fits `max_params`, shrinking it if needed.

        `cap` is a compute cap as well (what the time budget affords: see budget.Plan);
        when no draw meets it, the search gets the cheapest model the space has."""
        training = {name: knob.sample(rng) for name, knob in self.training.items()}
        for _ in range(tries):
            family = list(self.families)[int(rng.integers(len(self.families)))]
            drawn = {name: int(knob.sample(rng)) for name, knob in self.families[family].items()}
            target = None
            if self.fill is not None:  # drawn only with fill: spaces without keep their stream
                low = math.log(self.fill.low * max_params)
                target = int(math.exp(rng.uniform(low, math.log(max_params))))
            config = self.configure(family, drawn, training, shape, max_params, target, cap)
            if config is not None:
                return config
        cheapest = self.cheapest(training, shape, max_params, cap) if cap is not None else None
        if cheapest is not None:
            return cheapest
        self.check_fits(shape, max_params)
        raise BudgetError(f"no model fitting --max-params {max_params:,} was drawn from "
                          f"{self.source} in {tries} tries")

    def fit(self, family: str, drawn: dict[str, int], shape: DataShape, max_params: int,
            target: int | None = None,
            cap: ComputeCap | None = None) -> tuple[dict[str, int], int] | None:
        """Largest model at or below the drawn knobs that fits, shrinking `fit_order` knobs
        (the first one fastest); None when even their smallest values are over the cap.

        With `fill`, the family's fill knob is not shrunk from its drawn value but chosen
        afresh at each step of the others to land near `target` (default: the cap). With
        `cap`, a model must also be cheap enough to train."""
        knob = self._fill_knob(family)
        order = [k for k in self.fit_order if k in drawn and k != knob]
        ladders = [
            sorted((v for v in self.families[family][k].values() if v <= drawn[k]), reverse=True)
            for k in reversed(order)
        ]
        for combo in itertools.product(*ladders):
            arch = {**drawn, **dict(zip(reversed(order), combo, strict=True))}
            if knob is not None:
                filled = self._fill(family, arch, knob, shape, max_params, target or max_params)
                if filled is not None and cap is not None:
                    filled = self._cheaper(family, *filled, knob, shape, cap)
                if filled is not None:
                    return filled
                continue
            params = self._count(family, arch, shape)
            if params <= max_params and (cap is None or
                                         cap.allows(self._work(family, arch, shape))):
                return arch, params
        return None

    def _cheaper(self, family: str, arch: dict[str, int], params: int, knob: str,
                 shape: DataShape, cap: ComputeCap) -> tuple[dict[str, int], int] | None:
        """`arch` with its fill knob lowered until the model is cheap enough for `cap`;
        lowering it only lowers the parameter count, so the cap still holds."""
        values = sorted((int(v) for v in self.families[family][knob].values()
                         if v <= arch[knob]), reverse=True)
        for value in values:
            candidate = {**arch, knob: value}
            if cap.allows(self._work(family, candidate, shape)):
                return candidate, self._count(family, candidate, shape)
        return None

    def _fill_knob(self, family: str) -> str | None:
        if self.fill is None:
            return None
        return next(name for name in self.fill.names() if name in self.families[family])

    def _fill(self, family: str, arch: dict[str, int], knob: str, shape: DataShape,
              max_params: int, target: int) -> tuple[dict[str, int], int] | None:
        """`arch` with `knob` at the largest value whose model has at most `target` params;
        if that is below low * cap, the next value up when it fits the cap, so a coarse knob
        (WRN's integer widen) still lands in [low * cap, cap] whenever any value does.

        Counts grow with the knob, so this is a search for the boundary; every returned count
        is exact and checked, so the cap holds even for a family where they did not grow."""
        assert self.fill is not None
        values = sorted(int(v) for v in self.families[family][knob].values())

        def count(i: int) -> int:
            return self._count(family, {**arch, knob: values[i]}, shape)

        keys = [_count_key(family, {**arch, knob: v}, shape) for v in values]
        known = {i: self._counts[key] for i, key in enumerate(keys) if key in self._counts}
        under = _boundary(values, count, target, known)  # values[:under] are at most target
        best = under - 1
        if best >= 0 and count(best) >= self.fill.low * max_params:
            pick = best
        elif under < len(values) and count(under) <= max_params:
            pick = under
        elif best >= 0 and count(best) <= max_params:
            pick = best
        else:
            return None
        return {**arch, knob: values[pick]}, count(pick)

    def _count(self, family: str, arch: dict[str, int], shape: DataShape) -> int:
        key = _count_key(family, arch, shape)
        if key not in self._counts:
            self._counts[key] = models.count_for(family, arch, shape)
        return self._counts[key]

    def _work(self, family: str, arch: dict[str, int], shape: DataShape) -> tuple[int, ...]:
        key = _count_key(family, arch, shape)
        if key not in self._work_counts:  # (MACs, activations, layers): both caps price it
            self._work_counts[key] = latency_work(family, arch, shape)
        return self._work_counts[key]


def _boundary(values: list[int], count: Callable[[int], int], target: int,
              known: dict[int, int]) -> int:
    """How many of `values` (ascending) give at most `target` parameters.

    A deep model takes tens of milliseconds to count even on the meta device, so probes
    are few: the next is where sqrt(params), near-linear in a width knob, would reach
    the target, by extrapolation from one count or interpolation between the bracket's
    ends, with a bisection whenever that fails to halve the bracket."""
    seen = dict(known)  # counts made for earlier samples bracket the search from the start
    lo = max((i for i, c in seen.items() if c <= target), default=-1)
    hi = min((i for i, c in seen.items() if c > target), default=len(values))
    if hi <= lo:  # counts that do not grow with the knob: search afresh
        lo, hi, seen = -1, len(values), {}
    bisect = False
    while hi - lo > 1:
        ends = [i for i in (lo, hi) if i in seen]
        guess: float | None = None
        if len(ends) == 2 and not bisect:
            (a, ca), (b, cb) = ((i, math.sqrt(seen[i])) for i in ends)
            guess = values[a] + (math.sqrt(target) - ca) * (values[b] - values[a]) / (cb - ca)
        elif ends and not bisect:  # params ~ knob squared, from the one count made
            guess = values[ends[0]] * math.sqrt(target / max(seen[ends[0]], 1))
        if guess is None:
            probe = (lo + hi) // 2
        else:
            probe = min(range(lo + 1, hi), key=lambda i: abs(values[i] - guess))
        before = hi - lo
        seen[probe] = count(probe)
        if seen[probe] <= target:
            lo = probe
        else:
            hi = probe
        bisect = not bisect and (hi - lo) * 2 > before
    return lo + 1


def _count_key(family: str, arch: dict[str, int], shape: DataShape) -> tuple[object, ...]:
    return family, tuple(sorted(arch.items())), tuple(shape)

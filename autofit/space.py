"""The search space: a YAML file of knobs, validated, sampled, and fitted to the parameter cap.

A sampled architecture over `max_params` never reaches a trainer: its `fit_order` knobs are
shrunk (width first, by default) until the exact count fits, and it is resampled otherwise.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Annotated

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from autofit import models
from autofit.errors import BudgetError, UsageError, one_line
from autofit.models import DataShape

Value = bool | int | float | str


class Choice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    choices: list[Value]

    @model_validator(mode="after")
    def _nonempty(self) -> Choice:
        if not self.choices:
            raise ValueError("choices must not be empty")
        return self

    def values(self) -> list[Value]:
        return list(self.choices)

    def sample(self, rng: np.random.Generator) -> Value:
        return self.choices[int(rng.integers(len(self.choices)))]


class Range(BaseModel):
    model_config = ConfigDict(extra="forbid")
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low <= self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.step is not None and self.step <= 0:
            raise ValueError("step must be positive")
        return self

    def values(self) -> list[Value]:
        """The discrete values of a stepped range (architecture knobs must be discrete)."""
        if self.step is None:
            raise ValueError("a range without step has no finite list of values")
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [_tidy(self.low + i * self.step) for i in range(count)]

    def sample(self, rng: np.random.Generator) -> Value:
        if self.step is not None:
            options = self.values()
            return options[int(rng.integers(len(options)))]
        if self.log:
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))


def _tidy(value: float) -> int | float:
    return int(round(value)) if abs(value - round(value)) < 1e-9 else value


def _knob_kind(value: object) -> str:
    return "choice" if isinstance(value, dict | Choice) and (
        isinstance(value, Choice) or "choices" in value) else "range"


Knob = Annotated[Annotated[Choice, Tag("choice")] | Annotated[Range, Tag("range")],
                 Discriminator(_knob_kind)]


class Recipe(BaseModel):
    """Training settings of one trial (what `training:` in a space file samples)."""

    model_config = ConfigDict(extra="forbid")
    batch_size: int
    lr: float
    weight_decay: float
    label_smoothing: float = 0.0
    hflip: bool = True
    cutout: float = Field(default=0.0, ge=0.0, le=1.0)
    momentum: float = 0.9


class TrialConfig(BaseModel):
    """One sampled point, already fitted to the parameter cap: all a trial needs to train."""

    model_config = ConfigDict(extra="forbid")
    family: str
    arch: dict[str, int]
    recipe: Recipe
    params: int

    def describe(self) -> str:
        arch = " ".join(f"{k}={v}" for k, v in self.arch.items())
        r = self.recipe
        return (f"{self.family} {arch} ({self.params / 1e6:.3f}M params) bs={r.batch_size} "
                f"lr={r.lr:.3g} wd={r.weight_decay:.2g} ls={r.label_smoothing} hflip={r.hflip} "
                f"cutout={r.cutout}")


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")
    families: dict[str, dict[str, Knob]]
    fit_order: list[str] = ["width", "depth"]
    training: dict[str, Knob]
    source: str = "<memory>"

    @model_validator(mode="after")
    def _known(self) -> SearchSpace:
        if not self.families:
            raise ValueError("families must name at least one model family")
        for family, family_knobs in self.families.items():
            if family not in models.FAMILIES:
                raise ValueError(f"unknown family {family!r} (known: {sorted(models.FAMILIES)})")
            expected = models.knobs(family)
            if set(family_knobs) != expected:
                raise ValueError(f"family {family!r} takes knobs {sorted(expected)}, "
                                 f"not {sorted(family_knobs)}")
            for name, knob in family_knobs.items():
                try:
                    values = knob.values()
                except ValueError:
                    raise ValueError(f"{family}.{name} must be discrete (choices or a stepped "
                                     "range)") from None
                if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                    raise ValueError(f"{family}.{name} must take integer values")
        recipe_fields = set(Recipe.model_fields)
        unknown = set(self.training) - recipe_fields
        if unknown:
            raise ValueError(f"unknown training knobs {sorted(unknown)} "
                             f"(known: {sorted(recipe_fields)})")
        missing = {"batch_size", "lr", "weight_decay"} - set(self.training)
        if missing:
            raise ValueError(f"training must set {sorted(missing)}")
        return self

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

    def smallest(self, shape: DataShape) -> tuple[str, dict[str, int], int]:
        """The smallest model the space can build: the floor any parameter cap must clear."""
        candidates = []
        for family, family_knobs in self.families.items():
            arch = {name: int(min(knob.values())) for name, knob in family_knobs.items()}
            candidates.append((models.count_for(family, arch, shape), family, arch))
        params, family, arch = min(candidates, key=lambda c: c[0])
        return family, arch, params

    def check_fits(self, shape: DataShape, max_params: int) -> None:
        family, arch, params = self.smallest(shape)
        if params > max_params:
            knobs = " ".join(f"{k}={v}" for k, v in arch.items())
            raise BudgetError(
                f"--max-params {max_params:,} is below every model in {self.source}: the "
                f"smallest ({family} {knobs}) has {params:,} parameters for this data"
            )

    def sample(self, rng: np.random.Generator, shape: DataShape, max_params: int,
               tries: int = 100) -> TrialConfig:
        """Draw one configuration whose model fits `max_params`, shrinking it if needed."""
        recipe = Recipe(**{name: knob.sample(rng) for name, knob in self.training.items()})
        for _ in range(tries):
            family = list(self.families)[int(rng.integers(len(self.families)))]
            drawn = {name: int(knob.sample(rng)) for name, knob in self.families[family].items()}
            fitted = self.fit(family, drawn, shape, max_params)
            if fitted is not None:
                arch, params = fitted
                return TrialConfig(family=family, arch=arch, recipe=recipe, params=params)
        self.check_fits(shape, max_params)
        raise BudgetError(f"no model fitting --max-params {max_params:,} was drawn from "
                          f"{self.source} in {tries} tries")

    def fit(self, family: str, drawn: dict[str, int], shape: DataShape,
            max_params: int) -> tuple[dict[str, int], int] | None:
        """Largest model at or below the drawn knobs that fits, shrinking `fit_order` knobs
        (the first one fastest); None when even their smallest values are over the cap."""
        order = [k for k in self.fit_order if k in drawn]
        ladders = [
            sorted((v for v in self.families[family][k].values() if v <= drawn[k]), reverse=True)
            for k in reversed(order)
        ]
        for combo in itertools.product(*ladders):
            arch = {**drawn, **dict(zip(reversed(order), combo, strict=True))}
            params = models.count_for(family, arch, shape)
            if params <= max_params:
                return arch, params
        return None

"""The knobs of a search space file: choices and ranges, the `fill:` and `first:` blocks, and
the check that every `training:` knob can only draw values a Recipe accepts."""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from autofit.config import Recipe

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

    def admits(self, value: Value) -> bool:
        return any(value == c and type(value) is type(c) or
                   isinstance(c, float) and isinstance(value, int) and value == c
                   for c in self.choices)

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

    def admits(self, value: Value) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.step is not None:
            return any(math.isclose(value, v) for v in self.values())  # type: ignore[arg-type]
        return self.low <= value <= self.high

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


def check_training(training: dict[str, Knob]) -> None:
    """Every `training:` knob names a Recipe field and every value it can take is valid for
    it, so a typo (`optimizer: {choices: [adamw, rmsprop]}`) fails when the file loads, naming
    the knob, not when a trial first draws it."""
    fields = Recipe.model_fields
    unknown = set(training) - set(fields)
    if unknown:
        raise ValueError(f"unknown training knobs {sorted(unknown)} (known: {sorted(fields)})")
    missing = {"batch_size", "lr", "weight_decay"} - set(training)
    if missing:
        raise ValueError(f"training must set {sorted(missing)}")
    for name, knob in training.items():
        field = fields[name]
        if isinstance(knob, Range):
            if field.annotation not in (int, float):
                raise ValueError(f"training.{name} takes {{choices: [...]}}, not a range")
            if field.annotation is int and knob.step is None:
                raise ValueError(f"training.{name} takes integers: give its range a step")
            values = knob.values() if knob.step is not None else [knob.low, knob.high]
        else:
            values = knob.values()
        kind = Annotated[(field.annotation, *field.metadata)] if field.metadata \
            else field.annotation
        adapter = TypeAdapter(kind)
        for value in values:
            try:
                adapter.validate_python(value)
            except ValidationError as err:
                reason = err.errors()[0]["msg"]
                raise ValueError(f"training.{name}: {value!r} is not allowed ({reason})") from None


class Fill(BaseModel):
    """`fill: {knob: width, low: 0.5}`: each family's fill knob is not drawn but set to the
    largest value whose model has at most a target drawn log-uniformly in [low * cap, cap]
    parameters, given the family's other drawn knobs. `knob` may list one name per family
    (`[width, widen, alpha]`) for a space mixing families whose width knobs differ in name."""

    model_config = ConfigDict(extra="forbid")
    knob: str | list[str]
    low: float = Field(default=0.5, gt=0.0, le=1.0)

    def names(self) -> list[str]:
        return [self.knob] if isinstance(self.knob, str) else list(self.knob)


class First(BaseModel):
    """`first:` the configuration the search trains first: a strong prior (a known-good
    recipe) rather than a random draw. ASHA runs the first trial to its full length, and the
    refit starts from the winner's weights, so when the prior wins, none of its search time
    is lost. It is fitted to the caps like any draw; the fill knob may be left to fill."""

    model_config = ConfigDict(extra="forbid")
    family: str
    arch: dict[str, int] = {}
    training: dict[str, Value]

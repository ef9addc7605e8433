"""The search space with the training knobs the data decided (autofit/data/mirror.py) fixed,
in its draws and in its `first:` prior alike."""

from __future__ import annotations

from autofit.records import Decision
from autofit.search.knobs import Choice
from autofit.search.space import SearchSpace


def pinned(space: SearchSpace, decisions: list[Decision]) -> SearchSpace:
    """`space` with each knob a decision pins reduced to its one value."""
    pins = {knob: value for d in decisions for knob, value in d.pinned.items()}
    if not pins:
        return space
    training = {**space.training, **{k: Choice(choices=[v]) for k, v in pins.items()
                                     if k in space.training}}
    first = space.first
    if first is not None:
        first = first.model_copy(update={"training": {
            **first.training, **{k: v for k, v in pins.items() if k in first.training}}})
    return space.model_copy(update={"training": training, "first": first})

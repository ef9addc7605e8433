"""The search space with the knobs the data decided (autofit/data/mirror.py, the training
knobs; search/resolution.py, models.SHRINK) fixed, and its learning rates scaled as
search/learning_rate.py found (LR_SCALE), in its draws and in its `first:` prior."""

from __future__ import annotations

from autofit import models
from autofit.records import Decision
from autofit.search.knobs import Choice, Knob, Range
from autofit.search.space import SearchSpace

LR_SCALE = "lr_scale"  # a decision's `pinned` key: the factor on every learning rate of the space


def pinned(space: SearchSpace, decisions: list[Decision]) -> SearchSpace:
    """`space` with each knob a decision pins reduced to its one value: training knobs for
    every family, models.SHRINK for each family that takes it."""
    pins = {knob: value for d in decisions for knob, value in d.pinned.items()}
    if not pins:
        return space
    scale = float(pins.pop(LR_SCALE, 1.0))
    training = {**space.training, **{k: Choice(choices=[v]) for k, v in pins.items()
                                     if k in space.training}}
    if scale != 1.0 and "lr" in training:
        training["lr"] = _scaled(training["lr"], scale)
    arch = {k: v for k, v in pins.items() if k == models.SHRINK}
    families = {family: {**knobs, **{k: Choice(choices=[v]) for k, v in arch.items()
                                     if k in models.knobs(family)}}
                for family, knobs in space.families.items()}
    first = space.first
    if first is not None:
        lr = {"lr": float(first.training["lr"]) * scale} \
            if scale != 1.0 and "lr" in first.training else {}
        first = first.model_copy(update={
            "training": {**first.training, **lr,
                         **{k: v for k, v in pins.items() if k in first.training}},
            "arch": {**first.arch, **{k: v for k, v in arch.items()
                                      if k in models.knobs(first.family)}}})
    return space.model_copy(update={"training": training, "first": first,
                                    "families": families})


def _scaled(knob: Knob, scale: float) -> Knob:
    """A learning-rate knob with every value it can draw multiplied by `scale`."""
    if isinstance(knob, Range):
        return knob.model_copy(update={"low": knob.low * scale, "high": knob.high * scale,
                                       "step": None})
    return Choice(choices=[float(v) * scale for v in knob.values()])


def shrink(space: SearchSpace) -> int:
    """The factor the space's models average their input down by (1: none pinned)."""
    for knobs in space.families.values():
        if models.SHRINK in knobs:
            return int(max(knobs[models.SHRINK].values()))
    return 1


def left_out(name: str, space: SearchSpace) -> Decision:
    """The decision `name` not made, because the space's `decide:` leaves it out."""
    return Decision(name=name, pinned={}, measured={}, evidence=(
        f"{name} not decided: the search space {space.source} leaves it out of `decide:`, so "
        f"its knobs stand as written"))

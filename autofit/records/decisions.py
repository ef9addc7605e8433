"""The choices a run makes from its data before anything trains, each with its evidence (the
log says them; the summary keeps them)."""

from __future__ import annotations

from autofit.records.base import Record


class Decision(Record):
    """One choice from the data: the training knobs it sets, in words and in numbers."""

    name: str  # what was decided, e.g. "mirror"
    # training or model knobs it fixes (empty: none); lr_scale: a factor on every learning rate
    pinned: dict[str, bool | int | float | str]
    evidence: str  # one line: what was measured and what it says
    measured: dict[str, float]

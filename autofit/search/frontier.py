"""The compute frontier: how accurate a model of a given cost gets from a given number of
training images, measured once on a grid of widths x epochs and fitted (bench/frontier.py), so
the plan sizes the model from the time its refit has on this machine, not from an epoch count.

A fixed floor of 20 epochs, fitted on a 2-core AMX machine in bf16, took fastnet width 16 for
28 epochs (86.82%) at 10 minutes in float32 on an AMD EPYC, where width 24 for 16 epochs
scored 87.75% in the same time (bench/results/frontier-w*-e*.json): the best number of epochs
moves with the compute there is, so the plan asks the frontier at every budget instead.

The fitted form is a scaling law with repeated data (Hoffmann et al. 2022; Muennighoff et al.
2023): error = floor + a (MACs / 1e7)^-alpha + b (D' / 1e6)^-beta, where D' counts the images
seen with each pass over the same `unique` images worth less than the one before (passes past
the first saturate at `repeats` fresh epochs' worth), so a small dataset asks for a wider model
and fewer passes rather than the 100+ epochs a fixed image count would make it train.

The exponents are shared; each measured dataset has its own floor and coefficients, and a run
takes the law of the one its linear probe (data/mirror.py) scores nearest. With CIFAR-10's law
alone, a 2-minute Fashion-MNIST run put width 20 first and scored 91.89%, behind a hand
recipe's width 8 (92.24%); with Fashion-MNIST's, width 12 scored 93.06% (bench/README.md).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from autofit import models
from autofit.budget import MIN_REFIT_IMAGES, Cost, RefitImages
from autofit.models import DataShape, pretrained
from autofit.records import Decision

FILE = Path(__file__).with_name("frontier.json")
# The architecture the grid measured (the default space's prior); its widths are the ruler
# the plan measures any budget with, whatever family the search then draws.
FAMILY, ARCH = "fastnet", {"depth": 2, "whiten": 2}
WIDTHS = range(4, 257, 4)
MACS_UNIT, IMAGES_UNIT = 1e7, 1e6


class Point(BaseModel):
    """One trained grid point: the prior at `width` for `epochs` of `unique` images."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    dataset: str
    width: int
    epochs: float
    unique: int
    macs: int
    accuracy: float  # on the test set, with the prior's test-time views
    image_s: float  # measured training seconds per image (the grid's machine and precision)
    group: int  # points trained for about the same seconds on the same machine share one
    fitted: float = math.nan  # what the fit says


class Law(BaseModel):
    """One dataset's floor and coefficients, and how far a linear probe gets on it (its lead
    over chance as a share of the most there is: data/mirror.py's probe, bench/mirror.py)."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    probe: float
    floor: float
    a: float
    b: float


class Frontier(BaseModel):
    """The fitted laws (exponents shared, one floor and pair of coefficients per dataset) and
    the points they were fitted on, with how they were made."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    alpha: float
    beta: float
    repeats: float  # fresh epochs' worth that passes after the first add up to at most
    laws: tuple[Law, ...]
    rms: float  # of the fit on its points, in accuracy
    points: tuple[Point, ...]
    command: str
    machine: str
    date: str

    def law(self, probe: float | None = None, dataset: str | None = None) -> Law:
        """The law of `dataset`, else of the dataset whose linear probe scored nearest this
        data's `probe` (the first law when nothing was probed): the model term weighs
        less on data a linear probe already separates (Fashion-MNIST against CIFAR-10)."""
        named = [law for law in self.laws if law.dataset == dataset]
        if named or probe is None:
            return (named or list(self.laws))[0]
        return min(self.laws, key=lambda law: abs(law.probe - probe))

    def effective_images(self, images: float, unique: float) -> float:
        """Images seen, each pass after the first worth less (Muennighoff et al. 2023)."""
        if images <= unique or math.isinf(self.repeats):
            return images
        passes = images / unique - 1.0
        return unique * (1.0 + self.repeats * (1.0 - math.exp(-passes / self.repeats)))

    def accuracy(self, law: Law, macs: float, images: float, unique: float) -> float:
        seen = max(self.effective_images(images, unique), 1.0)
        return 1.0 - law.floor - law.a * (macs / MACS_UNIT) ** -self.alpha \
            - law.b * (seen / IMAGES_UNIT) ** -self.beta


class Sizing(BaseModel):
    """The ruler's width the frontier puts first for a refit of `seconds` on this machine."""

    model_config = ConfigDict(frozen=True)

    seconds: float
    width: int
    image_s: float  # training seconds per image at that width, priced by the probe
    images: float
    epochs: float
    accuracy: float  # the law's figure for it (on the law's dataset)
    law: str  # the dataset whose law it is
    why: str  # why that law

    def describe(self) -> str:
        return (f"the compute frontier puts {FAMILY} width {self.width} for {self.epochs:.1f} "
                f"epochs first ({self.image_s * 1e3:.2f} ms per image, {self.images:,.0f} "
                f"images in {self.seconds:.0f}s; the law of {self.law}, {self.why})")


@functools.cache
def load(path: Path = FILE) -> Frontier:
    return Frontier.model_validate_json(path.read_text())


@functools.cache
def _ruler(shape: DataShape, max_params: int,
           shrink: int = 1) -> tuple[tuple[int, tuple[int, int]], ...]:
    """(width, (MACs, activations)) of the ruler's widths within `max_params` (the narrowest
    always), their input averaged down by `shrink` (models.SHRINK)."""
    rows = []
    for width in WIDTHS:
        arch = {**ARCH, "width": width, **({models.SHRINK: shrink} if shrink > 1 else {})}
        if rows and models.count_for(FAMILY, arch, shape) > max_params:
            break
        rows.append((width, models.count_work(FAMILY, arch, shape)))
    return tuple(rows)


def size(frontier: Frontier, cost: Cost, shape: DataShape, unique: int, seconds: float,
         max_params: int, probe: float | None = None, dataset: str | None = None,
         shrink: int = 1) -> Sizing:
    """The width whose `seconds` of training on `unique` images the law for this data (by
    `dataset` or its linear `probe`: Frontier.law) scores best."""
    law = frontier.law(probe, dataset)
    why = "named" if law.dataset == dataset else "no probe of this data" if probe is None \
        else f"linear probe {law.probe:.2f} there, {probe:.2f} here"
    best: Sizing | None = None
    for width, work in _ruler(shape, max_params, shrink):
        image_s = max(cost.seconds(work), 1e-12)
        images = max(seconds, 0.0) / image_s
        sizing = Sizing(seconds=seconds, width=width, image_s=image_s, images=images,
                        epochs=images / max(unique, 1), law=law.dataset, why=why,
                        accuracy=frontier.accuracy(law, work[0], images, unique))
        if best is None or sizing.accuracy > best.accuracy:
            best = sizing
    assert best is not None
    return best


# Fine-tuning is not on the frontier (it was measured training from scratch): a pretrained
# space's refit is asked for the fixed floor the pretrained space was built under.
FINE_TUNE_EPOCHS = 20.0


def refit_images(space_families: set[str], shape: DataShape, unique: int, max_params: int,
                 cost: Cost, probe: float | None = None,
                 frontier: Frontier | None = None, shrink: int = 1) -> RefitImages:
    """The plan's question, answered for this data, space and machine: how many images a refit
    of so many seconds should see, and why (budget.Plan.make turns it into the compute cap)."""
    if pretrained.FAMILY in space_families:
        fixed = max(FINE_TUNE_EPOCHS * unique, MIN_REFIT_IMAGES)
        why = (f"min_epochs auto: {FINE_TUNE_EPOCHS:g} epochs of {unique:,} images, at least "
               f"{MIN_REFIT_IMAGES:,} (a pretrained space: the compute frontier was measured "
               "training from scratch)")
        return lambda seconds: (fixed, why)
    law = frontier or load()

    def images(seconds: float) -> tuple[float, str]:
        sizing = size(law, cost, shape, unique, seconds, max_params, probe, shrink=shrink)
        return sizing.images, sizing.describe()

    return images


def linear_probe(decisions: Iterable[Decision]) -> float | None:
    """How far a linear probe gets on this data: its lead over chance as a share of the most
    there is, as the mirror decision measured it (data/mirror.py); None where not measured."""
    for decision in decisions:
        measured = decision.measured
        if measured.get("val_images") and "probe_accuracy" in measured \
                and measured.get("chance", 1.0) < 1.0:
            return (measured["probe_accuracy"] - measured["chance"]) / (1.0 - measured["chance"])
    return None

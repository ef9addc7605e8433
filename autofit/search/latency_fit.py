"""Fitting candidates to the latency cap (`--max-latency-ms`), as they are fitted to the parameter
and compute caps (autofit/search/space.py): what a model's latency is priced from, a recipe
without the test-time views the space lets it go without, and the fastest model the space can
deliver, checked at start-up so that a cap no model meets fails before any trial trains.

Unlike the compute cap, the latency cap is hard: a draw that misses it is shrunk or redrawn,
and the fallback when nothing drawn fits (the cheapest model) must meet it too.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from autofit import models
from autofit.budget import ComputeCap
from autofit.config import Recipe
from autofit.errors import BudgetError
from autofit.latency_budget import LatencyCap
from autofit.models import DataShape

if TYPE_CHECKING:
    from autofit.search.knobs import Value
    from autofit.search.space import SearchSpace

VIEWS = ("tta", "tta_translate")  # the recipe knobs that add test-time passes and nothing else
NO_OP = (nn.Identity, nn.Dropout)  # leaf modules that export to no ONNX node in eval mode


def count_layers(family: str, arch: Mapping[str, int], shape: DataShape) -> int:
    """Layers of one forward pass: the leaf modules that export to a node. Each costs a fixed
    dispatch in onnxruntime, which MACs and activations miss: on 2 cores, with these as a
    third price, a default-space calibration timed ResNets at 0.95-1.18x their measured
    latency on 32x32 images, against 0.50-1.24x without (bench/latency.py)."""
    with torch.device("meta"):
        net = models.build_for(family, arch, shape)
    return sum(1 for module in net.modules()
               if next(module.children(), None) is None and not isinstance(module, NO_OP))


def latency_work(family: str, arch: Mapping[str, int], shape: DataShape) -> tuple[int, int, int]:
    """(MACs, activations, layers) of one image's forward pass, known before it trains."""
    macs, acts = models.count_work(family, arch, shape)
    return macs, acts, count_layers(family, arch, shape)


def passes(training: Mapping[str, Value]) -> int:
    """Forward passes per image that a recipe with these training knobs exports."""
    views = {name: training[name] for name in (*VIEWS, "hflip") if name in training}
    return Recipe(batch_size=1, lr=1.0, weight_decay=0.0, **views).test_passes  # type: ignore[arg-type]


def with_passes(cap: ComputeCap | None, training: Mapping[str, Value]) -> ComputeCap | None:
    """`cap` with its latency cap at the passes of a recipe with these training knobs."""
    if cap is None or cap.latency is None:
        return cap
    latency = cap.latency.model_copy(update={"passes": passes(training)})
    return cap.model_copy(update={"latency": latency})


def fast_enough(cap: ComputeCap | None, training: Mapping[str, Value],
                work: tuple[int, ...]) -> bool:
    """Whether a model doing `work`, exported with this recipe's views, meets the latency cap
    (always, without one)."""
    bound = with_passes(cap, training)
    return bound is None or bound.latency is None or bound.latency.allows(work)


def without_views(space: SearchSpace, training: Mapping[str, Value]) -> dict[str, Value]:
    """`training` with each test-time view off that the space can draw off (or does not set)."""
    off = {name: False for name in VIEWS
           if name not in space.training or False in space.training[name].values()}
    return {**training, **off}


def fast_recipe(space: SearchSpace, training: Mapping[str, Value], shape: DataShape,
                max_params: int, cap: ComputeCap) -> dict[str, Value]:
    """The drawn training knobs if some model of the space meets the latency cap with their
    views, else the same without the views the space lets go: what the cheapest-model
    fallback trains when no draw met the caps."""
    floors = [(family, arch) for family, arch in space._floors().items()
              if space._count(family, arch, shape) <= max_params]
    if any(fast_enough(cap, training, space._work(family, arch, shape))
           for family, arch in floors):
        return dict(training)
    return without_views(space, training)


def fastest(space: SearchSpace, shape: DataShape, max_params: int,
            cap: LatencyCap) -> tuple[str, dict[str, int], int, float]:
    """The fastest model the space can deliver within `max_params`: (family, arch, passes,
    predicted ms) of the family floor (every knob at its least) predicted fastest, with the
    fewest test-time passes its training knobs can draw (the mirror views counted wherever a
    recipe may mirror, as the cheapest-model fallback keeps a drawn recipe's flips)."""
    choices = {name: space.training[name].values() if name in space.training
               else [Recipe.model_fields[name].default] for name in VIEWS}
    flips = space.training["hflip"].values() if "hflip" in space.training else [True]
    fewest = min(passes({**dict(zip(VIEWS, views, strict=True)), "hflip": any(flips)})
                 for views in itertools.product(*choices.values()))
    bound = cap.model_copy(update={"passes": fewest})
    floors = [(family, arch) for family, arch in space._floors().items()
              if space._count(family, arch, shape) <= max_params]
    family, arch = min(floors, key=lambda fa: bound.ms(space._work(*fa, shape)))
    return family, arch, fewest, bound.ms(space._work(family, arch, shape))


def check_latency(space: SearchSpace, shape: DataShape, max_params: int,
                  cap: LatencyCap) -> tuple[str, dict[str, int], int, float]:
    """`fastest`, or a BudgetError naming its predicted latency when even it misses the cap."""
    family, arch, views, ms = found = fastest(space, shape, max_params, cap)
    if ms > cap.max_ms:
        knobs = " ".join(f"{k}={v}" for k, v in arch.items())
        tta = "" if views == 1 else f", {views} test-time passes"
        threads = cap.model.threads
        raise BudgetError(
            f"--max-latency-ms {cap.max_ms:g} is below every model in {space.source}: the "
            f"fastest ({family} {knobs}{tta}) takes about {ms:.3g} ms per image on this "
            f"machine (onnxruntime, {threads} thread{'s' if threads != 1 else ''})")
    return found

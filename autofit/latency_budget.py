"""The latency budget (`--max-latency-ms`): the exported model's batch-1 latency in onnxruntime on
this machine must be at or under it. What the plan, the search space and the summary share,
without torch or onnxruntime: the per-machine latency model, the cap candidates are fitted to,
and the record of what the exported model measured.

The model is fitted at start-up (autofit/deliver/latency.py, `calibrate`) by timing a few
reference networks of the space's families; candidates are priced from their (MACs,
activations, layers) per forward pass (autofit/search/latency_fit.py) times the forward passes
their recipe's test-time views put in the graph.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict

from autofit.errors import UsageError

WARMUP = 10  # batch-1 runs before timing: the first pay for allocations and kernel choice
RUNS = 50  # timed batch-1 runs; their median is the latency
# After the export, on a miss: up to two re-exports of the same weights with fewer test-time
# views (0.7 s each, verification included, for the tests' models on 2 busy cores), their
# sessions and the file's replacement; the timings are priced from the cap (`latency_reserve`).
LATENCY_CHECK_S = 3.0
# The reserve prices the timed model at up to this many times the cap; a slower one (the
# predictor missed by up to 4.8x for large models on 2 busy cores: bench/results/latency.json)
# is timed in fewer runs, at least 10, so the timing stays inside what was kept for it.
TIMING_HEADROOM = 2.0


def parse_latency_ms(value: object) -> float | None:
    """`--max-latency-ms` (or `max_latency_ms` in a budget preset): milliseconds, > 0."""
    if value is None:
        return None
    try:
        ms = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        ms = math.nan
    if isinstance(value, bool) or not math.isfinite(ms) or ms <= 0:
        raise UsageError(f"--max-latency-ms must be a positive number of milliseconds "
                         f"(batch-1 onnxruntime latency on this machine), not {value!r}")
    return ms


# A budget's `max_latency_ms`, validated as `--max-latency-ms` is (autofit/budget.py, Budget)
LatencyMs = Annotated[float | None, BeforeValidator(parse_latency_ms)]


def latency_reserve(max_ms: float | None) -> float:
    """Seconds the final reserve keeps for timing the exported model against the cap and, on
    a miss, re-exporting it with fewer test-time views and timing it again (twice at most)."""
    if max_ms is None:
        return 0.0
    timed = (WARMUP + RUNS) * TIMING_HEADROOM * max_ms / 1000.0
    return LATENCY_CHECK_S + 3 * timed


class LatencyReference(BaseModel):
    """One reference network timed at calibration, with what the fitted model says of it."""

    model_config = ConfigDict(frozen=True)

    family: str
    arch: dict[str, int]
    passes: int  # forward passes in its graph: 1, or 6 (mirror and translate views)
    macs: int
    activations: int
    layers: int
    measured_ms: float
    predicted_ms: float = 0.0


class LatencyModel(BaseModel):
    """Batch-1 onnxruntime milliseconds of a model on this machine, at `threads` intra-op
    threads: `overhead_ms` once per call (session.run, normalisation, averaging the views)
    plus, per forward pass of the network, a fixed part and prices per MAC, per activation
    value and per layer. All non-negative, fitted to the `references` by relative error."""

    model_config = ConfigDict(frozen=True)

    overhead_ms: float
    pass_ms: float
    ms_per_mac: float
    ms_per_act: float
    ms_per_layer: float
    threads: int
    seconds: float  # what the calibration took
    references: list[LatencyReference] = []

    def ms(self, work: tuple[int, ...], passes: int = 1) -> float:
        """Predicted milliseconds of a model doing `work` = (MACs, activations, layers) per
        forward pass, with `passes` passes per image (its recipe's test-time views)."""
        macs, acts, layers = work[:3]
        return self.overhead_ms + passes * (self.pass_ms + self.ms_per_mac * macs +
                                            self.ms_per_act * acts + self.ms_per_layer * layers)

    def describe(self) -> str:
        return (f"{self.overhead_ms * 1e3:.1f} us + passes x ({self.pass_ms * 1e3:.1f} us + "
                f"{self.ms_per_mac * 1e9:.3g} ps/MAC + {self.ms_per_act * 1e6:.3g} ns/activation "
                f"+ {self.ms_per_layer * 1e3:.3g} us/layer)")


class LatencyCap(BaseModel):
    """The latency cap a candidate must meet, at the test-time passes of the recipe it is being
    fitted with (`passes`: the search space sets it per recipe)."""

    model_config = ConfigDict(frozen=True)

    model: LatencyModel
    max_ms: float
    passes: int = 1

    def ms(self, work: tuple[int, ...]) -> float:
        return self.model.ms(work, self.passes)

    def allows(self, work: tuple[int, ...]) -> bool:
        return self.ms(work) <= self.max_ms


class LatencyInfo(BaseModel):
    """`summary.json` `latency`: the exported model timed against --max-latency-ms, batch 1 in
    onnxruntime on this machine (median of `runs` timed runs after `warmup`), what the latency
    model predicted for it, and what was done when it missed. Unknown keys are ignored, as in
    every run record (autofit/records.py)."""

    model_config = ConfigDict(extra="ignore")

    max_ms: float
    predicted_ms: float | None  # None: no calibration in this run's plan
    measured_ms: float  # median
    p90_ms: float
    threads: int
    runs: int
    warmup: int
    within_budget: bool
    passes: int  # forward passes per image in the delivered graph (its test-time views)
    action: str  # what was done: "none needed", or on a miss what was tried and kept
    first_measured_ms: float | None = None  # on a miss: the export as the recipe made it
    first_passes: int | None = None
    seconds: float = 0.0  # timings and any re-export
    calibration: LatencyModel | None = None

    def facts(self) -> list[tuple[str, str]]:
        """What `autofit inspect` prints of it."""
        views = f"{self.passes} forward pass{'' if self.passes == 1 else 'es'}"
        return [
            ("latency_budget_ms", f"{self.max_ms:g} (batch 1, onnxruntime, {self.threads} "
                                  f"threads: {'within' if self.within_budget else 'OVER'} it)"),
            ("latency_measured", f"{self.measured_ms:.4g} ms median, p90 {self.p90_ms:.4g} ms "
                                 f"({self.runs} runs after {self.warmup}; {views})"),
            ("latency_predicted", "?" if self.predicted_ms is None else
             f"{self.predicted_ms:.4g} ms (the latency model fitted at start-up)"),
            ("latency_action", self.action)]

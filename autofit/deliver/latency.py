"""How long a deployed model takes to answer one image: batch-1 latency in onnxruntime on this
machine, the figure a latency budget is stated in and an INT8 model's speed-up is measured by.

The median of timed runs after warm-up, on a stated number of intra-op threads: the first runs
pay for allocations and kernel choice, and a median leaves out the odd stall of a shared CPU.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from autofit.deliver.export import ort_session

WARMUP = 10
RUNS = 50


class LatencyTiming(BaseModel):
    """One batch-1 timing of an ONNX file: what the summary says beside a latency figure."""

    model_config = ConfigDict(frozen=True)

    median_ms: float
    p90_ms: float
    runs: int
    warmup: int
    threads: int


def batch1_latency(path: Path, input_shape: tuple[int, int, int], threads: int,
                   runs: int = RUNS, warmup: int = WARMUP) -> LatencyTiming:
    """Time `path` on one random image of `input_shape` (C, H, W): the model's graph is the
    same whatever the pixels, so its time is too."""
    session = ort_session(path, threads)
    image = np.random.default_rng(0).random((1, *input_shape), dtype=np.float32)
    feed = {session.get_inputs()[0].name: image}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1000.0)
    times.sort()
    return LatencyTiming(median_ms=round(statistics.median(times), 4),
                         p90_ms=round(times[min(int(0.9 * len(times)), len(times) - 1)], 4),
                         runs=runs, warmup=warmup, threads=threads)

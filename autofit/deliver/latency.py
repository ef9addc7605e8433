"""How long a deployed model takes to answer one image: batch-1 latency in onnxruntime on this
machine, the figure a latency budget is stated in and an INT8 model's speed-up is measured by.

The median of timed runs after warm-up, on a stated number of intra-op threads: the first runs
pay for allocations and kernel choice, and a median leaves out the odd stall of a shared CPU.

With `--max-latency-ms`, `calibrate` fits this machine's latency model at start-up, in the
spirit of the compute probe (autofit/train/probe.py): a few untrained reference networks of
the space's families, exported as a run exports its model and timed in turns, give the prices
of autofit/latency_budget.py's LatencyModel; the search fits every candidate to the cap with
it (autofit/search/latency_fit.py). After the export, `enforce` times the real file.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from scipy.optimize import nnls

from autofit import models
from autofit.deliver.export import _export, export_onnx, ort_session
from autofit.errors import AutofitError, one_line
from autofit.latency_budget import (
    RUNS,
    TIMING_HEADROOM,
    WARMUP,
    LatencyInfo,
    LatencyModel,
    LatencyReference,
)
from autofit.models import Classifier, DataShape
from autofit.records import ExportInfo

__all__ = ["RUNS", "WARMUP", "LatencyTiming", "batch1_latency", "calibrate", "enforce"]

MIN_RUNS = 10  # a timing cut short by `max_s` still takes the median of this many
# Reference networks per family, small to large (2-4 of each family in the space are timed):
# narrow and deep, wide and shallow, so MACs, activations and layers vary independently.
REFERENCES: dict[str, tuple[dict[str, int], ...]] = {
    "fastnet": ({"width": 8, "depth": 2}, {"width": 32, "depth": 2}, {"width": 16, "depth": 3},
                {"width": 32, "depth": 3}),
    "resnet": ({"depth": 8, "width": 8}, {"depth": 8, "width": 32}, {"depth": 20, "width": 8},
               {"depth": 20, "width": 24}),
    "wrn": ({"depth": 10, "widen": 1}, {"depth": 10, "widen": 4}, {"depth": 22, "widen": 1},
            {"depth": 16, "widen": 2}),
    "pyramidnet": ({"depth": 20, "alpha": 24, "shakedrop": 0},
                   {"depth": 20, "alpha": 96, "shakedrop": 0},
                   {"depth": 32, "alpha": 24, "shakedrop": 0},
                   {"depth": 32, "alpha": 96, "shakedrop": 0}),
}
GENERIC = ("fastnet", "resnet")  # what prices a family with no references (pretrained)
MAX_REFERENCES = 6  # one-pass references: 4 of a one-family space, 3 each of two, else 2 each
VIEWS_PASSES = 6  # the views reference: mirror and translate views, the most a recipe exports
CALIBRATION_WARMUP = 3
CALIBRATION_ROUNDS = 3  # the references are timed in turns, so a stall hits them all alike
CALIBRATION_RUNS = 10  # timed runs per reference per round; the median of all is its latency
WorkFn = Callable[[str, Mapping[str, int], DataShape], tuple[int, int, int]]


class LatencyTiming(BaseModel):
    """One batch-1 timing of an ONNX file: what the summary says beside a latency figure."""

    model_config = ConfigDict(frozen=True)

    median_ms: float
    p90_ms: float
    runs: int
    warmup: int
    threads: int


def batch1_latency(path: Path, input_shape: tuple[int, int, int], threads: int,
                   runs: int = RUNS, warmup: int = WARMUP,
                   max_s: float | None = None) -> LatencyTiming:
    """Time `path` on one random image of `input_shape` (C, H, W): the model's graph is the
    same whatever the pixels, so its time is too. With `max_s`, a model slower than that
    allows is timed in fewer runs (at least MIN_RUNS), as the warm-up's second half predicts
    (its first runs pay for allocations)."""
    session = ort_session(path, threads)
    image = np.random.default_rng(0).random((1, *input_shape), dtype=np.float32)
    feed = {session.get_inputs()[0].name: image}
    _timed(session, feed, warmup - warmup // 2)
    paced = _timed(session, feed, warmup // 2)
    if max_s is not None and paced:
        pace = statistics.median(paced) / 1000.0
        runs = max(min(runs, MIN_RUNS), min(runs, int(max_s / max(pace, 1e-9))))
    times = _timed(session, feed, runs)
    times.sort()
    return LatencyTiming(median_ms=round(statistics.median(times), 4),
                         p90_ms=round(times[min(int(0.9 * len(times)), len(times) - 1)], 4),
                         runs=runs, warmup=warmup, threads=threads)


def _timed(session: Any, feed: dict[str, np.ndarray], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def references(families: Sequence[str]) -> list[tuple[str, dict[str, int]]]:
    """The one-pass reference networks for a space of these families."""
    known = [f for f in dict.fromkeys(families) if f in REFERENCES]
    if len(known) < len(set(families)):
        known = list(dict.fromkeys([*known, *GENERIC]))
    per = max(2, min(4, MAX_REFERENCES // len(known)))
    return [(family, dict(arch)) for family in known for arch in REFERENCES[family][:per]]


def calibrate(shape: DataShape, families: Sequence[str], threads: int,
              work: WorkFn) -> LatencyModel:
    """This machine's latency model for the data's shape, at `threads` onnxruntime threads:
    the reference networks of `families` exported untrained (as the run exports: the
    normalising Classifier, TorchScript exporter) and timed batch 1, the first of them also
    with mirror and translate views in its graph (VIEWS_PASSES passes), which splits the
    fixed cost of a call from that of a forward pass; then a non-negative least-squares fit
    of relative error. `work` gives a network's (MACs, activations, layers)."""
    start = time.perf_counter()
    nets = [(family, arch, 1) for family, arch in references(families)]
    nets.append((*nets[0][:2], VIEWS_PASSES))
    image = np.random.default_rng(0).random((1, shape.channels, shape.height, shape.width),
                                            dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="autofit-latency-") as tmp:
        sessions = []
        for i, (family, arch, passes) in enumerate(nets):
            path = Path(tmp) / f"reference-{i}.onnx"
            with torch.no_grad(), _one_thread():
                _export(_untrained(family, arch, shape, passes), torch.from_numpy(image), path)
            session = ort_session(path, threads)
            feed = {session.get_inputs()[0].name: image}
            _timed(session, feed, CALIBRATION_WARMUP)
            sessions.append((session, feed))
        times: list[list[float]] = [[] for _ in sessions]
        for _ in range(CALIBRATION_ROUNDS):
            for i, (session, feed) in enumerate(sessions):
                times[i] += _timed(session, feed, CALIBRATION_RUNS)
    measured = [statistics.median(t) for t in times]
    works = [work(family, arch, shape) for family, arch, _ in nets]
    features = np.array([_features(w, p) for w, (_, _, p) in zip(works, nets, strict=True)])
    coefficients = _fit(features, np.array(measured))
    fitted = features @ coefficients
    refs = [LatencyReference(family=f, arch=a, passes=p, macs=w[0], activations=w[1],
                             layers=w[2], measured_ms=round(m, 5), predicted_ms=round(float(q), 5))
            for (f, a, p), w, m, q in zip(nets, works, measured, fitted, strict=True)]
    c0, c1, c2, c3, c4 = (float(c) for c in coefficients)
    return LatencyModel(overhead_ms=c0, pass_ms=c1, ms_per_mac=c2, ms_per_act=c3,
                        ms_per_layer=c4, threads=threads,
                        seconds=round(time.perf_counter() - start, 3), references=refs)


@contextmanager
def _one_thread() -> Iterator[None]:
    """PyTorch on one thread while a graph is traced for export: the trace runs each layer
    once on one image, and on 2 cores that another process kept busy, every layer on 2
    OpenMP threads waited 10-36 ms for the second one (a 16-channel 3x3 convolution: 36 ms
    on 2 threads, 0.03 ms on one); the default space's calibration took 5 s with its traces
    on 2 threads, 1.0-1.6 s on one (torch.onnx's first import aside)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _untrained(family: str, arch: Mapping[str, int], shape: DataShape,
               passes: int) -> Classifier:
    """A reference network as a run exports it, with `passes` 1 or VIEWS_PASSES views."""
    net = models.build_for(family, arch, shape)
    views = passes == VIEWS_PASSES
    return Classifier(net, [0.5] * shape.channels, [0.25] * shape.channels, tta=views,
                      translate=views).eval()


def _features(work: tuple[int, ...], passes: int) -> list[float]:
    macs, acts, layers = work[:3]
    return [1.0, passes, passes * macs, passes * acts, passes * layers]


def _fit(features: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising the squared relative error: a 0.05 ms network
    counts as much as a 2 ms one. Columns are scaled first (MACs run to 1e9, layers to 1e2)."""
    scale = np.maximum(np.abs(features).max(axis=0), 1e-12)
    weighted = features / scale / measured[:, None]
    coefficients, _ = nnls(weighted, np.ones(len(measured)))
    return coefficients / scale


def view_passes(model: Classifier) -> int:
    """Forward passes per image the model's test-time views put in its exported graph."""
    return _passes((model.tta, model.translate))


def _passes(views: tuple[bool, bool]) -> int:
    return (2 if views[0] else 1) * (3 if views[1] else 1)


def _named(views: tuple[bool, bool]) -> str:
    mirror, translate = views
    return {(True, True): "mirror and translate views", (True, False): "mirror views only",
            (False, True): "translate views only", (False, False): "no test-time views"}[
        (mirror, translate)]


@contextmanager
def _views_as(model: Classifier, views: tuple[bool, bool]) -> Iterator[Classifier]:
    """The same weights with these test-time views (plain attributes: the state_dict is the
    same), and the model's own views back afterwards."""
    own = model.tta, model.translate
    model.tta, model.translate = views
    try:
        yield model
    finally:
        model.tta, model.translate = own


def enforce(path: Path, model: Classifier | None, images: np.ndarray, metadata: dict[str, Any],
            threads: int, max_ms: float, calibration: LatencyModel | None,
            work: tuple[int, ...] | None, passes: int,
            log: logging.Logger) -> tuple[LatencyInfo, ExportInfo | None]:
    """Time the exported model at `path` (`passes` forward passes per image) against the cap.

    On a miss with test-time views in the graph and the weights at hand (`model`), the same
    weights are exported again with fewer views (`_fewer_views`), verified as every export
    is, and timed; the faster file is kept at `path` and its ExportInfo returned. Otherwise a
    miss is recorded as it is. Either way the log and the record say what was done."""
    start = time.perf_counter()
    shape = (images.shape[3], images.shape[1], images.shape[2])
    budget_s = (WARMUP + RUNS) * TIMING_HEADROOM * max_ms / 1000.0

    def predicted(p: int) -> float | None:
        return None if calibration is None or work is None else \
            round(calibration.ms(work, p), 4)

    timing = batch1_latency(path, shape, threads, max_s=budget_s)
    log.info("latency: %s takes %.4g ms per image (median of %d batch-1 runs in onnxruntime, "
             "%d threads; %d forward pass%s; predicted %s ms); the cap is %g ms", path.name,
             timing.median_ms, timing.runs, threads, passes, "" if passes == 1 else "es",
             _ms(predicted(passes)), max_ms)
    record = LatencyInfo(max_ms=max_ms, predicted_ms=predicted(passes),
                         measured_ms=timing.median_ms, p90_ms=timing.p90_ms, threads=threads,
                         runs=timing.runs, warmup=timing.warmup,
                         within_budget=timing.median_ms <= max_ms, passes=passes,
                         action="none needed: within the cap", calibration=calibration)
    export = None
    over = f"{timing.median_ms:.4g} ms is over the {max_ms:g} ms cap"
    if record.within_budget:
        pass
    elif model is None:
        record = record.model_copy(update={"action": (
            f"{over}; the model was exported on a Ray node, and only an in-process export is "
            "re-exported with fewer test-time views: kept as it is")})
    elif passes == 1:
        record = record.model_copy(update={"action": (
            f"{over} (the latency model predicted {_ms(record.predicted_ms)} ms); it has no "
            "test-time views to drop: kept as it is")})
    else:
        record, export = _fewer_views(record, timing, path, model, images, metadata, budget_s,
                                      predicted)
    if not record.within_budget or export is not None:
        log.warning("latency: %s", record.action)
    return record.model_copy(update={"seconds": round(time.perf_counter() - start, 3)}), export


def _fewer_views(record: LatencyInfo, timing: LatencyTiming, path: Path, model: Classifier,
                 images: np.ndarray, metadata: dict[str, Any], budget_s: float,
                 predicted: Callable[[int], float | None]) -> tuple[LatencyInfo, ExportInfo | None]:
    """A miss by a model with test-time views: the same weights exported with the most of its
    views whose latency, scaled from the measured one by passes, meets the cap (on 2 cores
    6 passes took 5.6-6.2x one where the machine was quiet: bench/latency.py), then, if that
    still misses, with none. The fastest file tried is kept; within the cap, the first that
    meets it. At most two exports: the final reserve keeps time for them (latency_budget)."""
    own = (model.tta, model.translate)
    fewer = sorted({(m, t) for m in {own[0], False} for t in {own[1], False}} - {own},
                   key=_passes, reverse=True)
    first = next((v for v in fewer if timing.median_ms * _passes(v) / record.passes <=
                  record.max_ms), fewer[-1])
    tried, best, export = [], timing, None
    spare = path.with_name(f".{path.stem}-fewer-views{path.suffix}")
    shape = (images.shape[3], images.shape[1], images.shape[2])
    try:
        for views in dict.fromkeys([first, fewer[-1]]):
            try:
                with _views_as(model, views):
                    info = export_onnx(model, spare, images, metadata, best.threads)
            except AutofitError as err:  # the file already delivered stands
                tried.append(f"with {_named(views)} failed ({one_line(err)})")
                break
            timed = batch1_latency(spare, shape, best.threads, max_s=budget_s)
            tried.append(f"with {_named(views)} ({_passes(views)} pass"
                         f"{'' if _passes(views) == 1 else 'es'}) {timed.median_ms:.4g} ms")
            if timed.median_ms < best.median_ms:
                os.replace(spare, path)
                best, export, kept = timed, info.model_copy(update={"path": str(path)}), views
            if best.median_ms <= record.max_ms:
                break
    finally:
        spare.unlink(missing_ok=True)
    fits = best.median_ms <= record.max_ms
    said = (f"{timing.median_ms:.4g} ms is over the {record.max_ms:g} ms cap with its "
            f"{_named(own)} ({record.passes} passes); the same weights exported "
            + ", then ".join(tried) + ": ")
    update: dict[str, Any] = {"first_measured_ms": timing.median_ms,
                              "first_passes": record.passes}
    if export is None:
        return record.model_copy(update={**update, "action": said + "none faster, kept as "
                                                                   "it was"}), None
    said += (f"kept the one with {_named(kept)}, " +
             ("within the cap" if fits else "still over the cap but the nearest to it"))
    return record.model_copy(update={
        **update, "action": said, "passes": _passes(kept), "predicted_ms": predicted(
            _passes(kept)), "measured_ms": best.median_ms, "p90_ms": best.p90_ms,
        "runs": best.runs, "within_budget": fits}), export


def _ms(value: float | None) -> str:
    return "?" if value is None or not math.isfinite(value) else f"{value:.4g}"

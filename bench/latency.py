"""Benchmark: how well the latency model predicts batch-1 onnxruntime latency before a model trains.

    python bench/latency.py [--shape 3,32,32,10] [--threads N [N ...]] [--out FILE]

`autofit run --max-latency-ms` fits every candidate to the cap with a latency model calibrated
at start-up on a few reference networks of the space's families (autofit/deliver/latency.py,
`calibrate`). This calibrates as a run does, three ways (a space of all four families, the
default space's fastnet and resnet, and each family alone), then exports a dozen untrained
models of every family as a run exports its model (some also with the mirror and translate
views, 6 forward passes), times each batch 1 as a run times its model (median of 50 runs after
10 warm-up) and writes each model's predicted and measured latency and their ratio, and per
family and calibration the median and worst error, with the CPU model, threads, load average
and date. By default it does all of that on all cores (as a run times its model), then again
on one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine  # noqa: E402

MODELS = {
    "fastnet": [{"width": w, "depth": d, "whiten": wh} for w, d, wh in (
        (8, 2, 0), (12, 3, 0), (16, 2, 2), (16, 3, 0), (20, 2, 2), (24, 2, 0), (24, 3, 2),
        (32, 3, 0), (40, 2, 2), (48, 2, 0), (56, 3, 2), (64, 2, 2))],
    "resnet": [{"depth": d, "width": w} for d, w in (
        (8, 12), (8, 24), (8, 48), (14, 8), (14, 20), (14, 40), (20, 12), (20, 32), (26, 16),
        (32, 8), (32, 24), (44, 16))],
    "wrn": [{"depth": d, "widen": k} for d, k in (
        (10, 2), (10, 3), (10, 6), (16, 1), (16, 3), (16, 4), (22, 2), (22, 3), (28, 1),
        (28, 2), (34, 1), (40, 1))],
    "pyramidnet": [{"depth": d, "alpha": a, "shakedrop": s} for d, a, s in (
        (20, 16, 0), (20, 48, 1), (20, 120, 0), (26, 64, 0), (32, 32, 1), (32, 96, 0),
        (38, 48, 0), (44, 24, 1), (44, 80, 0), (56, 16, 0), (56, 64, 1), (62, 40, 0))],
}
WITH_VIEWS = (1, 4, 7, 10)  # which of each family's dozen are also timed with 6 passes


def cpu_model() -> str:
    """lscpu's "Model name" (a VM may hide the number), else /proc/cpuinfo's."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return str(machine()["cpu"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="3,32,32,10", help="channels,height,width,classes")
    parser.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count() or 1, 1],
                        help="onnxruntime intra-op threads, each timed in turn (a run uses all "
                             "cores)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latency.json")
    args = parser.parse_args()
    from autofit.models import DataShape

    shape = DataShape(*(int(v) for v in args.shape.split(",")))
    load_before = os.getloadavg()
    runs = {str(threads): measure(shape, threads) for threads in args.threads}
    result = {"bench": "latency", "shape": list(shape), "threads": args.threads,
              "cpu": cpu_model(), "load_average_before": [round(v, 2) for v in load_before],
              "load_average_after": [round(v, 2) for v in os.getloadavg()],
              "by_threads": runs, "machine": machine(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for threads, run in runs.items():
        for name, per_family in run["errors"].items():
            print(f"{threads} threads, {name}: " + "; ".join(
                f"{family} median x{e['median_ratio']:.2f} [{e['min_ratio']:.2f}, "
                f"{e['max_ratio']:.2f}]" for family, e in per_family.items()))
    print(f"-> {args.out}")


def measure(shape: Any, threads: int) -> dict[str, Any]:
    """Calibrations and every model's predicted and measured latency at `threads`."""
    import torch

    from autofit.deliver.export import _export
    from autofit.deliver.latency import VIEWS_PASSES, _untrained, batch1_latency, calibrate
    from autofit.search.latency_fit import latency_work

    families = list(MODELS)
    setups = {"all four": families, "default space": ["fastnet", "resnet"],
              **{f"{family} alone": [family] for family in families}}
    calibrations = {}
    for name, chosen in setups.items():
        calibrations[name] = calibrate(shape, chosen, threads, latency_work)
        print(f"{threads} threads, calibration {name}: {calibrations[name].seconds:.2f}s, "
              f"{calibrations[name].describe()}", flush=True)
    rows: list[dict[str, Any]] = []
    image = torch.rand(1, shape.channels, shape.height, shape.width)
    with tempfile.TemporaryDirectory() as tmp:
        for family, archs in MODELS.items():
            for i, arch in enumerate(archs):
                for passes in (1, VIEWS_PASSES) if i in WITH_VIEWS else (1,):
                    path = Path(tmp) / "model.onnx"
                    with torch.no_grad():
                        _export(_untrained(family, arch, shape, passes), image, path)
                    measured = batch1_latency(path, tuple(shape[:3]), threads)
                    work = latency_work(family, arch, shape)
                    predicted = {name: round(model.ms(work, passes), 4)
                                 for name, model in calibrations.items()
                                 if family in setups[name]}
                    rows.append({"family": family, "arch": arch, "passes": passes,
                                 "macs": work[0], "activations": work[1], "layers": work[2],
                                 "measured_ms": measured.median_ms, "p90_ms": measured.p90_ms,
                                 "predicted_ms": predicted,
                                 "ratio": {k: round(v / measured.median_ms, 3)
                                           for k, v in predicted.items()}})
                    print(f"{threads} {family:<10} {json.dumps(arch):<44} x{passes}  measured "
                          f"{measured.median_ms:7.3f} ms  ratio "
                          + "  ".join(f"{k} {v:.2f}" for k, v in rows[-1]["ratio"].items()),
                          flush=True)
    errors: dict[str, dict[str, dict[str, float]]] = {}
    for name, chosen in setups.items():
        for family in chosen:
            for views in (1, VIEWS_PASSES):
                ratios = [r["ratio"][name] for r in rows
                          if r["family"] == family and r["passes"] == views]
                off = [abs(v - 1.0) for v in ratios]
                errors.setdefault(name, {})[f"{family} x{views}"] = {
                    "models": len(ratios), "median_ratio": round(statistics.median(ratios), 3),
                    "min_ratio": min(ratios), "max_ratio": max(ratios),
                    "median_error": round(statistics.median(off), 3),
                    "max_error": round(max(off), 3)}
    return {"calibrations": {k: v.model_dump() for k, v in calibrations.items()},
            "errors": errors, "models": rows}


if __name__ == "__main__":
    main()

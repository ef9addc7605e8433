"""Benchmark: how well autofit's compute model times models before they train.

    python bench/cost_model.py [--shape 3,32,32,10] [--seconds 2]

autofit/train/probe.py prices a training image per forward MAC and per activation value from two
reference models; the plan's compute cap rests on it. This times a dozen models of every
family on this machine (SGD steps on random pixels, as the probe does) and writes
bench/results/cost_model.json: each model's measured seconds per image, the two-price
prediction, and the prediction of one MAC rate measured on the wide reference alone (the
model autofit used before), with the worst ratio of each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine  # noqa: E402

MODELS = [
    ("resnet", {"depth": 8, "width": 16}), ("resnet", {"depth": 14, "width": 8}),
    ("resnet", {"depth": 20, "width": 16}), ("resnet", {"depth": 8, "width": 32}),
    ("fastnet", {"width": 8, "depth": 3}), ("fastnet", {"width": 16, "depth": 2}),
    ("fastnet", {"width": 20, "depth": 2}), ("fastnet", {"width": 48, "depth": 2}),
    ("wrn", {"depth": 10, "widen": 2}), ("wrn", {"depth": 16, "widen": 1}),
    ("pyramidnet", {"depth": 20, "alpha": 24, "shakedrop": 0}),
    ("pyramidnet", {"depth": 32, "alpha": 48, "shakedrop": 1}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="3,32,32,10", help="channels,height,width,classes")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per model")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" /
                        "cost_model.json")
    args = parser.parse_args()
    import torch

    from autofit import models
    from autofit.models import DataShape
    from autofit.train import probe

    shape = DataShape(*(int(v) for v in args.shape.split(",")))
    threads = torch.get_num_threads()
    start = time.time()
    cost = probe.cost(shape, "cpu", threads)
    probe_s = time.time() - start
    wide_family, wide_arch = probe.REFERENCES[-1]
    per_mac = cost.reference_s / models.count_work(wide_family, wide_arch, shape)[0]
    rows = []
    for family, arch in MODELS:
        work = models.count_work(family, arch, shape)
        measured = probe.seconds_per_image([(family, arch)], shape, "cpu", args.seconds)[0]
        rows.append({"family": family, "arch": arch, "macs": work[0], "activations": work[1],
                     "measured_s": measured,
                     "two_price_ratio": round(cost.seconds(work) / measured, 3),
                     "mac_rate_ratio": round(per_mac * work[0] / measured, 3)})
        print(f"{family:<10} {json.dumps(arch):<44} {measured * 1e3:6.2f} ms  two prices "
              f"x{rows[-1]['two_price_ratio']:.2f}  one MAC rate x{rows[-1]['mac_rate_ratio']:.2f}",
              flush=True)

    def spread(key: str) -> list[float]:
        return [min(r[key] for r in rows), max(r[key] for r in rows)]

    result = {"bench": "cost_model", "shape": list(shape), "threads": threads,
              "probe_s": round(probe_s, 2), "cost": cost.model_dump(),
              "two_price_ratio_range": spread("two_price_ratio"),
              "mac_rate_ratio_range": spread("mac_rate_ratio"), "models": rows,
              "machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"predicted / measured: two prices {spread('two_price_ratio')}, one MAC rate "
          f"{spread('mac_rate_ratio')} -> {args.out}")


if __name__ == "__main__":
    main()

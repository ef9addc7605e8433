"""Benchmark: how fast fastnet trains at each width and precision, against the cost model.

    python bench/widths.py [--widths 8 12 16 20 24] [--seconds 8] [--rounds 2]
    python bench/widths.py --widths 16 24 32 --precisions fp32 bf16 \\
        --out bench/results/precision.json
    python bench/widths.py --widths 12 24 40 --precisions fp32 bf16 --batches 64 128 256 \\
        --seconds 6 --rounds 1 --out bench/results/precision-batch.json

The compute cap picks the prior's width from autofit/train/probe.py's two-price cost model, and
autofit/train/precision.py trains under bf16 autocast on a CPU with AMX tiles. This trains fastnet
(depth 2, the space's prior recipe) on the CIFAR-10 JPEGs through autofit's own loader and
trainer, each width, precision (`AUTOFIT_PRECISION`; by default only the one autofit picks
here) and batch (`--batches`, learning rate scaled with it) for `--seconds`, all interleaved
`--rounds` times so the machine's drift touches them alike, and writes bench/results/widths.json:
measured and predicted images/s per width, precision and batch and, with both precisions, bf16's
ratio to float32 within each round. Whether bf16 costs accuracy is bench/prior.py's question:
run it with AUTOFIT_PRECISION=fp32 and bf16.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ROOT,
    add_data_argument,
    check_data,
    cpu_prior,
    prior_model,
    write_record,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 12, 16, 20, 24])
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=None)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[256])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "widths.json")
    args = parser.parse_args()
    if not check_data(args.data, splits=True):
        return 2

    import torch

    from autofit import models
    from autofit.search.steps import at_batch
    from autofit.train import precision, probe
    from autofit.train.loop import train

    threads = 2
    data, first, recipe = cpu_prior(args.data, threads)
    names = args.precisions or [precision.choose("cpu").name]
    costs = {}
    for name in names:
        os.environ[precision.ENV] = name
        costs[name] = probe.cost(data.shape, "cpu", threads)
    runs = [(w, p, b) for w in args.widths for p in names for b in args.batches]
    measured: dict[tuple[int, str, int], list[float]] = {run: [] for run in runs}
    for _ in range(args.rounds):
        for width, name, batch in runs:
            os.environ[precision.ENV] = name
            scaled = at_batch(recipe, batch)
            model, loader = prior_model(data, first, width, scaled, 0, threads)
            progress = train(model, loader, scaled, stop_at=time.time() + 2 * args.seconds,
                             total_seconds=args.seconds)
            measured[width, name, batch].append(round(progress.images_per_s, 1))
            print(f"width {width:3d} {name} batch {batch}: {measured[width, name, batch]} "
                  "images/s", flush=True)
    rows = []
    for w in args.widths:
        work = models.count_work(first.family, {**first.arch, "width": w}, data.shape)
        for b in args.batches:
            row = {"width": w, "batch": b,
                   **{f"{p}_images_per_s": measured[w, p, b] for p in names},
                   **{f"{p}_predicted_images_per_s": round(1 / costs[p].seconds(work), 1)
                      for p in names}}
            if len(names) == 2:
                ratios = [round(bf / f, 3) for f, bf in zip(
                    measured[w, "fp32", b], measured[w, "bf16", b], strict=True)]
                row |= {"bf16_over_fp32": ratios, "mean_ratio": round(statistics.fmean(ratios), 3)}
                print(f"width {w:3d} batch {b}: bf16 / fp32 = {ratios}")
            rows.append(row)
    record = {"bench": "widths", "data": str(args.data), "seconds": args.seconds,
              "batches": args.batches,
              "rounds": args.rounds, "amx": precision.amx(), "torch": torch.__version__,
              "costs": {p: c.model_dump() for p, c in costs.items()}, "rows": rows}
    return write_record(args.out, record)


if __name__ == "__main__":
    sys.exit(main())

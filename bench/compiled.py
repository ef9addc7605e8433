"""Benchmark: would `torch.compile` buy a CPU run more training than its compile costs?

    python bench/compiled.py [--widths 16 40] [--seconds 20] [--batch 64]
    AUTOFIT_PRECISION=fp32 python bench/compiled.py --out bench/results/compiled-fp32.json

Every image/s a budgeted run gains is accuracy (the compute frontier), but compiling takes
seconds out of the same budget. This trains the prior (fastnet, the space's recipe at
`--batch`, the learning rate scaled) through autofit's own loader and trainer, eager then
compiled (inductor) at each width, once, and writes each one's images/s after a warm-up and the
warm-up's seconds (for the compiled model, its compile): the break-even is the warm-up's
extra seconds over the fraction of speed gained.
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 40])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "compiled.json")
    args = parser.parse_args()
    if not check_data(args.data, splits=True):
        return 2

    import torch

    from autofit.search.steps import at_batch
    from autofit.train import precision
    from autofit.train.loop import train

    threads = 2
    data, first, prior = cpu_prior(args.data, threads)
    recipe = at_batch(prior, args.batch)
    rows = []
    for width in args.widths:
        for mode in ("eager", "compiled"):
            model, loader = prior_model(data, first, width, recipe, 0, threads)
            if mode == "compiled":
                model = torch.compile(model)
            start = time.perf_counter()
            train(model, loader, recipe, stop_at=time.time() + 600, total_steps=5)
            warm_s = time.perf_counter() - start
            progress = train(model, loader, recipe, stop_at=time.time() + 2 * args.seconds,
                             total_seconds=args.seconds)
            rows.append({"width": width, "mode": mode, "warm_up_s": round(warm_s, 1),
                         "images_per_s": round(progress.images_per_s, 1)})
            print(rows[-1], flush=True)
    record = {"bench": "compiled", "data": str(args.data), "seconds": args.seconds,
              "batch": args.batch, "precision": precision.choose("cpu").name,
              "torch": torch.__version__, "rows": rows}
    return write_record(args.out, record)


if __name__ == "__main__":
    sys.exit(main())

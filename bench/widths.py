"""Benchmark: how fast fastnet trains at each width, against what the cost model predicts.

    python bench/widths.py [--widths 8 12 16 20 24] [--seconds 8] [--rounds 2]

The compute cap picks the prior's width from autofit/probe.py's two-price cost model. This
trains fastnet (depth 2, the prior's recipe) on the CIFAR-10 JPEGs through autofit's own
loader and trainer, each width for `--seconds`, the widths interleaved `--rounds` times so
the machine's drift touches them all alike, and writes bench/results/widths.json: measured
and predicted images/s per width.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, add_data_argument, check_data, write_record  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 12, 16, 20, 24])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "widths.json")
    args = parser.parse_args()
    if not check_data(args.data, splits=True):
        return 2

    import torch

    from autofit import models, pipeline, probe
    from autofit.dataset import load
    from autofit.space import Recipe, TrialConfig
    from autofit.trial import make_model, train

    threads = 2
    torch.set_num_threads(threads)
    data = load(str(args.data), 0, threads, path=pipeline.choose("cpu"))
    cost = probe.cost(data.shape, "cpu", threads)
    recipe = Recipe(batch_size=256, lr=0.2, weight_decay=5e-4, label_smoothing=0.2,
                    hflip=True, optimizer="sgd", schedule="onecycle", tta=True)
    measured: dict[int, list[float]] = {w: [] for w in args.widths}
    for _ in range(args.rounds):
        for width in args.widths:
            arch = {"width": width, "depth": 2}
            config = TrialConfig(family="fastnet", arch=arch, recipe=recipe,
                                 params=models.count_for("fastnet", arch, data.shape))
            model = make_model(config, data.shape, *data.mean_std, "cpu")
            loader = pipeline.loader(data.data_path, data.x_train, data.y_train, 256,
                                     train=True, hflip=True, seed=0, threads=threads,
                                     device="cpu")
            progress = train(model, loader, recipe, stop_at=time.time() + 2 * args.seconds,
                             total_seconds=args.seconds)
            measured[width].append(round(progress.images_per_s, 1))
            print(f"width {width:3d}: {measured[width]} images/s", flush=True)
    rows = [{"width": w, "images_per_s": measured[w],
             "predicted_images_per_s": round(1 / cost.seconds(models.count_work(
                 "fastnet", {"width": w, "depth": 2}, data.shape)), 1)} for w in args.widths]
    record = {"bench": "widths", "data": str(args.data), "seconds": args.seconds,
              "rounds": args.rounds, "cost": cost.model_dump(), "rows": rows}
    return write_record(args.out, record)


if __name__ == "__main__":
    sys.exit(main())

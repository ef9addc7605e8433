"""Benchmark: where a range test puts the learning rate, against short runs at several rates.

    AUTOFIT_PRECISION=fp32 python bench/lr_range.py --data ../shared/datasets/cifar10-jpg \\
        ../shared/datasets/fashion-mnist.npz ../shared/datasets/clothing-photos embedded \\
        --seconds 40 --out bench/results/lr-range.json

For each dataset (`embedded`: the digits autofit runs on without --data), with the mirror
decision the run would make: search/learning_rate.py's range test at each seed (the rates at
the smoothed loss's minimum and at its valley's edge), then the prior (fastnet width
`--width`, batch 64) trained for `--seconds` at each `--scales` multiple of its rate (0.1 at
batch 64) and scored on the validation split. Photos over 96 a side train at half side, as
the resolution decision keeps them. search/learning_rate.py's EDGE_TO_PEAK is the ratio of
the edge to the best rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from autofit.data import mirror, pipeline
from autofit.data.dataset import load
from autofit.search import learning_rate, resolution
from autofit.search.decided import pinned
from autofit.search.space import SearchSpace
from autofit.search.steps import prior_recipe, probe_config
from autofit.train import precision
from autofit.train.loop import evaluate, make_model, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.5, 1, 2, 4])
    parser.add_argument("--width", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    space = SearchSpace.load(ROOT / "search_spaces" / "default.yaml")
    rows = []
    for name in args.data:
        data = load(None if name == "embedded" else name, 0, 2)
        decided = pinned(space, [mirror.decide(data, 0)])
        shrink = 2 if data.shape.size > resolution.MAX_AS_LOADED else 1
        recipe = prior_recipe(decided, data.shape, learning_rate.BATCH)
        tests = []
        for seed in range(args.seeds):
            start = time.time()
            lrs, losses = learning_rate.range_test(data, recipe, "cpu", 2, seed, shrink,
                                                   stop_at=start + 120)
            smooth = learning_rate._smoothed(losses)
            edge, turned = learning_rate._edge(smooth)
            tests.append({"seed": seed, "min_loss_lr": round(lrs[int(np.argmin(smooth))], 5),
                          "edge_lr": round(lrs[edge], 5), "turned": turned,
                          "steps": len(losses), "seconds": round(time.time() - start, 2),
                          "curve": [[round(lr, 5), round(float(s), 4)]
                                    for lr, s in zip(lrs, smooth, strict=False)]})
            print(name, {k: v for k, v in tests[-1].items() if k != "curve"}, flush=True)
        arms = []
        for scale in args.scales:
            arm = recipe.model_copy(update={"lr": recipe.lr * scale})
            config = probe_config(data.shape, arm, args.width, shrink)
            torch.manual_seed(0)
            model = make_model(config, data.shape, *data.mean_std)
            loader = pipeline.training_loader(data.data_path, data.x_train, data.y_train, arm,
                                              seed=0, threads=2, device="cpu")
            start = time.time()
            progress = train(model, loader, arm, stop_at=start + 2 * args.seconds,
                             total_seconds=args.seconds)
            val = pipeline.loader(data.data_path, data.x_val, data.y_val, 256, train=False,
                                  threads=2)
            arms.append({"scale": scale, "lr": round(arm.lr, 5), "steps": progress.steps,
                         "val_accuracy": round(evaluate(model, val)[0], 4)})
            print(name, arms[-1], flush=True)
        best = max(arms, key=lambda a: a["val_accuracy"])
        edges = [t["edge_lr"] for t in tests]
        shape = data.shape
        rows.append({"data": name, "side": [shape.width, shape.height], "shrink": shrink,
                     "hflip": recipe.hflip, "prior_lr": recipe.lr, "tests": tests,
                     "arms": arms, "best_lr": best["lr"],
                     "edge_to_best": round(float(np.exp(np.mean(np.log(edges)))) / best["lr"],
                                           3)})
        print(name, "edge/best", rows[-1]["edge_to_best"], flush=True)
    args.out.write_text(json.dumps({
        "bench": "lr_range", "seconds": args.seconds, "width": args.width,
        "range_test": {"steps": learning_rate.STEPS, "batch": learning_rate.BATCH,
                       "width": learning_rate.WIDTH, "below": learning_rate.BELOW,
                       "above": learning_rate.ABOVE, "per_decade": learning_rate.PER_DECADE,
                       "smooth": learning_rate.SMOOTH},
        "precision": precision.choose("cpu").name, "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

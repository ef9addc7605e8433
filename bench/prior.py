"""Benchmark: the space's prior recipe against variants of it, at a fixed epoch count, each
model scored with each set of test-time views.

    python bench/prior.py                 # all variants, fastnet width 16, 6 epochs, 1 seed
    python bench/prior.py --only baseline alternate_flip=true --seeds 2
    python bench/prior.py --only baseline whiten=0 --seeds 2 --width 16   # the whitened stem
    python bench/prior.py --epochs 0.5 --train-per-class 50 --test-per-class 20 --out /tmp/p.json
    python bench/prior.py --only baseline --width 24 32 --epochs 10 16   # a width x epochs grid
    AUTOFIT_PRECISION=fp32 python bench/prior.py --only baseline   # float32 (train/precision.py)
    python bench/prior.py --data ../shared/datasets/fashion-mnist.npz --only baseline  # any data
    python bench/prior.py --only baseline optimizer=sgd --width 24 --epochs 4 --seeds 2  # Muon
    python bench/prior.py --only baseline crop_shift=0.125 --width 32 --epochs 8  # 2 or 4 px
    python bench/prior.py --data ../shared/datasets/clothing-photos --as-run --shrink 2 \
        --batch 64 --width 44 --epochs 40 --only baseline crop_shift=0.125 --seeds 3

The prior (`first:` of search_spaces/default.yaml, fastnet depth 2) trains on the CIFAR-10
JPEGs through autofit's own loader and trainer for a fixed number of epochs, so the
machine's speed drift does not touch the accuracies: as it is (`baseline`) and with one
knob changed (learning rate, weight decay, airbench's alternating flip, EMA, the crop's
shift; `whiten=0`: the learned 3x3 stem in place of the whitened patches; `optimizer=sgd`:
SGD-Nesterov for every weight, what the prior trained with before Muon). Each trained model
is then scored on the test folder three ways, by switching its Classifier's test-time views:
none, flip TTA (2 passes) and flip plus the views shifted a pixel each way (6 passes), with
the images/s of each, what the final test pass pays for them. Writes
bench/results/prior.json and prints a table.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ROOT,
    add_data_argument,
    check_data,
    default_prior,
    prior_model,
    write_record,
)

VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "lr=0.1": {"lr": 0.1},
    "lr=0.2": {"lr": 0.2},
    "lr=0.4": {"lr": 0.4},
    "lr=0.8": {"lr": 0.8},
    "lr=1.6": {"lr": 1.6},
    "weight_decay=1e-3": {"weight_decay": 1e-3},
    "lr=0.4,weight_decay=1e-3": {"lr": 0.4, "weight_decay": 1e-3},
    "lr=0.8,weight_decay=1e-3": {"lr": 0.8, "weight_decay": 1e-3},
    "alternate_flip=true": {"alternate_flip": True},
    "ema=true": {"ema": True},
    "whiten=0": {"whiten": 0},
    "crop_shift=0.125": {"crop_shift": 0.125},
    "depth=3": {"depth": 3},
    "label_smoothing=0.1": {"label_smoothing": 0.1},
    "cutout=0.25": {"cutout": 0.25},
    "optimizer=sgd": {"optimizer": "sgd"},
    "optimizer=sgd,lr=0.8": {"optimizer": "sgd", "lr": 0.8},
    "optimizer=muon,lr=0.2": {"optimizer": "muon", "lr": 0.2},
    "optimizer=muon,lr=0.8": {"optimizer": "muon", "lr": 0.8},
    "optimizer=muon,lr=1.6": {"optimizer": "muon", "lr": 1.6},
}
VIEWS = {"none": (False, False), "flip": (True, False), "flip+translate": (True, True)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--epochs", type=float, nargs="+", default=[6.0],
                        help="epochs of each run; several: each width at each (a grid)")
    parser.add_argument("--width", type=int, nargs="+", default=[16])
    parser.add_argument("--seeds", type=int, default=1, help="runs per variant")
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), default=None)
    parser.add_argument("--train-per-class", type=int, default=0, help="0: all 5,000")
    parser.add_argument("--test-per-class", type=int, default=0, help="0: all 1,000")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--as-run", action="store_true",
                        help="read --data (any folder) as a run does: its size, its split")
    parser.add_argument("--shrink", type=int, default=1,
                        help="average-pool the input by this first (a run's half side)")
    parser.add_argument("--batch", type=int, default=0,
                        help="every variant at this batch, its lr scaled linearly (0: 256)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "prior.json")
    args = parser.parse_args()
    if not (args.data.is_file() or check_data(args.data, splits=True)):
        return 2

    import torch
    from recipes import load

    from autofit import models
    from autofit.config import Recipe
    from autofit.data import pipeline
    from autofit.search.steps import at_batch
    from autofit.train import precision
    from autofit.train.loop import EVAL_BATCH, evaluate, train

    torch.set_num_threads(args.threads)
    path = pipeline.choose("cpu")
    data = load(args.data, args.train_per_class, args.test_per_class, args.threads, path) \
        if args.data.is_dir() and not args.as_run else whole(args.data, args.threads, path)
    first = default_prior()
    test = pipeline.loader(data.data_path, data.x_val, data.y_val, EVAL_BATCH, train=False,
                           threads=args.threads)
    knobs = models.knobs(first.family)
    runs: list[dict[str, Any]] = []
    grid = [(w, e) for w in args.width for e in args.epochs]
    for seed in range(args.seeds):
        for width, epochs in grid:
            for name in args.only or list(VARIANTS):
                arch = {k: v for k, v in VARIANTS[name].items() if k in knobs}
                arch = arch if args.shrink == 1 else {**arch, "shrink": args.shrink}
                recipe = Recipe.model_validate({**first.training, **{
                    k: v for k, v in VARIANTS[name].items() if k not in knobs}})
                recipe = at_batch(recipe, args.batch) if args.batch else recipe
                model, loader = prior_model(data, first, width, recipe, seed, args.threads,
                                            arch)
                tick = time.perf_counter()
                final = train(model, loader, recipe, stop_at=math.inf,
                              total_steps=epochs * len(loader))
                train_s = time.perf_counter() - tick
                run: dict[str, Any] = {
                    "variant": name, "seed": seed, "width": width, "epochs": final.epoch,
                    "params": sum(p.numel() for p in model.parameters()),
                    "train_s": round(train_s, 1),
                    "images_per_s": round(final.epoch * len(data.y_train) / train_s, 1),
                    "test": {}}
                for view, (tta, translate) in VIEWS.items():
                    model.tta, model.translate = tta, translate
                    accuracy, rate, _ = evaluate(model, test)
                    run["test"][view] = {"accuracy": round(accuracy, 4),
                                         "images_per_s": round(rate)}
                runs.append(run)
                print(f"seed {seed} width {width} epochs {epochs:g} {name:20s} " + "  ".join(
                    f"{v} {run['test'][v]['accuracy']:.4f}" for v in VIEWS) +
                    f"  ({run['train_s']:.0f}s)", flush=True)
    means = {name: {view: round(statistics.fmean(
        r["test"][view]["accuracy"] for r in runs if r["variant"] == name), 4) for view in VIEWS}
        for name in dict.fromkeys(r["variant"] for r in runs)}
    gains = [round(r["test"]["flip+translate"]["accuracy"] - r["test"]["flip"]["accuracy"], 4)
             for r in runs]
    print(f"{'mean test accuracy':28s}" + "".join(f"{view:>16s}" for view in VIEWS))
    for name, row in means.items():
        print(f"{name:28s}" + "".join(f"{row[view]:16.4f}" for view in VIEWS))
    record = {"bench": "prior", "data": str(args.data), "epochs": args.epochs,
              "shrink": args.shrink, "batch": args.batch or None,
              "seeds": args.seeds, "model": {"family": first.family, **first.arch,
                                             "width": args.width},
              "grid": len(grid) > 1,
              "baseline": first.training, "variants": {n: VARIANTS[n] for n in means},
              "train_images": len(data.y_train), "test_images": len(data.y_val),
              "shape": list(data.shape),
              "data_path": data.data_path, "precision": precision.choose("cpu").name,
              "mean_test_accuracy": means, "translate_gain_over_flip": gains, "runs": runs}
    return write_record(args.out, record)


def whole(source: Path, threads: int, path: Any) -> Any:
    """A dataset autofit reads (an .npz, any folder), sized and split as a run does (seed 0):
    the grid trains on its training split and scores on its validation split, so the test
    images, on which bench/compare.py scores autofit, play no part in the frontier fitted to
    the grid or in a choice made from these runs."""
    from autofit.data.dataset import load as load_any

    return load_any(source, 0, threads, path=path)


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the space's prior at several batch sizes, and sides, for the same seconds.

    AUTOFIT_PRECISION=fp32 python bench/batch_steps.py --data ../shared/datasets/clothing-photos \\
        --seconds 120 --batches 256 64 32 --out bench/results/batch-clothing-120s.json

`--optimizer muon` trains the prior's Muon instead of SGD (the batch rule was measured on SGD).
`--sides 128 64` first scales the data down to those longest sides (search/steps.py takes
the batch rule from these runs; data/resolution.py the training side).

The prior's recipe (search_spaces/default.yaml `first:`, fastnet depth 2, whiten 2) trains on
autofit's own training split for `--seconds` at each batch, its learning rate scaled with the
batch (0.4 at 256), and is scored on the validation split; steps, epochs and the measured
seconds per image are recorded beside the CPU model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from autofit import models
from autofit.config import Recipe, TrialConfig
from autofit.data import pipeline
from autofit.data.dataset import load
from autofit.train import precision
from autofit.train.loop import evaluate, make_model, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

PRIOR = {"batch_size": 256, "lr": 0.4, "weight_decay": 1e-3, "label_smoothing": 0.2,
         "hflip": True, "optimizer": "sgd", "schedule": "onecycle", "tta": True,
         "tta_translate": True, "momentum": 0.9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 128, 64])
    parser.add_argument("--width", type=int, default=20)
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "muon"])
    parser.add_argument("--sides", type=int, nargs="+", default=[0],
                        help="longest sides to scale the data down to (0: as loaded)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    loaded = load(args.data, 0, 2)
    path = pipeline.choose("cpu").name
    rows = []
    for side, batch in ((s, b) for s in args.sides for b in args.batches):
        data = loaded.at_side(side, "the bench's --sides") if side else loaded
        recipe = Recipe(**{**PRIOR, "batch_size": batch, "lr": PRIOR["lr"] * batch / 256,
                           "optimizer": args.optimizer})
        arch = {"width": args.width, "depth": 2, "whiten": 2}
        config = TrialConfig(family="fastnet", arch=arch, recipe=recipe,
                             params=models.count_for("fastnet", arch, data.shape))
        torch.manual_seed(0)
        model = make_model(config, data.shape, *data.mean_std)
        loader = pipeline.training_loader(path, data.x_train, data.y_train, recipe, seed=0,
                                          threads=2, device="cpu")
        start = time.time()
        progress = train(model, loader, recipe, stop_at=start + args.seconds,
                         total_seconds=args.seconds)
        seconds = time.time() - start
        val = pipeline.loader(path, data.x_val, data.y_val, 256, train=False, threads=2)
        row = {"side": max(data.shape.height, data.shape.width), "batch": batch,
               "lr": recipe.lr, "val_accuracy": round(evaluate(model, val)[0], 4),
               "epochs": round(progress.epoch, 2), "steps": progress.steps,
               "ms_per_image": round(seconds / (progress.epoch * len(data.y_train)) * 1e3, 3)}
        print(row, flush=True)
        rows.append(row)
    args.out.write_text(json.dumps({
        "bench": "batch_steps", "data": args.data, "seconds": args.seconds, "width": args.width,
        "optimizer": args.optimizer, "train_images": len(data.y_train),
        "val_images": len(data.y_val),
        "precision": precision.choose("cpu").name, "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

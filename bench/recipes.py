"""Benchmark: each training-recipe knob against one baseline, on the CIFAR-10 JPEGs.

    python bench/recipes.py                                  # 60 s per variant, full train set
    python bench/recipes.py --seconds 5 --train-per-class 100 --out /tmp/smoke.json   # smoke

One fixed small model (ResNet depth 8, width 16) trains for the same wall-clock seconds with
the baseline recipe and with each knob changed one at a time (optimizers, schedule, label
smoothing, dropout, EMA, test-time flips, alternating flips, cutout), through autofit's own
loop (`train.loop.train`, time-driven schedule, as a search trial trains), and is scored on
held-out images from the test folder. Equal seconds, not equal epochs: SAM's second pass and
TTA's second view are charged as a run would pay for them. Writes bench/results/recipes.json
and prints a table.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from autofit import models
from autofit.config import Recipe, TrialConfig
from autofit.data import pipeline
from autofit.data.dataset import Dataset, Resolution
from autofit.models import DataShape
from autofit.train.loop import EVAL_BATCH, evaluate, make_model, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, add_data_argument, check_data, listing, write_record  # noqa: E402

SIZE = 32
BASELINE = Recipe(batch_size=128, lr=0.2, weight_decay=5e-4)  # sgd, onecycle, nothing else
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "optimizer=adam": {"optimizer": "adam"},
    "optimizer=adamw": {"optimizer": "adamw"},
    "optimizer=nadam": {"optimizer": "nadam"},
    "optimizer=sam": {"optimizer": "sam"},
    "schedule=cosine": {"schedule": "cosine"},
    "label_smoothing=0.1": {"label_smoothing": 0.1},
    "dropout=0.2": {"dropout": 0.2},
    "ema=true": {"ema": True},
    "tta=true": {"tta": True},
    "alternate_flip=true": {"alternate_flip": True},
    "cutout=0.25": {"cutout": 0.25},
}


def load(root: Path, train_per_class: int, val_per_class: int, threads: int,
         path: pipeline.DataPath) -> Dataset:
    """Train images from `train/`, validation images from `test/` (the recipe comparison
    never sees the images it is scored on), decoded once through the run's data path."""
    train_files, y_train, classes = listing(root, "train", train_per_class)
    val_files, y_val, _ = listing(root, "test", val_per_class)
    pixels, bad = pipeline.decode(path, train_files + val_files, SIZE, SIZE, 3, threads,
                                  resize=False)
    if bad:
        raise SystemExit(f"bench: {len(bad)} unreadable images, e.g. {bad[0]}")
    n = len(train_files)
    return Dataset(name="cifar10-jpg", classes=classes, x_train=pixels[:n], y_train=y_train,
                   x_val=pixels[n:], y_val=y_val, x_test=pixels[n:n], y_test=y_val[:0],
                   source=str(root), resolution=Resolution(SIZE, SIZE, 3, "the files' size"),
                   data_path=path.name)


def run_variant(data: Dataset, recipe: Recipe, arch: dict[str, int], seconds: float,
                seed: int, threads: int, device: str) -> dict[str, Any]:
    """Train one recipe for `seconds` (its schedule tied to them) and score it."""
    shape = DataShape(3, SIZE, SIZE, len(data.classes))
    config = TrialConfig(family="resnet", arch=arch, recipe=recipe,
                         params=models.count_for("resnet", arch, shape))
    torch.manual_seed(seed)
    model = make_model(config, shape, *data.mean_std, device=device)
    loader = pipeline.training_loader(data.data_path, data.x_train, data.y_train, recipe,
                                      seed=seed, threads=threads, device=device)
    val = pipeline.loader(data.data_path, data.x_val, data.y_val, EVAL_BATCH, train=False,
                          threads=threads, device=device)
    start = time.time()
    final = train(model, loader, recipe, stop_at=start + 2 * seconds + 30,
                  total_seconds=seconds)
    tick = time.perf_counter()
    accuracy, _, images = evaluate(model, val)
    return {"val_accuracy": round(accuracy, 4), "val_images": images,
            "eval_s": round(time.perf_counter() - tick, 3), "state": final.state,
            "steps": final.steps, "epochs": final.epoch,
            "train_s": final.train_seconds, "images_per_s": round(final.images_per_s, 1),
            "final_loss": None if math.isnan(final.loss) else round(final.loss, 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--seconds", type=float, default=60.0, help="training time per variant")
    parser.add_argument("--train-per-class", type=int, default=0, help="0: all 5,000")
    parser.add_argument("--val-per-class", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=1, help="runs per variant")
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--only", nargs="*", choices=sorted(VARIANTS), default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "recipes.json")
    args = parser.parse_args()
    if not check_data(args.data, splits=True):
        return 2
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = pipeline.choose(device)
    start = time.perf_counter()
    data = load(args.data, args.train_per_class, args.val_per_class, args.threads, path)
    decode_s = time.perf_counter() - start
    arch = {"depth": args.depth, "width": args.width}
    results = []
    for name in args.only or list(VARIANTS):
        recipe = BASELINE.model_copy(update=VARIANTS[name])
        runs = [run_variant(data, recipe, arch, args.seconds, seed, args.threads, device)
                for seed in range(args.seeds)]
        scores = [r["val_accuracy"] for r in runs]
        results.append({"variant": name, "changed": VARIANTS[name],
                        "val_accuracy": round(statistics.fmean(scores), 4),
                        "val_accuracy_sd": round(statistics.stdev(scores), 4)
                        if len(scores) > 1 else None, "runs": runs})
        print(f"{name:22s} val_acc {results[-1]['val_accuracy']:.4f}  "
              f"({runs[0]['epochs']:.2f} epochs, {runs[0]['steps']} steps)", flush=True)
    baseline = next((r["val_accuracy"] for r in results if r["variant"] == "baseline"), None)
    for r in results:
        r["vs_baseline"] = None if baseline is None else round(r["val_accuracy"] - baseline, 4)
    record = {
        "bench": "recipes",
        "seconds_per_variant": args.seconds, "seeds": args.seeds,
        "train_images": len(data.y_train), "val_images": len(data.y_val),
        "model": {"family": "resnet", **arch},
        "baseline": BASELINE.model_dump(), "results": results,
        "device": device, "data_path": data.data_path, "decode_s": round(decode_s, 2),
        "threads": args.threads,
    }
    return write_record(args.out, record)


if __name__ == "__main__":
    sys.exit(main())

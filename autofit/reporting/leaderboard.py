"""`RUN_DIR/leaderboard.csv`: one row per trial, best first."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from autofit.records import TrialRecord

LEADERBOARD_FIELDS = ["trial", "family", "arch", "params", "optimizer", "schedule", "batch_size",
                      "lr", "weight_decay", "label_smoothing", "dropout", "hflip",
                      "alternate_flip", "crop_shift", "cutout", "ema", "tta", "tta_translate",
                      "epochs", "train_seconds", "images_per_s", "val_accuracy", "status",
                      "node", "error"]


def write_leaderboard(path: Path, records: list[TrialRecord]) -> None:
    """One row per trial, best first."""
    rows = []
    for r in sorted(records, key=lambda r: r.score, reverse=True):
        m = r.metrics
        recipe = {k: v for k, v in r.config.recipe.model_dump().items()
                  if k in LEADERBOARD_FIELDS}
        rows.append({
            "trial": r.number, "family": r.config.family,
            "arch": " ".join(f"{k}={v}" for k, v in r.config.arch.items()),
            "params": r.config.params, **recipe,
            "lr": f"{r.config.recipe.lr:.4g}",
            "weight_decay": f"{r.config.recipe.weight_decay:.3g}",
            "epochs": "" if m is None else m.epoch,
            "train_seconds": "" if m is None else m.train_seconds,
            "images_per_s": "" if m is None else round(m.images_per_s),
            "val_accuracy": "" if m is None else m.val_accuracy,
            "status": r.status, "node": r.node, "error": r.error or "",
        })
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LEADERBOARD_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)

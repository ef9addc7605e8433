"""What a run leaves behind besides the ONNX model: weights, summary.json, leaderboard.csv."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import torch

from autofit.journal import write_atomic
from autofit.search import TrialRecord
from autofit.trial import save_state

LEADERBOARD_FIELDS = ["trial", "family", "arch", "params", "optimizer", "schedule", "batch_size",
                      "lr", "weight_decay", "label_smoothing", "dropout", "hflip",
                      "alternate_flip", "cutout", "ema", "tta", "tta_translate", "epochs",
                      "train_seconds", "images_per_s", "val_accuracy", "status", "error"]


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """The refit weights (a plain state_dict, loadable with weights_only=True), kept so the
    trained model survives even if its export fails."""
    save_state(model.state_dict(), path)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically, so a reader never sees half a summary."""
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


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
            "epochs": m.get("epoch", ""), "train_seconds": m.get("train_seconds", ""),
            "images_per_s": round(m["images_per_s"]) if "images_per_s" in m else "",
            "val_accuracy": m.get("val_accuracy", ""), "status": r.status, "error": r.error or "",
        })
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LEADERBOARD_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)

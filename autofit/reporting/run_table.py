"""`autofit runs`: the runs in a folder as rows of a table (or JSON)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from autofit.reporting import run_files

COLUMNS = ("run", "started", "status", "data", "budget", "used_s", "trials", "params",
           "val_acc", "test_acc")


def rows(where: Path) -> list[dict[str, Any]]:
    return [_row(run) for run in run_files.find(where)]


def _row(run: run_files.Run) -> dict[str, Any]:
    s = run.summary
    trials = None if s is None else s.trials
    if trials is None and run.leaderboard:
        trials = len(run.leaderboard)
    started, data = run.started_at, run.data
    return {
        "run": str(run.path),
        "started": None if started is None else time.strftime("%Y-%m-%d %H:%M",
                                                              time.localtime(started)),
        "status": run.status,
        "data": Path(data).name if "/" in data else data,
        "budget": {"minutes": run.minutes, "max_params": run.max_params},
        "used_s": run.elapsed_s,
        "trials": trials,
        "params": None if s is None else s.params,
        "val_acc": None if s is None else s.val_accuracy,
        "test_acc": None if s is None else s.test_accuracy,
        "error": None if s is None else s.error,
    }


def table(found: list[dict[str, Any]]) -> str:
    """Aligned plain text: readable in a terminal, a pipe or a CI log alike."""
    cells = [list(COLUMNS)]
    for row in found:
        budget = row["budget"]
        cells.append([
            row["run"], row["started"] or "?", row["status"], row["data"],
            f"{budget['minutes']:g} min, {_short(budget['max_params'])}"
            if budget.get("minutes") is not None else "?",
            "" if row["used_s"] is None else f"{row['used_s']:.0f}",
            "" if row["trials"] is None else str(row["trials"]),
            _short(row["params"]), _acc(row["val_acc"]), _acc(row["test_acc"]),
        ])
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    right = {"used_s", "trials", "params", "val_acc", "test_acc"}
    lines = ["  ".join(cell.rjust(w) if name in right else cell.ljust(w)
                       for cell, w, name in zip(line, widths, COLUMNS, strict=True)).rstrip()
             for line in cells]
    failed = [row for row in found if row["error"]]
    lines += [f"{row['run']}: {row['error']}" for row in failed]
    return "\n".join(lines)


def _short(count: Any) -> str:
    if count is None:
        return ""
    count = int(count)
    return f"{count / 1e6:.2f}M" if count >= 1_000_000 else f"{count / 1e3:.0f}k" \
        if count >= 1000 else str(count)


def _acc(value: Any) -> str:
    return "" if value is None else f"{float(value):.4f}"

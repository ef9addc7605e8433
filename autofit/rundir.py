"""Read a run directory back: what `autofit report` and `autofit runs` show.

Only files are read, so a finished, failed, interrupted or still-running run can be looked at
from another process, and nothing here needs Ray, torch or the data.
"""

from __future__ import annotations

import csv
import json
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autofit import events
from autofit.journal import FILE as JOURNAL

ALIVE_S = 5.0  # a run whose journal heartbeat is older than this is not running


@dataclass
class Run:
    path: Path
    summary: dict[str, Any] | None
    journal: dict[str, Any] | None
    leaderboard: list[dict[str, str]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        """finished, failed, running, or interrupted (resumable with --resume)."""
        if self.summary is not None and self.summary.get("status") in {"finished", "failed"}:
            return str(self.summary["status"])
        beat = float((self.journal or {}).get("beat_at") or 0.0)
        return "running" if time.time() - beat < ALIVE_S else "interrupted"

    @property
    def args(self) -> dict[str, Any]:
        return dict((self.journal or {}).get("args") or {})

    @property
    def started_at(self) -> float | None:
        lives = (self.journal or {}).get("lives") or (self.summary or {}).get("lives") or []
        return float(lives[0]["started_at"]) if lives else None

    @property
    def budget_s(self) -> float | None:
        if self.summary and self.summary.get("budget_s"):
            return float(self.summary["budget_s"])
        minutes = (self.args.get("budget") or {}).get("minutes")
        return None if minutes is None else 60.0 * float(minutes)

    @property
    def elapsed_s(self) -> float | None:
        if self.summary and self.summary.get("elapsed_s") is not None:
            return float(self.summary["elapsed_s"])
        spent = (self.journal or {}).get("spent")
        return round(sum(spent.values()), 3) if spent else None

    @property
    def phases(self) -> dict[str, float]:
        if self.summary and self.summary.get("phases"):
            return dict(self.summary["phases"])
        return dict((self.journal or {}).get("spent") or {})


def is_run(path: Path) -> bool:
    return (path / JOURNAL).is_file() or (path / "summary.json").is_file()


def read(path: Path) -> Run:
    return Run(path=path, summary=_json(path / "summary.json"), journal=_json(path / JOURNAL),
               leaderboard=_csv(path / "leaderboard.csv"), events=events.read(path))


def find(root: Path) -> list[Run]:
    """The runs directly under `root` (or `root` itself), oldest first."""
    candidates = [root] if is_run(root) else sorted(p for p in _children(root) if is_run(p))
    runs = [read(p) for p in candidates]
    return sorted(runs, key=lambda r: (r.started_at or 0.0, r.path.name))


def _children(root: Path) -> list[Path]:
    with suppress(OSError):
        return [p for p in root.iterdir() if p.is_dir()]
    return []


def _json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    except OSError:
        return []

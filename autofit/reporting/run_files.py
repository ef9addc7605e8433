"""Read a run directory back: what `autofit report` and `autofit runs` show.

Only files are read, so a finished, failed, interrupted or still-running run can be looked at
from another process, and nothing here needs Ray, torch or the data.
"""

from __future__ import annotations

import csv
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autofit import events
from autofit.budget import Plan
from autofit.journal import FILE as JOURNAL
from autofit.records import JournalState, Summary

SUMMARY = "summary.json"
ALIVE_S = 5.0  # a run whose journal heartbeat is older than this is not running


@dataclass
class Run:
    """A run directory as its files say it is; `summary` and `journal` are None where the file
    is missing or unreadable."""

    path: Path
    summary: Summary | None
    journal: JournalState | None
    leaderboard: list[dict[str, str]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        """finished, failed, running, or interrupted (resumable with --resume)."""
        if self.summary is not None:
            return self.summary.status
        beat = (self.journal.beat_at if self.journal is not None else None) or 0.0
        return "running" if time.time() - beat < ALIVE_S else "interrupted"

    @property
    def data(self) -> str:
        """The data the run was asked for, as given (a path or a dataset name)."""
        data = None if self.journal is None else self.journal.args.data
        return data or "embedded digits"

    @property
    def minutes(self) -> float | None:
        if self.summary is not None and self.summary.budget is not None:
            return self.summary.budget.minutes
        return None if self.journal is None else self.journal.args.budget.minutes

    @property
    def max_params(self) -> int | None:
        if self.summary is not None and self.summary.budget is not None:
            return self.summary.budget.max_params
        return None if self.journal is None else self.journal.args.budget.max_params

    @property
    def started_at(self) -> float | None:
        lives = (self.journal.lives if self.journal is not None else []) or \
            (self.summary.lives if self.summary is not None else [])
        return lives[0].started_at if lives else None

    @property
    def budget_s(self) -> float | None:
        if self.summary is not None and self.summary.budget_s:
            return self.summary.budget_s
        return None if self.minutes is None else 60.0 * self.minutes

    @property
    def elapsed_s(self) -> float | None:
        if self.summary is not None:
            return self.summary.elapsed_s
        spent = None if self.journal is None else self.journal.spent
        return round(sum(spent.values()), 3) if spent else None

    @property
    def phases(self) -> dict[str, float]:
        if self.summary is not None and self.summary.phases:
            return dict(self.summary.phases)
        return {} if self.journal is None else dict(self.journal.spent)

    @property
    def plan(self) -> Plan | None:
        if self.summary is not None and self.summary.plan is not None:
            return self.summary.plan
        return None if self.journal is None else self.journal.plan

    @property
    def search_skipped(self) -> bool:
        """Whether the run's plan skipped the search (the prior trained alone)."""
        return self.plan is not None and not self.plan.searched


def is_run(path: Path) -> bool:
    return (path / JOURNAL).is_file() or (path / SUMMARY).is_file()


def read(path: Path) -> Run:
    return Run(path=path, summary=Summary.read(path / SUMMARY),
               journal=JournalState.read(path / JOURNAL),
               leaderboard=_csv(path / "leaderboard.csv"),
               events=events.read(path))


def find(root: Path) -> list[Run]:
    """The runs directly under `root` (or `root` itself), oldest first."""
    candidates = [root] if is_run(root) else sorted(p for p in _children(root) if is_run(p))
    runs = [read(p) for p in candidates]
    return sorted(runs, key=lambda r: (r.started_at or 0.0, r.path.name))


def _children(root: Path) -> list[Path]:
    with suppress(OSError):
        return [p for p in root.iterdir() if p.is_dir()]
    return []


def _csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    except OSError:
        return []

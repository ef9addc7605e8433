"""The live console view of a run, drawn from its events (autofit/events.py) with rich.

One screen: a budget bar coloured by phase and counting down, the device and data path, the
best trial so far, the trials sorted by score, and the last few log lines. It is a logging
handler on the run's logger, so it shows exactly what run.log and events.jsonl record.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from autofit.events import PHASE_COLOURS, event_of, in_text_views
from autofit.records import ranked

MESSAGES = 4
BAR_WIDTH = 60
FIXED_LINES = 12  # header, bar, facts, best, table header and borders, messages


@dataclass
class TrialRow:
    number: int
    model: str
    params: int
    batch_size: int | None = None
    lr: float | None = None
    epoch: float = 0.0
    trained_s: float = 0.0
    val_accuracy: float | None = None
    status: str = "running"

    @property
    def score(self) -> float:
        return ranked(self.val_accuracy, self.status not in {"error", "diverged"})


@dataclass
class ViewState:
    """What the view shows, updated from events; `now` gives the budget seconds used."""

    budget_s: float
    now: Callable[[], float]
    title: str = "autofit"
    phases: list[tuple[str, float]] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    trials: dict[int, TrialRow] = field(default_factory=dict)
    messages: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=MESSAGES))
    result: str | None = None

    def update(self, record: logging.LogRecord) -> None:
        event = event_of(record) or {}
        kind = event.get("kind")
        if kind == "start":
            self.title = f"autofit {event.get('version', '')} · {event.get('run_dir', '')}"
            self.phases.append(("setup", float(event.get("t", 0.0))))
        elif kind == "phase":
            self.phases.append((str(event["phase"]), float(event["t"])))
        elif kind in {"device", "plan"}:
            self.facts.append(str(event.get("summary", record.getMessage())))
        elif kind == "trial_start":
            recipe = event.get("recipe", {})
            arch = " ".join(f"{k}={v}" for k, v in event.get("arch", {}).items())
            self.trials[int(event["trial"])] = TrialRow(
                number=int(event["trial"]), model=f"{event.get('family', '?')} {arch}",
                params=int(event.get("params", 0)), batch_size=recipe.get("batch_size"),
                lr=recipe.get("lr"))
        elif kind in {"trial_result", "trial_end"} and int(event["trial"]) in self.trials:
            row = self.trials[int(event["trial"])]
            row.epoch = float(event.get("epoch", row.epoch) or row.epoch)
            row.trained_s = float(event.get("train_seconds", row.trained_s) or row.trained_s)
            if event.get("val_accuracy") is not None:
                row.val_accuracy = float(event["val_accuracy"])
            if kind == "trial_end":
                row.status = str(event.get("status", row.status))
        elif kind == "done":
            self.result = record.getMessage()
        if in_text_views(record) and kind not in {"trial_start", "trial_result", "done"}:
            self.messages.append((record.levelno, record.getMessage()))

    def phase_at(self, t: float) -> str | None:
        current = None
        for name, since in self.phases:
            if since <= t:
                current = name
        return current

    def bar(self, width: int) -> Text:
        """The budget as `width` cells, each coloured by the phase that used it."""
        used = self.now()
        text = Text()
        for cell in range(width):
            t = (cell + 0.5) * self.budget_s / width
            if t <= used:
                text.append("█", style=PHASE_COLOURS.get(self.phase_at(t) or "", "white"))
            else:
                text.append("─", style="grey35")
        return text

    def render(self, height: int) -> RenderableType:
        used = min(self.now(), self.budget_s)
        phase = self.phases[-1][0] if self.phases else "setup"
        head = Text(self.title, style="bold")
        clock = Text.assemble(
            (f" {phase:<8} ", f"bold {PHASE_COLOURS.get(phase, 'white')}"),
            self.bar(BAR_WIDTH),
            f" {used:6.1f}s of {self.budget_s:.0f}s · {max(self.budget_s - used, 0):.0f}s left")
        lines: list[RenderableType] = [head, clock]
        lines += [Text(f" {fact}", style="grey70") for fact in self.facts[-2:]]
        rows = sorted(self.trials.values(), key=lambda r: (-r.score, r.number))
        if rows:
            best = rows[0]
            if best.score >= 0:
                lines.append(Text(f" best so far: trial {best.number}, val acc "
                                  f"{best.score:.4f}, {best.model} ({best.params:,} params)",
                                  style="bold green"))
            lines.append(self.table(rows, max(3, height - FIXED_LINES)))
        for level, message in self.messages:
            style = "red" if level >= logging.ERROR else "yellow" if level >= logging.WARNING \
                else "grey62"
            lines.append(Text(f" {message}", style=style, overflow="ellipsis", no_wrap=True))
        if self.result:
            lines.append(Text(f" {self.result}", style="bold"))
        return Group(*lines)

    @staticmethod
    def table(rows: list[TrialRow], limit: int) -> Table:
        table = Table(box=None, padding=(0, 1), header_style="bold", pad_edge=True)
        for name, justify in (("#", "right"), ("model", "left"), ("params", "right"),
                              ("batch", "right"), ("lr", "right"), ("epochs", "right"),
                              ("trained", "right"), ("val acc", "right"), ("status", "left")):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for row in rows[:limit]:
            style = "red" if row.status in {"error", "diverged"} else \
                "bold" if row.status == "running" else ""
            table.add_row(str(row.number), row.model, f"{row.params:,}",
                          "" if row.batch_size is None else str(row.batch_size),
                          "" if row.lr is None else f"{row.lr:.3g}", f"{row.epoch:.1f}",
                          f"{row.trained_s:.1f}s",
                          "" if row.val_accuracy is None else f"{row.val_accuracy:.4f}",
                          row.status, style=style)
        if len(rows) > limit:
            table.add_row("", f"… {len(rows) - limit} more in the leaderboard", *[""] * 7)
        return table


class LiveView(logging.Handler):
    """A handler that keeps a rich Live display of the run until it is closed. Anything else
    printed meanwhile (a library's warning) goes above the display instead of through it."""

    def __init__(self, budget_s: float, now: Callable[[], float],
                 console: Console | None = None, refresh_per_second: float = 4.0) -> None:
        super().__init__()
        self.state = ViewState(budget_s, now)
        self.console = console or Console()
        self._lock = threading.Lock()
        self.live = Live(console=self.console, get_renderable=self._render,
                         refresh_per_second=refresh_per_second, redirect_stdout=True,
                         redirect_stderr=True)
        self.live.start()

    def _render(self) -> RenderableType:
        with self._lock:
            return self.state.render(self.console.height)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            with self._lock:
                self.state.update(record)
        except Exception:  # a display bug must not end the run
            self.handleError(record)

    def close(self) -> None:
        if self.live.is_started:
            self.live.refresh()
            self.live.stop()
        super().close()


def wanted(quiet: bool, stream: Any) -> bool:
    """The live view is for people at a terminal; logs and pipes get plain lines."""
    return not quiet and bool(getattr(stream, "isatty", lambda: False)())

"""Run events: one stream, several views.

Every event is a log record on the run's logger carrying an `event` dict (its `kind` and
fields). The plain console, the live view, run.log and `RUN_DIR/events.jsonl` are all
handlers of that one logger, so they cannot disagree, and a callback restored by Ray Tune after
a resume only needs the logger's name. Times are budget seconds: earlier lives of a resumed
run included, the time it lay dead not.
"""

from __future__ import annotations

import json
import logging
from contextlib import suppress
from pathlib import Path
from typing import Any

FILE = "events.jsonl"
PHASE_COLOURS = {"setup": "#9e9e9e", "search": "#1f77b4", "refit": "#2ca02c",
                 "export": "#9467bd", "evaluate": "#d4a017", "report": "#17becf"}
_EVENT = "autofit_event"
_HIDDEN = "autofit_hidden"


def emit(log: logging.Logger, kind: str, message: str, *args: Any, level: int = logging.INFO,
         show: bool = True, **fields: Any) -> None:
    """Log `message` with an event attached; `show=False` keeps it out of the text views
    (frequent trial reports) while events.jsonl and the live view still get it."""
    log.log(level, message, *args, extra={_EVENT: {"kind": kind, **fields}, _HIDDEN: not show})


def event_of(record: logging.LogRecord) -> dict[str, Any] | None:
    return getattr(record, _EVENT, None)


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """What makes a log record an event, to log it again elsewhere (the record of a process
    on another Ray node, replayed on the run's logger)."""
    return {key: getattr(record, key) for key in (_EVENT, _HIDDEN) if hasattr(record, key)}


def in_text_views(record: logging.LogRecord) -> bool:
    """Filter for text views: everything but events emitted with show=False."""
    return not getattr(record, _HIDDEN, False)


class BudgetTime(logging.Filter):
    """Stamps each event with its budget time `t` (unless it carries its own), for one life of
    a run: installed on the run's logger, so every handler sees the same `t`."""

    def __init__(self, spent_before: float, started_at: float) -> None:
        super().__init__()
        self.offset = spent_before - started_at

    def of(self, record: logging.LogRecord) -> float:
        return record.created + self.offset

    def filter(self, record: logging.LogRecord) -> bool:
        event = event_of(record)
        if event is not None and event.get("t") is None:
            event["t"] = round(self.of(record), 3)
        return True


class EventFile(logging.Handler):
    """Appends each event to RUN_DIR/events.jsonl: what the report's timeline and learning
    curves are drawn from. A full disk loses events, never the run."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        event = event_of(record)
        if event is None:
            return
        with suppress(OSError), open(self.path, "a") as handle:
            handle.write(json.dumps(event, default=str) + "\n")


def read(run_dir: Path) -> list[dict[str, Any]]:
    """The events of a run, in order; a line torn by a kill is skipped."""
    events = []
    with suppress(OSError), open(run_dir / FILE) as handle:
        for line in handle:
            with suppress(ValueError):
                events.append(json.loads(line))
    return events

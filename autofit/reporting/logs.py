"""The run's logger and its views: run.log, events.jsonl, and on the console the live view at a
terminal, plain lines otherwise (CI logs), nothing with `quiet`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from autofit import events
from autofit.budget import Clock
from autofit.reporting import live

LOG_FILE = "run.log"


class _Elapsed(logging.Formatter):
    """Prefix each line with the budget seconds used (earlier lives of a resumed run included)."""

    def __init__(self, budget_time: events.BudgetTime) -> None:
        super().__init__()
        self.budget_time = budget_time

    def format(self, record: logging.LogRecord) -> str:
        return f"[{self.budget_time.of(record):7.1f}s] {record.getMessage()}"


def run_logger(run_dir: Path, clock: Clock, budget_s: float, quiet: bool) -> logging.Logger:
    """The run's logger, named after its directory so Tune's restored callbacks find it."""
    log = logging.getLogger(f"autofit.run:{run_dir.resolve()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    budget_time = events.BudgetTime(clock.spent_before, clock.started_at)
    log.addFilter(budget_time)
    text = _Elapsed(budget_time)
    handlers: list[logging.Handler] = [logging.FileHandler(run_dir / LOG_FILE),
                                       events.EventFile(run_dir / events.FILE)]
    if live.wanted(quiet, sys.stdout):
        handlers.append(live.LiveView(budget_s, clock.elapsed))
    elif not quiet:
        console = logging.StreamHandler(sys.stdout)  # errors reach stderr from the CLI, once
        console.addFilter(lambda record: record.levelno < logging.ERROR)
        handlers.append(console)
    for handler in handlers:
        handler.setFormatter(text)
        if not isinstance(handler, events.EventFile | live.LiveView):
            handler.addFilter(events.in_text_views)
        log.addHandler(handler)
    return log


def close_logger(log: logging.Logger) -> None:
    """Detach every view (the live view stops drawing), so a resume in this process starts
    afresh with its own budget time."""
    for handler in list(log.handlers):
        handler.close()
        log.removeHandler(handler)
    for stamp in list(log.filters):
        log.removeFilter(stamp)

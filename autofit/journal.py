"""autofit's own record of a run, so a killed run can be resumed: `RUN_DIR/journal.json`.

It holds what the run was asked (data, budget, seed, space), the budget seconds each phase has
used (rewritten every second while the run lives), the plan, and each phase's result once it
is done: a `records.JournalState`. Every write is atomic and synced, so a kill at any moment
leaves the previous version.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

from autofit.budget import Clock
from autofit.config import RunArgs
from autofit.errors import UsageError, one_line
from autofit.records import JournalState, Life

FILE = "journal.json"
HEARTBEAT_S = 1.0


class Journal:
    """The journal of one run directory; `set` records facts, `heartbeat` the time used."""

    def __init__(self, run_dir: Path, state: JournalState) -> None:
        self.run_dir = run_dir
        self.path = run_dir / FILE
        self.state = state
        self._lock = threading.Lock()

    @classmethod
    def create(cls, run_dir: Path, args: RunArgs) -> Journal:
        journal = cls(run_dir, JournalState(args=args))
        journal.set()
        return journal

    @classmethod
    def open(cls, run_dir: Path) -> Journal:
        """The journal of a run to resume, refusing what cannot be resumed."""
        path = run_dir / FILE
        if not path.is_file():
            raise UsageError(f"--resume {run_dir}: no {FILE} there; not an autofit run directory")
        try:
            state = JournalState.parse(path.read_bytes())
        except (OSError, ValueError) as err:
            raise UsageError(f"--resume {run_dir}: {FILE} is unreadable: {one_line(err)}") from None
        if state.status in ("finished", "stopped"):
            raise UsageError(f"--resume {run_dir}: the run already {state.status}; see "
                             f"{run_dir / 'summary.json'}")
        return cls(run_dir, state)

    @property
    def args(self) -> RunArgs:
        return self.state.args

    def set(self, **facts: Any) -> None:
        """Record `facts` (fields of JournalState, validated) and write the journal."""
        with self._lock:
            for name, value in facts.items():
                setattr(self.state, name, value)
            self.state.write(self.path)

    @contextmanager
    def heartbeat(self, clock: Clock, on_beat: Callable[[], None] | None = None
                  ) -> Iterator[None]:
        """Record the budget used, every second, until the block ends (and once more then);
        `on_beat` runs after each record (the run's stop switch looks for a request)."""
        self.set(lives=[*self.state.lives, Life(started_at=clock.started_at,
                                                spent_before=clock.spent_before)])
        stop = threading.Event()

        def record() -> None:
            with suppress(OSError):  # a full disk: the last good journal stays, the run goes on
                self.set(spent=clock.phases(), phase=clock.phase, beat_at=time.time())

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                record()
                if on_beat is not None:
                    on_beat()

        thread = threading.Thread(target=beat, name="autofit-journal", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            record()


RUN_MARKERS = (FILE, "summary.json", "model.onnx", "best_so_far.onnx", "leaderboard.csv", "tune")


def prepare_run_dir(out: str | Path | None) -> Path:
    """Create the run directory, refusing one that already holds a run or cannot be written."""
    path = Path(out) if out is not None else Path("runs") / datetime.now().strftime(
        "%Y%m%d-%H%M%S")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"--out {path} is not writable: {err.strerror or err}") from None
    taken = [m for m in RUN_MARKERS if (path / m).exists()]
    if taken:
        hint = " (resume it with --resume)" if FILE in taken else ""
        raise UsageError(f"--out {path} already holds a run ({', '.join(taken)}){hint}; "
                         "choose another directory")
    return path

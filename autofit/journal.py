"""autofit's own record of a run, so a killed run can be resumed: `RUN_DIR/journal.json`.

It holds what the run was asked (data, budget, seed, space), the budget seconds each phase has
used (rewritten every second while the run lives), the plan, and each phase's result once it
is done. Every write is atomic and synced, so a kill at any moment leaves the previous version.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from autofit.budget import Budget, Clock
from autofit.errors import UsageError, one_line

FILE = "journal.json"
HEARTBEAT_S = 1.0
TESTED = "tested"  # scored and summarised; only the report is left to do


class RunArgs(BaseModel):
    """What a run was asked to do; `--resume` runs it again exactly so."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str | None
    data_root: str | None = None
    budget: Budget
    seed: int
    space: str
    ray_address: str | None = None


def write_atomic(path: Path, text: str) -> None:
    """Write, fsync, rename, fsync the directory: a reader (or a resume after power loss)
    sees the old file or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """The journal of one run directory; `set` records a fact, `heartbeat` the time used."""

    def __init__(self, run_dir: Path, state: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.path = run_dir / FILE
        self.state = state
        self._lock = threading.Lock()

    @classmethod
    def create(cls, run_dir: Path, args: RunArgs) -> Journal:
        journal = cls(run_dir, {"version": 1, "args": args.model_dump(mode="json"),
                                "status": "running", "spent": {}, "lives": []})
        journal.set()
        return journal

    @classmethod
    def open(cls, run_dir: Path) -> Journal:
        """The journal of a run to resume, refusing what cannot be resumed."""
        path = run_dir / FILE
        if not path.is_file():
            raise UsageError(f"--resume {run_dir}: no {FILE} there; not an autofit run directory")
        try:
            state = json.loads(path.read_text())
            RunArgs.model_validate(state["args"])
        except (OSError, ValueError, KeyError, ValidationError) as err:
            raise UsageError(f"--resume {run_dir}: {FILE} is unreadable: {one_line(err)}") from None
        if state.get("status") == "finished":
            raise UsageError(f"--resume {run_dir}: the run already finished; see "
                             f"{run_dir / 'summary.json'}")
        return cls(run_dir, state)

    @property
    def args(self) -> RunArgs:
        return RunArgs.model_validate(self.state["args"])

    @property
    def spent(self) -> dict[str, float]:
        return dict(self.state.get("spent", {}))

    def get(self, key: str, default: Any = None) -> Any:
        return self.state.get(key, default)

    def set(self, **facts: Any) -> None:
        with self._lock:
            self.state.update(facts)
            write_atomic(self.path, json.dumps(self.state, indent=1) + "\n")

    @contextmanager
    def heartbeat(self, clock: Clock) -> Iterator[None]:
        """Record the budget used, every second, until the block ends (and once more then)."""
        self.set(lives=[*self.state.get("lives", []),
                        {"started_at": clock.started_at, "spent_before": clock.spent_before}])
        stop = threading.Event()

        def record() -> None:
            with suppress(OSError):  # a full disk: the last good journal stays, the run goes on
                self.set(spent=clock.phases(), phase=clock.phase, beat_at=time.time())

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                record()

        thread = threading.Thread(target=beat, name="autofit-journal", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            record()

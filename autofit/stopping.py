"""Stop a run now and keep its best model: the request is a file in the run directory, so it
reaches a run from another process (`autofit serve`, a script) and survives a kill of both.

The run's heartbeat looks for the file every second (SIGUSR2 does the same at once). The run
acts on it at safe points only (`check`): a training step, Ray Tune's loop (a Tune stopper
ends every trial), the wait on the cluster's refit, and the end of setup, so the best model
can be scored on the test images. An exception raised from a signal handler inside Ray's wait
would surface as a SystemError, so the handler only notes the request.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from autofit.errors import StopRequested
from autofit.files import write_atomic

FILE = "stop.request"
SIGNAL = signal.SIGUSR2  # Ray Tune takes SIGUSR1 for a stop of its own
_active: StopSwitch | None = None  # the run this process is executing


def request(run_dir: Path, by: str = "") -> None:
    """Ask the run in `run_dir` to stop and keep its best model (it acts within seconds, or,
    if it is not running, as soon as it resumes)."""
    write_atomic(run_dir / FILE, json.dumps({"requested_at": time.time(), "by": by}) + "\n")


def requested(run_dir: Path) -> bool:
    return (run_dir / FILE).is_file()


def pending() -> bool:
    """Whether the run this process executes was asked to stop."""
    return _active is not None and _active.event.is_set()


def check() -> None:
    """At a safe point: StopRequested if the run was asked to stop (a no-op in a process that
    executes no run, such as a Ray worker training a trial)."""
    if pending():
        raise StopRequested


class StopSwitch:
    """The stop request of one run, for the block it is active in."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.event = threading.Event()

    def poll(self) -> None:
        """From the heartbeat thread."""
        if requested(self.run_dir):
            self.event.set()

    @contextmanager
    def active(self) -> Iterator[None]:
        global _active
        previous, _active = _active, self
        main = threading.current_thread() is threading.main_thread()
        handler = signal.signal(SIGNAL, self._noted) if main else None
        try:
            self.poll()
            yield
        finally:
            _active = previous
            if main:
                signal.signal(SIGNAL, handler)

    def _noted(self, signum: int, frame: FrameType | None) -> None:
        self.event.set()

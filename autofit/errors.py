"""User-facing failures: each carries one line for stderr and the exit code the CLI returns."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autofit.records import SearchOutcome


class AutofitError(Exception):
    """A problem the user can fix; the CLI prints its message on one line, without a traceback."""

    exit_code = 1


class UsageError(AutofitError):
    """A bad option or argument (exit code 2, like a command-line parse error)."""

    exit_code = 2


class DataError(UsageError):
    """The dataset cannot be used as given (missing, empty, malformed)."""


class UnreadableData(DataError):
    """Too many images cannot be read to skip them; `bad` holds (file, reason) for each."""

    def __init__(self, message: str, bad: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.bad = bad


class BudgetError(UsageError):
    """No model in the search space fits the parameter budget."""


class Interrupted(AutofitError):
    """Ctrl-C: the run stopped cleanly; the message says how to resume it."""

    exit_code = 130


class StopRequested(BaseException):  # noqa: N818 - a request, as KeyboardInterrupt is
    """Raised in the main thread when a run is asked to stop and keep its best model; a
    BaseException, as KeyboardInterrupt is, so that no library's `except Exception` swallows it
    on its way out of Ray Tune or the training loop."""


class Stopped(AutofitError):
    """A run stopped on request before it had exported any model: nothing to score."""


class ExportError(AutofitError):
    """The exported ONNX model failed verification against PyTorch."""


class SearchFailed(AutofitError):
    """Every trial failed: the message shows the first error; the records go to the report."""

    def __init__(self, message: str, outcome: SearchOutcome) -> None:
        super().__init__(message)
        self.outcome = outcome


def one_line(err: BaseException) -> str:
    """An exception's message folded onto one line (YAML and OS errors span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def last_line(text: str) -> str:
    """The line of a Ray error that says what happened (Ray's worker-death text is a page)."""
    if "its node has died" in text or "node was terminated" in text:
        return "its Ray node died"
    if "is unavailable" in text and "rpc_code: 14" in text:
        return "its Ray node or worker became unreachable (Ray lost the connection to it)"
    if "worker process has died" in text or "actor died" in text:
        return "its Ray worker process died (killed, out of host memory, or crashed)"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"

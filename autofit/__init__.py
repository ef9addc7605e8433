"""autofit: time-budgeted AutoML for image classification."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Budget", "Client", "RunResult", "extend", "load", "prepare", "resume", "run",
           "__version__"]

if TYPE_CHECKING:
    from autofit.budget import Budget
    from autofit.client import Client
    from autofit.data.inputs import prepare
    from autofit.deliver.predict import load
    from autofit.runner import RunResult, extend, resume, run


def __getattr__(name: str) -> Any:
    """Import lazily: `import autofit` stays cheap; torch and Ray load when a run needs them."""
    if name == "Budget":
        from autofit.budget import Budget

        return Budget
    if name == "Client":
        from autofit.client import Client

        return Client
    if name == "prepare":
        from autofit.data.inputs import prepare

        return prepare
    if name == "load":
        from autofit.deliver.predict import load

        return load
    if name in {"run", "resume", "extend", "RunResult"}:
        from autofit import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'autofit' has no attribute {name!r}")

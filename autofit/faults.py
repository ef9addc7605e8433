"""Fault injection for the reliability tests and `bench/faults.py`: inert unless
`AUTOFIT_FAULTS` is set.

The variable lists faults as `KIND@WHERE`, comma-separated, e.g. `raise@1,nan@2,oom@3`:
`raise`, `nan`, `oom` (at the trial's first batch size only), `oom-always` and `kill` (SIGKILL
of the worker) hit the training forward pass of trial number WHERE (`*`: every trial);
`enospc@export` makes the final ONNX export fail as a full disk would; `kill@report` SIGKILLs
the run itself as its report phase begins. At Ray Tune's checkpoint boundaries (driver side,
autofit/search/tune.py) `kill@saved:T:K` SIGKILLs the run once trial T's K-th checkpoint of
this life is on disk but not yet recorded, `kill@rotated:T:K` once Tune has recorded it and
deleted the one before, before its experiment state names it, and `kill@ended:T` as trial T
ends, before the state records it as finished. The faults are real events inside real runs (a
raised error, NaN logits, torch's OOM error, a killed process), injected from outside the
code under test through a forward hook.
"""

from __future__ import annotations

import errno
import os
import signal
from fnmatch import fnmatchcase

import torch
from torch import nn

ENV = "AUTOFIT_FAULTS"
TRIAL_KINDS = ("raise", "nan", "oom", "oom-always", "kill")
NAN_AFTER_STEPS = 1
KILL_AFTER_STEPS = 1


def planned(where: str | int) -> list[str]:
    """The fault kinds `AUTOFIT_FAULTS` asks for at `where` (a trial number, `export`, or a
    checkpoint boundary such as `rotated:2:3`, whose parts may be `*`: `rotated:*:3` is the
    first trial of a life to record its third checkpoint)."""
    kinds = []
    for item in filter(None, (part.strip() for part in os.environ.get(ENV, "").split(","))):
        kind, _, place = item.partition("@")
        if place == str(where) or (place == "*" and isinstance(where, int)) or (
                ":" in place and fnmatchcase(str(where), place)):
            kinds.append(kind)
    return kinds


def install(model: nn.Module, trial: int, batch_size: int) -> None:
    """Hook the faults planned for `trial` into `model`'s training forward pass."""
    kinds = [k for k in planned(trial) if k in TRIAL_KINDS]
    if not kinds:
        return
    steps = [0]

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...],
             output: torch.Tensor) -> torch.Tensor | None:
        if not module.training:
            return None
        steps[0] += 1
        batch = args[0].shape[0]
        if "raise" in kinds:
            raise RuntimeError(f"injected fault in trial {trial}")
        if "oom-always" in kinds or ("oom" in kinds and batch >= batch_size):
            raise torch.OutOfMemoryError(f"injected: out of memory at batch {batch}")
        if "kill" in kinds and steps[0] > KILL_AFTER_STEPS:
            os.kill(os.getpid(), signal.SIGKILL)
        if "nan" in kinds and steps[0] > NAN_AFTER_STEPS:
            return output * float("nan")
        return None

    model.register_forward_hook(hook)


def check_export() -> None:
    """Raise the OS error a full disk gives, when `enospc@export` is planned."""
    if "enospc" in planned("export"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def kill_at(where: str) -> None:
    """SIGKILL this process, as a crash would, when `kill@WHERE` is planned."""
    if "kill" in planned(where):
        os.kill(os.getpid(), signal.SIGKILL)

"""Trial checkpoints that survive a kill at any instant, found on disk before a resume.

Tune writes a trial's checkpoint, then records it (deleting the one before: `num_to_keep=1`),
then, some moments later, snapshots the experiment state that a resume restores from. A kill
between those steps leaves a state that names a checkpoint already deleted (Tune would fail
the trial: "does not exist on storage anymore", losing all its training), or a newer complete
checkpoint the state does not name (its steps lost), or a half-copied one. So a resume does
not trust the state's pointer: `find_newest` reads what each unfinished trial's folder holds
and the trainable continues from the state with the most steps. Measured against the other
fix the issue offered (`num_to_keep=2`): Tune forces a snapshot only every `num_to_keep`
checkpoints, so with 2 the deleted-before-snapshot window is still there.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from autofit.search.trainable import parse_config
from autofit.train.loop import TrainState, load_checkpoint

CHECKPOINT_DIR = re.compile(r"checkpoint_\d+")
RECOVERED = "recovered"  # a trial's newest state when Tune's state does not name it
UNFINISHED = ("PENDING", "RUNNING", "PAUSED")  # what Tune resumes (errored trials stay failed)
STATE = "experiment_state-*.json"


def repair_state(experiment: Path, log: logging.Logger) -> None:
    """Before a resume: Tune copies its experiment-state snapshot into the storage in place, and a
    kill in that copy once left it empty (the resume failed: JSONDecodeError). A torn newest
    state removes every state, so the search starts again: restoring an earlier life's state,
    or a copy taken a moment before (tried), left Tune waiting on trials its searcher had
    already handed out, until past the deadline."""
    states = sorted(experiment.glob(STATE))
    if not states:
        return
    try:
        json.loads(states[-1].read_text())
        return
    except (OSError, ValueError):
        pass
    for state in states:
        state.unlink()
    log.warning("search: Ray Tune's experiment state %s was torn by the kill; the search starts "
                "again (its trials' results are lost)", states[-1].name)


def read_state(directory: str | Path) -> TrainState | None:
    """The training state a checkpoint directory holds; None for none or a partial one (torch's
    zip format is unreadable until its last byte is written)."""
    try:
        state = load_checkpoint(directory)
        int(state["counters"]["steps"])
    except Exception:  # noqa: BLE001 - torn zip, refused pickle, missing keys: none is a state
        return None
    return state


def _steps(directory: Path) -> int | None:
    state = read_state(directory)
    return None if state is None else int(state["counters"]["steps"])


@dataclass(frozen=True)
class Found:
    """An unfinished trial's newest complete state on disk (None: none is left)."""

    number: int
    newest: Path | None
    steps: int
    note: str | None  # what differed from Tune's own record, for the log


def find_newest(experiment: Path, log: logging.Logger) -> dict[int, Found]:
    """For each trial Tune will resume: the newest complete checkpoint in its folder, moved to
    `recovered` when Tune's state does not name it (so Tune's next checkpoint cannot overwrite
    it), partial copies removed, and a named checkpoint that is gone made an empty folder (Tune
    restores only what exists; the trainable then starts that trial from scratch)."""
    from ray.tune import ExperimentAnalysis

    found: dict[int, Found] = {}
    for trial in ExperimentAnalysis(str(experiment)).trials:
        if trial.status not in UNFINISHED or not trial.path or not Path(trial.path).is_dir():
            continue
        number = parse_config(trial.config)[0]
        found[number] = _newest(number, Path(trial.path),
                                Path(trial.checkpoint.path) if trial.checkpoint else None)
        if found[number].note:
            log.info("search: trial %d %s", number, found[number].note)
    return found


def _newest(number: int, folder: Path, named: Path | None) -> Found:
    candidates = [p for p in folder.iterdir() if p.is_dir() and (
        CHECKPOINT_DIR.fullmatch(p.name) or p.name == RECOVERED)]
    steps = {p: _steps(p) for p in candidates}
    complete = {p: s for p, s in steps.items() if s is not None}
    for partial in (p for p, s in steps.items() if s is None and p != named):
        shutil.rmtree(partial, ignore_errors=True)
    note = None
    if named is not None and not named.exists():
        named.mkdir(parents=True)  # Tune refuses to restore a checkpoint that does not exist
        note = f"lost its recorded checkpoint {named.name} (deleted before Tune recorded the next)"
    newest = max(complete, key=lambda p: (complete[p], p == named), default=None)
    for stale in (p for p in complete if p.name == RECOVERED and p != newest):
        shutil.rmtree(stale, ignore_errors=True)
    if newest is None:
        return Found(number, None, 0, note and f"{note}; no checkpoint is left: it starts again "
                                                "from scratch")
    if newest == named:
        return Found(number, newest, complete[newest], note)
    recovered = folder / RECOVERED
    if newest != recovered:
        os.replace(newest, recovered)  # one rename: a kill leaves it under one name or the other
    resumes = (f"resumes from step {complete[newest]}, a complete checkpoint Tune's "
               "experiment state did not record")
    return Found(number, recovered, complete[newest], f"{note}; it {resumes}" if note else resumes)

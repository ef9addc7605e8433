"""The console views of a run's events: the live view's content, and which view a run gets."""

from __future__ import annotations

import io
import logging
import sys

from rich.console import Console

from autofit import events
from autofit.budget import Clock
from autofit.reporting import live
from autofit.reporting.logs import close_logger, run_logger

RECIPE = {"batch_size": 128, "lr": 0.05}


def _view(height: int = 40) -> tuple[logging.Logger, live.LiveView, io.StringIO]:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=130, height=height,
                      color_system=None)
    log = logging.getLogger(f"test-live-{height}")
    log.handlers, log.propagate = [], False
    log.setLevel(logging.INFO)
    view = live.LiveView(100.0, lambda: 30.0, console=console, refresh_per_second=50)
    log.addHandler(view)
    return log, view, screen


def _trial(log: logging.Logger, number: int, acc: float, status: str) -> None:
    events.emit(log, "trial_start", "trial %d start", number, trial=number, family="resnet",
                arch={"depth": 8, "width": 8 * number}, params=1000 * number, recipe=RECIPE)
    events.emit(log, "trial_result", "r", show=False, trial=number, epoch=1.5,
                train_seconds=2.0, val_accuracy=acc, t=5.0)
    events.emit(log, "trial_end", "e", show=False, trial=number, status=status,
                val_accuracy=acc)


def test_the_view_shows_the_budget_by_phase_the_best_trial_and_trials_by_score():
    log, view, _ = _view()
    events.emit(log, "start", "autofit starts", t=0.0, version="9", run_dir="runs/x")
    events.emit(log, "phase", "p", show=False, phase="search", t=10.0)
    events.emit(log, "device", "device: cpu", summary="device cpu · data path dali-cpu")
    for number, acc, status in ((1, 0.5, "stopped by ASHA"), (2, 0.9, "completed"),
                                (3, float("nan"), "diverged")):
        _trial(log, number, acc, status)
    log.warning("trial 4 failed: out of memory")
    text = view.state.render(40)
    frame = Console(file=io.StringIO(), width=130, color_system=None)
    with frame.capture() as captured:
        frame.print(text)
    shown = captured.get()
    assert "search" in shown and "30.0s of 100s · 70s left" in shown
    bar = view.state.bar(10)
    assert bar.plain == "███───────"  # 30 of 100 s used, by setup then search
    assert [span.style for span in bar.spans][:3] == [events.PHASE_COLOURS["setup"]] + \
        [events.PHASE_COLOURS["search"]] * 2
    assert "best so far: trial 2, val acc 0.9000, resnet depth=8 width=16" in shown
    order = [line.split()[0] for line in shown.splitlines()
             if line.strip()[:1].isdigit() and "resnet" in line]
    assert order == ["2", "1", "3"]  # by score, the diverged trial last
    assert "device cpu · data path dali-cpu" in shown
    assert "trial 4 failed: out of memory" in shown
    view.close()


def test_a_short_terminal_shows_the_top_trials_and_how_many_more():
    log, view, _ = _view(height=16)
    for number in range(1, 11):
        _trial(log, number, number / 100, "completed")
    frame = Console(file=io.StringIO(), width=130, color_system=None)
    with frame.capture() as captured:
        frame.print(view.state.render(16))
    shown = captured.get()
    assert "… 6 more in the leaderboard" in shown
    assert len(shown.splitlines()) <= 16
    view.close()


def test_the_live_view_is_for_terminals_and_quiet_silences_the_console(tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert live.wanted(False, Terminal()) and not live.wanted(True, Terminal())
    assert not live.wanted(False, io.StringIO())  # a pipe or a CI log: plain lines
    clock = Clock(60.0)
    for quiet, console in ((True, []), (False, [logging.StreamHandler])):
        out = tmp_path / f"quiet-{quiet}"
        out.mkdir()
        monkeypatch.setattr(sys, "stdout", io.StringIO())
        log = run_logger(out, clock, 60.0, quiet)
        try:
            kinds = [type(h) for h in log.handlers]
            assert kinds[:2] == [logging.FileHandler, events.EventFile]
            assert kinds[2:] == console
            events.emit(log, "trial_result", "hidden line", show=False, trial=1)
            log.info("shown line")
            printed = sys.stdout.getvalue()
            assert ("shown line" in printed) is not quiet and "hidden line" not in printed
            logged = (out / "run.log").read_text()
            assert "shown line" in logged and "hidden line" not in logged
            assert '"kind": "trial_result"' in (out / events.FILE).read_text()
        finally:
            close_logger(log)

"""The user's view of a run: the live console view at a terminal, report.html in a real
browser, `autofit report` and `autofit runs`. One real run (under a pseudo-terminal, as a
person at a terminal would start it) serves every test here."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from chromium import browser, open_page
from conftest import write_folder

from autofit import events
from autofit.budget import Budget, Clock
from autofit.config import RunArgs
from autofit.journal import Journal
from autofit.reporting import html_report, plots, run_files

BUDGET_S = 40.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PAGE_FACTS = """JSON.stringify({
  images: [...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0]),
  sections: [...document.querySelectorAll('h2')].map(h => h.textContent),
  status: document.querySelector('.status').textContent,
  rows: document.querySelectorAll('table.board tr').length,
  text: document.body.innerText.length})"""


def _in_terminal(args: list[str], timeout: float) -> tuple[int, str, float]:
    """Run `args` with a pseudo-terminal as stdout and stderr; return code, output, wall s."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"}
    start = time.time()
    proc = subprocess.Popen(args, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL,
                            env=env, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 1 << 16)
            except OSError:  # the terminal closed: the process ended
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif proc.poll() is not None:
            break
        if time.time() - start > timeout:
            proc.kill()
            break
    code = proc.wait()
    os.close(leader)
    return code, b"".join(chunks).decode(errors="replace"), time.time() - start


@pytest.fixture(scope="module")
def terminal_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, float]:
    root = tmp_path_factory.mktemp("report")
    data = write_folder(root / "shapes", 40, suffix=".png", seed=5)
    out = root / "runs" / "first"
    code, output, wall = _in_terminal(
        [sys.executable, "-m", "autofit", "run", "--data", str(data), "--minutes",
         str(BUDGET_S / 60), "--max-params", "150k", "--out", str(out)], BUDGET_S + 60)
    assert code == 0, output[-3000:]
    return out, output, wall


def test_the_live_view_shows_budget_phase_trials_and_result_in_a_terminal(terminal_run):
    out, output, wall = terminal_run
    assert wall <= BUDGET_S + 5.0, f"ran {wall:.1f}s on a {BUDGET_S:.0f}s budget"
    plain = ANSI.sub("", output)
    assert "\x1b[" in output  # drawn live (cursor movement, colour), not printed line by line
    assert re.search(r"search\s+█+─*\s+\d+\.\ds of 40s · \d+s left", plain), plain[-2000:]
    assert re.search(r"#\s+model\s+params\s+batch\s+lr\s+epochs\s+trained\s+val acc\s+status",
                     plain)
    assert "best so far: trial" in plain and "data path dali-cpu" in plain
    assert "Traceback" not in plain
    assert not re.search(r"^\s*(ray: |\(\w+ pid=)", plain, re.M)  # Ray printed nothing
    summary = json.loads((out / "summary.json").read_text())
    assert f"test accuracy {summary['test_accuracy']:.4f}" in plain  # the result, after it
    assert plain.count("done in ") >= 1


def test_every_trial_report_is_an_event_with_its_budget_time(terminal_run):
    out, _, _ = terminal_run
    found = events.read(out)
    kinds = [e["kind"] for e in found]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert [e["phase"] for e in found if e["kind"] == "phase"] == [
        "search", "refit", "export", "evaluate", "report"]
    times = [e["t"] for e in found]
    assert times == sorted(times) and times[-1] <= BUDGET_S
    summary = json.loads((out / "summary.json").read_text())
    starts = {e["trial"] for e in found if e["kind"] == "trial_start"}
    assert len(starts) == summary["trials"]
    ends = {e["trial"]: e["status"] for e in found if e["kind"] == "trial_end"}
    board = {int(r["trial"]): r["status"] for r in run_files.read(out).leaderboard}
    assert {n: s for n, s in ends.items() if n in board} == board
    curves = plots.trial_curves(run_files.read(out))
    assert curves and all(len(points) >= 1 for points in curves.values())


def test_the_summary_holds_the_test_confusion_matrix(terminal_run):
    out, _, _ = terminal_run
    summary = json.loads((out / "summary.json").read_text())
    matrix = np.array(summary["test"]["confusion"])
    assert matrix.shape == (4, 4) and matrix.sum() == summary["test"]["images"]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(summary["test_accuracy"])
    per_class = summary["test"]["per_class_accuracy"]
    assert list(per_class) == summary["classes"]
    for i, name in enumerate(summary["classes"]):
        assert per_class[name] == pytest.approx(matrix[i, i] / matrix[i].sum(), abs=1e-4)


def test_report_html_renders_in_headless_chromium_without_errors(terminal_run, tmp_path):
    out, _, _ = terminal_run
    if browser() is None:
        if os.environ.get("AUTOFIT_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed and AUTOFIT_REQUIRE_BROWSER is set")
        pytest.skip("chromium is not installed (Debian package chromium); .ci/run installs it")
    shot = tmp_path / "report.png"
    load = open_page(out / html_report.FILE, PAGE_FACTS, screenshot=shot)
    assert load.errors == []
    assert all(url.startswith(("file://", "data:")) for url in load.requests), load.requests
    facts = json.loads(load.facts)
    assert facts["status"] == "finished"
    assert facts["sections"] == ["Summary", "Budget", "Trials", "Test set"]
    assert [name for name, ok in facts["images"]] == [
        "timeline", "curves", "params", "confusion", "per_class"]
    assert all(ok for _, ok in facts["images"]), facts["images"]
    summary = json.loads((out / "summary.json").read_text())
    assert facts["rows"] == summary["trials"] + 1
    assert shot.stat().st_size > 20_000  # a page was really painted


def test_plots_are_saved_as_png_beside_the_page(terminal_run):
    out, _, _ = terminal_run
    for name in plots.PLOTS:
        data = (out / html_report.PLOT_DIR / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, name
    html = (out / html_report.FILE).read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html


def test_autofit_report_renders_the_page_again(terminal_run):
    out, _, _ = terminal_run
    before = (out / html_report.FILE).read_text()
    (out / html_report.FILE).unlink()
    (out / html_report.PLOT_DIR / "curves.png").unlink()
    proc = subprocess.run([sys.executable, "-m", "autofit", "report", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out / html_report.FILE)
    after = (out / html_report.FILE).read_text()
    outline = re.compile(r"<h2>[^<]*</h2>|<img alt=\"\w+\"")
    assert outline.findall(after) == outline.findall(before)
    summary = json.loads((out / "summary.json").read_text())
    assert f"{summary['elapsed_s']:.1f} s of {BUDGET_S:.1f} s" in after  # the final summary
    assert (out / html_report.PLOT_DIR / "curves.png").is_file()


def test_autofit_runs_lists_finished_and_interrupted_runs(terminal_run):
    out, _, _ = terminal_run
    interrupted = out.parent / "second"
    interrupted.mkdir()
    args = RunArgs(data=None, budget=Budget(minutes=1, max_params="100k"), seed=0,
                   space="default")
    journal = Journal.create(interrupted, args)
    with journal.heartbeat(Clock(60.0)):
        pass
    journal.set(beat_at=time.time() - 2 * run_files.ALIVE_S)  # its last heartbeat, then it died
    proc = subprocess.run([sys.executable, "-m", "autofit", "runs", str(out.parent)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["run", "started", "status", "data", "budget", "used_s",
                                "trials", "params", "val_acc", "test_acc"]
    summary = json.loads((out / "summary.json").read_text())
    first = next(line for line in lines if str(out) in line)
    assert "finished" in first and f"{summary['test_accuracy']:.4f}" in first
    assert "interrupted" in next(line for line in lines if str(interrupted) in line)
    listed = json.loads(subprocess.run(
        [sys.executable, "-m", "autofit", "runs", str(out.parent), "--json"],
        capture_output=True, text=True, timeout=60).stdout)
    assert [r["status"] for r in listed] == ["finished", "interrupted"]

    report = subprocess.run([sys.executable, "-m", "autofit", "report", str(interrupted)],
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    assert "interrupted" in (interrupted / html_report.FILE).read_text()


def test_report_of_a_resumed_run_lays_each_life_end_to_end(tmp_path):
    lines = [{"kind": "start", "t": 0.0}, {"kind": "phase", "phase": "search", "t": 5.0},
             {"kind": "start", "t": 12.0}, {"kind": "phase", "phase": "search", "t": 15.0},
             {"kind": "phase", "phase": "refit", "t": 20.0}]
    (tmp_path / events.FILE).write_text("".join(json.dumps(e) + "\n" for e in lines)
                                        + '{"kind": "torn')
    (tmp_path / "summary.json").write_text(json.dumps({"status": "finished",
                                                       "elapsed_s": 30.0}))
    run = run_files.read(tmp_path)
    assert plots.phase_spans(run) == [("setup", 0.0, 5.0), ("search", 5.0, 12.0),
                                      ("setup", 12.0, 15.0), ("search", 15.0, 20.0),
                                      ("refit", 20.0, 30.0)]


def test_autofit_report_refuses_a_folder_that_is_not_a_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "autofit", "report", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"autofit: error: {tmp_path} is not an autofit run "
                                   "directory (no journal.json or summary.json)")

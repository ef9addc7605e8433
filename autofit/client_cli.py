"""The client's command-line verbs: `autofit submit`, `autofit status`, `autofit fetch`.

They talk to an `autofit serve` (at --server, default $AUTOFIT_SERVER) with a token (--token,
default $AUTOFIT_TOKEN), through `autofit.client`, so they need neither torch nor Ray. stdout
carries what a script reads (a run id, a table, JSON, the files written); progress and hints go
to stderr; errors are one line, `autofit: error: ...`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from autofit.errors import AutofitError, UsageError

if TYPE_CHECKING:
    from autofit.client import Client, Run

DEFAULT_FILES = ("model.onnx", "summary.json", "report.html", "leaderboard.csv")

Server = Annotated[str, typer.Option(
    "--server", envvar="AUTOFIT_SERVER", help="the autofit serve URL",
    show_envvar=True)]
Token = Annotated[str | None, typer.Option(
    "--token", envvar="AUTOFIT_TOKEN", show_envvar=True, show_default=False,
    help="your API token (`autofit serve` wrote the admin's to ROOT/admin.token)")]


@contextmanager
def _client(server: str, token: str | None) -> Iterator[Client]:
    """A connected client; every AutofitError inside becomes one stderr line and its exit
    code, Ctrl-C exit 130."""
    try:
        if not token:
            raise UsageError("no token: pass --token TOKEN or set $AUTOFIT_TOKEN")
        from autofit.client import Client

        with Client(server, token) as client:
            yield client
    except AutofitError as err:
        typer.echo(f"autofit: error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None
    except OSError as err:  # writing a downloaded file, reading DATA
        typer.echo(f"autofit: error: {err.filename or ''}: {err.strerror or err}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("autofit: interrupted", err=True)
        raise typer.Exit(130) from None


def submit_command(
    data: Annotated[Path, typer.Argument(
        help="a dataset to upload: an image folder, or a .zip/.tar.gz/.tgz of one (or of a "
             "label CSV with its images), or a .npz", show_default=False)],
    minutes: Annotated[float, typer.Option(help="wall-clock budget for the run")],
    max_params: Annotated[str, typer.Option(
        "--max-params", help="parameter cap, e.g. 2M, 500k, 250000")],
    space: Annotated[str | None, typer.Option(
        help="a search space preset on the server [default: default]")] = None,
    budget: Annotated[str | None, typer.Option(
        help="a budget preset on the server [default: default]")] = None,
    seed: Annotated[int | None, typer.Option(help="seed [default: 0]")] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="follow the run until it ends and print its test accuracy")] = False,
    name: Annotated[str | None, typer.Option(
        help="the dataset's name on the server [default: the file or folder name]")] = None,
    server: Server = "http://127.0.0.1:8000",
    token: Token = None,
) -> None:
    """Upload DATA to an autofit server and queue a run on it; print the run's id."""
    with _client(server, token) as client:
        dataset = client.upload(data, name=name)
        typer.echo(f"uploaded {dataset.name}: {dataset.images:,} images, "
                   f"{len(dataset.classes)} classes ({dataset.id})", err=True)
        created = client.submit(dataset.id, minutes=minutes, max_params=max_params,
                                space=space, budget=budget, seed=seed)
        typer.echo(created.id)
        if not wait:
            typer.echo(f"follow it: autofit status {created.id}; when it ends: "
                       f"autofit fetch {created.id}", err=True)
            return
        if created.position:
            typer.echo(f"queued at position {created.position}", err=True)
        try:
            run = client.wait(created.id, on_event=_say_progress)
        except KeyboardInterrupt:
            typer.echo(f"autofit: stopped following run {created.id}; it goes on on the "
                       f"server (autofit status {created.id})", err=True)
            raise typer.Exit(130) from None
        _finish(run)


def _say_progress(event: dict[str, Any]) -> None:
    """One stderr line for each event a person follows (not the per-epoch trial reports)."""
    kind, data = event["event"], event["data"]
    if not isinstance(data, dict):
        return
    line = None
    if kind == "start":
        line = f"started: budget {data.get('budget_s', 0):.0f}s, max params " \
               f"{data.get('max_params', 0):,}"
    elif kind == "phase":
        line = f"phase {data.get('phase')}"
    elif kind == "trial_end":
        val = data.get("val_accuracy")
        line = f"trial {data.get('trial')}: {data.get('status')}" + (
            f", val {val:.4f}" if isinstance(val, (int, float)) else "")
    elif kind == "test":
        line = f"test accuracy {data.get('accuracy', 0):.4f} on {data.get('images')} images"
    elif kind not in {"done", "end"} and "summary" in data:
        line = data.get("summary")
    if line:
        t = data.get("t")
        stamp = f"[{t:6.1f}s] " if isinstance(t, (int, float)) else ""
        typer.echo(f"{stamp}{line}", err=True)


def _finish(run: Run) -> None:
    """The run's last line on stdout; a failed run (or one stopped before it had a model)
    exits 1."""
    if run.status == "failed" or run.test_accuracy is None:
        reason = run.error or f"it was {run.status} before it had a model"
        typer.echo(f"autofit: error: run {run.id} {run.status}: {reason}", err=True)
        raise typer.Exit(1)
    params = (run.summary or {}).get("params")
    used = f" | {run.used_s:.1f}s of {run.budget_s or 0:.0f}s" if run.used_s is not None else ""
    typer.echo(f"test accuracy {run.test_accuracy:.4f}"
               + (f" | {params:,} params" if isinstance(params, int) else "")
               + f"{used} | {run.status}")
    typer.echo(f"get the model: autofit fetch {run.id}", err=True)


def status_command(
    run_id: Annotated[str | None, typer.Argument(
        help="one run's id [default: all your runs]", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document on stdout")]
    = False,
    server: Server = "http://127.0.0.1:8000",
    token: Token = None,
) -> None:
    """Your runs on an autofit server, newest first, or one run in detail."""
    with _client(server, token) as client:
        if run_id is not None:
            run = client.run(run_id)
            if as_json:
                typer.echo(run.model_dump_json(indent=2))
            else:
                typer.echo(_details(run))
            return
        runs = client.runs()
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in runs], indent=2))
    elif not runs:
        typer.echo(f"no runs on {server}")
    else:
        typer.echo(_table(runs))


def _table(runs: list[Run]) -> str:
    rows = [("id", "status", "dataset", "budget", "used", "phase", "test acc", "created")]
    for r in runs:
        rows.append((r.id, r.status + (f" #{r.position}" if r.position else ""), r.dataset,
                     _budget(r), f"{r.used_s:.0f}s" if r.used_s is not None else "-",
                     "-" if r.ended else r.phase or "-",
                     f"{r.test_accuracy:.4f}" if r.test_accuracy is not None else "-",
                     _when(r.created_at)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def _details(run: Run) -> str:
    best = run.best_so_far or {}
    lines = {
        "id": run.id, "status": run.status, "position": run.position, "dataset": run.dataset,
        "budget": _budget(run), "created": _when(run.created_at),
        "started": _when(run.started_at), "ended": _when(run.ended_at),
        "queued": _seconds(run.queued_s), "used": _seconds(run.used_s),
        "budget_s": _seconds(run.budget_s), "phase": None if run.ended else run.phase,
        "best so far": f"val {best['val_accuracy']:.4f} (trial {best.get('trial')})"
        if isinstance(best.get("val_accuracy"), (int, float)) else None,
        "test accuracy": f"{run.test_accuracy:.4f}" if run.test_accuracy is not None else None,
        "error": run.error, "files": ", ".join(run.files) or None}
    return "\n".join(f"{key:<14} {value}" for key, value in lines.items()
                     if value not in (None, "-"))


def _budget(run: Run) -> str:
    req = run.request
    if req is None:
        return "-"
    minutes = f"{req.minutes:g} min" if req.minutes is not None else "preset"
    params = f"{req.max_params:,}" if isinstance(req.max_params, int) else \
        req.max_params or "preset"
    return f"{minutes}, {params}"


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _seconds(value: float | None) -> str | None:
    return None if value is None else f"{value:.1f}s"


def fetch_command(
    run_id: Annotated[str, typer.Argument(help="the run's id", show_default=False)],
    out: Annotated[Path | None, typer.Option(
        help="where the files go [default: runs/RUN_ID]", show_default=False)] = None,
    files: Annotated[list[str] | None, typer.Option(
        "--file", help="a file to get (repeatable): model.onnx, best_so_far.onnx, report.html, "
                       "summary.json, leaderboard.csv, run.log, events.jsonl [default: "
                       f"{', '.join(DEFAULT_FILES)}, those the run has]",
        show_default=False)] = None,
    server: Server = "http://127.0.0.1:8000",
    token: Token = None,
) -> None:
    """Download a run's files; print the path of each file written."""
    with _client(server, token) as client:
        run = client.run(run_id)
        wanted = list(files) if files else [f for f in DEFAULT_FILES if f in run.files]
        if not wanted:
            raise UsageError(f"run {run_id} has no files yet ({run.status}"
                             f"{', ' + run.phase if run.phase else ''})")
        dest = out if out is not None else Path("runs") / run_id
        dest.mkdir(parents=True, exist_ok=True)
        for name in wanted:
            typer.echo(str(client.download(run_id, name, dest / name)))

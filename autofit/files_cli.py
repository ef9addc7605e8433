"""The command-line verbs on files a run left: `autofit predict`, `inspect`, `stop`, `report`
and `runs`. They read models and run directories, so they need neither Ray nor a search."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from autofit.errors import AutofitError


def predict_command(
    model: Annotated[Path, typer.Argument(help="an autofit model.onnx")],
    images: Annotated[list[Path], typer.Argument(help="image files or folders of them")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="classes per image")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document on stdout")]
    = False,
) -> None:
    """Labels and probabilities for images, resized as the model was trained."""
    import json

    from autofit.deliver.predict import load

    try:
        predictions = load(model).predict(images, top_k=top_k)
    except AutofitError as err:
        typer.echo(f"autofit: error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None
    failed = [p for p in predictions if p.error is not None]
    if as_json:
        typer.echo(json.dumps([p.as_dict() for p in predictions], indent=2))
    else:
        for p in predictions:
            top = "  ".join(f"{label} {prob:.3f}" for label, prob in
                            zip(p.labels, p.probabilities, strict=True))
            typer.echo(f"{p.image}: {top or 'unreadable'}")
    for p in failed:
        typer.echo(f"autofit: error: {p.error}", err=True)
    if failed:
        raise typer.Exit(1)


def inspect_command(
    model: Annotated[Path, typer.Argument(help="an autofit model.onnx, or a run directory (its "
                                               "model.onnx)")],
) -> None:
    """Classes, input, parameters, opset, budget, accuracy and batch-1 latency of a model."""
    from autofit.deliver.predict import load

    model = model / "model.onnx" if model.is_dir() else model
    try:
        facts = load(model).facts()
    except AutofitError as err:
        typer.echo(f"autofit: error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None
    for key, value in facts.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) and key == "classes" \
            else value
        typer.echo(f"{key:<18} {shown}")
    _say_latency(model)


def _say_latency(model: Path) -> None:
    """A run's --max-latency-ms record, from the summary.json beside its model."""
    from autofit.records import Summary

    summary = Summary.read(model.parent / "summary.json")
    for key, value in ([] if summary is None or summary.latency is None
                       else summary.latency.facts()):
        typer.echo(f"{key:<18} {value}")


def stop_command(
    run_dir: Annotated[Path, typer.Argument(help="the run directory of a live run")],
) -> None:
    """Stop a run now and keep its best model: within seconds it scores the best model it has
    exported, writes the summary (status stopped) and the report. A run that is not live acts
    on it when resumed."""
    from autofit import stopping
    from autofit.reporting import run_files

    _is_run_or_exit(run_dir)
    status = run_files.read(run_dir).status
    if status in ("finished", "failed", "stopped"):
        typer.echo(f"autofit: error: the run in {run_dir} already {status}", err=True)
        raise typer.Exit(2)
    stopping.request(run_dir, by="autofit stop")
    typer.echo(f"asked the run in {run_dir} to stop ({status}); its summary will say "
               f"status stopped")


def report_command(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (finished, failed or "
                                                 "interrupted)")],
) -> None:
    """Render RUN_DIR/report.html (and RUN_DIR/plots/*.png) again from the run's files."""
    from autofit.reporting.html_report import render

    _is_run_or_exit(run_dir)
    try:
        path = render(run_dir)
    except OSError as err:
        typer.echo(f"autofit: error: cannot write the report in {run_dir}: "
                   f"{err.strerror or err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(str(path))


def runs_command(
    where: Annotated[Path, typer.Argument(help="a folder of run directories")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document on stdout")]
    = False,
) -> None:
    """List the runs in a folder, oldest first: status, data, budget, time, accuracy."""
    import json

    from autofit.reporting.run_table import rows, table

    if not where.is_dir():
        typer.echo(f"autofit: error: {where} is not a folder", err=True)
        raise typer.Exit(2)
    found = rows(where)
    if as_json:
        typer.echo(json.dumps(found, indent=2))
    elif not found:
        typer.echo(f"no autofit runs in {where}")
    else:
        typer.echo(table(found))


def _is_run_or_exit(run_dir: Path) -> None:
    """Exit 2, in one line, where `run_dir` is not a run directory."""
    from autofit.reporting import run_files

    if not run_files.is_run(run_dir):
        typer.echo(f"autofit: error: {run_dir} is not an autofit run directory (no "
                   "journal.json or summary.json)", err=True)
        raise typer.Exit(2)


COMMANDS: dict[str, Callable[..., Any]] = {
    "predict": predict_command, "inspect": inspect_command, "stop": stop_command,
    "report": report_command, "runs": runs_command}


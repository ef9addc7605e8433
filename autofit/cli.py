"""Command line: `autofit run --data DIR --minutes 10 --max-params 2M`.

Errors a user can fix are printed as one line on stderr with a non-zero exit (2 for usage),
never as a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from autofit.budget import process_start_time
from autofit.errors import AutofitError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Time-budgeted AutoML for image classification.")


@app.callback()
def _root() -> None:
    """Time-budgeted AutoML for image classification."""


@app.command("run")
def run_command(
    data: Annotated[Path | None, typer.Option(
        help="image folder: DIR/train/<class>/* [+ DIR/test/<class>/*] or DIR/<class>/*; "
             "default: embedded 8x8 digits")] = None,
    minutes: Annotated[str | None, typer.Option(
        help="wall-clock budget for the whole run (default: budgets/default.yaml)")] = None,
    max_params: Annotated[str | None, typer.Option(
        "--max-params", help="parameter cap, e.g. 2M, 1.5M, 500k, 250000")] = None,
    out: Annotated[Path | None, typer.Option(help="run directory (default runs/<timestamp>)")]
    = None,
    seed: Annotated[int, typer.Option(help="seed for splits, sampling and training")] = 0,
    space: Annotated[str, typer.Option(
        help="search space: a name in search_spaces/ or a YAML path")] = "default",
    budget: Annotated[str, typer.Option(
        help="budget preset: a name in budgets/ or a YAML path; flags override it")]
    = "default",
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="run on an existing Ray cluster (e.g. ray://host:10001)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the result")] = False,
) -> None:
    """Search, refit and export a model inside the budget; print where it went."""
    started_at = process_start_time()
    try:
        from autofit.budget import Budget
        from autofit.presets import preset
        from autofit.runner import run

        chosen = Budget.from_yaml(preset("budgets", budget), minutes=minutes,
                                  max_params=max_params)
        result = run(data, chosen, out=out, seed=seed, space=space, ray_address=ray_address,
                     started_at=started_at, quiet=quiet)
    except AutofitError as err:
        typer.echo(f"autofit: error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("autofit: interrupted", err=True)
        raise typer.Exit(130) from None
    s = result.summary
    typer.echo(f"test accuracy {result.test_accuracy:.4f} (ONNX, onnxruntime) | val "
               f"{result.val_accuracy:.4f} | {result.params:,} params | {s['trials']} trials | "
               f"{s['elapsed_s']:.1f}s of {s['budget_s']:.0f}s")
    typer.echo(f"model: {result.model_path}")


def main() -> None:
    sys.exit(app())

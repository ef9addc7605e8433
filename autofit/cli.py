"""Command line: `autofit run --data DIR --minutes 10 --max-params 2M` (`autofit plan`, the same
options: what that run would do, without training).

Errors a user can fix are printed as one line on stderr with a non-zero exit (2 for usage),
never as a traceback.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from autofit import client_cli, files_cli
from autofit.budget import process_start_time
from autofit.errors import AutofitError, UsageError

if TYPE_CHECKING:
    from autofit.runner import RunResult

T = TypeVar("T")
app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Time-budgeted AutoML for image classification.")


@app.callback()
def _root() -> None:
    """Time-budgeted AutoML for image classification."""


DataOption = Annotated[str | None, typer.Option(
    help="image folder (DIR/train/<class>/* [+ DIR/test/<class>/*] or DIR/<class>/*), a "
         "path,label CSV (or DIR with train.csv [+ test.csv]), a .npz (x_train, y_train "
         "[, x_test, y_test]), or cifar10, cifar100, mnist, fashion-mnist from --data-root; "
         "default: embedded 8x8 digits")]

DataRootOption = Annotated[Path | None, typer.Option(
    "--data-root", help="where named datasets are, in torchvision's layout [default: "
                        "$AUTOFIT_DATA_ROOT or ~/.cache/autofit/datasets]")]

MinutesOption = Annotated[str | None, typer.Option(
    help="wall-clock budget for the whole run (default: the budget preset's)")]

MaxParamsOption = Annotated[str | None, typer.Option(
    "--max-params", help="parameter cap, e.g. 2M, 1.5M, 500k, 250000")]

MaxLatencyMsOption = Annotated[str | None, typer.Option(
    "--max-latency-ms", help="latency cap of the exported model, e.g. 2.5: batch-1 ms in "
                             "onnxruntime on this machine")]

SeedOption = Annotated[int | None, typer.Option(
    help="seed for splits, sampling and training [default: 0]")]

SpaceOption = Annotated[str | None, typer.Option(
    help="search space: a preset name (see `autofit spaces`) or a YAML path [default: "
         "default]")]

BudgetOption = Annotated[str | None, typer.Option(
    help="budget preset: a name (see `autofit budgets`) or a YAML path; flags override it "
         "[default: default]")]

QuantizeOption = Annotated[str | None, typer.Option(
    "--quantize", help="int8: also write RUN_DIR/model.int8.onnx, statically quantized, "
                       "calibrated on training images and verified against model.onnx "
                       "(its time comes out of the budget)")]

WeightsOption = Annotated[Path | None, typer.Option(
    "--weights", help="pretrained family (--space pretrained): a torchvision state_dict "
                      ".pth, or a folder of them named as torchvision names them "
                      "[default: torch's hub cache, $TORCH_HOME/hub/checkpoints]; never "
                      "downloaded")]


@app.command("run")
def run_command(
    data: DataOption = None,
    data_root: DataRootOption = None,
    minutes: MinutesOption = None,
    max_params: MaxParamsOption = None,
    max_latency_ms: MaxLatencyMsOption = None,
    out: Annotated[Path | None, typer.Option(help="run directory (default runs/<timestamp>)")]
    = None,
    seed: SeedOption = None,
    space: SpaceOption = None,
    budget: BudgetOption = None,
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="run on an existing Ray cluster: its head's address, HOST:6379 "
                              "(better: start autofit on the cluster with `ray job submit`)")]
    = None,
    storage: Annotated[str | None, typer.Option(
        help="where Tune's state and checkpoints go: a path every Ray node mounts, or a URI "
             "such as s3://bucket/dir (needed on a cluster of more than one node)")] = None,
    quantize: QuantizeOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the result")] = False,
    resume: Annotated[Path | None, typer.Option(
        "--resume", help="continue the killed or interrupted run in this directory, with the "
                         "budget it had left and its own options")] = None,
    weights: WeightsOption = None,
) -> None:
    """Search, refit and export a model inside the budget; print where it went.

    Ctrl-C once stops cleanly (and says how to resume); twice exits at once.
    """
    started_at = process_start_time()
    _second_interrupt_exits()
    try:
        from autofit import runner
        from autofit.budget import Budget
        from autofit.presets import preset

        if resume is not None:
            given = {"--data": data, "--data-root": data_root, "--minutes": minutes,
                     "--max-params": max_params, "--out": out, "--seed": seed, "--space": space,
                     "--budget": budget, "--storage": storage, "--weights": weights,
                     "--quantize": quantize, "--max-latency-ms": max_latency_ms}
            clash = [name for name, value in given.items() if value is not None]
            if clash:
                raise UsageError(f"--resume continues a run with its own options; drop "
                                 f"{', '.join(clash)}")
            result = runner.resume(resume, ray_address=ray_address, started_at=started_at,
                                   quiet=quiet)
        else:
            chosen = Budget.from_yaml(preset("budgets", budget or "default"), minutes=minutes,
                                      max_params=max_params, quantize=quantize,
                                      max_latency_ms=max_latency_ms)
            result = runner.run(data, chosen, out=out, seed=seed or 0, space=space or "default",
                                ray_address=ray_address, storage=storage,
                                started_at=started_at, quiet=quiet,
                                data_root=data_root, weights=weights)
    except AutofitError as err:
        typer.echo(f"autofit: error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None
    except KeyboardInterrupt:  # before the run had its directory: nothing to resume
        typer.echo("autofit: interrupted", err=True)
        raise typer.Exit(130) from None
    _say_result(result)


@app.command("extend")
def extend_command(
    run_dir: Annotated[Path, typer.Argument(help="a finished run's directory")],
    minutes: Annotated[str, typer.Option(help="wall-clock minutes of the extension")],
    out: Annotated[Path | None, typer.Option(
        help="the extension's run directory (default runs/<timestamp>)")] = None,
    quantize: Annotated[str | None, typer.Option(
        help="int8: also write model.int8.onnx of the model kept [default: as the parent "
             "run did]")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the result")] = False,
) -> None:
    """Train a finished run's model for more minutes, from its refit weights, as a new run
    that names it; the new model replaces the old only if it scores better on validation.

    A killed extension resumes as any run does: autofit run --resume NEW_DIR.
    """
    started_at = process_start_time()
    _second_interrupt_exits()
    try:
        from autofit import runner
        from autofit.budget import Budget

        budget = Budget(minutes=minutes, quantize=quantize)
        result = runner.extend(run_dir, budget.minutes, out=out, quantize=budget.quantize,
                               started_at=started_at, quiet=quiet)
    except AutofitError as err:
        typer.echo(f"autofit: error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("autofit: interrupted", err=True)
        raise typer.Exit(130) from None
    _say_result(result)


@app.command("plan")
def plan_command(
    data: DataOption = None,
    data_root: DataRootOption = None,
    minutes: MinutesOption = None,
    max_params: MaxParamsOption = None,
    max_latency_ms: MaxLatencyMsOption = None,
    seed: SeedOption = None,
    space: SpaceOption = None,
    budget: BudgetOption = None,
    quantize: QuantizeOption = None,
    weights: WeightsOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False,
) -> None:
    """Print what `autofit run` with these options would do on this machine (the decisions,
    the split, the model and its batch), without training: it loads the data and times the
    machine as a run's setup does."""
    started_at = process_start_time()
    try:
        from autofit.budget import Budget
        from autofit.presets import preset
        from autofit.preview import preview

        chosen = Budget.from_yaml(preset("budgets", budget or "default"), minutes=minutes,
                                  max_params=max_params, quantize=quantize,
                                  max_latency_ms=max_latency_ms)
        planned = preview(data, chosen, seed=seed or 0, space=space or "default",
                          data_root=data_root, weights=weights, started_at=started_at)
    except AutofitError as err:
        typer.echo(f"autofit: error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None
    typer.echo(planned.model_dump_json(indent=1) if as_json else "\n".join(planned.lines()))


def _say_result(result: RunResult) -> None:
    """The line a run ends with, and where its model is."""
    s = result.summary
    val = f"val {result.val_accuracy:.4f}" if result.val_accuracy is not None else \
        "no trial reached a rung" if s.trials else "no search"
    if s.status == "stopped":
        val = f"stopped in the {s.stopped_phase} phase, the best model so far"
    if s.extension is not None:
        e = s.extension
        val = (f"extended {e.parent}: kept the {e.kept} model (val {e.val_accuracy:.4f} "
               f"extended, {e.parent_val_accuracy:.4f} parent)")
    typer.echo(f"test accuracy {result.test_accuracy:.4f} (ONNX, onnxruntime) | {val} | "
               f"{result.params:,} params | {s.trials or 0} trials | "
               f"{s.elapsed_s:.1f}s of {s.budget_s or 0:.0f}s")
    typer.echo(f"model: {result.model_path}")
    if s.int8 is not None:
        q = s.int8
        typer.echo(f"int8: {q.path} (test accuracy {q.test_accuracy:.4f}, agreement "
                   f"{q.agreement:.4f})" if q.status == "kept" else
                   f"int8: {q.status}, no model.int8.onnx: {q.reason}")


for name, command in files_cli.COMMANDS.items():
    app.command(name)(command)


@app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    root: Annotated[Path | None, typer.Option(
        help="the service's state: its database, datasets and runs [default: "
             "$AUTOFIT_HOME/serve]")] = None,
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="queue runs on this Ray cluster, HOST:6379 [default: a local Ray "
                              "the server starts]")] = None,
    storage: Annotated[str | None, typer.Option(
        help="each run's --storage: a path every Ray node mounts, or a URI (needed on a "
             "cluster of more than one node)")] = None,
    max_upload: Annotated[str, typer.Option(
        "--max-upload", help="largest dataset upload, e.g. 2G or 500M; an archive may expand "
                             "to 4 times this")] = "2G",
) -> None:
    """Serve the HTTP API (/docs) and the page (/): upload datasets, queue runs on Ray."""
    from autofit.service.server import serve

    try:
        serve(host=host, port=port, root=root, ray_address=ray_address, storage=storage,
              max_upload=max_upload)
    except AutofitError as err:
        typer.echo(f"autofit: error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None


app.command("submit")(client_cli.submit_command)
app.command("status")(client_cli.status_command)
app.command("fetch")(client_cli.fetch_command)


@app.command("budgets")
def budgets_command() -> None:
    """List the budget presets, yours ($AUTOFIT_HOME/budgets) and shipped (use one with
    `autofit run --budget NAME`)."""
    from autofit.budget import Budget
    from autofit.presets import listed, summary_line

    found = listed("budgets")
    typer.echo(f"{'name':<10} {'minutes':>7} {'max params':>11} {'search':>6}  {'from':<7}  "
               "what for")
    for item in found:
        budget = _or_exit(lambda path=item.path: Budget.from_yaml(path))
        share = "auto" if budget.search_share is None else f"{budget.search_share:.0%}"
        typer.echo(f"{item.name:<10} {budget.minutes:>7g} {budget.max_params:>11,} "
                   f"{share:>6}  {item.origin:<7}  {summary_line(item.path)}")
    _say_where("budgets")


@app.command("spaces")
def spaces_command() -> None:
    """List the search spaces, yours ($AUTOFIT_HOME/search_spaces) and shipped (use one with
    `autofit run --space NAME`)."""
    from autofit.presets import listed, summary_line
    from autofit.search.space import SearchSpace

    typer.echo(f"{'name':<10} {'families':<24} {'from':<7}  what")
    for item in listed("search_spaces"):
        space = _or_exit(lambda path=item.path: SearchSpace.load(path))
        typer.echo(f"{item.name:<10} {', '.join(space.families):<24} {item.origin:<7}  "
                   f"{summary_line(item.path)}")
    _say_where("search_spaces")


def _say_where(kind: str) -> None:
    from autofit.presets import home, shipped_dir

    typer.echo(f"yours: {home() / kind} ($AUTOFIT_HOME/{kind}); shipped: {shipped_dir(kind)}")


def _or_exit(read: Callable[[], T]) -> T:
    """A preset that does not validate: its one-line error, exit 2."""
    try:
        return read()
    except AutofitError as err:
        typer.echo(f"autofit: error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None


def _second_interrupt_exits() -> None:
    """The first Ctrl-C raises KeyboardInterrupt (the run stops cleanly and records where it
    was); a second one, while that happens, ends the process at once: the default action, which
    the kernel carries out even while Python is blocked inside Ray or DALI."""

    def first(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, first)


def main() -> None:
    sys.exit(app())

"""Benchmark: autofit against three baselines, each given the same wall-clock budget end to end.

    python bench/compare.py                                 # 2, 5, 10 min at 2M, a b c d
    python bench/compare.py --minutes 0.5 --train-per-class 50 --test-per-class 20 \\
        --contenders b d --out /tmp/compare.json            # smoke
    AUTOFIT_PRECISION=fp32 python bench/compare.py --data ../shared/datasets/fashion-mnist.npz \\
        --minutes 2 5 --contenders a b c                    # another dataset, float32

`--data` is a folder of train/ and test/ class folders or a file autofit reads (an .npz);
AUTOFIT_PRECISION (autofit/train/precision.py) reaches every contender and is recorded.

Every contender runs in a fresh Python process and is timed from outside, so its budget
covers its own start-up, data loading (one decode of the same folder), training, ONNX export
and the onnxruntime test pass; one that ends past its budget is recorded `over_budget`, and
one still running `KILL_GRACE` past it is killed and recorded so. Contenders:

  a  autofit: `python -m autofit run -q` with `--space` (search, refit, export, evaluate).
  b  a fixed hand recipe under the cap, no search: fastnet (autofit/models/fastnet.py, depth
     2, airbench94's shape) trained on every train image (no validation split) for the whole
     budget by autofit's own loop (`train.loop.train`): SGD-Nesterov, one-cycle, label smoothing
     0.2, crop + flip (autofit's loader), flip TTA in the graph.
     Width rule: two widths (`PROBE_WIDTHS`) train for `PROBE_S` seconds each through the
     same loop; the training cost per image is modelled as a + b * width^2 (conv work grows
     with the square of the width) through those two throughputs, and the width is the
     largest fastnet width (a multiple of 4, as in search_spaces/fastnet.yaml) under the cap
     whose predicted epochs in the time left are at least N = `--min-epochs` (default 10:
     airbench94, the recipe fastnet follows, reaches its accuracy in about 10 epochs; a wider
     net that gets fewer is undertrained, a narrower one that gets more underfits less than
     it loses). With no width meeting N, the narrowest.
  c  autofit with random search: as a, with `searcher: random` written into a copy of the
     space file (the searcher option's key) and its `first:` prior removed, so every trial
     is a random draw; skipped, and recorded so, where autofit does not accept the key.
  d  torchvision ResNet-18 for 32x32 (3x3 stride-1 stem, no max-pool; 11.2M params: over the
     cap, recorded so), SGD lr 0.1 momentum 0.9 wd 5e-4, cosine over the budget's time, crop +
     flip, by autofit's loop and loader, normalised inside the model (autofit's Classifier).

b and d keep back a measured reserve for the end: the untrained model is exported with
export_onnx and a slice of the test set scored with score_onnx, and they train until the
deadline minus 1.2 x (export + full test pass at that rate) + EXIT_RESERVE_S.
Writes `--out` (bench/results/compare.json) after each contender, and prints one line each.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, add_data_argument, check_data, listing, machine  # noqa: E402

from autofit.records import Summary  # noqa: E402

CONTENDERS = {"a": "autofit", "b": "fastnet-hand", "c": "autofit-random", "d": "resnet18"}
HAND_DEPTH = 2  # airbench94's convs per block
PROBE_WIDTHS = (16, 32)
PROBE_S = 2.0  # training seconds per probed width
MIN_EPOCHS = 10.0
WIDTH_STEP = 4  # fastnet widths as search_spaces/fastnet.yaml steps them
RESERVE_FACTOR = 1.2  # margin on the measured export and test-pass seconds
PROBE_EVAL_IMAGES = 512
KILL_GRACE = (60.0, 0.5)  # killed at budget + max(60 s, half the budget)
SEARCHER_KEY = "searcher"


# ----------------------------------------------------------------------------- orchestration


@dataclass(frozen=True)
class Finished:
    """How a contender's process ended, as seen from outside."""

    returncode: int | None  # None: killed at the grace limit
    wall_s: float
    log: Path


def timed(command: list[str], budget_s: float, log: Path) -> Finished:
    """Run `command` in its own session (autofit's Ray workers included), output to `log`,
    killing the whole group if it runs `KILL_GRACE` past the budget."""
    limit = budget_s + max(KILL_GRACE[0], KILL_GRACE[1] * budget_s)
    with open(log, "w") as handle:
        start = time.time()
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        wall = time.time() - start
    return Finished(code, wall, log)


def tail(log: Path, lines: int = 5) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def base_record(key: str, minutes: float, max_params: int) -> dict[str, Any]:
    return {"name": CONTENDERS[key], "contender": key, "minutes": minutes,
            "budget_s": round(minutes * 60, 3), "max_params": max_params, "status": None,
            "wall_s": None, "over_budget": None, "over_by_s": None, "test_accuracy": None,
            "params": None, "over_cap": None, "epochs": None, "notes": ""}


def ended(record: dict[str, Any], done: Finished) -> dict[str, Any]:
    """The outside view: wall seconds against the budget, and a kill or failure."""
    record["wall_s"] = round(done.wall_s, 3)
    record["over_by_s"] = round(done.wall_s - record["budget_s"], 3)
    record["over_budget"] = done.wall_s > record["budget_s"]
    record["log"] = str(done.log)
    if done.returncode is None:
        record["status"] = "killed"
        record["notes"] = f"killed {record['over_by_s']:.0f}s past the budget"
    elif done.returncode != 0:
        record["status"] = "failed"
        record["notes"] = f"exit {done.returncode}: {tail(done.log)}"
    else:
        record["status"] = "finished"
    return record


def random_space(space: str, folder: Path) -> Path:
    """A copy of the space file with `searcher: random` and no `first:` prior: plain random
    draws with autofit's trainer and budget split."""
    import yaml

    from autofit.presets import preset

    raw = yaml.safe_load(preset("search_spaces", space).read_text())
    raw[SEARCHER_KEY] = "random"
    raw.pop("first", None)
    path = folder / f"space-{Path(space).stem}-random.yaml"
    path.write_text("# bench/compare.py contender c: random search, no prior\n" +
                    yaml.safe_dump(raw, sort_keys=False))
    return path


def space_searcher(space: str) -> tuple[str | None, str | None]:
    """The searcher a space file asks for (None: autofit has no such option), or why
    autofit refuses the file."""
    from autofit.errors import AutofitError
    from autofit.presets import preset
    from autofit.search.space import SearchSpace

    try:
        return getattr(SearchSpace.load(preset("search_spaces", space)), SEARCHER_KEY, None), None
    except AutofitError as err:
        return None, str(err)


def run_autofit(key: str, minutes: float, max_params: int, args: argparse.Namespace,
                data: Path, work: Path) -> dict[str, Any]:
    """Contenders a and c: the CLI in a fresh process; results from its summary.json."""
    record = base_record(key, minutes, max_params)
    tag = f"m{minutes:g}-{key}"
    space = args.space
    if key == "c":
        space = str(random_space(args.space, work))
        record["space_file"] = space
    searcher, why = space_searcher(space)
    record["searcher"] = searcher
    if key == "c" and (why is not None or searcher != "random"):
        record.update(status="skipped", notes=f"searcher option not available: "
                                              f"{why or 'autofit ignores the key'}")
        return record
    run_dir = work / f"{tag}-run"
    command = [sys.executable, "-m", "autofit", "run", "--data", str(data), "--minutes",
               f"{minutes:g}", "--max-params", str(max_params), "--out", str(run_dir),
               "--seed", str(args.seed), "--space", space, "-q"]
    record = ended(record, timed(command, minutes * 60, work / f"{tag}.log"))
    record["run_dir"] = str(run_dir)
    if key == "c" and record["status"] == "failed" and SEARCHER_KEY in record["notes"]:
        record.update(status="skipped",
                      notes=f"searcher option not available: {record['notes']}")
    summary = Summary.read(run_dir / "summary.json")
    if summary is None:
        return record
    config, plan, refit = summary.best_config, summary.plan, summary.refit
    if summary.status != "finished" or config is None or plan is None or refit is None \
            or summary.params is None:
        record["notes"] = f"{record['notes']} autofit: {summary.error}".strip()
        return record
    arch = " ".join(f"{k}={v}" for k, v in config.arch.items())
    record.update(test_accuracy=summary.test_accuracy, params=summary.params,
                  over_cap=summary.params > max_params, epochs=refit.epochs,
                  trials=summary.trials, best_config=config.model_dump(),
                  val_accuracy=summary.val_accuracy, autofit_elapsed_s=summary.elapsed_s,
                  phases=summary.phases, precision=summary.precision, sized=plan.sized,
                  decisions=[d.evidence for d in summary.decisions],
                  notes=f"{searcher or 'random'} search, {summary.trials} trials; best "
                        f"{config.family} {arch}" if plan.searched
                  else f"search skipped ({plan.split}); {config.family} {arch}")
    return record


def run_worker(key: str, minutes: float, max_params: int, args: argparse.Namespace,
               data: Path, work: Path) -> dict[str, Any]:
    """Contenders b and d: this script again in `--worker` mode, its deadline counted from
    just before it was started."""
    record = base_record(key, minutes, max_params)
    tag = f"m{minutes:g}-{key}"
    folder = work / tag
    folder.mkdir(parents=True, exist_ok=True)
    result = folder / "record.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", key, "--data",
               str(data), "--minutes", f"{minutes:g}", "--max-params", str(max_params),
               "--seed", str(args.seed), "--min-epochs", str(args.min_epochs),
               "--work", str(folder), "--started-at", repr(time.time())]
    record = ended(record, timed(command, minutes * 60, work / f"{tag}.log"))
    try:
        measured = json.loads(result.read_text())
    except (OSError, ValueError):
        return record
    notes = measured.pop("notes", "")
    record.update(measured)
    record["over_cap"] = record["params"] > max_params
    record["notes"] = f"{notes}; {record['notes']}".strip("; ") if record["notes"] else notes
    return record


def slice_data(root: Path, work: Path, train_per_class: int, test_per_class: int) -> Path:
    """`root` itself, or a folder of links to the first files of each class of each split,
    so every contender reads the same smaller data the same way (0: all of a split)."""
    if not train_per_class and not test_per_class:
        return root
    dest = work / f"data-train{train_per_class}-test{test_per_class}"
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        files, _, _ = listing(root, split, per_class)
        for file in map(Path, files):
            link = dest / split / file.parent.name / file.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(file)
    return dest


def write(path: Path, report: dict[str, Any]) -> None:
    """Atomically: a bench killed mid-write keeps the previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, path)


def line(record: dict[str, Any]) -> str:
    acc = "-" if record["test_accuracy"] is None else f"{record['test_accuracy']:.4f}"
    wall = "-" if record["wall_s"] is None else f"{record['wall_s']:.1f}"
    over = " OVER" if record["over_budget"] else ""
    params = "-" if record["params"] is None else f"{record['params']:,}"
    epochs = "-" if record["epochs"] is None else f"{record['epochs']:.2f}"
    return (f"{record['minutes']:>5g} min  {record['contender']} {record['name']:<15} "
            f"{record['status']:<8} acc {acc:<6}  wall {wall}/{record['budget_s']:.0f}s{over}  "
            f"params {params}  epochs {epochs}  {record['notes']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--minutes", type=float, nargs="+", default=[2.0, 5.0, 10.0])
    parser.add_argument("--max-params", default="2M")
    parser.add_argument("--contenders", nargs="+", choices=sorted(CONTENDERS),
                        default=sorted(CONTENDERS))
    parser.add_argument("--space", default="default", help="search space of a and c")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-epochs", type=float, default=MIN_EPOCHS,
                        help="N of b's width rule")
    parser.add_argument("--train-per-class", type=int, default=0, help="0: all 5,000")
    parser.add_argument("--test-per-class", type=int, default=0, help="0: all 1,000")
    parser.add_argument("--work", type=Path, default=None,
                        help="run directories and models (default runs/compare-<time>)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "compare.json")
    parser.add_argument("--worker", choices=["b", "d"], help=argparse.SUPPRESS)
    parser.add_argument("--started-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        return worker(args)
    if not (args.data.is_file() or check_data(args.data, splits=True)):
        return 2  # a folder of train/ and test/, or a file autofit reads (Fashion-MNIST's .npz)
    if args.data.is_file() and (args.train_per_class or args.test_per_class):
        print("bench: --train-per-class and --test-per-class slice a folder, not "
              f"{args.data}", file=sys.stderr)
        return 2
    from autofit.budget import Budget, parse_params

    max_params = parse_params(args.max_params)
    for minutes in args.minutes:
        Budget(minutes=minutes, max_params=max_params)  # autofit's own checks, before any run
    work = args.work or ROOT / "runs" / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True, exist_ok=True)
    data = slice_data(args.data, work, args.train_per_class, args.test_per_class)
    report: dict[str, Any] = {
        "bench": "compare", "max_params": max_params, "minutes": args.minutes,
        "contenders": {k: CONTENDERS[k] for k in args.contenders}, "space": args.space,
        "seed": args.seed, "min_epochs": args.min_epochs, "data": str(args.data),
        "precision": os.environ.get("AUTOFIT_PRECISION", "auto"),
        "train_per_class": args.train_per_class, "test_per_class": args.test_per_class,
        "work": str(work), "machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "records": [],
    }
    for minutes in args.minutes:
        for key in args.contenders:
            run = run_autofit if key in ("a", "c") else run_worker
            record = run(key, minutes, max_params, args, data, work)
            report["records"].append(record)
            write(args.out, report)
            print(line(record), flush=True)
    print(f"wrote {args.out}")
    return 0


# ------------------------------------------------------------------ workers: contenders b, d


@dataclass
class Data:
    """Every train image (train + validation of autofit's split) and the test set."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    mean: list[float]
    std: list[float]
    path: str
    load_s: float

    @property
    def shape(self):  # type: ignore[no-untyped-def]
        from autofit.models import DataShape

        _, height, width, channels = self.x.shape
        return DataShape(channels, height, width, len(self.classes))


def load_data(root: Path, seed: int, threads: int, device: str) -> Data:
    """The folder decoded once by autofit's own loader and data path; its validation split
    goes back into training (the baselines do not search, so they hold nothing out)."""
    from autofit.data import pipeline
    from autofit.data.dataset import load

    tick = time.time()
    dataset = load(str(root), seed, threads, path=pipeline.choose(device))
    mean, std = dataset.mean_std
    return Data(np.concatenate([dataset.x_train, dataset.x_val]),
                np.concatenate([dataset.y_train, dataset.y_val]), dataset.x_test,
                dataset.y_test, dataset.classes, mean, std, dataset.data_path,
                time.time() - tick)


def end_reserve(model: Any, data: Data, folder: Path, threads: int) -> tuple[float, float]:
    """Seconds to keep back for export + test pass, measured on the untrained model (same
    graph, same cost), and the onnxruntime images/s it ran at."""
    import torch

    from autofit.deliver.evaluate import score_onnx
    from autofit.deliver.export import export_onnx
    from autofit.reserves import EXIT_RESERVE_S

    cpu = copy.deepcopy(model).eval().to("cpu", memory_format=torch.contiguous_format)
    tick = time.time()
    path = export_onnx(cpu, folder / "probe.onnx", data.x_test, {}, threads).path
    export_s = time.time() - tick
    n = min(len(data.y_test), PROBE_EVAL_IMAGES)
    tick = time.time()
    score_onnx(Path(path), data.x_test[:n], data.y_test[:n], threads, len(data.classes))
    rate = n / max(time.time() - tick, 1e-9)
    Path(path).unlink(missing_ok=True)
    return RESERVE_FACTOR * (export_s + len(data.y_test) / rate) + EXIT_RESERVE_S, rate


def fit_and_score(model: Any, recipe: Any, data: Data, deadline: float, folder: Path,
                  threads: int, device: str, seed: int) -> dict[str, Any]:
    """Train for everything left before the measured reserve (the schedule spans exactly
    that), export, score on the test set through onnxruntime."""
    import torch

    from autofit.data import pipeline
    from autofit.deliver.evaluate import score_onnx
    from autofit.deliver.export import export_onnx
    from autofit.train.loop import train

    reserve, ort_rate = end_reserve(model, data, folder, threads)
    loader = pipeline.training_loader(data.path, data.x, data.y, recipe, seed=seed,
                                      threads=threads, device=device)
    stop = deadline - reserve
    tick = time.time()
    final = train(model, loader, recipe, stop_at=stop, total_seconds=max(stop - tick, 1e-3))
    train_s = time.time() - tick
    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    tick = time.time()
    exported = export_onnx(model, folder / "model.onnx", data.x_test,
                           {"classes": data.classes, "bench": "compare"}, threads)
    export_s = time.time() - tick
    tick = time.time()
    score = score_onnx(Path(exported.path), data.x_test, data.y_test, threads,
                       len(data.classes))
    return {"test_accuracy": round(score.accuracy, 4), "test_images": len(data.y_test),
            "train_images": len(data.y), "epochs": final.epoch, "steps": final.steps,
            "train_state": final.state, "train_s": round(train_s, 3),
            "images_per_s": round(final.images_per_s, 1), "load_s": round(data.load_s, 3),
            "reserve_s": round(reserve, 3), "probe_ort_images_per_s": round(ort_rate, 1),
            "export_s": round(export_s, 3), "eval_s": round(time.time() - tick, 3),
            "onnx_params": exported.onnx_params, "model": exported.path,
            "recipe": recipe.model_dump(), "device": device, "data_path": data.path}


def hand_recipe(data: Data, deadline: float, args: argparse.Namespace, threads: int,
                device: str) -> dict[str, Any]:
    """Contender b: fastnet at the width the throughput rule picks (module docstring)."""
    import torch

    from autofit import models
    from autofit.config import Recipe, TrialConfig
    from autofit.data import pipeline
    from autofit.reserves import EXIT_RESERVE_S, EXPORT_RESERVE_S, test_pass_rate
    from autofit.train.loop import make_model, train

    recipe = Recipe(batch_size=256, lr=0.2, weight_decay=5e-4, momentum=0.9,
                    label_smoothing=0.2, hflip=True, optimizer="sgd", schedule="onecycle",
                    tta=True)
    max_params = int(args.max_params)
    shape = data.shape

    def config(width: int) -> TrialConfig:
        arch = {"width": width, "depth": HAND_DEPTH}
        return TrialConfig(family="fastnet", arch=arch, recipe=recipe,
                           params=models.count_for("fastnet", arch, shape))

    widths = [w for w in range(2 * WIDTH_STEP, 1025, WIDTH_STEP)
              if config(w).params <= max_params]
    if not widths:
        raise SystemExit(f"compare: no fastnet fits --max-params {max_params:,}")
    probes = sorted({min(w, widths[-1]) for w in PROBE_WIDTHS})
    seconds_per_image: dict[int, float] = {}
    for width in probes:  # a few seconds of the budget, charged to b as any set-up is
        torch.manual_seed(args.seed)
        model = make_model(config(width), shape, data.mean, data.std, device)
        loader = pipeline.loader(data.path, data.x, data.y, recipe.batch_size, train=True,
                                 hflip=True, seed=args.seed, threads=threads, device=device)
        probe = train(model, loader, recipe, stop_at=time.time() + 4 * PROBE_S,
                      total_seconds=PROBE_S)
        seconds_per_image[width] = 1.0 / max(probe.images_per_s, 1e-9)
    if len(probes) == 2:
        (w1, t1), (w2, t2) = sorted(seconds_per_image.items())
        b = max((t2 - t1) / (w2**2 - w1**2), 0.0)
        a = max(t1 - b * w1**2, 0.0)
    else:  # one probe (a small cap): cost through the origin
        (w1, t1), = seconds_per_image.items()
        a, b = 0.0, t1 / w1**2

    def epochs(width: int) -> float:
        """Predicted epochs at `width` in the time left, after a test-pass reserve guessed
        from training speed (a forward pass about a third of a step, two with TTA)."""
        per_image = a + b * width**2
        reserve = EXPORT_RESERVE_S + 1.3 * len(data.y_test) / test_pass_rate(per_image) + \
            EXIT_RESERVE_S
        return (deadline - time.time() - reserve) / (per_image * len(data.y))

    chosen = next((w for w in reversed(widths) if epochs(w) >= args.min_epochs), widths[0])
    predicted = epochs(chosen)
    torch.manual_seed(args.seed)
    model = make_model(config(chosen), shape, data.mean, data.std, device)
    result = fit_and_score(model, recipe, data, deadline, Path(args.work), threads, device,
                           args.seed)
    probed = ", ".join(f"w{w} {1 / t:.0f} img/s" for w, t in seconds_per_image.items())
    rule = "largest with" if predicted >= args.min_epochs else "narrowest: none affords"
    return {**result, "params": config(chosen).params,
            "arch": {"family": "fastnet", "width": chosen, "depth": HAND_DEPTH},
            "probes_img_per_s": {w: round(1 / t, 1) for w, t in seconds_per_image.items()},
            "predicted_epochs": round(predicted, 2),
            "notes": f"fastnet width {chosen} depth {HAND_DEPTH} ({rule} >= "
                     f"{args.min_epochs:g} predicted epochs: {predicted:.1f}; probes {probed})"}


def resnet18(data: Data, deadline: float, args: argparse.Namespace, threads: int,
             device: str) -> dict[str, Any]:
    """Contender d: the usual CIFAR adaptation of torchvision's ResNet-18, no cap."""
    import torch
    import torchvision
    from torch import nn

    from autofit.config import Recipe
    from autofit.models import Classifier

    recipe = Recipe(batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, hflip=True,
                    optimizer="sgd", schedule="cosine")
    torch.manual_seed(args.seed)
    net = torchvision.models.resnet18(num_classes=len(data.classes))
    net.conv1 = nn.Conv2d(data.shape.channels, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    model = Classifier(net, data.mean, data.std).to(device, memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = fit_and_score(model, recipe, data, deadline, Path(args.work), threads, device,
                           args.seed)
    return {**result, "params": params,
            "notes": f"ResNet-18 {params / 1e6:.1f}M params (over the cap); autofit's SGD is "
                     "Nesterov with a 10% warm-up, no decay on biases and BN"}


def worker(args: argparse.Namespace) -> int:
    """One baseline in this process: its deadline is `--started-at` plus the budget, so its
    imports and data loading count."""
    import torch

    deadline = args.started_at + args.minutes[0] * 60
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = load_data(args.data, args.seed, threads, device)
    run = hand_recipe if args.worker == "b" else resnet18
    record = run(data, deadline, args, threads, device)
    record["worker_s"] = round(time.time() - args.started_at, 3)
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            record[key] = None
    (Path(args.work) / "record.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

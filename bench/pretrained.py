"""Benchmark: the pretrained family, on this machine.

    python bench/pretrained.py speed                      # images/s per net and resolution
    python bench/pretrained.py speed --nets 0 4 --resolutions 64 224 --rounds 2
    python bench/pretrained.py transfer --seeds 0 1 2     # fine-tuned against from scratch
    python bench/pretrained.py transfer --seeds 0 --minutes 0.75 --out /tmp/p.json   # smoke

`speed` trains each network of autofit/models/pretrained.py (a Classifier around it, SGD,
batch 64, channels_last, the run's precision, `--threads` threads) on random 32x32 pixels
resized inside the model to each resolution, and times its training steps and its float32
evaluation (best of `--rounds` rounds, the networks in turn, so a stall of the shared machine
is left out), with its exact parameters and MACs: the resolution/speed trade-off.

`transfer` is tests/test_pretrained.py's comparison, repeated per seed: shufflenet_v2_x0_5
pretrained 300 steps on seven drawn shapes (saved as torchvision saves weights), then `autofit run
--space pretrained` on six other shapes from six images each (300 test images), once from
those weights (`tuned`), once from torchvision's initialisation with the same prior
(`scratch`) and once from it with a from-scratch recipe (`scratch-sgd`: lr 0.2, no frozen
epochs, one lr for every layer), each for the same minutes and seed, one after the other
(side by side on two cores, two runs of two threads each trained 37 and 41 refit steps where
one alone trained 800: OpenMP threads wait on each other), the search skipped (the prior
trains alone), with the steps each refit took (a busy shared machine gives a run fewer).
Writes bench/results/pretrained.json (both parts) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, write_record  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
RESOLUTIONS = (64, 96, 128, 160, 224)
SCRATCH_RECIPE = {"lr": 0.2, "weight_decay": 5.0e-4, "backbone_lr_scale": 1.0,
                  "freeze_epochs": 0.0}


def speed(nets: list[int], resolutions: list[int], rounds: int, threads: int,
          steps: int) -> list[dict[str, Any]]:
    import torch
    from torch import nn

    from autofit import models
    from autofit.models import Classifier, DataShape, pretrained
    from autofit.train import precision

    torch.set_num_threads(threads)
    shape, batch = DataShape(3, 32, 32, 10), 64
    bf16 = precision.choose("cpu").bf16
    x = torch.rand(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    rows, timers = [], []
    for net in nets:
        for side in resolutions:
            arch = {"net": net, "resolution": side}
            model = Classifier(models.build_for(pretrained.FAMILY, arch, shape), [0.5] * 3,
                               [0.25] * 3).to(memory_format=torch.channels_last)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

            def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
                opt.zero_grad(set_to_none=True)
                with precision.autocast("cpu", bf16):
                    loss = nn.functional.cross_entropy(model.train()(x), y)
                loss.backward()
                opt.step()

            def infer(model: nn.Module = model) -> None:
                with torch.no_grad():
                    model.eval()(x)

            step()
            infer()
            macs, _ = models.count_work(pretrained.FAMILY, arch, shape)
            rows.append({"net": pretrained.NETS[net].name, "index": net, "resolution": side,
                         "params": models.count_for(pretrained.FAMILY, arch, shape),
                         "macs": macs, "train_s": [], "eval_s": []})
            timers.append((step, infer))
    for _ in range(rounds):
        for row, (step, infer) in zip(rows, timers, strict=True):
            for key, work in (("train_s", step), ("eval_s", infer)):
                tick = time.perf_counter()
                for _ in range(steps):
                    work()
                row[key].append((time.perf_counter() - tick) / steps)
    for row in rows:
        row["train_images_per_s"] = round(batch / min(row.pop("train_s")), 1)
        row["eval_images_per_s"] = round(batch / min(row.pop("eval_s")), 1)
        print(f"{row['net']:<20} {row['resolution']:>4} px  {row['params']:>10,} params  "
              f"{row['macs'] / 1e6:>8.1f}M MACs  train {row['train_images_per_s']:>7.1f} "
              f"img/s  eval {row['eval_images_per_s']:>8.1f} img/s", flush=True)
    return rows


def _start(data: Path, weights: Path, space: str, budget: Path, out: Path,
           seed: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "autofit", "run", "--data", str(data), "--space", space,
         "--weights", str(weights), "--budget", str(budget), "--out", str(out), "--seed",
         str(seed), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TORCH_HOME": str(out.parent / "torch-home")})


def _result(proc: subprocess.Popen[str], out: Path) -> dict[str, Any]:
    _, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"bench: autofit run failed: {stderr.strip()[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"test_accuracy": summary["test_accuracy"], "elapsed_s": summary["elapsed_s"],
            "refit_epochs": summary["refit"]["epochs"], "refit_steps": summary["refit"]["steps"],
            "phases": summary["phases"]}


def transfer(seeds: list[int], minutes: float) -> list[dict[str, Any]]:
    import test_pretrained as t  # the test's shapes, pretraining and dataset

    rows = []
    with tempfile.TemporaryDirectory(prefix="autofit-pretrained-") as tmp:
        root = Path(tmp)
        data = t.write_target(root / "target.npz")
        budget = root / "prior.yaml"
        budget.write_text(yaml.safe_dump({"minutes": minutes, "max_params": "2M",
                                          "min_rung_epochs": 1000}))
        space = yaml.safe_load((ROOT / "search_spaces" / "pretrained.yaml").read_text())
        space["first"]["training"].update(SCRATCH_RECIPE)
        space["training"].update({k: {"choices": [v]} for k, v in SCRATCH_RECIPE.items()})
        scratch_space = root / "scratch-sgd.yaml"
        scratch_space.write_text(yaml.safe_dump(space))
        (root / "init").mkdir()
        initial = t.scratch(root / "init")
        (root / "pre").mkdir()
        weights, accuracy = t.pretrain(root / "pre")  # seeded: the same weights every time
        print(f"pretrained: {accuracy:.4f} on the pretraining shapes' held-out images")
        for seed in seeds:
            row: dict[str, Any] = {"seed": seed, "pretrain_accuracy": round(accuracy, 4)}
            for name, file, space_name in (("tuned", weights, "pretrained"),
                                           ("scratch", initial, "pretrained"),
                                           ("scratch-sgd", initial, str(scratch_space))):
                out = root / f"{name}-{seed}"
                row[name] = _result(_start(data, file, space_name, budget, out, seed), out)
                print(f"seed {seed} {name:<12} test {row[name]['test_accuracy']:.4f}  "
                      f"{row[name]['refit_steps']} steps  {row[name]['elapsed_s']:.1f}s",
                      flush=True)
            rows.append(row)
    for name in ("tuned", "scratch", "scratch-sgd"):
        accuracies = [r[name]["test_accuracy"] for r in rows]
        print(f"{name:<12} mean test accuracy {statistics.mean(accuracies):.4f} over "
              f"{len(accuracies)} seed(s): {accuracies}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=("speed", "transfer"))
    parser.add_argument("--nets", type=int, nargs="+", default=None)
    parser.add_argument("--resolutions", type=int, nargs="+", default=list(RESOLUTIONS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" /
                        "pretrained.json")
    args = parser.parse_args()
    record: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.part == "speed":
        from autofit.models import pretrained

        nets = args.nets if args.nets is not None else list(range(len(pretrained.NETS)))
        record["speed"] = {"command": " ".join(sys.argv), "threads": args.threads,
                           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "rows": speed(nets, args.resolutions, args.rounds, args.threads,
                                         args.steps)}
    else:
        record["transfer"] = {"command": " ".join(sys.argv), "minutes": args.minutes,
                              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "rows": transfer(args.seeds, args.minutes)}
    write_record(args.out, record)


if __name__ == "__main__":
    main()

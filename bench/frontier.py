"""Fit the compute frontier (autofit/search/frontier.py) to the measured grid of widths x epochs
and write it into the package, where the plan reads it.

    python bench/frontier.py                     # bench/results/frontier-*.json -> the package
    python bench/frontier.py --check             # the fit and its choices, without writing

Each grid point is `bench/prior.py --only baseline --width W --epochs E` (the default space's
prior at width W for E epochs of the training images, its test accuracy with the prior's
test-time views): see bench/README.md for the commands and machines. The law's exponents and
the worth of repeated passes are searched on a grid; at each, the floor and both coefficients
are least squares (the law is linear in them), kept only where both coefficients are positive.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine  # noqa: E402

VIEW = "flip+translate"  # the prior's test-time views (search_spaces/default.yaml)
CIFAR_SHAPE = (3, 32, 32, 10)  # grid files written before bench/prior.py recorded the shape
ALPHAS = BETAS = np.round(np.arange(0.05, 2.001, 0.05), 3)
SITTING_GAP_S = 1800  # a grid file written longer after the one before starts a new sitting
REPEATS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, float("inf"))


def points(files: list[Path]) -> list[dict[str, Any]]:
    """One row per trained run of every grid file: its MACs, images seen and accuracy."""
    from autofit import models
    from autofit.models import DataShape

    rows = []
    for file in files:
        record = json.loads(file.read_text())
        shape = DataShape(*record.get("shape", CIFAR_SHAPE))
        arch = {k: v for k, v in record["model"].items() if k not in ("family", "width")}
        for run in record["runs"]:
            if run["variant"] != "baseline":
                continue
            work = models.count_work(record["model"]["family"], {**arch, "width": run["width"]},
                                     shape)
            rows.append({"dataset": Path(record["data"]).name,
                         "width": run["width"], "epochs": run["epochs"],
                         "unique": record["train_images"], "macs": work[0],
                         "acts": work[1],
                         "accuracy": run["test"][VIEW]["accuracy"], "file": file.name,
                         "image_s": run["train_s"] / (run["epochs"] * record["train_images"]),
                         "precision": record.get("precision", ""),
                         "date": record["date"]})
    return grouped(rows)


def grouped(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with its `group`: the points of one sitting (each file written within half an hour
    of the one before: one machine) and one dataset that train for about the same seconds (each
    within 1.3x of the one before), so a test can set the frontier's choice against their
    best. The seconds are the sitting's prices per MAC and activation (least squares over its
    points) times each point's work: one run's own timing on this VM strays by up to 1.5x."""
    from datetime import datetime

    def when(row: dict[str, Any]) -> float:
        return datetime.strptime(row["date"], "%Y-%m-%dT%H:%M:%S%z").timestamp()

    rows = sorted(rows, key=when)
    sittings: list[list[dict[str, Any]]] = []
    for row in rows:
        if sittings and when(row) - when(sittings[-1][-1]) < SITTING_GAP_S:
            sittings[-1].append(row)
        else:
            sittings.append([row])
    group, out = -1, []
    for sitting in sittings:
        work = np.array([[r["macs"], r["acts"]] for r in sitting], dtype=float)
        prices, *_ = np.linalg.lstsq(work, np.array([r["image_s"] for r in sitting]), rcond=None)
        seconds = {id(r): float(w @ prices) * r["epochs"] * r["unique"]
                   for r, w in zip(sitting, work, strict=True)}
        last: dict[str, Any] | None = None
        for row in sorted(sitting, key=lambda r: (r["dataset"], r["unique"], seconds[id(r)])):
            same = last is not None and (row["dataset"], row["unique"]) == (
                last["dataset"], last["unique"])
            if last is None or not same or seconds[id(row)] > 1.3 * seconds[id(last)]:
                group += 1
            last = row
            out.append({**row, "group": group})
    return out


def fit(rows: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The least-squares laws over the exponent and repeat grid (the module's docstring): the
    exponents and repeats shared, a floor and two coefficients per dataset."""
    from autofit.search.frontier import IMAGES_UNIT, MACS_UNIT, Frontier

    names = sorted({r["dataset"] for r in rows})
    which = np.array([[r["dataset"] == name for name in names] for r in rows], dtype=float)
    err = np.array([1.0 - r["accuracy"] for r in rows])
    macs = np.array([r["macs"] / MACS_UNIT for r in rows])
    best: tuple[float, dict[str, float], np.ndarray] | None = None
    for repeats in REPEATS:
        shared = Frontier(alpha=0, beta=0, repeats=repeats, laws=(), rms=0, points=(),
                          command="", machine="", date="")
        seen = np.array([shared.effective_images(r["epochs"] * r["unique"], r["unique"])
                         for r in rows]) / IMAGES_UNIT
        for alpha, beta in itertools.product(ALPHAS, BETAS):
            design = np.concatenate([which, which * (macs ** -alpha)[:, None],
                                     which * (seen ** -beta)[:, None]], axis=1)
            coef, *_ = np.linalg.lstsq(design, err, rcond=None)
            if (coef[len(names):] <= 0).any():
                continue
            sse = float(np.sum((design @ coef - err) ** 2))
            if best is None or sse < best[0]:
                best = (sse, {"alpha": float(alpha), "beta": float(beta),
                              "repeats": repeats}, coef)
    if best is None:
        raise SystemExit("bench: no law with positive coefficients fits the grid")
    sse, exponents, coef = best
    k = len(names)
    laws = {name: {"floor": float(coef[i]), "a": float(coef[k + i]), "b": float(coef[2 * k + i])}
            for i, name in enumerate(names)}
    return {**exponents, "rms": float(np.sqrt(sse / len(rows)))}, laws


def probes(path: Path) -> dict[str, float]:
    """Each dataset's linear-probe lead over chance, as a share of the most there is, from
    bench/mirror.py's record (the probe a run makes: data/mirror.py)."""
    try:
        rows = json.loads(path.read_text())["rows"]
    except (OSError, ValueError, KeyError) as err:
        raise SystemExit(f"bench: cannot read the probes of {path}: {err}; run "
                         "bench/mirror.py") from None
    return {Path(r["data"]).name: (r["probe_accuracy"] - r["chance"]) / (1.0 - r["chance"])
            for r in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path,
                        help="grid files (default: bench/results/frontier-*.json)")
    parser.add_argument("--mirror", type=Path, default=ROOT / "bench" / "results" / "mirror.json",
                        help="bench/mirror.py's record: each dataset's linear probe")
    parser.add_argument("--check", action="store_true", help="print only; write nothing")
    args = parser.parse_args()
    files = args.files or sorted((ROOT / "bench" / "results").glob("frontier-*.json"))
    if not files:
        print("bench: no grid files (bench/results/frontier-*.json): run bench/prior.py",
              file=sys.stderr)
        return 2
    from autofit.search import frontier

    rows = points(files)
    shared, fitted = fit(rows)
    probe = probes(args.mirror)
    missing = sorted(set(fitted) - set(probe))
    if missing:
        raise SystemExit(f"bench: no linear probe of {missing} in {args.mirror}: run "
                         "bench/mirror.py on it")
    laws = tuple(frontier.Law(dataset=name, probe=round(probe[name], 4), **law)
                 for name, law in sorted(fitted.items(), key=lambda kv: probe[kv[0]]))
    made = frontier.Frontier(
        **shared, laws=laws, points=tuple(frontier.Point(
            **{k: v for k, v in r.items() if k in frontier.Point.model_fields}) for r in rows),
        command="python bench/frontier.py " + " ".join(f.name for f in files),
        machine=f"{machine()['cpu']}, {', '.join(sorted({r['precision'] for r in rows}))}",
        date=sorted(json.loads(f.read_text()).get("date", "") for f in files)[-1])
    made = made.model_copy(update={"points": tuple(p.model_copy(update={"fitted": round(
        made.accuracy(made.law(dataset=p.dataset), p.macs, p.epochs * p.unique, p.unique), 4)})
        for p in made.points)})
    print(f"error = floor + a (MACs/1e7)^-{made.alpha:g} + b (D'/1e6)^-{made.beta:g}, repeats "
          f"{made.repeats:g}; rms {made.rms:.4f} over {len(rows)} points")
    for law in made.laws:
        print(f"  {law.dataset:22s} probe {law.probe:.3f}  floor {law.floor:.4f}  a {law.a:.4f}"
              f"  b {law.b:.4f}")
    for p in sorted(made.points, key=lambda p: (p.dataset, p.unique, p.group, p.width)):
        print(f"  {p.dataset:22s} {p.unique:6d} group {p.group:2d} width {p.width:3d} epochs "
              f"{p.epochs:6.2f}  measured {p.accuracy:.4f}  fitted {p.fitted:.4f}")
    if not args.check:
        frontier.FILE.write_text(made.model_dump_json(indent=1) + "\n")
        print(f"wrote {frontier.FILE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

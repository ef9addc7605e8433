"""The report's pictures, drawn with matplotlib (Agg: no display needed) and saved as PNG.

Each function takes a run read back from its directory and returns a figure, or None when the
run has nothing to draw for it (a failed run has no confusion matrix).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
from matplotlib.figure import Figure  # noqa: E402

from autofit.events import PHASE_COLOURS  # noqa: E402
from autofit.reporting.run_files import Run  # noqa: E402

STATUS_COLOURS = {"completed": "#2ca02c", "stopped by ASHA": "#1f77b4",
                  "stopped at search deadline": "#ff7f0e", "diverged": "#d62728",
                  "error": "#d62728", "running": "#7f7f7f"}
DPI = 110


def phase_spans(run: Run) -> list[tuple[str, float, float]]:
    """(phase, start, end) in budget seconds, from the run's events; every life's setup
    starts where the previous life stopped. Without events, the recorded phase totals are laid
    end to end."""
    marks = [(str(e["phase"]) if e["kind"] == "phase" else "setup", float(e["t"]))
             for e in run.events if e.get("kind") in {"phase", "start"} and "t" in e]
    end = run.elapsed_s or (marks[-1][1] if marks else 0.0)
    if not marks:
        spans, t = [], 0.0
        for name, seconds in run.phases.items():
            spans.append((name, t, t + seconds))
            t += seconds
        return spans
    marks.sort(key=lambda m: m[1])
    return [(name, start, marks[i + 1][1] if i + 1 < len(marks) else max(end, start))
            for i, (name, start) in enumerate(marks)]


def trial_curves(run: Run) -> dict[int, list[tuple[float, float]]]:
    """Each trial's (training seconds, val accuracy) reports, in order."""
    curves: dict[int, list[tuple[float, float]]] = {}
    for e in run.events:
        if e.get("kind") == "trial_result" and _finite(e.get("val_accuracy")):
            curves.setdefault(int(e["trial"]), []).append(
                (float(e["train_seconds"]), float(e["val_accuracy"])))
    return curves


def trial_spans(run: Run) -> dict[int, tuple[float, float, str]]:
    """Each trial's (start, end, status) in budget seconds."""
    spans: dict[int, list[Any]] = {}
    for e in run.events:
        kind, number = e.get("kind"), e.get("trial")
        if kind == "trial_start":
            spans[int(number)] = [float(e["t"]), float(e["t"]), "running"]
        elif kind in {"trial_result", "trial_end"} and number is not None \
                and int(number) in spans:
            spans[int(number)][1] = float(e["t"])
            if kind == "trial_end":
                spans[int(number)][2] = str(e.get("status", "running"))
    return {n: (s[0], s[1], s[2]) for n, s in spans.items()}


def timeline(run: Run) -> Figure | None:
    phases = phase_spans(run)
    if not phases:
        return None
    trials = trial_spans(run)
    rows = 1 + len(trials)
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.22 * min(rows, 40)), dpi=DPI)
    for name, start, end in phases:
        ax.broken_barh([(start, end - start)], (rows - 0.9, 0.8),
                       color=PHASE_COLOURS.get(name, "#555555"))
        if end - start > 0.06 * (run.budget_s or end or 1):
            ax.text((start + end) / 2, rows - 0.5, f"{name}\n{end - start:.1f}s", ha="center",
                    va="center", fontsize=7, color="white")
    for row, (start, end, status) in enumerate(v for _, v in sorted(trials.items())):
        y = rows - 1.5 - row  # row 0 is the phases
        ax.broken_barh([(start, max(end - start, 0.05))], (y - 0.35, 0.7),
                       color=STATUS_COLOURS.get(status, "#7f7f7f"))
    labels = ["phases", *[f"trial {n}" for n in sorted(trials)]]
    ax.set_yticks([rows - 0.5 - i for i in range(rows)], labels, fontsize=7)
    budget = run.budget_s
    if budget:
        ax.axvline(budget, color="#d62728", linestyle="--", linewidth=1)
        ax.text(budget, rows, " deadline", color="#d62728", fontsize=7, va="bottom")
        ax.set_xlim(0, budget * 1.02)
    ax.set_ylim(-0.2, rows + 0.4)
    ax.set_xlabel("budget seconds")
    ax.set_title("Where the budget went", fontsize=10)
    _status_legend(ax, {s for *_, s in trials.values()})
    fig.tight_layout()
    return fig


def curves(run: Run) -> Figure | None:
    data = trial_curves(run)
    if not data:
        return None
    status = {n: s for n, (_, _, s) in trial_spans(run).items()}
    best = _best_trial(run)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=DPI)
    for number, points in sorted(data.items()):
        xs, ys = zip(*points, strict=True)
        colour = STATUS_COLOURS.get(status.get(number, ""), "#7f7f7f")
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=2.2 if number == best else 1,
                color=colour, alpha=1.0 if number == best else 0.7)
        ax.annotate(str(number), (xs[-1], ys[-1]), fontsize=6, xytext=(2, 2),
                    textcoords="offset points")
    for milestone in run.plan.milestones if run.plan is not None else ():
        ax.axvline(float(milestone), color="#999999", linestyle=":", linewidth=1)
    ax.set_xlabel("training seconds of the trial (ASHA rungs dotted)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Validation accuracy against training time, every trial", fontsize=10)
    _status_legend(ax, set(status.values()))
    fig.tight_layout()
    return fig


def params_scatter(run: Run) -> Figure | None:
    rows = [r for r in run.leaderboard if r.get("params") and _finite(r.get("val_accuracy"))]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=DPI)
    for family in sorted({r.get("family", "") for r in rows}):
        mine = [r for r in rows if r.get("family", "") == family]
        ax.scatter([int(r["params"]) for r in mine], [float(r["val_accuracy"]) for r in mine],
                   label=family, s=22, alpha=0.8)
    best = _best_trial(run)
    for r in rows:
        if best is not None and str(best) == r.get("trial"):
            ax.scatter([int(r["params"])], [float(r["val_accuracy"])], marker="*", s=160,
                       color="gold", edgecolor="black", zorder=3, label="best")
    cap = run.max_params
    if cap:
        ax.axvline(float(cap), color="#d62728", linestyle="--", linewidth=1,
                   label=f"cap {float(cap):,.0f}")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Parameters against accuracy, with the parameter budget", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def confusion(run: Run) -> Figure | None:
    test = None if run.summary is None else run.summary.test
    if test is None or run.summary is None or not run.summary.classes:
        return None
    matrix, classes = test.confusion, run.summary.classes
    n = len(classes)
    side = min(3 + 0.35 * n, 12)
    fig, ax = plt.subplots(figsize=(side + 1, side), dpi=DPI)
    totals = [max(sum(row), 1) for row in matrix]
    shares = [[value / totals[i] for value in row] for i, row in enumerate(matrix)]
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if matrix[i][j]:
                    ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=7,
                            color="white" if shares[i][j] > 0.5 else "black")
    ticks = list(range(n)) if n <= 40 else []
    ax.set_xticks(ticks, [classes[i] for i in ticks], rotation=90, fontsize=7)
    ax.set_yticks(ticks, [classes[i] for i in ticks], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Test set confusion matrix (ONNX model, counts; colour: share of the row)",
                 fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def per_class(run: Run) -> Figure | None:
    test = None if run.summary is None else run.summary.test
    if test is None or not test.per_class_accuracy:
        return None
    accuracy = test.per_class_accuracy
    names = list(accuracy)
    values = [float(accuracy[k]) if accuracy[k] is not None else 0.0 for k in names]
    fig, ax = plt.subplots(figsize=(7, 1 + 0.25 * min(len(names), 60)), dpi=DPI)
    ax.barh(range(len(names)), values, color="#1f77b4")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    overall = test.accuracy
    if _finite(overall):
        ax.axvline(float(overall), color="#d62728", linestyle="--", linewidth=1,
                   label=f"overall {float(overall):.4f}")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlim(0, 1)
    ax.set_xlabel("test accuracy")
    ax.set_title("Test accuracy per class", fontsize=10)
    fig.tight_layout()
    return fig


PLOTS = {"timeline": timeline, "curves": curves, "params": params_scatter,
         "confusion": confusion, "per_class": per_class}


def save_all(run: Run, folder: Path) -> dict[str, Path]:
    """Every plot the run has data for, as folder/<name>.png."""
    folder.mkdir(parents=True, exist_ok=True)
    saved = {}
    for name, draw in PLOTS.items():
        fig = draw(run)
        if fig is None:
            continue
        path = folder / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        saved[name] = path
    return saved


def _best_trial(run: Run) -> int | None:
    return None if run.summary is None else run.summary.best_trial


def _status_legend(ax: Any, statuses: set[str]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=STATUS_COLOURS[s], label=s) for s in STATUS_COLOURS if s in statuses]
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="lower right")


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False

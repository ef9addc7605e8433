"""RUN_DIR/report.html: one self-contained page about a run.

Everything is inline (styles, and the plots as PNG data URIs, also saved under RUN_DIR/plots),
so the page opens from disk, a mail attachment or an air-gapped machine with no network asset.
It is rendered from the run directory's files alone: `autofit report RUN_DIR` draws it again.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any

from autofit import plots, rundir
from autofit.events import PHASE_COLOURS
from autofit.journal import write_atomic

FILE = "report.html"
PLOT_DIR = "plots"
CAPTIONS = {
    "timeline": "Every second of the budget: the phases in order, then each trial from its "
                "start to its end, coloured by how it ended. The dashed line is the deadline.",
    "curves": "Validation accuracy at each report against the trial's own training seconds. "
              "ASHA compares trials at the dotted rungs and stops the weaker ones there.",
    "params": "Each trial's parameter count against its validation accuracy; the dashed line "
              "is the --max-params cap no sampled model may cross.",
    "confusion": "The test set through the exported ONNX model: rows are true classes.",
    "per_class": "Test accuracy of each class; the dashed line is the overall accuracy.",
}
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;
background:#fafafa}
main{max-width:1100px;margin:auto;padding:16px 24px}
h1{font-size:22px;margin:8px 0}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.status{display:inline-block;padding:2px 8px;border-radius:4px;color:#fff;font-size:13px}
.finished{background:#2ca02c}.failed{background:#d62728}.running{background:#1f77b4}
.interrupted{background:#ff7f0e}
table{border-collapse:collapse;font-size:13px;background:#fff}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}
.facts td:first-child{font-weight:600;white-space:nowrap}
.board{display:block;max-height:420px;overflow:auto}
figure{margin:8px 0 16px}figure img{max-width:100%;border:1px solid #ddd;background:#fff}
figcaption{color:#555;font-size:13px}.error{color:#b00;font-weight:600}
.bar{display:flex;height:22px;border:1px solid #ccc;background:#eee}
.bar span{display:block;height:100%}
"""


def render(run_dir: Path) -> Path:
    """Write RUN_DIR/report.html (and RUN_DIR/plots/*.png); return the page's path."""
    run = rundir.read(run_dir)
    saved = plots.save_all(run, run_dir / PLOT_DIR)
    path = run_dir / FILE
    write_atomic(path, page(run, saved))
    return path


def page(run: rundir.Run, images: dict[str, Path]) -> str:
    s = run.summary or {}
    sections = [_summary(run), _budget(run, images)]
    sections.append(_section("Trials", _leaderboard(run.leaderboard),
                             *(_figure(images, name) for name in ("curves", "params"))))
    if s.get("test"):
        sections.append(_section("Test set", *(_figure(images, n)
                                               for n in ("confusion", "per_class")),
                                 _per_class_table(s)))
    title = f"autofit run {run.path.name}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{_e(title)}</title>"
            f"<style>{STYLE}</style></head><body><main>"
            f"<h1>{_e(title)} <span class=\"status {run.status}\">{run.status}</span></h1>"
            + "".join(sections)
            + f"<p><small>Rendered {time.strftime('%Y-%m-%d %H:%M:%S')} from {_e(str(run.path))}"
              " by autofit; re-render with <code>autofit report RUN_DIR</code>.</small></p>"
              "</main></body></html>\n")


def _summary(run: rundir.Run) -> str:
    s, args = run.summary or {}, run.args
    budget = s.get("budget") or args.get("budget") or {}
    facts: list[tuple[str, Any]] = []
    if run.status == "failed":
        facts.append(("error", f"<span class=\"error\">{_e(s.get('error', ''))}</span> "
                               f"(phase {_e(s.get('failed_phase', '?'))})"))
    facts += [
        ("test accuracy", _pct(s.get("test_accuracy"), "(ONNX model through onnxruntime)")),
        ("validation accuracy", _pct(s.get("val_accuracy"), "(best trial, before the refit)")),
        ("model", _model(s)),
        ("budget", f"{budget.get('minutes', '?')} min, {_int(budget.get('max_params'))} "
                   "parameters at most"),
        ("time used", f"{_num(run.elapsed_s)} s of {_num(run.budget_s)} s"
                      + (f", resumed {s['resumes']}×" if s.get("resumes") else "")),
        ("trials", _trials(s, run)),
        ("data", _data(s, args)),
        ("device", f"{_e(s.get('device', '?'))}, data path {_e(s.get('data_pipeline', '?'))}, "
                   f"{_e(s.get('threads', '?'))} CPU threads"),
        ("files", "model.onnx (deploy this), summary.json, leaderboard.csv, run.log, "
                  "events.jsonl, best_so_far.onnx, plots/*.png"),
    ]
    versions = s.get("versions")
    if versions:
        facts.append(("versions", _e(", ".join(f"{k} {v}" for k, v in versions.items()))))
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in facts)
    return _section("Summary", f"<table class=\"facts\">{rows}</table>")


def _budget(run: rundir.Run, images: dict[str, Path]) -> str:
    spans = plots.phase_spans(run)
    total = run.budget_s or sum(end - start for _, start, end in spans) or 1.0
    bar = "".join(f"<span title=\"{_e(name)} {end - start:.1f}s\" style=\"width:"
                  f"{100 * max(end - start, 0) / total:.3f}%;background:"
                  f"{PHASE_COLOURS.get(name, '#555')}\"></span>" for name, start, end in spans)
    rows = "".join(f"<tr><td>{_e(name)}</td><td class=\"n\">{seconds:.1f}</td><td class=\"n\">"
                   f"{100 * seconds / total:.1f}%</td></tr>"
                   for name, seconds in run.phases.items())
    left = total - sum(run.phases.values())
    rows += f"<tr><td>unused</td><td class=\"n\">{left:.1f}</td><td class=\"n\">" \
            f"{100 * left / total:.1f}%</td></tr>"
    plan = (run.summary or {}).get("plan") or (run.journal or {}).get("plan")
    note = ""
    if _skipped({"plan": plan}):
        note = (f"<p>Plan made after setup: {_e(plan.get('split', 'search skipped'))}; refit "
                f"about {plan['refit_s']:.1f} s, {plan['final_reserve_s']:.1f} s kept for export, "
                "the test pass and exit.</p>")
    elif plan:
        note = (f"<p>Plan made after setup: search {plan['search_s']:.1f} s in trials of "
                f"{plan['trial_s']:.1f} s (ASHA rungs at {plan['milestones']} training "
                f"seconds), refit about {plan['refit_s']:.1f} s, {plan['final_reserve_s']:.1f} s "
                "kept for export, the test pass and exit.</p>")
    return _section("Budget", f"<div class=\"bar\">{bar}</div>", note,
                    f"<table><tr><th>phase</th><th>seconds</th><th>of budget</th></tr>{rows}"
                    "</table>", _figure(images, "timeline"))


def _leaderboard(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "<p>No trial finished a report.</p>"
    columns = [c for c in rows[0] if any(r.get(c) for r in rows)]
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(r.get(c, "")) for c in columns) + "</tr>"
                   for r in rows)
    return f"<table class=\"board\"><tr>{head}</tr>{body}</table>"


def _per_class_table(s: dict[str, Any]) -> str:
    test = s.get("test") or {}
    accuracy, matrix = test.get("per_class_accuracy") or {}, test.get("confusion") or []
    rows = "".join(f"<tr><td>{_e(name)}</td><td class=\"n\">{sum(matrix[i]) if matrix else ''}"
                   f"</td><td class=\"n\">{'' if value is None else f'{value:.4f}'}</td></tr>"
                   for i, (name, value) in enumerate(accuracy.items()))
    return f"<table><tr><th>class</th><th>test images</th><th>accuracy</th></tr>{rows}</table>"


def _figure(images: dict[str, Path], name: str) -> str:
    path = images.get(name)
    if path is None or not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure><img alt=\"{_e(name)}\" src=\"data:image/png;base64,{data}\">"
            f"<figcaption>{_e(CAPTIONS.get(name, ''))} ({_e(PLOT_DIR)}/{_e(name)}.png)"
            "</figcaption></figure>")


def _section(title: str, *parts: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{''.join(parts)}</section>"


def _model(s: dict[str, Any]) -> str:
    config = s.get("best_config")
    if not config:
        return "none (no model was exported)"
    arch = " ".join(f"{k}={v}" for k, v in config.get("arch", {}).items())
    recipe = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                       for k, v in config.get("recipe", {}).items())
    source = "the space's prior (search skipped)" if _skipped(s) else \
        f"trial {_e(s.get('best_trial', '?'))}"
    return (f"{source}: {_e(config.get('family', '?'))} {_e(arch)}, "
            f"{_int(config.get('params'))} parameters; {_e(recipe)}; refit "
            f"{_e((s.get('refit') or {}).get('epochs', '?'))} epochs on train+val")


def _skipped(s: dict[str, Any]) -> bool:
    """Whether the run's plan skipped the search (the prior trained alone)."""
    return (s.get("plan") or {}).get("searched") is False


def _trials(s: dict[str, Any], run: rundir.Run) -> str:
    counts = s.get("trial_status")
    if _skipped(s):
        return "none: the search was skipped, see Budget"
    if not counts:
        return str(len(run.leaderboard))
    return f"{s.get('trials', '?')} (" + ", ".join(f"{v} {_e(k)}" for k, v in counts.items()) + ")"


def _data(s: dict[str, Any], args: dict[str, Any]) -> str:
    data = s.get("data") or {}
    if not data:
        return _e(args.get("data") or "embedded digits")
    res = data.get("resolution") or {}
    parts = [f"{_e(data.get('source', '?'))}", f"sizes {_e(data.get('sizes', ''))}",
             f"{len(s.get('classes') or [])} classes"]
    if res:
        parts.append(f"images {res.get('width')}×{res.get('height')}×{res.get('channels')} "
                     f"({_e(res.get('how', ''))})")
    if data.get("skipped"):
        parts.append(f"{len(data['skipped'])} unreadable images skipped (listed in summary.json)")
    return ", ".join(parts)


def _cell(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return f"<td>{_e(value)}</td>"
    shown = value if number.is_integer() or len(value) < 8 else f"{number:.4f}"
    return f"<td class=\"n\">{_e(shown)}</td>"


def _pct(value: Any, note: str) -> str:
    return "—" if value is None else f"<b>{float(value):.4f}</b> {_e(note)}"


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"


def _int(value: Any) -> str:
    return "?" if value is None else f"{int(value):,}"


def _e(value: Any) -> str:
    return html.escape(str(value))

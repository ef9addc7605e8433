"""RUN_DIR/report.html: one self-contained page about a run.

Everything is inline (styles, and the plots as PNG data URIs, also saved under RUN_DIR/plots),
so the page opens from disk, a mail attachment or an air-gapped machine with no network asset.
It is rendered from the run directory's files alone: `autofit report RUN_DIR` draws it again.
"""

from __future__ import annotations

import base64
import html
import logging
import time
from pathlib import Path
from typing import Any

from autofit.errors import one_line
from autofit.events import PHASE_COLOURS
from autofit.files import write_atomic
from autofit.latency_budget import LatencyInfo
from autofit.records import QuantizedInfo, TestResult
from autofit.reporting import plots, run_files

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
    run = run_files.read(run_dir)
    saved = plots.save_all(run, run_dir / PLOT_DIR)
    path = run_dir / FILE
    write_atomic(path, page(run, saved))
    return path


def page(run: run_files.Run, images: dict[str, Path]) -> str:
    s = run.summary
    sections = [_summary(run), _budget(run, images)]
    sections.append(_section("Trials", _leaderboard(run.leaderboard),
                             *(_figure(images, name) for name in ("curves", "params"))))
    if s is not None and s.test is not None:
        sections.append(_section("Test set", *(_figure(images, n)
                                               for n in ("confusion", "per_class")),
                                 _per_class_table(s.test)))
    if s is not None and s.int8 is not None:
        sections.append(_section("INT8 model", _int8(s.int8)))
    title = f"autofit run {run.path.name}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{_e(title)}</title>"
            f"<style>{STYLE}</style></head><body><main>"
            f"<h1>{_e(title)} <span class=\"status {run.status}\">{run.status}</span></h1>"
            + "".join(sections)
            + f"<p><small>Rendered {time.strftime('%Y-%m-%d %H:%M:%S')} from {_e(str(run.path))}"
              " by autofit; re-render with <code>autofit report RUN_DIR</code>.</small></p>"
              "</main></body></html>\n")


def _summary(run: run_files.Run) -> str:
    s = run.summary
    facts: list[tuple[str, Any]] = []
    if s is not None and s.status == "failed":
        facts.append(("error", f"<span class=\"error\">{_e(s.error or '')}</span> "
                               f"(phase {_e(s.failed_phase or '?')})"))
    facts += [
        ("test accuracy", _pct(s and s.test_accuracy, "(ONNX model through onnxruntime)")),
        ("validation accuracy", _pct(s and s.val_accuracy, "(best trial, before the refit)")),
        ("model", _model(run)),
        ("budget", f"{'?' if run.minutes is None else f'{run.minutes:g}'} min, "
                   f"{_int(run.max_params)} parameters at most"),
        ("time used", f"{_num(run.elapsed_s)} s of {_num(run.budget_s)} s"
                      + (f", resumed {s.resumes}×" if s is not None and s.resumes else "")),
        ("trials", _trials(run)),
        ("data", _data(run)),
        ("device", "?" if s is None else
         f"{_e(s.device or '?')}, data path {_e(s.data_path or '?')}, "
         f"{_e(s.threads or '?')} CPU threads"),
        ("files", "model.onnx (deploy this), summary.json, leaderboard.csv, run.log, "
                  "events.jsonl, best_so_far.onnx, plots/*.png"),
    ]
    if s is not None and s.extension is not None:
        e = s.extension
        facts.insert(2, ("extends", f"{_e(e.parent)}: kept the {e.kept} model (validation "
                                    f"{_pct(e.val_accuracy, 'extended')}, "
                                    f"{_pct(e.parent_val_accuracy, 'parent')}; test "
                                    f"{_pct(e.test_accuracy, 'extended')}, "
                                    f"{_pct(e.parent_test_accuracy, 'parent')})"))
    if s is not None and s.int8 is not None:
        q = s.int8
        facts.insert(1, ("INT8 model", f"{_pct(q.test_accuracy, '(model.int8.onnx)')}, top-1 "
                                       f"agreement {_num4(q.agreement)}, see INT8 model"
                         if q.status == "kept" else f"{_e(q.status)}: {_e(q.reason or '')}"))
    if s is not None and s.latency is not None:
        facts.insert([k for k, _ in facts].index("budget") + 1, ("latency", _latency(s.latency)))
    if s is not None and s.versions:
        facts.append(("versions", _e(", ".join(f"{k} {v}" for k, v in s.versions.items()))))
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in facts)
    return _section("Summary", f"<table class=\"facts\">{rows}</table>")


def _budget(run: run_files.Run, images: dict[str, Path]) -> str:
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
    plan, note = run.plan, ""
    if plan is not None and not plan.searched:
        note = (f"<p>Plan made after setup: {_e(plan.split or 'search skipped')}; refit "
                f"about {plan.refit_s:.1f} s, {plan.final_reserve_s:.1f} s kept for export, "
                "the test pass and exit.</p>")
    elif plan is not None:
        note = (f"<p>Plan made after setup: search {plan.search_s:.1f} s in trials of "
                f"{plan.trial_s:.1f} s (ASHA rungs at {list(plan.milestones)} training "
                f"seconds), refit about {plan.refit_s:.1f} s, {plan.final_reserve_s:.1f} s "
                "kept for export, the test pass and exit.</p>")
    if plan is not None and plan.sized:
        note += f"<p>Model size: {_e(plan.sized)}.</p>"
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


def _int8(q: QuantizedInfo) -> str:
    """model.int8.onnx beside model.onnx (--quantize int8), or why it was not kept."""
    if q.status != "kept":
        measured = "" if q.agreement is None else \
            f" Measured top-1 agreement with model.onnx: {_num4(q.agreement)}."
        return (f"<p><b>{_e(q.status)}</b>: {_e(q.reason or '')}. No model.int8.onnx; "
                f"model.onnx stands.{measured}</p>")
    runs = f"median of {q.latency_runs} runs after {q.latency_warmup} warm-up, " \
           f"{q.latency_threads} threads"
    rows = [("test accuracy", _num4(q.test_accuracy), _num4(q.float_test_accuracy),
             f"drop {_num4(q.accuracy_drop)} on {_int(q.test_images)} images"),
            ("top-1 agreement", _num4(q.agreement), "", f"bar {q.agreement_bar:g}"),
            ("file bytes", _int(q.int8_bytes), _int(q.float_bytes),
             _ratio(q.float_bytes, q.int8_bytes, "smaller", "larger")),
            ("batch-1 latency ms", _num4(q.int8_latency_ms), _num4(q.float_latency_ms),
             "not timed" if q.int8_latency_ms is None else
             f"{_ratio(q.float_latency_ms, q.int8_latency_ms, 'faster', 'slower')}, {runs}")]
    body = "".join(f"<tr><td>{_e(name)}</td><td class=\"n\">{a}</td><td class=\"n\">{b}</td>"
                   f"<td>{_e(note)}</td></tr>" for name, a, b, note in rows)
    return (f"<p>model.int8.onnx: {_e(q.method or '')}, calibrated on "
            f"{_int(q.calibration_images)} training images; quantized in "
            f"{_num(q.quantize_s)} s, {_num(q.seconds)} s with its checks and timings "
            f"({_num(q.planned_s)} s planned).</p><table><tr><th></th><th>INT8</th>"
            f"<th>float</th><th></th></tr>{body}</table>")


def _ratio(before: float | None, after: float | None, less: str, more: str) -> str:
    """INT8 against float as `N× smaller` (or `N× larger`: a small model's file can grow)."""
    if not before or not after:
        return "?"
    return f"{before / after:.2f}× {less}" if before >= after else f"{after / before:.2f}× {more}"


def _num4(value: float | None) -> str:
    return "?" if value is None else f"{value:.4f}"


def _per_class_table(test: TestResult) -> str:
    matrix = test.confusion
    rows = "".join(f"<tr><td>{_e(name)}</td><td class=\"n\">{sum(matrix[i]) if matrix else ''}"
                   f"</td><td class=\"n\">{'' if value is None else f'{value:.4f}'}</td></tr>"
                   for i, (name, value) in enumerate(test.per_class_accuracy.items()))
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


def _model(run: run_files.Run) -> str:
    s = run.summary
    config = None if s is None else s.best_config
    if s is None or config is None:
        return "none (no model was exported)"
    arch = " ".join(f"{k}={v}" for k, v in config.arch.items())
    recipe = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                       for k, v in config.recipe.model_dump().items())
    source = "the space's prior (search skipped)" if run.search_skipped else \
        f"trial {_e(s.best_trial if s.best_trial is not None else '?')}"
    epochs = "?" if s.refit is None else s.refit.epochs
    return (f"{source}: {_e(config.family)} {_e(arch)}, {_int(config.params)} parameters; "
            f"{_e(recipe)}; refit {_e(epochs)} epochs on train+val")


def _latency(t: LatencyInfo) -> str:
    """--max-latency-ms: the delivered model's measured and predicted batch-1 latency."""
    verdict = "within the budget" if t.within_budget else \
        "<span class=\"error\">over the budget</span>"
    calibration = "" if t.calibration is None else (
        f"; latency model fitted at start-up on {len(t.calibration.references)} reference "
        f"networks in {t.calibration.seconds:.1f} s: {_e(t.calibration.describe())}")
    predicted = "?" if t.predicted_ms is None else f"{t.predicted_ms:.4g}"
    return (f"<b>{t.measured_ms:.4g} ms</b> per image measured (median of {t.runs} batch-1 runs "
            f"in onnxruntime on {t.threads} threads, p90 {t.p90_ms:.4g} ms, {t.passes} forward "
            f"pass{'' if t.passes == 1 else 'es'}), {predicted} ms predicted, cap {t.max_ms:g} "
            f"ms: {verdict}; {_e(t.action)}{calibration}")


def _trials(run: run_files.Run) -> str:
    s = run.summary
    if run.search_skipped:
        return "none: the search was skipped, see Budget"
    if s is None or not s.trial_status:
        return str(len(run.leaderboard))
    return f"{s.trials if s.trials is not None else '?'} (" + ", ".join(
        f"{v} {_e(k)}" for k, v in s.trial_status.items()) + ")"


def _data(run: run_files.Run) -> str:
    s = run.summary
    data = None if s is None else s.data
    if s is None or data is None:
        return _e(run.data)
    res = data.resolution
    parts = [_e(data.source), f"sizes {_e(data.sizes)}", f"{len(s.classes)} classes"]
    if res:
        parts.append(f"images {res.get('width')}×{res.get('height')}×{res.get('channels')} "
                     f"({_e(res.get('how', ''))})")
    if data.skipped:
        parts.append(f"{len(data.skipped)} unreadable images skipped (listed in summary.json)")
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


def render_or_warn(run_dir: Path, log: logging.Logger) -> None:
    """report.html and its plots at the end of a run; the run's results stand without them,
    so a failure here is a warning with the command that renders them again."""
    try:
        path = render(run_dir)
    except Exception as err:  # noqa: BLE001 - any plotting failure, the model is already safe
        log.warning("report.html not written (%s); render it with: autofit report %s",
                    one_line(err), run_dir)
    else:
        log.info("report: %s", path)

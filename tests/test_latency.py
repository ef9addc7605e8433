"""`--max-latency-ms`: the latency model is calibrated on this machine at start-up, every model
that trains is fitted to the cap before it trains, a cap no model meets fails at once, and the
exported model is timed against the cap after the export (real onnxruntime throughout)."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from chromium import browser, open_page
from typer.testing import CliRunner

from autofit import models
from autofit.budget import Budget, Clock, Plan
from autofit.cli import app
from autofit.config import RunArgs
from autofit.data.dataset import load
from autofit.deliver.export import export_onnx
from autofit.deliver.latency import batch1_latency, calibrate, enforce, view_passes
from autofit.errors import BudgetError, UsageError
from autofit.latency_budget import LatencyCap, LatencyModel
from autofit.models import Classifier, DataShape
from autofit.presets import preset
from autofit.records import Summary
from autofit.search.latency_fit import check_latency, fastest, latency_work, passes
from autofit.search.space import SearchSpace
from autofit.train.loop import make_model

THREADS = os.cpu_count() or 1  # what a run times its model on
# A measured latency may exceed the cap by this much before a test calls it a miss. Three
# medians of one 16x16 file timed in a row read 0.39, 0.56 and 0.57 ms on the shared 2-core
# machine while other tests ran: a busy machine only adds time, so each re-timing here takes
# the lowest of three, and this allows for the run having timed its model at a quieter moment.
NOISE = 1.25
# Predicted against measured, untrained models of every family on 16x16 images: within this
# factor either way. bench/results/latency.json has the real figures: on 2 busy cores, models
# under 1 ms within 0.66-1.8x of their time (a space of all four families prices pyramidnet
# lowest, 0.7x here), larger ones, whose convolutions onnxruntime splits over both threads, up
# to 4.8x slower than predicted; these models stay under 1 ms. 2.0 failed 1 run in 10 on a
# quiet AMD EPYC VM (fastnet width 12 depth 3 at 2.04x; its error is about 1.7x there); the
# cases' own times span more than the factor squared, so no one constant passes.
PREDICTION_FACTOR = 2.5
BUDGET_S = 60.0
DIGITS = DataShape(1, 8, 8, 10)


def _timed(path: Path, shape: tuple[int, int, int]) -> float:
    return min(batch1_latency(path, shape, THREADS).median_ms for _ in range(3))


def _exported(model: Classifier, path: Path, shape: DataShape) -> Path:
    images = np.random.default_rng(0).integers(
        0, 256, (8, shape.height, shape.width, shape.channels), dtype=np.uint8)
    export_onnx(model.eval(), path, images, {}, THREADS)
    return path


def _config_ms(config, path: Path) -> float:  # type: ignore[no-untyped-def]
    """A config's model, untrained, exported as a run exports it and timed."""
    model = make_model(config, DIGITS, [0.5], [0.25])
    return _timed(_exported(model, path, DIGITS), tuple(DIGITS[:3]))


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One real run on the embedded digits with a cap chosen here to bind: the space's prior
    filled to the parameter cap (what the run would train with no latency cap, as the budget
    turns the compute cap off) is timed, and so is the fastest model the space has; the cap
    is their geometric mean, so the prior misses it several times over."""
    tmp = tmp_path_factory.mktemp("latency")
    space = SearchSpace.load(preset("search_spaces", "default"))
    free = space.first_config(DIGITS, 2_000_000)
    assert free is not None
    free_ms = _config_ms(free, tmp / "free.onnx")
    model = calibrate(DIGITS, list(space.families), THREADS, latency_work)
    family, arch, views, _ = fastest(space, DIGITS, 2_000_000, LatencyCap(model=model,
                                                                          max_ms=1.0))
    net = Classifier(models.build_for(family, arch, DIGITS), [0.5], [0.25], tta=views % 2 == 0,
                     translate=views % 3 == 0)
    fast_ms = _timed(_exported(net, tmp / "fast.onnx", DIGITS), tuple(DIGITS[:3]))
    cap = round(math.sqrt(fast_ms * free_ms), 4)
    budget = tmp / "budget.yaml"
    budget.write_text(f"minutes: {BUDGET_S / 60}\nmax_params: 2M\nmin_epochs: 0\n"
                      f"max_latency_ms: {cap}\n")
    out = tmp / "run"
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "autofit", "run", "--budget", str(budget),
                           "--out", str(out), "--seed", "0"], capture_output=True, text=True,
                          timeout=BUDGET_S + 90)
    wall = time.time() - start
    return {"free": free, "free_ms": free_ms, "fast_ms": fast_ms, "cap": cap, "out": out,
            "proc": proc, "wall": wall}


def test_the_exported_model_meets_a_binding_cap_inside_the_deadline(capped):
    proc, out, cap = capped["proc"], capped["out"], capped["cap"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert capped["free_ms"] >= 2 * cap, capped  # the cap binds: the free prior misses it
    assert capped["wall"] <= BUDGET_S + 5.0, capped["wall"]
    summary = Summary.read(out / "summary.json")
    assert summary is not None and summary.latency is not None
    assert summary.elapsed_s <= BUDGET_S + 5.0
    latency = summary.latency
    assert latency.max_ms == cap and latency.threads == THREADS and latency.runs >= 10
    assert latency.predicted_ms is not None and latency.measured_ms > 0
    assert latency.calibration is not None and len(latency.calibration.references) >= 5
    # the test's own timing of the delivered file, not the run's word for it
    measured = _timed(out / "model.onnx", tuple(DIGITS[:3]))
    assert measured <= cap * NOISE, (measured, cap, latency)
    assert latency.within_budget or "over the" in latency.action  # a miss is said plainly


def test_every_model_the_run_trained_was_predicted_within_the_cap(capped):
    out, cap, free = capped["out"], capped["cap"], capped["free"]
    summary = Summary.read(out / "summary.json")
    assert summary is not None and summary.plan is not None and summary.best_config is not None
    plan = summary.plan
    assert plan.latency is not None and plan.max_latency_ms == cap and plan.max_image_s is None
    chosen = summary.best_config
    assert chosen.params < free.params and chosen.macs < free.macs
    trained = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    starts = [e for e in trained if e.get("kind") == "trial_start"]
    configs = [(e["family"], e["arch"], e["recipe"]) for e in starts] or \
        [(chosen.family, chosen.arch, chosen.recipe.model_dump())]  # a skipped search
    for family, arch, recipe in configs:
        predicted = plan.latency.ms(latency_work(family, arch, DIGITS), passes(recipe))
        assert predicted <= cap, (family, arch, recipe, predicted, cap)


def test_inspect_and_the_report_show_predicted_and_measured_latency(capped):
    out = capped["out"]
    summary = Summary.read(out / "summary.json")
    assert summary is not None and summary.latency is not None
    result = CliRunner().invoke(app, ["inspect", str(out)])
    assert result.exit_code == 0, result.stdout
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert f"{summary.latency.measured_ms:.4g} ms median" in lines["latency_measured"]
    assert f"{summary.latency.predicted_ms:.4g} ms" in lines["latency_predicted"]
    assert f"{capped['cap']:g}" in lines["latency_budget_ms"]
    page = (out / "report.html").read_text()
    assert f"<b>{summary.latency.measured_ms:.4g} ms</b> per image measured" in page
    assert f"cap {capped['cap']:g} ms" in page
    assert "latency: model.onnx takes" in (out / "run.log").read_text()
    if browser() is None:
        pytest.skip("chromium is not installed (Debian package chromium)")
    load = open_page(out / "report.html", "JSON.stringify([...document.querySelectorAll("
                     "'.facts td:first-child')].map(td => td.textContent + '|' + "
                     "td.nextElementSibling.textContent))")
    assert load.errors == [], load.errors
    rows = dict(row.split("|", 1) for row in json.loads(load.facts))
    assert f"{summary.latency.measured_ms:.4g} ms per image measured" in rows["latency"]
    assert list(rows).index("latency") == list(rows).index("budget") + 1


def test_a_cap_no_model_meets_fails_at_once_naming_the_fastest_model(tmp_path: Path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--minutes", "1", "--max-latency-ms", "0.0001",
                                      "--out", str(out)])
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert re.fullmatch(
        r"autofit: error: --max-latency-ms 0\.0001 is below every model in \S+default\.yaml: "
        r"the fastest \((fastnet|resnet) [a-z]+=\d+.*\) takes about [0-9.e-]+ ms per image on "
        r"this machine \(onnxruntime, \d+ threads?\)", lines[0]), lines[0]
    summary = Summary.read(out / "summary.json")
    assert summary is not None and summary.status == "failed"
    assert summary.failed_phase == "setup" and summary.error in lines[0]
    made = {p.name for p in out.iterdir()}
    assert made <= {"journal.json", "summary.json", "run.log", "events.jsonl"}, made
    log = (out / "run.log").read_text()
    assert "trial" not in log and "plan:" not in log and "refit" not in log


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "inf", "1e400", ""])
def test_bad_option_values_are_one_line_naming_the_option(tmp_path: Path, value: str):
    result = CliRunner().invoke(app, ["run", "--minutes", "1", "--max-latency-ms", value,
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autofit: error: --max-latency-ms must be")
    assert not (tmp_path / "run").exists()


def test_a_budget_preset_carries_the_cap_and_a_bad_one_is_refused(tmp_path: Path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("minutes: 1\nmax_latency_ms: 2.5\n")
    bad.write_text("minutes: 1\nmax_latency_ms: 0\n")
    budget = Budget.from_yaml(good)
    assert budget.max_latency_ms == 2.5
    assert Budget.from_yaml(good, max_latency_ms="0.5").max_latency_ms == 0.5
    with pytest.raises(UsageError, match="--max-latency-ms"):
        Budget.from_yaml(bad)
    args = RunArgs(data=None, budget=budget, seed=0, space="default")
    assert RunArgs.model_validate_json(args.model_dump_json()).budget.max_latency_ms == 2.5
    assert Budget().max_latency_ms is None
    result = CliRunner().invoke(app, ["run", "--resume", str(tmp_path), "--max-latency-ms", "1"])
    assert result.exit_code == 2 and "drop --max-latency-ms" in result.stderr
    from pydantic import ValidationError

    from autofit.service.schemas import RunRequest

    assert RunRequest(dataset="d", max_latency_ms=2.5).max_latency_ms == 2.5
    for value in (0, -1, float("nan"), "abc"):
        with pytest.raises(ValidationError, match="max_latency_ms"):
            RunRequest(dataset="d", max_latency_ms=value)


def test_the_predictor_times_every_family_within_a_stated_factor(tmp_path: Path):
    shape = DataShape(3, 16, 16, 4)
    model = calibrate(shape, list(models.FAMILIES)[:4], THREADS, latency_work)
    assert model.threads == THREADS and model.seconds > 0
    assert {r.family for r in model.references} == {"fastnet", "resnet", "wrn", "pyramidnet"}
    assert any(r.passes == 6 for r in model.references)
    cases = [("fastnet", {"width": 12, "depth": 3}, 1), ("fastnet", {"width": 24, "depth": 2}, 6),
             ("resnet", {"depth": 14, "width": 12}, 1), ("resnet", {"depth": 26, "width": 8}, 1),
             ("wrn", {"depth": 16, "widen": 1}, 1), ("wrn", {"depth": 10, "widen": 2}, 1),
             ("pyramidnet", {"depth": 26, "alpha": 32, "shakedrop": 1}, 1)]
    reference = model.references[0]  # timed again beside each case (below)
    again = _exported(_net(reference.family, reference.arch, reference.passes, shape),
                      tmp_path / "r.onnx", shape)
    ratios, times = {}, []
    for family, arch, views in cases:
        path = _exported(_net(family, arch, views, shape), tmp_path / "m.onnx", shape)
        predicted = model.ms(latency_work(family, arch, shape), views)
        # onnxruntime on 2 threads here runs at one of two speeds about 1.8x apart, flipping
        # within seconds: CI once calibrated at one and timed every case at the other (ratios
        # 1.4-2.1x). A reference timed in the same seconds says how far the machine moved
        # since the calibration; the predictor is held to its factor at that moment's speed.
        # A case outside it is timed once more (in a full CI run one case read over 2.5x while
        # the same test alone passed three times in a row): a wrong prediction misses twice.
        for _ in range(2):
            measured, now = _paired(path, again, tuple(shape[:3]))
            ratio = round(predicted / measured / (reference.measured_ms / now), 3)
            if 1 / PREDICTION_FACTOR <= ratio <= PREDICTION_FACTOR:
                break
        times.append(measured)
        ratios[f"{family} {arch} x{views}"] = ratio
    assert all(1 / PREDICTION_FACTOR <= r <= PREDICTION_FACTOR for r in ratios.values()), ratios
    assert max(times) / min(times) > PREDICTION_FACTOR**2, times  # one constant would miss


def _paired(path: Path, reference: Path, shape: tuple[int, int, int]) -> tuple[float, float]:
    """Each file's lowest of three batch-1 medians, timed in turns: the same seconds for both."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(3):
        for got, timed in zip(times, (path, reference), strict=True):
            got.append(batch1_latency(timed, shape, THREADS).median_ms)
    return min(times[0]), min(times[1])


def _net(family: str, arch: dict[str, int], passes: int, shape: DataShape) -> Classifier:
    """An untrained network as a run exports it, with its mirror and translate views where
    `passes` is 6."""
    return Classifier(models.build_for(family, arch, shape), [0.5] * shape.channels,
                      [0.25] * shape.channels, tta=passes == 6, translate=passes == 6)


def test_a_miss_with_views_is_re_exported_with_fewer_views(tmp_path: Path):
    shape = DataShape(3, 16, 16, 4)
    images = np.random.default_rng(1).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    net = Classifier(models.build_for("fastnet", {"width": 24, "depth": 2}, shape), [0.5] * 3,
                     [0.25] * 3, tta=True, translate=True)
    path = _exported(net, tmp_path / "model.onnx", shape)
    nodes = len(onnx.load(str(path)).graph.node)
    with_views = _timed(path, (3, 16, 16))
    net.tta = net.translate = False
    plain = _timed(_exported(net, tmp_path / "plain.onnx", shape), (3, 16, 16))
    net.tta = net.translate = True
    cap = round(math.sqrt(plain * with_views), 4)
    record, export = enforce(path, net, images, {"classes": ["a", "b", "c", "d"]}, THREADS,
                             cap, None, None, view_passes(net), logging.getLogger("test"))
    assert net.tta and net.translate  # the weights' own views are left as they were
    assert export is not None and export.path == str(path)
    assert record.passes < 6 and record.first_passes == 6 and record.within_budget, record
    assert record.first_measured_ms is not None and record.first_measured_ms > cap
    assert "the same weights exported with" in record.action, record.action
    assert record.action.endswith("within the cap"), record.action
    assert len(onnx.load(str(path)).graph.node) < nodes
    assert _timed(path, (3, 16, 16)) <= cap * NOISE
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_a_miss_without_views_is_recorded_as_it_is(tmp_path: Path):
    shape = DataShape(3, 16, 16, 4)
    images = np.random.default_rng(1).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    net = Classifier(models.build_for("resnet", {"depth": 8, "width": 16}, shape), [0.5] * 3,
                     [0.25] * 3)
    path = _exported(net, tmp_path / "model.onnx", shape)
    before = path.read_bytes()
    cap = round(_timed(path, (3, 16, 16)) / 10, 5)
    record, export = enforce(path, net, images, {}, THREADS, cap, None, None, 1,
                             logging.getLogger("test"))
    assert export is None and path.read_bytes() == before
    assert not record.within_budget and record.measured_ms > cap
    assert "no test-time views to drop: kept as it is" in record.action


def _hand_made(ms_per_mac: float) -> LatencyModel:
    """A latency model with chosen prices: what the space's fitting does with one, exactly."""
    return LatencyModel(overhead_ms=0.001, pass_ms=0.002, ms_per_mac=ms_per_mac, ms_per_act=0.0,
                        ms_per_layer=0.0, threads=1, seconds=0.0)


def test_every_draw_the_prior_and_the_fallback_meet_the_latency_cap():
    space = SearchSpace.load(preset("search_spaces", "default"))
    model = _hand_made(1e-8)
    floors = [latency_work(f, a, DIGITS) for f, a in space._floors().items()]
    least3, least6 = (min(model.ms(work, views) for work in floors) for views in (3, 6))
    cap = LatencyCap(model=model, max_ms=3 * least6)  # the prior's 6 passes fit, and grow
    plan = Plan.make(Budget(minutes=1, max_latency_ms=cap.max_ms, min_epochs=0),
                     Clock(60.0), 100, latency=model)
    bound = plan.cap
    assert bound is not None and bound.latency == cap and math.isinf(bound.max_image_s)
    rng = np.random.default_rng(0)
    for _ in range(40):
        config = space.sample(rng, DIGITS, 2_000_000, cap=bound)
        predicted = model.ms(latency_work(config.family, config.arch, DIGITS),
                             config.recipe.test_passes)
        assert predicted <= cap.max_ms, (config.describe(), predicted)
    prior = space.first_config(DIGITS, 2_000_000, bound)
    assert prior is not None and prior.recipe.test_passes == 6
    assert model.ms(latency_work(prior.family, prior.arch, DIGITS), 6) <= cap.max_ms
    free = space.first_config(DIGITS, 2_000_000)
    assert free is not None and prior.arch["width"] < free.arch["width"]
    tight = plan.model_copy(update={"max_latency_ms": (least3 + least6) / 2}).cap  # no floor's
    # 6 passes meet it, some floor's 3 do
    assert space.first_config(DIGITS, 2_000_000, tight) is None  # the search draws instead
    drawn = {name: knob.sample(rng) for name, knob in space.training.items()}
    cheapest = space.cheapest({**drawn, "tta": True, "hflip": True}, DIGITS, 2_000_000, tight)
    assert cheapest is not None and cheapest.recipe.test_passes == 3  # its mirror views dropped
    assert check_latency(space, DIGITS, 2_000_000, tight.latency)[2] == 3


def test_the_plan_keeps_time_for_the_check_and_no_cap_changes_nothing():
    budget = Budget(minutes=1, min_epochs=0)
    capped = Budget(minutes=1, min_epochs=0, max_latency_ms=5.0)
    plain, timed = Plan.make(budget, Clock(60.0), 100), Plan.make(capped, Clock(60.0), 100)
    assert plain.cap is None and plain.latency is None
    assert timed.final_reserve_s - plain.final_reserve_s == pytest.approx(3.0 + 3 * 0.6, abs=0.01)
    with pytest.raises(BudgetError, match="is below every model"):
        space = SearchSpace.load(preset("search_spaces", "default"))
        check_latency(space, DIGITS, 2_000_000, LatencyCap(model=_hand_made(1e-6), max_ms=1e-3))


def test_calibration_fits_non_negative_prices_to_the_references_of_the_space():
    threads = torch.get_num_threads()
    model = calibrate(load(None, 0, THREADS).shape, ["fastnet", "resnet"], THREADS, latency_work)
    assert torch.get_num_threads() == threads  # the exports' single thread is given back
    assert len([r for r in model.references if r.passes == 1]) == 6
    assert [r.family for r in model.references if r.passes == 6] == ["fastnet"]
    assert all(r.measured_ms > 0 and r.predicted_ms >= 0 for r in model.references)
    assert min(model.overhead_ms, model.pass_ms, model.ms_per_mac, model.ms_per_act,
               model.ms_per_layer) >= 0 and model.seconds > 0

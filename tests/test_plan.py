"""`autofit plan`: what a run with the same options would do on this machine, decided as the run
decides it (real data load, mirror decision, probe and frontier), printed without training and
without leaving a run directory; bad options get the run's one-line errors."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import COLOURS

from autofit import runner
from autofit.budget import Budget, Cost
from autofit.data import pipeline
from autofit.presets import preset
from autofit.preview import Preview
from autofit.preview import preview as plan_of
from autofit.search import phase
from autofit.train import probe


def _plan(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autofit", "plan", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_the_plan_of_a_search_names_its_decisions_split_and_first_model(tmp_path: Path):
    done = _plan(["--minutes", "1", "--max-params", "200k", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    preview = Preview.model_validate_json(done.stdout)
    plan = preview.plan
    assert plan.budget_s == 60 and 0 < plan.setup_s < 60 and plan.searched
    assert plan.search_s > 0 and plan.trial_s > 0 and plan.refit_s > 0
    assert plan.setup_s + plan.search_s + plan.refit_s + plan.final_reserve_s <= 60.5
    assert [d.name for d in preview.decisions] == ["mirror", "resolution", "lr", "price", "batch"]
    assert preview.decisions[1].pinned == {}  # 8x8 digits: nothing to halve
    assert preview.decisions[2].evidence.startswith("learning rate not tested: 3% of the "
                                                    "budget is 1.8s")  # a minute: too short
    batch = preview.decisions[4]
    assert preview.model is not None and preview.model.params <= 200_000
    assert preview.model.recipe.batch_size == batch.pinned.get("batch_size", 256)
    assert preview.model_images == pytest.approx(batch.measured["images"], rel=1e-3)
    assert preview.frontier is not None and 0.0 < preview.frontier.accuracy < 1.0
    assert preview.images == 1_438 and preview.shape.num_classes == 10
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran: no runs/ folder

    text = _plan(["--minutes", "1", "--max-params", "200k"], tmp_path)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    heads = [line.split(":")[0] for line in lines]
    assert heads == ["data", "setup", "decision", "decision", "decision", "decision",
                     "decision", "search", "model size", "model", "refit", "frontier"], \
        text.stdout
    batch = lines[6].split("decision: batch ")[1].split()[0].rstrip(",")  # this run's own
    assert "the search's first trial" in lines[9] and f"bs={batch} " in lines[9], text.stdout
    assert lines[3].startswith("decision: images 8x8 train as loaded"), lines[3]
    assert lines[5].startswith("decision: the training loader (dali-cpu) takes "), lines[5]
    assert "; priced by timing the planned model alone: fastnet" in lines[5]


def test_the_plan_of_a_skipped_search_names_the_prior_the_refit_trains(flat_folder: Path,
                                                                        tmp_path: Path):
    preset = tmp_path / "never-search.yaml"
    preset.write_text(yaml.safe_dump({"minutes": 1, "max_params": "100k",
                                      "min_rung_epochs": 1000}))
    done = _plan(["--data", str(flat_folder), "--budget", str(preset)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "search: none; search skipped" in done.stdout
    model = next(line for line in done.stdout.splitlines() if line.startswith("model:"))
    assert model.startswith("model: the refit trains fastnet"), done.stdout
    images = next(line for line in done.stdout.splitlines() if line.startswith("data:"))
    assert f"{len(COLOURS)} classes" in images


@pytest.mark.parametrize(("args", "named"), [
    (["--data", "/nonexistent/photos"], "/nonexistent/photos"),
    (["--minutes", "0"], "--minutes"),
    (["--max-params", "lots"], "--max-params"),
    (["--weights", "/nonexistent/w.pth"], "--weights"),
])
def test_bad_options_get_the_runs_one_line_error(args: list[str], named: str, tmp_path: Path):
    done = _plan(args, tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autofit: error:") and named in lines[0]
    assert list(tmp_path.iterdir()) == []



def test_a_probe_that_under_prices_the_planned_model_is_caught_and_the_plan_made_again(
        monkeypatch: pytest.MonkeyPatch):
    """The references' prices are a model and missed the 10-minute CIFAR-10 refit's model by
    1.6x (train/probe.py). Faked here 4x too cheap (fault injection), the planned model is
    timed alone, the plan is made again at the scaled price, and a second timing finds it
    priced close to what it measures; unchecked, the cheap price plans a larger model."""
    real = probe.cost

    def cheap(*args, **kwargs) -> Cost:
        cost = real(*args, **kwargs)
        return cost.model_copy(update={"s_per_mac": cost.s_per_mac / 4,
                                       "s_per_act": cost.s_per_act / 4})

    monkeypatch.setattr(probe, "cost", cheap)
    budget = Budget(minutes=1, max_params="2M", min_rung_epochs=1000)  # the prior alone
    checked = plan_of(budget=budget)
    price = next(d for d in checked.decisions if d.name == "price")
    assert "re-planned" in price.evidence and "; then " in price.evidence, price.evidence
    assert 2.0 < checked.plan.cost.scale < 20.0, price.evidence  # 4x, and the probe's own miss
    assert 1 / 3 < price.measured["ratio"] < 3, price.evidence  # one scale: not exact
    assert checked.model is not None

    monkeypatch.setattr(phase, "CHECKS", 0)
    unchecked = plan_of(budget=budget)
    assert unchecked.plan.cost.scale == 1.0
    price = next(d for d in unchecked.decisions if d.name == "price")  # the loader's time only
    assert "priced by timing" not in price.evidence and "ratio" not in price.measured
    assert unchecked.model is not None
    assert unchecked.model.arch["width"] > checked.model.arch["width"], (
        unchecked.model.describe(), checked.model.describe())


def test_a_slow_data_pipeline_is_priced_into_every_model_and_plans_fewer_images(
        monkeypatch: pytest.MonkeyPatch):
    """Fault injection: the training loader made 3 ms per image slower (a sleep per batch, the
    model untouched). The plan prices that time into every image, says so, and plans the
    refit's model fewer images than where the loader is as fast as it is."""
    fast = plan_of(budget=Budget(minutes=1, max_params="2M", min_rung_epochs=1000))
    real = pipeline.training_loader

    class Slow:
        def __init__(self, loader) -> None:
            self.loader = loader

        def __iter__(self):
            for x, y in self.loader:
                time.sleep(3e-3 * len(y))
                yield x, y

    monkeypatch.setattr(pipeline, "training_loader", lambda *a, **k: Slow(real(*a, **k)))
    slow = plan_of(budget=Budget(minutes=1, max_params="2M", min_rung_epochs=1000))
    price = next(d for d in slow.decisions if d.name == "price")
    assert price.measured["data_ms"] > 3.0, price.evidence
    assert slow.plan.cost.data_s == pytest.approx(price.measured["data_ms"] / 1e3)
    assert price.evidence.startswith("the training loader (dali-cpu) takes "), price.evidence
    fast_price = next(d for d in fast.decisions if d.name == "price")
    assert fast_price.measured["data_ms"] < 1.0, fast_price.evidence
    assert slow.model_images is not None and fast.model_images is not None
    assert slow.model_images < 0.8 * fast.model_images, (slow.model_images, fast.model_images)


def test_a_space_that_leaves_the_decisions_out_keeps_its_knobs_as_written(tmp_path: Path):
    space = yaml.safe_load(preset("search_spaces", "default").read_text())
    assert space["decide"] == ["mirror", "resolution", "lr"]
    space["decide"] = ["resolution"]
    path = tmp_path / "as-written.yaml"
    path.write_text(yaml.safe_dump(space))
    done = _plan(["--minutes", "1", "--max-params", "200k", "--space", str(path), "--json"],
                 tmp_path)
    assert done.returncode == 0, done.stderr
    preview = Preview.model_validate_json(done.stdout)
    assert [d.name for d in preview.decisions] == ["mirror", "resolution", "lr", "price", "batch"]
    mirror, _, lr = preview.decisions[:3]
    for decision in (mirror, lr):  # on the digits a mirror changes the label: said, not made
        assert decision.pinned == {} and decision.measured == {}
        assert decision.evidence.startswith(f"{decision.name} not decided: the search space "
                                            f"{path} leaves it out of `decide:`"), decision
    assert preview.model is not None and preview.model.recipe.hflip is True  # as written
    assert preview.model.recipe.tta is True


def test_a_decision_the_space_does_not_know_is_its_one_line_error(tmp_path: Path):
    space = yaml.safe_load(preset("search_spaces", "default").read_text())
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({**space, "decide": ["mirror", "lr_scale"]}))
    done = _plan(["--minutes", "1", "--space", str(path)], tmp_path)
    assert done.returncode != 0
    error = done.stderr.strip().splitlines()
    assert len(error) == 1 and str(path) in error[0] and "decide" in error[0], done.stderr


def test_the_plan_keeps_the_time_its_models_test_pass_takes(monkeypatch: pytest.MonkeyPatch):
    """The plan times its model's test pass in onnxruntime and keeps that time back from the
    refit. Fault injection: the test pass made 100x slower plans a larger reserve and fewer
    refit images; a test pass that cannot be timed leaves the probe's guess, said."""
    budget = Budget(minutes=1, max_params="2M", min_rung_epochs=1000)  # the prior alone
    untimed = next(d for d in plan_of(budget=budget).decisions if d.name == "price")
    assert "test_images_per_s" not in untimed.measured  # 8x8 digits: not worth timing
    monkeypatch.setattr(phase, "TIMED_OVER", 0.0)
    timed = plan_of(budget=budget)
    price = next(d for d in timed.decisions if d.name == "price")
    rate = price.measured["test_images_per_s"]
    assert rate > 0 and f"timed at {rate:.0f} images/s in onnxruntime" in price.evidence

    real = runner.untrained_speed
    monkeypatch.setattr(runner, "untrained_speed", lambda *a, **k: real(*a, **k) / 100)
    slow = plan_of(budget=budget)
    slow_rate = next(d for d in slow.decisions if d.name == "price").measured[
        "test_images_per_s"]
    assert slow_rate < rate / 30, (slow_rate, rate)
    assert slow.plan.final_reserve_s > timed.plan.final_reserve_s + 3.0, (slow.plan, timed.plan)
    assert slow.plan.refit_s < timed.plan.refit_s
    assert slow.model_images is not None and timed.model_images is not None
    assert slow.model_images < timed.model_images

    def fails(*args, **kwargs) -> float:
        raise RuntimeError("injected: onnxruntime cannot load the model")

    monkeypatch.setattr(runner, "untrained_speed", fails)
    guessed = plan_of(budget=budget)
    price = next(d for d in guessed.decisions if d.name == "price")
    assert "test_images_per_s" not in price.measured and "onnxruntime" not in price.evidence
    assert guessed.plan.refit_s > 0

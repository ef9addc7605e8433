"""`autofit plan`: what a run with the same options would do on this machine, decided as the run
decides it (real data load, mirror decision, probe and frontier), printed without training and
without leaving a run directory; bad options get the run's one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import COLOURS

from autofit.preview import Preview


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
    assert [d.name for d in preview.decisions] == ["mirror", "batch"]
    batch = preview.decisions[1]
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
    assert heads == ["data", "setup", "decision", "decision", "search", "model size", "model",
                     "refit", "frontier"], text.stdout
    assert "the search's first trial" in lines[6] and f"bs={preview.model.recipe.batch_size}" \
        in lines[6]


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


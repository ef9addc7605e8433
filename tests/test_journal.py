"""The pieces a resume stands on: the journal, the clock's earlier lives, a training run that
continues from its saved state, the searcher's saved state, and out-of-memory retries."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ray.tune.search import Searcher

from autofit import faults, models
from autofit.budget import Budget, Clock
from autofit.config import Recipe, RunArgs
from autofit.data.pipeline import BatchLoader
from autofit.errors import UsageError
from autofit.journal import Journal
from autofit.models import Classifier, DataShape
from autofit.search.searcher import SpaceSearcher
from autofit.search.space import SearchSpace
from autofit.train.loop import train

RECIPE = Recipe(batch_size=32, lr=0.05, weight_decay=5e-4)
ARGS = RunArgs(data=None, budget=Budget(minutes=1), seed=0, space="default.yaml")


def test_journal_round_trips_and_refuses_finished_runs(tmp_path: Path):
    journal = Journal.create(tmp_path, ARGS)
    clock = Clock(60.0, spent={"setup": 3.0})
    with journal.heartbeat(clock):
        time.sleep(1.3)
    again = Journal.open(tmp_path)
    assert again.args == ARGS
    assert again.state.spent["setup"] >= 4.2 and again.state.phase == "setup"
    assert again.state.lives[0].spent_before == 3.0
    assert not list(tmp_path.glob(".*.tmp"))
    journal.set(status="finished")
    with pytest.raises(UsageError, match="already finished"):
        Journal.open(tmp_path)
    (tmp_path / "journal.json").write_text("{torn")
    with pytest.raises(UsageError, match="journal.json is unreadable"):
        Journal.open(tmp_path)


def test_clock_counts_earlier_lives_but_not_dead_time():
    clock = Clock(100.0, started_at=time.time() - 5, spent={"setup": 10.0, "search": 30.0})
    assert clock.left() == pytest.approx(55.0, abs=0.1)
    assert clock.elapsed() == pytest.approx(45.0, abs=0.1)
    clock.start_phase("search")
    assert clock.phases()["search"] >= 30.0 and clock.phases()["setup"] >= 15.0


def _data(n=256, size=8):
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    x = rng.integers(0, 60, (n, size, size, 1), dtype=np.uint8)
    x[y == 1, : size // 2] += 150
    return x, y


def _model():
    torch.manual_seed(0)
    shape = DataShape(1, 8, 8, 2)
    return Classifier(models.build_for("resnet", {"depth": 8, "width": 8}, shape), [0.3], [0.3])


def test_training_resumes_its_schedule_from_a_saved_state():
    x, y = _data()
    saved = []
    first = train(_model(), BatchLoader(x, y, 32, train=True), RECIPE, stop_at=time.time() + 60,
                  total_steps=40, save=saved.append, save_every_s=0.0)
    assert first.state == "completed" and len(saved) == 40
    middle = saved[19]
    assert middle["counters"]["steps"] == 20
    resumed = train(_model(), BatchLoader(x, y, 32, train=True), RECIPE,
                    stop_at=time.time() + 60, total_steps=40, resume=middle)
    assert resumed.state == "completed" and resumed.steps == 40 and resumed.epoch == 5.0
    assert resumed.loss < 0.5  # it went on learning from the saved weights


def test_out_of_memory_halves_the_batch_then_gives_up(monkeypatch: pytest.MonkeyPatch):
    x, y = _data()
    model = _model()
    monkeypatch.setenv(faults.ENV, "oom@7")
    faults.install(model, 7, batch_size=32)
    final = train(model, BatchLoader(x, y, 32, train=True), RECIPE, stop_at=time.time() + 60,
                  total_steps=10)
    assert final.state == "completed" and final.batch_size == 16 and final.oom_retries == 1

    model = _model()
    monkeypatch.setenv(faults.ENV, "oom-always@7")
    faults.install(model, 7, batch_size=32)
    with pytest.raises(torch.OutOfMemoryError):
        train(model, BatchLoader(x, y, 32, train=True), RECIPE, stop_at=time.time() + 60,
              total_steps=10)


def test_searcher_state_survives_a_restart(tmp_path: Path):
    journal = tmp_path / "journal.json"
    journal.write_text(json.dumps({"search_clock": {"stop_suggesting_at": time.time() + 60}}))
    space = SearchSpace.load(Path("search_spaces/default.yaml"))
    shape = DataShape(3, 16, 16, 4)
    first = SpaceSearcher(space, shape, 100_000, seed=3, journal=journal)
    drawn = [first.suggest(f"t{i}") for i in range(2)]
    first.on_trial_complete("t0", error=True)
    first.save(str(tmp_path / "state.json"))
    expected = first.suggest("t2")

    journal.write_text(json.dumps({"search_clock": {"stop_suggesting_at": time.time() - 1}}))
    again = SpaceSearcher(space, shape, 100_000, seed=3, journal=tmp_path / "journal.json")
    journal.write_text(json.dumps({"search_clock": {"stop_suggesting_at": time.time() + 60}}))
    again.restore(str(tmp_path / "state.json"))
    assert again.suggest("t2") == expected and expected["trial"] == 3
    assert [d["trial"] for d in drawn] == [1, 2] and again.failures == 1
    journal.write_text(json.dumps({"search_clock": {"stop_suggesting_at": time.time() - 1}}))
    again.restore(str(tmp_path / "state.json"))
    assert again.suggest("t3") == Searcher.FINISHED  # a resumed search reads its new deadline

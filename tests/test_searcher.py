"""SpaceSearcher with `searcher: tpe` (real Optuna, no Ray): it learns from told scores, fits
the cap, and a saved searcher continues its history; `searcher: random` is what it was."""

from __future__ import annotations

import json
import math
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import progress

from autofit import models
from autofit.errors import UsageError
from autofit.models import DataShape
from autofit.presets import preset
from autofit.records import SearchOutcome, TrialRecord
from autofit.search.searcher import SpaceSearcher
from autofit.search.space import SearchSpace
from autofit.search.trainable import TRIAL_KEY

CIFAR = DataShape(3, 32, 32, 10)
SYNTHETIC = {
    "families": {"resnet": {"depth": {"choices": [8, 14, 20]},
                            "width": {"low": 8, "high": 64, "step": 8}}},
    "training": {"batch_size": {"choices": [64, 128, 256]},
                 "lr": {"low": 1e-3, "high": 1.0, "log": True},
                 "weight_decay": {"low": 1e-5, "high": 1e-2, "log": True}},
}


def _journal(tmp_path: Path) -> Path:
    path = tmp_path / "journal.json"
    path.write_text(json.dumps({"search_clock": {"stop_suggesting_at": time.time() + 3600}}))
    return path


def _score(config: dict[str, Any]) -> float:
    """Peaks at lr 0.05, width 40, weight decay 1e-4, batch 128."""
    recipe, arch = config["recipe"], config["arch"]
    return (-math.log10(recipe["lr"] / 0.05) ** 2 - ((arch["width"] - 40) / 16) ** 2
            - 0.5 * math.log10(recipe["weight_decay"] / 1e-4) ** 2
            - 0.3 * (recipe["batch_size"] != 128))


def _best_of(searcher: SpaceSearcher, trials: int, start: int = 0) -> float:
    best = -math.inf
    for i in range(start, start + trials):
        config = searcher.suggest(f"t{i}")
        score = _score(config)
        searcher.on_trial_complete(f"t{i}", {"val_accuracy": score, "state": "completed"})
        best = max(best, score)
    return best


def test_tpe_beats_random_on_a_synthetic_objective(tmp_path: Path):
    journal, results = _journal(tmp_path), {}
    for kind in ("random", "tpe"):
        space = SearchSpace(**SYNTHETIC, searcher=kind)
        results[kind] = [_best_of(SpaceSearcher(space, CIFAR, 10_000_000, seed, journal), 30)
                         for seed in range(4)]
    assert np.mean(results["tpe"]) > np.mean(results["random"]), results


@pytest.mark.parametrize("name,cap", [("default", 100_000), ("wrn", 300_000)])
def test_every_tpe_suggestion_fits_the_cap(tmp_path: Path, name: str, cap: int):
    space = SearchSpace.load(preset("search_spaces", name)).model_copy(
        update={"searcher": "tpe"})
    searcher = SpaceSearcher(space, CIFAR, cap, 0, _journal(tmp_path))
    for i in range(14):  # past the random start-up: TPE's own proposals are fitted too
        config = searcher.suggest(f"t{i}")
        assert config[TRIAL_KEY] == i + 1
        assert config["params"] <= cap
        assert config["params"] == models.count_for(config["family"], config["arch"], CIFAR)
        searcher.on_trial_complete(f"t{i}", {"val_accuracy": config["params"] / cap,
                                             "state": "completed"})


def test_results_are_told_as_optuna_states(tmp_path: Path):
    space = SearchSpace(**SYNTHETIC, searcher="tpe")
    searcher = SpaceSearcher(space, CIFAR, 10_000_000, 0, _journal(tmp_path))
    for i in range(5):
        searcher.suggest(f"t{i}")
    searcher.on_trial_complete("t0", {"val_accuracy": 0.7, "state": "completed"})
    searcher.on_trial_complete("t1", {"val_accuracy": 0.4, "state": "running"})  # ASHA-stopped
    searcher.on_trial_complete("t2", {"val_accuracy": 0.1, "state": "diverged"})
    searcher.on_trial_complete("t3", None, error=True)
    searcher.on_trial_complete("t4", {"val_accuracy": float("nan"), "state": "completed"})
    searcher.on_trial_complete("nobody", {"val_accuracy": 0.9, "state": "completed"})
    trials = searcher.tpe._study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL", "FAIL"]
    assert [t.value for t in trials[:2]] == [0.7, 0.4]
    assert searcher.tpe.best() == 0.7
    assert (searcher.failures, searcher.successes) == (1, 3)  # counted as before


def test_save_and_restore_continue_the_same_history(tmp_path: Path):
    journal = _journal(tmp_path)
    space = SearchSpace(**SYNTHETIC, searcher="tpe")
    searcher = SpaceSearcher(space, CIFAR, 10_000_000, 3, journal)
    _best_of(searcher, 12)
    pending = searcher.suggest("t12")  # running when the search was killed
    searcher.save(str(tmp_path / "searcher.json"))
    told = [(t.params, t.value) for t in searcher.tpe._study.trials if t.value is not None]

    # What Tune does on resume: unpickle the searcher it was given, then restore its state.
    fresh = pickle.loads(pickle.dumps(SpaceSearcher(space, CIFAR, 10_000_000, 3, journal)))
    fresh.restore(str(tmp_path / "searcher.json"))
    study = fresh.tpe._study
    assert [(t.params, t.value) for t in study.trials if t.value is not None] == told
    assert study.trials[-1].state.name == "RUNNING" and fresh.count == 13
    fresh.on_trial_complete("t12", {"val_accuracy": _score(pending), "state": "completed"})
    assert study.trials[-1].state.name == "COMPLETE"
    assert fresh.suggest("t13")[TRIAL_KEY] == 14
    assert len(fresh.tpe.history) == 14  # the history goes on: it is saved again in full


def test_random_searcher_is_unchanged(tmp_path: Path):
    space = SearchSpace.load(preset("search_spaces", "default"))
    assert space.searcher == "random"
    searcher = SpaceSearcher(space, CIFAR, 200_000, 7, _journal(tmp_path))
    assert searcher.tpe is None
    first = space.first_config(CIFAR, 200_000)
    assert first is not None and searcher.suggest("t0") == {**first.model_dump(), TRIAL_KEY: 1}
    rng = np.random.default_rng(7)  # the prior takes no draw: the seeded stream is unchanged
    for i in range(1, 4):
        config = searcher.suggest(f"t{i}")
        assert config == {**space.sample(rng, CIFAR, 200_000).model_dump(), TRIAL_KEY: i + 1}


def test_invalid_searcher_is_one_clear_usage_error(tmp_path: Path):
    path = tmp_path / "space.yaml"
    text = Path(preset("search_spaces", "default")).read_text()
    path.write_text(text + "searcher: bayes\n")
    with pytest.raises(UsageError, match=r"searcher: must be random .* or tpe .*not 'bayes'") \
            as info:
        SearchSpace.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value).strip()
    path.write_text(text + "searcher: tpe\n")
    assert SearchSpace.load(path).searcher == "tpe"


def test_a_tie_on_validation_noise_goes_to_the_trial_trained_longest():
    """5,000 validation images tell accuracies apart only beyond about 0.7 points at 0.44: a
    draw cut at 0.7 epochs does not displace a completed trial on 0.4352 against 0.4350."""
    config = SearchSpace.load(preset("search_spaces", "default")).first_config(
        DataShape(channels=3, height=32, width=32, num_classes=10), 2_000_000, None)

    def record(number: int, acc: float, seconds: float, images: int = 5_000) -> TrialRecord:
        return TrialRecord(number=number, trial_id=f"t{number}", config=config,
                           status="completed", metrics=progress(
                               val_accuracy=acc, train_seconds=seconds, val_images=images))

    prior, draw = record(1, 0.4350, 17.2), record(2, 0.4352, 15.0)
    outcome = SearchOutcome(records=[prior, draw], overrun_s=0.0)
    assert outcome.top is draw and outcome.best is prior
    clear = record(3, 0.4500, 15.0)  # three standard errors above: a real win
    assert SearchOutcome(records=[prior, draw, clear], overrun_s=0.0).best is clear
    few = SearchOutcome(records=[record(1, 0.40, 17.2, images=50),
                                 record(2, 0.44, 5.0, images=50)], overrun_s=0.0)
    assert few.best.number == 1  # 50 images: 0.04 is well inside the noise (0.07)
    failed = TrialRecord(number=4, trial_id="t4", config=config, status="error", error="boom")
    assert SearchOutcome(records=[failed, draw], overrun_s=0.0).best is draw


def test_a_trial_short_of_its_first_rung_is_never_the_winner():
    """The resume of issue 23: trial 2, restarted at its deadline, scored a model trained 0 s
    (0.1094, chance) and won because trial 1 had been lost; the refit warm-started from it."""
    config = SearchSpace.load(preset("search_spaces", "default")).first_config(
        DataShape(channels=3, height=32, width=32, num_classes=10), 2_000_000, None)

    def record(number: int, acc: float, seconds: float) -> TrialRecord:
        return TrialRecord(number=number, trial_id=f"t{number}", config=config,
                           status="stopped at search deadline",
                           metrics=progress(val_accuracy=acc, train_seconds=seconds))

    lost = TrialRecord(number=1, trial_id="t1", config=config, status="error", error="gone")
    untrained = record(2, 0.1094, 0.0)
    alone = SearchOutcome(records=[lost, untrained], overrun_s=0.0, min_trained_s=2.0)
    assert alone.contenders == []
    short, rung = record(3, 0.60, 1.9), record(4, 0.45, 2.0)
    outcome = SearchOutcome(records=[untrained, short, rung], overrun_s=0.0, min_trained_s=2.0)
    assert outcome.contenders == [rung] and outcome.top is rung and outcome.best is rung
    legacy = SearchOutcome(records=[untrained, short], overrun_s=0.0)  # no first rung recorded
    assert legacy.best is short  # still, a trial that trained nothing never wins

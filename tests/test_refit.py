import logging
import math
import time

import pytest
import torch
from conftest import progress

from autofit.config import Recipe, TrialConfig
from autofit.data.dataset import load
from autofit.deliver.export import to_input
from autofit.records import TrialRecord
from autofit.train.loop import CHECKPOINT_FILE, load_state, make_model, save_state
from autofit.train.refit import refit

CONFIG = TrialConfig(family="resnet", arch={"depth": 8, "width": 8},
                     recipe=Recipe(batch_size=64, lr=0.05, weight_decay=5e-4), params=19_770)


@pytest.fixture(scope="module")
def digits():
    return load(None, seed=0, threads=2)


def _record(metrics):
    return TrialRecord(number=1, trial_id="t1",
                       config=CONFIG.model_copy(update={"params": _params()}),
                       metrics=None if metrics == {} else progress(**metrics))


def _where(tmp_path):
    return {"log": logging.getLogger("test"), "checkpoint": tmp_path / "refit.pt"}


def _params():
    from autofit import models
    from autofit.models import DataShape

    return models.count_for("resnet", CONFIG.arch, DataShape(1, 8, 8, 10))


def test_refit_uses_all_its_seconds_whatever_the_trial_measured(digits, tmp_path):
    """The schedule follows time: a refit running faster than the trial measured (trials
    count their evaluations too) trains more epochs instead of ending early."""
    stop_at = time.time() + 8.0
    _, info = refit(digits, _record({"images_per_s": 300.0}), stop_at=stop_at, device="cpu",
                    threads=2, seed=0, **_where(tmp_path))
    n = len(digits.y_train) + len(digits.y_val)
    assert info.train_images == n
    assert info.epochs_planned == pytest.approx(info.seconds_planned * 300 / n, rel=0.1)
    assert info.epochs > 1.5 * info.epochs_planned  # ResNet-8 w8 on 8x8 runs far above 300/s
    assert info.seconds >= 0.9 * info.seconds_planned and time.time() <= stop_at + 0.5


def test_refit_with_no_time_left_still_returns_a_model(digits, tmp_path):
    torch.manual_seed(0)  # the refit seeds its initialisation with the run's seed
    model, info = refit(digits, _record({"images_per_s": 300.0}), stop_at=time.time() - 1,
                        device="cpu", threads=2, seed=0, **_where(tmp_path))
    assert info.steps == 0 and info.state == "deadline" and info.epochs == 0
    assert not model.training and all(p.device.type == "cpu" for p in model.parameters())
    torch.manual_seed(0)
    fresh = make_model(CONFIG.model_copy(update={"params": _params()}), digits.shape,
                       *digits.mean_std)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items())
    x = torch.from_numpy(to_input(digits.x_test[:8]))
    with torch.no_grad():
        assert model(x).shape == (8, len(digits.classes))


def test_refit_without_a_measured_throughput_uses_the_time_left(digits, tmp_path):
    start = time.time()
    _, info = refit(digits, _record({}), stop_at=start + 5.0, device="cpu", threads=2, seed=0,
                    **_where(tmp_path))
    assert info.epochs_planned is None and info.steps > 1
    assert info.seconds >= 0.8 * info.seconds_planned and time.time() - start <= 5.5
    assert not math.isnan(info.epochs)


def test_refit_with_ema_returns_the_averaged_weights(digits, tmp_path):
    """A refit of an EMA recipe hands back (for model.onnx) the average, not the last step."""
    config = CONFIG.model_copy(update={"params": _params(), "recipe": CONFIG.recipe.model_copy(
        update={"ema": True, "optimizer": "sam", "schedule": "cosine", "tta": True})})
    checkpoint = tmp_path / "refit.pt"
    record = TrialRecord(number=1, trial_id="t1", config=config)  # sized by time: 3 s,
    # saved every second
    model, info = refit(digits, record, stop_at=time.time() + 3.0, device="cpu", threads=2,
                        seed=0, log=logging.getLogger("test"), checkpoint=checkpoint)
    assert info.steps > 1 and model.tta and not model.training
    state = load_state(checkpoint)  # saved mid-refit: raw weights and their EMA apart
    assert any(not torch.equal(state["model"][k], state["ema"][k]) for k in state["model"])


def test_skipped_refit_keeps_the_winners_ema_weights(digits, tmp_path):
    config = CONFIG.model_copy(update={"params": _params(), "recipe": CONFIG.recipe.model_copy(
        update={"ema": True})})
    trial_dir = tmp_path / "trial"
    trial_dir.mkdir()
    raw = make_model(config, digits.shape, *digits.mean_std).state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in raw.items()}
    save_state({"model": raw, "ema": ema}, trial_dir / CHECKPOINT_FILE)
    record = TrialRecord(number=1, trial_id="t1", config=config,
                         metrics=progress(images_per_s=1.0, epoch=50.0), checkpoint=str(trial_dir))
    model, info = refit(digits, record, stop_at=time.time() + 2.0, device="cpu", threads=2,
                        seed=0, **_where(tmp_path))
    assert info.steps == 0 and info.state == "kept the winning trial's weights"
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())


def test_refit_starts_from_the_winners_weights(digits, tmp_path, caplog):
    """The winner's search seconds are kept: the refit begins from its checkpoint."""
    config = CONFIG.model_copy(update={"params": _params()})
    trial_dir = tmp_path / "trial"
    trial_dir.mkdir()
    raw = make_model(config, digits.shape, *digits.mean_std).state_dict()
    trained = {k: v + 0.5 if v.is_floating_point() else v for k, v in raw.items()}
    save_state({"model": trained}, trial_dir / CHECKPOINT_FILE)
    record = TrialRecord(number=1, trial_id="t1", config=config,
                         metrics=progress(images_per_s=300.0, epoch=0.01),
                         checkpoint=str(trial_dir))
    model, info = refit(digits, record, stop_at=time.time() - 1, device="cpu", threads=2,
                        seed=0, **_where(tmp_path))  # no time to train: the weights it began from
    assert info.warm_start == "trial 1 (0.01 epochs on train)" and info.steps == 0
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())

    gone = TrialRecord(number=1, trial_id="t1", config=config,
                       metrics=progress(images_per_s=300.0, epoch=0.0),
                       checkpoint=str(tmp_path / "gone"))
    with caplog.at_level(logging.WARNING, logger="test"):
        model, info = refit(digits, gone, stop_at=time.time() - 1, device="cpu", threads=2,
                            seed=0, log=logging.getLogger("test"),
                            checkpoint=tmp_path / "refit2.pt")
    assert info.warm_start is None and "no warm start" in caplog.text
    assert not torch.equal(model.state_dict()[next(iter(trained))], next(iter(trained.values())))

"""best_so_far.onnx from the refit's weights: exported at epoch ends by its rules (from a tenth
of the schedule with no model on disk, from three quarters over a trial's model, never past
95%, within its time allowance), verified, scored, and recorded as the refit's."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from conftest import two_class

from autofit import models
from autofit.config import Recipe, TrialConfig
from autofit.data.pipeline import BatchLoader
from autofit.deliver.best import MODEL, RECORD, BestSoFar
from autofit.deliver.export import to_input
from autofit.deliver.refit_exports import ACCURACY_ON, LAST_SHARE, RefitExports
from autofit.models import DataShape
from autofit.records import BestSoFarRecord
from autofit.train.loop import EpochEnd, make_model, train

SHAPE = DataShape(1, 8, 8, 2)
ARCH = {"depth": 8, "width": 8}
LOG = logging.getLogger("test")


def _config(**recipe) -> TrialConfig:
    return TrialConfig(family="resnet", arch=ARCH,
                       recipe=Recipe(batch_size=32, lr=0.1, weight_decay=5e-4, **recipe),
                       params=models.count_for("resnet", ARCH, SHAPE))


def _keeper(run_dir: Path, x: np.ndarray) -> BestSoFar:
    return BestSoFar(run_dir=run_dir, shape=SHAPE, mean=[0.3], std=[0.3], images=x[:8],
                     metadata={}, threads=1)


class Recorder(RefitExports):
    """The real exporter, noting each epoch end it saw and the weights it exported."""

    def __call__(self, end: EpochEnd) -> None:
        self.seen.append(end.progress)
        if self.due(end):
            self.exported.append((end.progress, {k: v.clone() for k, v in end.weights().items()}))
        super().__call__(end)


def _refit(tmp_path: Path, *, allowance_s: float, on_disk: bool = False,
           ema: bool = False) -> tuple[Recorder, np.ndarray, np.ndarray]:
    x, y = two_class(64)  # two steps an epoch: 20 epoch ends over 40 steps
    config = _config(ema=ema)
    keeper = _keeper(tmp_path / "run", x)
    if on_disk:  # a trial's model, as the search leaves it
        keeper.run_dir.mkdir(parents=True)
        BestSoFarRecord(trial=3, val_accuracy=0.9, params=config.params,
                        config=config).write(keeper.run_dir / RECORD)
    exports = Recorder.make(keeper, config, 3, x, y, 2, refit_s=0.0, budget_s=600, log=LOG)
    exports.allowance_s, exports.seen, exports.exported = allowance_s, [], []
    model = make_model(config, SHAPE, [0.3], [0.3])
    train(model, BatchLoader(x, y, 32, train=True), config.recipe, stop_at=time.time() + 120,
          total_steps=40, on_epoch=exports)
    return exports, x, y


def test_with_no_model_on_disk_the_refit_exports_from_a_tenth_of_its_schedule(tmp_path: Path):
    exports, x, y = _refit(tmp_path, allowance_s=60.0, ema=True)
    due = [p for p in exports.seen if 0.1 <= p < LAST_SHARE]
    assert [p for p, _ in exports.exported] == due and len(due) >= 15
    assert exports.count == len(due) and 0 < exports.spent_s <= 60.0

    record = BestSoFarRecord.read(tmp_path / "run" / RECORD)
    assert record is not None and record.source == "refit" and record.trial == 3
    assert record.val_accuracy is None and record.accuracy_on == ACCURACY_ON
    assert record.epoch == exports.seen.index(due[-1]) + 1  # one epoch per epoch end
    session = ort.InferenceSession(str(tmp_path / "run" / MODEL),
                                   providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["source"] == "refit"
    got = session.run(["logits"], {"input": to_input(x)})[0]
    assert record.accuracy == round(float((got.argmax(1) == y).mean()), 4) >= 0.9
    reference = make_model(_config(ema=True), SHAPE, [0.3], [0.3])
    reference.load_state_dict(exports.exported[-1][1])  # the EMA weights at that epoch end
    with torch.no_grad():
        want = reference.eval()(torch.from_numpy(to_input(x))).numpy()
    assert np.allclose(got, want, atol=1e-4)


def test_over_a_trials_model_the_refit_exports_only_in_its_last_quarter(tmp_path: Path):
    exports, _, _ = _refit(tmp_path, allowance_s=60.0, on_disk=True)
    assert exports.exported and all(0.75 <= p < LAST_SHARE for p, _ in exports.exported)
    assert any(p < 0.75 for p in exports.seen)
    record = BestSoFarRecord.read(tmp_path / "run" / RECORD)
    assert record is not None and record.source == "refit"


def test_the_refit_stops_exporting_once_its_allowance_is_spent(tmp_path: Path):
    exports, _, _ = _refit(tmp_path, allowance_s=1e-6)  # the first export alone spends it
    assert exports.count == 1 and len(exports.exported) == 1
    none, _, _ = _refit(tmp_path / "none", allowance_s=0.0)
    assert none.count == 0 and not (tmp_path / "none" / "run" / MODEL).exists()
    x, y = two_class(8)
    keeper, config = _keeper(tmp_path / "tiny", x), _config()
    assert RefitExports.make(keeper, config, 0, x, y, 2, refit_s=2.0, budget_s=30,
                             log=LOG).allowance_s == 0.0  # 0.2 s: less than one export
    assert RefitExports.make(keeper, config, 0, x, y, 2, refit_s=400.0, budget_s=600,
                             log=LOG).allowance_s == 12.0  # 2% of the budget

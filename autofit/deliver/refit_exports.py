"""best_so_far.onnx during the refit: its weights exported at epoch ends, so a run killed in
its refit (all of a run whose search was skipped) still leaves a usable model.

When: with no model on disk yet (search skipped, or no trial won), at the first epoch end past
FIRST_SHARE of the refit's schedule; with a trial's model on disk, only past REPLACE_SHARE:
the refit restarts the winner's learning-rate schedule, so until it anneals its weights are
no better than the trial's. Then at most every EVERY_SHARE of the refit's seconds, never in
its last stretch (the final model follows), and never beyond EXPORT_SHARE of the budget in
all, each export's cost measured (the refit's schedule is shortened by that allowance, so
it still anneals before its deadline).

Each export is verified like every ONNX file autofit writes, then scored with onnxruntime on
up to SCORE_IMAGES validation images, which the refit trains on: the record calls that
accuracy on train+val images, not validation accuracy.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from autofit.config import TrialConfig
from autofit.deliver import best as best_so_far
from autofit.deliver.evaluate import score_onnx
from autofit.records import BestSoFarRecord
from autofit.train.loop import EpochEnd

FIRST_SHARE = 0.1
REPLACE_SHARE = 0.75
EVERY_SHARE = 0.1
LAST_SHARE = 0.95
EXPORT_SHARE = 0.02  # of the budget, for all of a life's refit exports together
MIN_ALLOWANCE_S = 1.0  # below it, none: one export took 0.4-2.0 s here (a 0.5-minute run's
# 2 s refit had spent 0.42 s on an export at chance accuracy)
SCORE_IMAGES = 512
ACCURACY_ON = "train+val images the refit trains on"


@dataclass
class RefitExports:
    """The refit's `on_epoch`: exports its weights as best_so_far.onnx by the rules above."""

    keeper: best_so_far.BestSoFar
    config: TrialConfig
    trial: int  # the winner the refit retrains (0: the space's prior)
    x: np.ndarray  # images to score on (validation images: the refit trains on them)
    y: np.ndarray
    num_classes: int
    refit_s: float
    allowance_s: float
    log: logging.Logger
    start_share: float = FIRST_SHARE
    spent_s: float = 0.0
    count: int = 0
    last_cost_s: float = 0.0
    last_at: float = field(default=-math.inf)

    @classmethod
    def make(cls, keeper: best_so_far.BestSoFar, config: TrialConfig, trial: int,
             x: np.ndarray, y: np.ndarray, num_classes: int, *, refit_s: float,
             budget_s: float, log: logging.Logger) -> RefitExports:
        on_disk = best_so_far.read(keeper.run_dir)
        trial_model = on_disk is not None and on_disk.source == "trial"
        allowance = min(EXPORT_SHARE * budget_s, 0.1 * refit_s)
        return cls(keeper, config, trial, x[:SCORE_IMAGES], y[:SCORE_IMAGES], num_classes,
                   refit_s=refit_s, allowance_s=allowance if allowance >= MIN_ALLOWANCE_S else 0.0,
                   log=log, start_share=REPLACE_SHARE if trial_model else FIRST_SHARE)

    def due(self, end: EpochEnd) -> bool:
        return (self.start_share <= end.progress < LAST_SHARE
                and time.time() - self.last_at >= EVERY_SHARE * self.refit_s
                and 0 < self.allowance_s >= self.spent_s + self.last_cost_s)

    def __call__(self, end: EpochEnd) -> None:
        if not self.due(end):
            return
        tick = time.perf_counter()
        record = BestSoFarRecord(trial=self.trial, params=self.config.params, config=self.config,
                                 source="refit", epoch=round(end.epoch, 3),
                                 train_seconds=round(end.train_s, 3), accuracy_on=ACCURACY_ON)
        path = self.keeper.run_dir / best_so_far.MODEL
        accuracy = None
        if self.keeper.write(end.weights(), record, {}, self.log):
            accuracy = score_onnx(path, self.x, self.y, self.keeper.threads,
                                  self.num_classes).accuracy
            record.model_copy(update={"accuracy": round(accuracy, 4)}).write(
                self.keeper.run_dir / best_so_far.RECORD)
            self.count += 1
        self.last_cost_s = time.perf_counter() - tick
        self.spent_s += self.last_cost_s
        self.last_at = time.time()
        if accuracy is not None:
            self.log.info("best so far: the refit at epoch %.2f (%.1fs trained), accuracy %.4f "
                          "on %d %s -> %s (%.2fs)", end.epoch, end.train_s, accuracy,
                          len(self.y), ACCURACY_ON, path, self.last_cost_s)

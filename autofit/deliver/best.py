"""`RUN_DIR/best_so_far.onnx`: the best finished trial so far, verified and written atomically,
so a run stopped at any moment after its first trial still leaves a usable model; during the
refit, the refit's own weights (autofit/deliver/refit_exports.py).

State lives on disk (`best_so_far.json`), not in this object, so a resumed run keeps
improving on the best its earlier lives found.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autofit.config import TrialConfig
from autofit.deliver.export import export_onnx
from autofit.errors import AutofitError
from autofit.models import DataShape
from autofit.records import BestSoFarRecord
from autofit.train.loop import load_checkpoint, make_model, weights

MODEL = "best_so_far.onnx"
RECORD = "best_so_far.json"
PARITY_IMAGES = 16  # kept small: this object travels inside Ray Tune's pickled experiment


def read(run_dir: Path) -> BestSoFarRecord | None:
    """The run's best-so-far record, with the model's path; None before the first one."""
    record = BestSoFarRecord.read(run_dir / RECORD)
    if record is None:
        return None
    return record.model_copy(update={"model": str(run_dir / MODEL)})


@dataclass(frozen=True)
class BestSoFar:
    run_dir: Path
    shape: DataShape
    mean: list[float]
    std: list[float]
    images: np.ndarray  # a few validation images for the onnxruntime parity check
    metadata: dict[str, Any]
    threads: int

    def score(self) -> float:
        """Validation accuracy of the model on disk (-1 when there is none yet, or it is the
        refit's, which has no validation accuracy)."""
        record = BestSoFarRecord.read(self.run_dir / RECORD)
        return -1.0 if record is None or record.val_accuracy is None else record.val_accuracy

    def offer(self, number: int, config: TrialConfig, val_accuracy: float,
              checkpoint_dir: str, log: logging.Logger) -> bool:
        """Export trial `number` from its checkpoint if it beats the model on disk (with the
        weights it was validated with: their EMA when its recipe keeps one)."""
        if not math.isfinite(val_accuracy) or val_accuracy <= self.score():
            return False
        try:
            state = weights(load_checkpoint(checkpoint_dir))
        except (OSError, RuntimeError, KeyError) as err:
            log.warning("best so far: could not save trial %d (%s); the previous one stays",
                        number, err)
            return False
        record = BestSoFarRecord(trial=number, val_accuracy=val_accuracy, params=config.params,
                                 config=config)
        if not self.write(state, record, {"val_accuracy": val_accuracy}, log):
            return False
        log.info("best so far: trial %d, val_acc %.4f -> %s", number, val_accuracy,
                 self.run_dir / MODEL)
        return True

    def write(self, state: dict[str, Any], record: BestSoFarRecord, metadata: dict[str, Any],
              log: logging.Logger) -> bool:
        """`state` (a state_dict of `record.config`'s model) as the verified best_so_far.onnx,
        then its record; False, with a warning, when it cannot be (the previous one stays)."""
        config = record.config
        what = f"trial {record.trial}" if record.source == "trial" else "the refit"
        try:
            model = make_model(config, self.shape, self.mean, self.std)
            model.load_state_dict(state)
            export_onnx(model, self.run_dir / MODEL, self.images,
                        {**self.metadata, **metadata, "trial": record.trial,
                         "params": config.params, "config": config.describe(),
                         "source": record.source}, self.threads)
            record.write(self.run_dir / RECORD)
        except (AutofitError, OSError, RuntimeError, KeyError) as err:
            log.warning("best so far: could not save %s (%s); the previous one stays", what, err)
            return False
        return True

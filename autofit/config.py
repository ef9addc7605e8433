"""What a user asks for, typed: a trial's recipe and configuration, and a run's arguments.

Shared by every phase (the data loader reads a recipe's augmentation, the trainer its optimizer,
the journal a run's arguments), so it imports nothing of autofit's but the budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from autofit.budget import Budget

# The random crop's largest shift by default, a share of the shorter side: the usual 4 px at 32
CROP_SHIFT = 0.125


class Recipe(BaseModel):
    """Training settings of one trial (what `training:` in a space file samples).

    Every field after the first three has a default equal to what autofit did before it
    existed, so journals and checkpoints of older runs still validate. How `lr`, `weight_decay`
    and `momentum` read for each optimizer: autofit/train/optim.py."""

    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(gt=0)
    lr: float = Field(gt=0.0)  # peak, on SGD's scale (adaptive optimizers: x0.01)
    weight_decay: float = Field(ge=0.0)
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    hflip: bool = True
    alternate_flip: bool = False  # with hflip: each image mirrored every other epoch (airbench)
    cutout: float = Field(default=0.0, ge=0.0, le=1.0)
    crop_shift: float = Field(default=CROP_SHIFT, ge=0.0, le=0.5)  # data/batches.py, crop_pad
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)  # SGD momentum, Adam's beta1
    optimizer: Literal["sgd", "adam", "adamw", "nadam", "sam", "muon"] = "sgd"
    schedule: Literal["onecycle", "cosine"] = "onecycle"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)  # before the classifier head
    ema: bool = False  # evaluate, checkpoint and export an EMA of the weights
    tta: bool = False  # average the logits of each image and its mirror (only with hflip)
    tta_translate: bool = False  # and of its views shifted a pixel each way (3x the passes)
    # Fine-tuning (the pretrained family; any family's last layer is its head): the backbone's
    # lr as a share of the head's, and epochs training the head alone (autofit/train/optim.py)
    backbone_lr_scale: float = Field(default=1.0, gt=0.0, le=1.0)
    freeze_epochs: float = Field(default=0.0, ge=0.0)

    @property
    def mirror_tta(self) -> bool:
        """Test-time mirrors only where training mirrors: a space that turns `hflip` off
        because a mirror changes the label gets no mirrored views at test time either."""
        return self.tta and self.hflip

    @property
    def test_passes(self) -> int:
        """Forward passes of the network per evaluated image: one per test-time view."""
        return (2 if self.mirror_tta else 1) * (3 if self.tta_translate else 1)


class TrialConfig(BaseModel):
    """One sampled point, already fitted to the parameter cap: all a trial needs to train."""

    model_config = ConfigDict(extra="forbid")
    family: str
    arch: dict[str, int]
    recipe: Recipe
    params: int
    macs: int | None = None  # multiply-accumulates per image, forward (None in older runs)
    weights: str | None = None  # the pretrained family: the file its backbone starts from

    @property
    def model_name(self) -> str:
        """The family and its architecture knobs: "fastnet width=48 depth=2 whiten=2"."""
        return f"{self.family} {' '.join(f'{k}={v}' for k, v in self.arch.items())}"

    def describe(self) -> str:
        r = self.recipe
        extras = "".join(f" {name}" for name, on in (
            ("alternate_flip", r.alternate_flip and r.hflip), ("ema", r.ema),
            ("tta", r.mirror_tta), ("tta_translate", r.tta_translate)) if on)
        if r.backbone_lr_scale != 1.0 or r.freeze_epochs:
            extras += f" backbone_lr_scale={r.backbone_lr_scale:.3g} freeze={r.freeze_epochs:g}"
        if self.weights is not None:
            extras += f" from {Path(self.weights).name}"
        macs = "" if self.macs is None else f", {self.macs / 1e6:.1f}M MACs"
        return (f"{self.model_name} ({self.params / 1e6:.3f}M params{macs}) {r.optimizer} "
                f"{r.schedule} bs={r.batch_size} lr={r.lr:.3g} wd={r.weight_decay:.2g} "
                f"ls={r.label_smoothing} hflip={r.hflip} shift={r.crop_shift:g} cutout={r.cutout} "
                f"dropout={r.dropout}{extras}")


class RunArgs(BaseModel):
    """What a run was asked to do; `--resume` runs it again exactly so."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str | None
    data_root: str | None = None
    budget: Budget
    seed: int
    space: str
    ray_address: str | None = None
    storage: str | None = None  # the run's own folder under --storage (None: RUN_DIR/tune)
    parent: str | None = None  # `autofit extend`: the finished run this one continues
    weights: str | None = None  # --weights (pretrained family); None: torch's hub cache

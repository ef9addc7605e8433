"""The budget a user gives (minutes, parameters) and the clock that enforces it.

The deadline is a contract: every phase asks the `Clock` how much time is left rather than
keeping its own timer, so the run as a whole ends inside `Budget.seconds`.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import psutil
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from autofit.errors import UsageError, one_line
from autofit.latency_budget import LatencyCap, LatencyModel, LatencyMs, latency_reserve
from autofit.reserves import (
    EVAL_RATE_GUESS,
    QUANTIZE_MAX_SHARE,
    final_reserve,
    int8_planned,
    quantize_reserve,
    test_pass_rate,
)

MAX_MINUTES = 7 * 24 * 60
MIN_MINUTES = 0.25  # start-up alone (imports, Ray) takes seconds; below this nothing can train
MAX_PARAMS = 10_000_000_000
_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def parse_params(text: str | int) -> int:
    """Parse a parameter count such as `2M`, `1.5M`, `500k` or `250000`."""
    if isinstance(text, bool):
        raise UsageError(f"--max-params must be a count like 2M, 500k or 250000, not {text!r}")
    if isinstance(text, int):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)\s*", str(text))
        if not match:
            raise UsageError(
                f"--max-params must be a count like 2M, 1.5M, 500k or 250000, not {text!r}"
            )
        value = float(match.group(1)) * _SUFFIX[match.group(2).lower()]
    if not math.isfinite(value) or value < 1 or value > MAX_PARAMS:
        raise UsageError(f"--max-params must be between 1 and {MAX_PARAMS:,}, not {text!r}")
    return int(value)


class Budget(BaseModel):
    """What a run may spend: wall-clock minutes for everything, and a parameter cap per model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    minutes: float = Field(default=10.0, description="wall-clock budget of the whole run")
    max_params: int = Field(default=2_000_000, description="parameter cap of every trained model")
    search_share: float | None = Field(
        default=None, gt=0.05, lt=0.95,
        description="share of the trainable time the search gets; None (auto): from the "
                    "measured cost of an epoch, see Plan.make")
    # auto: the compute frontier (autofit/search/frontier.py) says how many images the refit
    # should see at each budget on this machine. A fixed 20, fitted in bf16 on an AMX machine,
    # took width 16 for 28 epochs at 10 minutes in float32 (86.82%) where width 24 for 16
    # epochs scored 87.75% (bench/results/frontier-w*-e*.json).
    min_epochs: float | None = Field(
        default=None, ge=0.0,
        description="epochs the refit must afford a model for the search to try it (0: off; "
                    "None, auto: as many as the compute frontier puts first for the budget)")
    # On CIFAR-10 on 2 cores the first rung trained 0.1 epoch at 2, 5 and 10 minutes, and the
    # space's prior won every search: a rung that short ranks noise. With bf16 a 10-minute
    # rung is about 0.5 epoch; one such search scored 86.52% where the prior alone got 88.24%.
    min_rung_epochs: float = Field(
        default=1.0, ge=0.0,
        description="with search_share auto and a space with a first: prior, the search is "
                    "skipped, and the prior trains for all the time, when its first ASHA rung "
                    "would train fewer epochs than this (0: always search)")
    max_latency_ms: LatencyMs = None  # the exported model's batch-1 ms here (latency_budget.py)
    quantize: Literal["int8"] | None = Field(
        default=None,
        description="int8: also write model.int8.onnx, statically quantized and verified "
                    "against model.onnx (autofit/deliver/quantize.py); its time is planned")

    @field_validator("minutes", mode="before")
    @classmethod
    def _minutes(cls, value: object) -> float:
        try:
            minutes = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise UsageError(f"--minutes must be a positive number, not {value!r}") from None
        if not math.isfinite(minutes) or minutes <= 0 or minutes > MAX_MINUTES:
            raise UsageError(f"--minutes must be > 0 and at most {MAX_MINUTES}, not {value!r}")
        if minutes < MIN_MINUTES:
            raise UsageError(f"--minutes {minutes:g} is too short: start-up alone takes seconds; "
                             f"give at least {MIN_MINUTES}")
        return minutes

    @field_validator("search_share", "min_epochs", mode="before")
    @classmethod
    def _auto(cls, value: object) -> object:
        return None if value == "auto" else value

    @field_validator("quantize", mode="before")
    @classmethod
    def _quantize(cls, value: object) -> object:
        if value is not None and value != "int8":
            raise UsageError(f"--quantize must be int8 (or left out), not {value!r}")
        return value

    @field_validator("max_params", mode="before")
    @classmethod
    def _max_params(cls, value: object) -> int:
        return parse_params(value)  # type: ignore[arg-type]

    @property
    def seconds(self) -> float:
        return self.minutes * 60.0

    @property
    def tolerance_s(self) -> float:
        """How far past the budget a run may end: 3% from 2 minutes up, 5 s below that."""
        return 0.03 * self.seconds if self.seconds >= 120 else 5.0

    @classmethod
    def from_yaml(cls, path: Path, **overrides: object) -> Budget:
        """Load a preset from budgets/, with command-line values taking precedence."""
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise UsageError(f"cannot read budget preset {path}: {one_line(err)}") from None
        if not isinstance(raw, dict):
            raise UsageError(f"budget preset {path} must be a mapping of keys to values")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**raw)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise UsageError(f"budget preset {path}: {where}: {first['msg']}") from None


def process_start_time() -> float:
    """Wall-clock time this process started, so imports count against the budget too.

    Measured as an age against the boot clock: psutil adds the age to /proc/stat's boot time,
    which is whole seconds, so its answer is up to a second early on Linux.
    """
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after the name
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return psutil.Process().create_time()
    return time.time() - age


class Clock:
    """Wall-clock deadline shared by every phase (and by Ray workers, as a plain timestamp).

    The run starts in phase "setup" at `started_at`; `start_phase` closes the open phase, so
    the recorded phases tile the whole run with no gaps. A resumed run passes the phases its
    earlier lives `spent`: they count against the budget, the time it lay dead does not.
    """

    def __init__(self, budget_s: float, started_at: float | None = None,
                 spent: dict[str, float] | None = None) -> None:
        self.started_at = time.time() if started_at is None else started_at
        self._before = dict(spent or {})
        self.spent_before = sum(self._before.values())
        self.deadline = self.started_at + budget_s - self.spent_before
        self._spent: dict[str, float] = {}
        self._open: tuple[str, float] = ("setup", self.started_at)

    @property
    def phase(self) -> str:
        return self._open[0]

    def elapsed(self) -> float:
        return self.spent_before + time.time() - self.started_at

    def left(self) -> float:
        return self.deadline - time.time()

    def start_phase(self, name: str) -> None:
        now = time.time()
        current, since = self._open
        self._spent[current] = self._spent.get(current, 0.0) + now - since
        self._open = (name, now)

    def phases(self) -> dict[str, float]:
        """Seconds spent per phase so far, earlier lives and the open phase included."""
        spent = dict(self._before)
        for name, seconds in self._spent.items():
            spent[name] = spent.get(name, 0.0) + seconds
        current, since = self._open
        spent[current] = spent.get(current, 0.0) + time.time() - since
        return {name: round(seconds, 3) for name, seconds in spent.items()}


MIN_TRIAL_S = 2.0


# Bounds of the refit's share of the trainable time when auto. On CIFAR-10 on 2 cores the
# prior won every search at 2, 5 and 10 minutes, so where an epoch is dear most time refits.
REFIT_SHARE = (0.3, 0.8)
# The compute cap's floor on what the refit must afford, in images (about 1,000 steps of 256),
# with a fixed min_epochs: 20 epochs of a small set (1,438 digits) are too few steps to fit a
# 1M-parameter model. With min_epochs auto the frontier weighs a small set's repeats itself.
MIN_REFIT_IMAGES = 250_000
# How dear an epoch is, for the split alone: the refit gets the time 20 epochs of the probe's
# mid-size model take (the split's measure since it was tuned). The frontier's own images
# cannot serve: it spends all the time it is given on the width it picks, so the refit would
# always take the most, and on 96 images the search was skipped for rungs of 0.7 epochs.
SPLIT_EPOCHS = 20.0
# Images a refit of so many seconds should see on this machine, and why: the compute frontier's
# answer (autofit/search/frontier.py), made by the search phase, which knows the data and space.
RefitImages = Callable[[float], tuple[float, str]]


class Cost(BaseModel):
    """Seconds to train on one image, priced per forward MAC and per activation value written
    (autofit/train/probe.py measures both on this machine; models.count_work counts them)."""

    model_config = ConfigDict(frozen=True)

    s_per_mac: float
    s_per_act: float
    reference_s: float  # the larger probe model's measured seconds per image: a mid-size net
    scale: float = 1.0  # measured over priced, for the model the plan trains (probe.checked)
    data_s: float = 0.0  # the data pipeline's seconds per training image, whatever the model

    def model_seconds(self, work: tuple[int, ...]) -> float:
        return self.scale * (self.s_per_mac * work[0] + self.s_per_act * work[1])

    def seconds(self, work: tuple[int, ...]) -> float:
        return self.model_seconds(work) + self.data_s


CAP_TOLERANCE = 1e-9  # relative: float rounding, not a looser cap (ComputeCap.allows)


class ComputeCap(BaseModel):
    """The most a model may cost per training image: what the refit affords the images it
    should see (a fixed `min_epochs`, or the frontier's) in its time."""

    model_config = ConfigDict(frozen=True)

    cost: Cost
    max_image_s: float
    latency: LatencyCap | None = None  # --max-latency-ms: a hard cap, unlike the compute cap

    def allows(self, work: tuple[int, ...]) -> bool:
        """Whether a model doing this (MACs, activations, layers) per image is cheap (and
        fast) enough. The frontier's model sits exactly on the cap (seconds / (seconds /
        price)), which rounds under its price about one time in 18: the 2-minute
        Fashion-MNIST plan put width 12 first and its refit trained width 8."""
        return self.cost.seconds(work) <= self.max_image_s * (1 + CAP_TOLERANCE) and (
            self.latency is None or self.latency.allows(work))


class Plan(BaseModel):
    """How the time left after setup is split, decided up front and recorded in the summary.

    The refit is re-sized after the search from what is really left and from measured
    throughput; `search_s` and `trial_s` are fixed here so trials can be scheduled.
    """

    model_config = ConfigDict(frozen=True)

    budget_s: float
    setup_s: float
    search_s: float
    trial_s: float
    milestones: tuple[float, ...]
    refit_s: float
    final_reserve_s: float
    search_deadline: float
    search_share: float | None = None  # what the split gave the search (None in older runs)
    split: str = ""  # why
    sized: str = ""  # why the compute cap is what it is
    searched: bool = True  # False: the search was skipped and the space's prior trains alone
    cost: Cost | None = None  # this machine's training cost per image (autofit/train/probe.py)
    max_image_s: float | None = None  # training seconds per image the refit affords
    latency: LatencyModel | None = None  # with --max-latency-ms: this machine's, at start-up
    max_latency_ms: float | None = None

    @classmethod
    def make(cls, budget: Budget, clock: Clock, n_test: int, n_train: int = 0,
             cost: Cost | None = None, reduction_factor: int = 3, rungs: int = 3,
             prior: bool = False, test_passes: int = 2,
             latency: LatencyModel | None = None,
             frontier: RefitImages | None = None, test_rate: float | None = None) -> Plan:
        """The split and, with a measured `cost`, the compute cap: a model whose refit on
        `n_train` images could not see the images it should in `refit_s` is not tried: with
        `min_epochs` auto, as many as the `frontier` says for that time, else `min_epochs`
        epochs (and MIN_REFIT_IMAGES images). The test pass runs at `test_rate` (timed), else
        as guessed from the training price.

        With `search_share` auto, the refit gets the time the probe's mid-size model needs
        for `min_epochs` (auto: SPLIT_EPOCHS) epochs, within REFIT_SHARE of the trainable
        time: where an epoch is dear (CIFAR on a CPU) the refit gets most of it, where it is
        cheap (a small dataset, a GPU) the search does. Where even then the first ASHA rung
        would train under `budget.min_rung_epochs`, and the space has a `prior` to fall back
        on, the search is skipped and all the trainable time goes to the prior."""
        left = clock.left()
        eval_rate = test_rate or (test_pass_rate(cost.reference_s, test_passes) if cost
                                  else EVAL_RATE_GUESS)
        reserve = final_reserve(n_test, eval_rate, quantize=budget.quantize is not None) + \
            latency_reserve(budget.max_latency_ms)
        int8_s = quantize_reserve(n_test, eval_rate) if budget.quantize is not None else 0.0
        int8_note = ""
        if int8_s and not int8_planned(int8_s, left - reserve + int8_s):
            reserve -= int8_s
            int8_note = (f"; model.int8.onnx not planned: its {int8_s:.0f}s would be over "
                         f"{QUANTIZE_MAX_SHARE:.0%} of the {left - reserve:.0f}s to train")
        trainable = left - reserve
        if trainable < 2 * MIN_TRIAL_S:
            raise UsageError(
                f"--minutes {budget.minutes:g} leaves {max(left, 0):.0f} s after setup, too little "
                "to search and train; give a larger budget"
            )
        share, split = budget.search_share, "search_share from the budget"
        images = refit_images(budget, n_train, frontier) if cost is not None else None
        if share is None and cost is not None and n_train and budget.min_epochs != 0:
            epochs = SPLIT_EPOCHS if budget.min_epochs is None else budget.min_epochs
            need = epochs * n_train * (cost.reference_s + cost.data_s)
            low, high = REFIT_SHARE
            share = 1.0 - min(max(need / trainable, low), high)
            split = (f"auto: {epochs:g} epochs of the probe's mid-size model take "
                     f"{need:.0f}s of {trainable:.0f}s, refit share within {low:g}-{high:g}")
        elif share is None:
            share, split = 0.5, "auto without a measured cost: even"
        search_s = share * trainable
        trial_s = max(MIN_TRIAL_S, search_s / rungs)
        grace = trial_s / reduction_factor ** (rungs - 1)
        milestones = tuple(round(grace * reduction_factor**k, 3) for k in range(rungs - 1))
        rung_epochs = grace / (n_train * (cost.reference_s + cost.data_s)) if cost and n_train \
            else math.inf
        searched = not (prior and budget.search_share is None
                        and rung_epochs < budget.min_rung_epochs)
        if not searched:
            split = (f"search skipped: its first ASHA rung would train {rung_epochs:.2f} epochs "
                     f"of the probe's mid-size model ({grace:.1f}s), under min_rung_epochs "
                     f"{budget.min_rung_epochs:g}, "
                     "too few to rank configurations; the space's prior trains for all "
                     f"{trainable:.0f}s")
            share = search_s = trial_s = 0.0
            milestones = ()
        refit_s = trainable - search_s
        max_image_s, sized = None, "no compute cap"
        if images is not None:  # the refit continues the winner's trial: its seconds count
            seen, sized = images(refit_s + trial_s)
            if budget.min_epochs is not None:  # a fixed floor's cap: at least so many steps
                seen = max(seen, MIN_REFIT_IMAGES)
            max_image_s = (refit_s + trial_s) / max(seen, 1.0)
        return cls(cost=cost, max_image_s=max_image_s, sized=sized,
                   search_share=round(share, 3),
                   split=split + int8_note, budget_s=budget.seconds,
                   setup_s=round(clock.elapsed(), 3),
                   search_s=round(search_s, 3), trial_s=round(trial_s, 3),
                   milestones=milestones, refit_s=round(refit_s, 3),
                   final_reserve_s=round(reserve, 3), searched=searched,
                   search_deadline=time.time() + search_s, latency=latency,
                   max_latency_ms=budget.max_latency_ms)

    def images_for(self, work: tuple[int, ...]) -> float | None:
        """Images a model doing `work` per image would see in its refit, the winner's trial
        counted (the refit continues it); None without a measured cost."""
        if self.cost is None:
            return None
        return (self.refit_s + self.trial_s) / max(self.cost.seconds(work), 1e-12)

    @property
    def cap(self) -> ComputeCap | None:
        """The compute cap, with the latency cap (alone, all training affordable) if any."""
        latency = None if self.latency is None or self.max_latency_ms is None else \
            LatencyCap(model=self.latency, max_ms=self.max_latency_ms)
        if self.cost is None or self.max_image_s is None:
            return latency and ComputeCap(cost=Cost(s_per_mac=0, s_per_act=0, reference_s=0),
                                          max_image_s=math.inf, latency=latency)
        return ComputeCap(cost=self.cost, max_image_s=self.max_image_s, latency=latency)


def refit_images(budget: Budget, n_train: int,
                 frontier: RefitImages | None) -> RefitImages | None:
    """What the compute cap asks a refit of so many seconds to see: the frontier's images with
    `min_epochs` auto, else `min_epochs` epochs of the `n_train` images (at least
    MIN_REFIT_IMAGES for the cap); None, no cap: `min_epochs` 0, no data, or no frontier."""
    if budget.min_epochs == 0 or not n_train:
        return None
    if budget.min_epochs is None:
        return frontier
    fixed = budget.min_epochs * n_train  # the cap takes at least MIN_REFIT_IMAGES (Plan.make)
    why = f"min_epochs {budget.min_epochs:g} of {n_train:,} images (at least {MIN_REFIT_IMAGES:,})"
    return lambda seconds: (fixed, why)

"""What a run writes, typed: the contract every reader holds to (`autofit report`, `autofit
runs`, the benchmarks, and the HTTP service, which serves these models as its response bodies).

`summary.json` is a `Summary`, `journal.json` a `JournalState`, `best_so_far.json` a
`BestSoFarRecord`, a leaderboard row a `TrialRecord`. Each file carries `schema_version`; files
written before it existed (version 1) still validate: renamed fields keep their old name as an
alias, new fields have defaults, and unknown keys are ignored. Nothing here imports torch or
Ray, so reading a run needs neither.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BeforeValidator,
    ConfigDict,
    Field,
)

from autofit.budget import Plan
from autofit.config import RunArgs, TrialConfig
from autofit.latency_budget import LatencyInfo
from autofit.records.base import SCHEMA_VERSION, Record, Versioned
from autofit.records.decisions import Decision
from autofit.records.delivery import (
    ExportInfo,
    ExtensionInfo,
    QuantizedInfo,
    RefitInfo,
    TestResult,
)

__all__ = [
    "NO_CONTENDER", "SCHEMA_VERSION", "UNTRAINED", "BestSoFarRecord", "BudgetFacts", "DataFacts",
    "DataFingerprint", "Decision", "ExportInfo", "ExtensionInfo", "FileIssue", "JournalState",
    "Life", "Progress", "QuantizedInfo", "Record", "RefitInfo", "SearchClock", "SearchOutcome",
    "Summary", "TestResult", "TrialRecord", "Versioned", "WorkerFacts", "ranked"]
UNTRAINED = "not trained: search skipped"  # the space's prior when the plan skips the search
NO_CONTENDER = "not trained: no trial reached its first rung"  # ... or no trial could win


def ranked(value: float | None, ok: bool) -> float:
    """A trial's score for ranking: its val accuracy, or -1 (below every real score) when it
    failed or has none. The leaderboard and the live view rank by this one rule."""
    if not ok or value is None or not math.isfinite(value):
        return -1.0
    return float(value)


class Progress(Record):
    """One trial report: what ASHA ranks on (`val_accuracy` at `train_seconds`) and what the
    plan needs (throughputs, for sizing the refit and the final evaluation)."""

    val_accuracy: float
    val_images: int
    train_seconds: float
    epoch: float
    steps: int
    images_per_s: float
    eval_images_per_s: float
    loss: float
    state: str  # "running", "completed", "deadline" or "diverged"
    batch_size: int
    oom_retries: int = 0
    node: str = ""  # the Ray node that trained it: "IP/first 8 hex digits of its node id"


# A trial's last report, or None where it made none (version 1 wrote {} for that).
Report = Annotated[Progress | None, BeforeValidator(lambda value: None if value == {} else value)]


class TrialRecord(Record):
    """One trial as the leaderboard shows it; `metrics` is its last report (None: none)."""

    number: int
    trial_id: str
    config: TrialConfig
    metrics: Report = None
    status: str = "no result"
    error: str | None = None
    checkpoint: str | None = None  # the trial's last checkpoint: a directory, or a URI in --storage
    node: str = ""  # the Ray node it last reported from ("": it never reported)

    @property
    def score(self) -> float:
        value = None if self.metrics is None else self.metrics.val_accuracy
        return ranked(value, self.error is None and self.status != "diverged")

    @property
    def trained_s(self) -> float:
        return 0.0 if self.metrics is None else self.metrics.train_seconds

    @property
    def epochs(self) -> float:
        return 0.0 if self.metrics is None else self.metrics.epoch

    @property
    def images_per_s(self) -> float:
        return 0.0 if self.metrics is None else self.metrics.images_per_s


class SearchOutcome(Record):
    records: list[TrialRecord]
    overrun_s: float  # how long after the search deadline Tune handed back (negative: before)
    prior: TrialRecord | None = None  # the untrained config the refit trains: no search, or
    # no trial that trained enough to win
    min_trained_s: float = 0.0  # a trial wins only with this much training: the first rung
    decided: list[Decision] = []  # the choices the phase made (search/steps.py), for a resume

    @property
    def searched(self) -> bool:
        return self.prior is None

    @property
    def contenders(self) -> list[TrialRecord]:
        """The trials that may win: scored, and trained at least to the first rung. A trial a
        resume restarted at its deadline scores a model that trained 0 s (chance, 0.11 on
        CIFAR-10) and had won over the trials that were lost to the kill."""
        return [r for r in self.records if r.score >= 0 and r.trained_s > 0
                and r.trained_s >= self.min_trained_s]

    @property
    def top(self) -> TrialRecord:
        """The highest validation accuracy among the contenders (every trial when none is);
        the prior when there is one."""
        if self.prior is not None:
            return self.prior
        return max(self.contenders or self.records, key=lambda r: (r.score, r.trained_s))

    @property
    def best(self) -> TrialRecord:
        """The winner: of the contenders within one standard error of the top validation
        accuracy (a difference the validation set cannot tell from noise), the one trained the
        longest: its score is the surest and the refit continues more of its training. A
        5-minute CIFAR run had refitted a 0.71-epoch draw over the prior's full trial on 0.4352
        against 0.4350 (71.9% against the prior's recipe at 78.2%)."""
        top = self.top
        images = 0 if top.metrics is None else top.metrics.val_images
        if top.score < 0 or images <= 0 or top not in self.contenders:
            return top
        noise = math.sqrt(top.score * (1 - top.score) / images)
        ties = [r for r in self.contenders if r.score >= top.score - noise]
        return max(ties, key=lambda r: (r.trained_s, r.score))

    @property
    def val_accuracy(self) -> float | None:
        """The winner's validation accuracy; none when no trial was trained (search skipped)."""
        return self.best.score if self.searched else None


class BestSoFarRecord(Versioned):
    """`best_so_far.json`: where `best_so_far.onnx` came from: a finished trial, scored on the
    validation images it never trained on, or the refit part-way, scored on images it trains
    on (train+val: no validation, and the record says so)."""

    trial: int  # the trial; for the refit, the winner it retrains (0: the space's prior)
    val_accuracy: float | None = None  # a trial's; None for the refit
    params: int
    config: TrialConfig
    model: str | None = None  # the ONNX file's path, as the summary gives it
    source: Literal["trial", "refit"] = "trial"
    epoch: float | None = None  # the refit's, when it was exported
    train_seconds: float | None = None  # the refit's, in this run's lives
    accuracy: float | None = None  # the refit's, on `accuracy_on`
    accuracy_on: str | None = None


class Life(Record):
    """One process lifetime of a run: a resumed run has several."""

    started_at: float  # time.time() when this life's process started
    spent_before: float  # budget seconds earlier lives had used


class WorkerFacts(Record):
    where: str  # the line the plan shows: local Ray or a cluster, trials at a time, CPUs each
    packing: dict[str, Any] | None = None  # GPU runs: the memory probe and trials per GPU


class FileIssue(Record):
    file: str
    reason: str


class DataFacts(Record):
    name: str
    source: str
    sizes: dict[str, int]  # images per split: train, val, test
    resolution: dict[str, Any]  # height, width, channels, how it was chosen
    skipped: list[FileIssue] = []  # unreadable images left out
    ignored: list[FileIssue] = []  # files that are not images


class DataFingerprint(Record):
    """What a resumed run checks the data against: a changed dataset is refused."""

    classes: list[str]
    sizes: dict[str, int]
    shape: list[int]


class BudgetFacts(Record):
    minutes: float
    max_params: int
    search_share: float | None = None


class Summary(Versioned):
    """`summary.json`: a finished run's results, or why a failed one stopped."""

    status: Literal["finished", "failed", "stopped"]  # stopped: on request, with its best model
    elapsed_s: float  # budget seconds used, every life of a resumed run together
    phases: dict[str, float] = {}  # budget seconds per phase
    best_so_far: BestSoFarRecord | None = None
    stopped_phase: str | None = None  # a stopped run: the phase it was in
    # a failed run
    failed_phase: str | None = None
    error: str | None = None
    unreadable: list[FileIssue] = []
    # a finished run
    test_accuracy: float | None = None  # the ONNX model's, through onnxruntime
    val_accuracy: float | None = None  # the winning trial's; None where the search was skipped
    params: int | None = None
    onnx_params: int | None = None
    budget: BudgetFacts | None = None
    budget_s: float | None = None
    wall_s: float | None = None  # wall seconds since the first life started
    resumes: int = 0
    lives: list[Life] = []
    plan: Plan | None = None
    search_overrun_s: float | None = None
    trials: int | None = None  # None: no search finished
    trial_status: dict[str, int] = {}  # trials per leaderboard status
    trial_nodes: dict[str, int] = {}  # trials per Ray node that trained them (leaderboard `node`)
    best_node: str | None = None  # the node the winning trial trained on
    best_trial: int | None = None  # None: the search was skipped, the prior trained
    best_config: TrialConfig | None = None
    best_metrics: Report = None  # the winning trial's last report
    refit: RefitInfo | None = None
    extension: ExtensionInfo | None = None  # `autofit extend`: the parent, the model kept
    export: ExportInfo | None = None
    test: TestResult | None = None
    int8: QuantizedInfo | None = None  # --quantize int8
    latency: LatencyInfo | None = None  # --max-latency-ms: the exported model, timed
    decisions: list[Decision] = []  # made from the data before training (data/mirror.py)
    device: str | None = None  # "cpu" or "cuda"
    data_path: str | None = Field(default=None,  # "dali-gpu", "dali-cpu" or "torch"
                                  validation_alias=AliasChoices("data_path", "data_pipeline"))
    precision: str | None = None  # "bf16" or "fp32"
    threads: int | None = None
    workers: WorkerFacts | None = None
    data: DataFacts | None = None
    classes: list[str] = []
    input_shape: list[int] = []
    search_space: str | None = None
    seed: int | None = None
    autofit_version: str | None = None
    versions: dict[str, str] = {}  # python, torch, ray, dali ("not installed" where absent)
    finished_at: str | None = None


class SearchClock(Record):
    stop_suggesting_at: float  # time.time() after which no new trial could reach a rung


class JournalState(Versioned):
    """`journal.json`: autofit's record of a run for `--resume`. Rewritten every second while
    the run lives (`spent`, `phase`, `beat_at`) and once per finished phase."""

    model_config = ConfigDict(validate_assignment=True)

    args: RunArgs
    # tested: only the report left; stopped: on request, its best model scored and reported
    status: Literal["running", "tested", "finished", "stopped"] = "running"
    spent: dict[str, float] = {}  # budget seconds per phase
    lives: list[Life] = []
    phase: str | None = None
    beat_at: float | None = None  # time.time() of the last heartbeat: older than ALIVE_S, dead
    data: DataFingerprint | None = None
    data_decided: list[Decision] | None = None  # the data's decisions: a resume keeps them
    plan: Plan | None = None
    workers: WorkerFacts | None = None
    search_clock: SearchClock | None = None
    search: SearchOutcome | None = None  # the search's result, once it finished
    refit: RefitInfo | None = None  # the refit's result, once it finished
    int8: QuantizedInfo | None = None  # --quantize int8: this life's outcome (redone on resume)

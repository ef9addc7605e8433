"""What a run writes, typed: the contract every reader holds to (`autofit report`, `autofit
runs`, the benchmarks, and the HTTP service, which serves these models as its response bodies).

`summary.json` is a `Summary`, `journal.json` a `JournalState`, `best_so_far.json` a
`BestSoFarRecord`, a leaderboard row a `TrialRecord`. Each file carries `schema_version`; files
written before it existed (version 1) still validate: renamed fields keep their old name as an
alias, new fields have defaults, and unknown keys are ignored. Nothing here imports torch or
Ray, so reading a run needs neither.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
)

from autofit.budget import Plan
from autofit.config import RunArgs, TrialConfig
from autofit.files import write_atomic
from autofit.latency_budget import LatencyInfo

SCHEMA_VERSION = 2  # 1: the untyped dicts written before these models (read as they were)
UNTRAINED = "not trained: search skipped"  # the space's prior when the plan skips the search
NO_CONTENDER = "not trained: no trial reached its first rung"  # ... or no trial could win
RecordT = TypeVar("RecordT", bound="Record")


class Record(BaseModel):
    """A record on disk: unknown keys are ignored (a newer autofit's files still read) and
    non-finite floats are written as JSON's NaN/Infinity constants, as Python's json does."""

    model_config = ConfigDict(extra="ignore", ser_json_inf_nan="constants",
                              populate_by_name=True)

    def write(self, path: Path) -> None:
        """Atomically: a reader never sees half a record."""
        write_atomic(path, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def parse(cls: type[RecordT], raw: bytes | str) -> RecordT:
        """The record in a JSON document; ValueError (ValidationError is one) when it is not."""
        return cls.model_validate_json(raw)

    @classmethod
    def read(cls: type[RecordT], path: Path) -> RecordT | None:
        """The record at `path`, or None where there is none or it does not validate."""
        try:
            return cls.parse(path.read_bytes())
        except (OSError, ValueError):
            return None


class Versioned(Record):
    """A record file of its own, stamped with the schema it was written in."""

    schema_version: int = Field(default=SCHEMA_VERSION,
                                validation_alias=AliasChoices("schema_version", "version"))

    def write(self, path: Path) -> None:
        """In the current schema, whichever version it was read in."""
        Record.write(self.model_copy(update={"schema_version": SCHEMA_VERSION}), path)

    @classmethod
    def parse(cls: type[RecordT], raw: bytes | str) -> RecordT:
        """As Record.parse; a file with no version was written before the schema existed, and
        says version 1."""
        data = json.loads(raw)
        if isinstance(data, dict) and "schema_version" not in data and "version" not in data:
            data["schema_version"] = 1
        return cls.model_validate(data)


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


class RefitInfo(Record):
    seconds_planned: float
    epochs_planned: float | None
    epochs: float
    steps: int
    seconds: float
    state: str
    train_images: int
    warm_start: str | None = None  # whose weights the refit began from (None: initialised)
    exports: int = 0  # best_so_far.onnx exports from the refit's weights, in its last life
    exports_s: float = 0.0  # their cost: export, verification and scoring
    node: str | None = None  # the Ray node it ran on, as Ray work on a cluster (None: the driver)
    start_s: float | None = None  # on a cluster: from asking Ray for it to its first step there


class ExportInfo(Record):
    path: str
    exporter: str
    opset: int
    onnx_params: int
    parity_max_abs_diff: float
    parity_images: int


class ExtensionInfo(Record):
    """`autofit extend`: the parent run, and which model was kept by validation accuracy (both
    models trained on the validation images: this guards against a worse restart)."""

    parent: str  # the parent's run directory
    kept: Literal["extended", "parent"]
    val_images: int
    val_accuracy: float  # the extended model's
    parent_val_accuracy: float
    test_accuracy: float  # the extended model's, whichever was kept
    parent_test_accuracy: float | None  # as the parent's summary gives it


class QuantizedInfo(Record):
    """--quantize int8: model.int8.onnx `kept`, or `rejected` (checker, agreement), `skipped`
    (no time) or `failed` (quantization raised), with why (autofit/deliver/quantize.py)."""

    status: Literal["kept", "rejected", "skipped", "failed"]
    reason: str | None = None
    path: str | None = None
    method: str | None = None
    calibration_images: int | None = None
    agreement: float | None = None  # top-1, with model.onnx, on the test images
    agreement_bar: float | None = None
    test_accuracy: float | None = None  # model.int8.onnx's, through onnxruntime
    float_test_accuracy: float | None = None
    accuracy_drop: float | None = None  # float minus int8
    test_images: int | None = None
    int8_bytes: int | None = None
    float_bytes: int | None = None
    int8_latency_ms: float | None = None  # batch-1 median after warm-up (deliver/latency.py)
    float_latency_ms: float | None = None
    latency_threads: int | None = None
    latency_runs: int | None = None
    latency_warmup: int | None = None
    quantize_s: float | None = None  # calibration and quantization
    seconds: float | None = None  # all of it, checks and timings included
    planned_s: float | None = None  # what the final reserve kept for it


class TestResult(Record):
    """The test set through the exported ONNX model in onnxruntime."""

    __test__ = False  # not a pytest class, whatever its name

    accuracy: float
    images: int
    confusion: list[list[int]]  # rows: true class, columns: predicted
    per_class_accuracy: dict[str, float | None]  # None: the class has no test image


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
    plan: Plan | None = None
    workers: WorkerFacts | None = None
    search_clock: SearchClock | None = None
    search: SearchOutcome | None = None  # the search's result, once it finished
    refit: RefitInfo | None = None  # the refit's result, once it finished
    int8: QuantizedInfo | None = None  # --quantize int8: this life's outcome (redone on resume)

"""`RunContext`: what the phases of one run share, instead of a dozen parameters each.

Set up once per process life by the runner; each phase fills in its result (`plan`,
`outcome`, `refit`, `export`, `test`) so the summary is built from one object.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from autofit import events
from autofit.budget import Budget, Clock, Plan
from autofit.config import RunArgs, TrialConfig
from autofit.journal import Journal
from autofit.latency_budget import LatencyInfo, LatencyModel
from autofit.records import (
    Decision,
    ExportInfo,
    ExtensionInfo,
    RefitInfo,
    SearchOutcome,
    TestResult,
)
from autofit.storage import Storage

if TYPE_CHECKING:
    from autofit.data.dataset import Dataset
    from autofit.search.cluster import Workers


@dataclass
class RunContext:
    journal: Journal
    clock: Clock
    log: logging.Logger
    threads: int
    device: str = "cpu"  # where trials and the refit train: "cpu" or "cuda"
    data_path: str = ""  # the data path taken: "dali-gpu", "dali-cpu" or "torch"
    precision: str = ""  # "bf16" or "fp32"
    plan: Plan | None = None
    outcome: SearchOutcome | None = None
    refit: RefitInfo | None = None
    export: ExportInfo | None = None
    test: TestResult | None = None
    cluster: Workers | None = None  # a run on a cluster: Ray, held from the search to the test
    dataset: Dataset | None = None  # once loaded: what a stopped run scores its best model on
    extension: ExtensionInfo | None = None  # `autofit extend`: which model was kept
    latency: LatencyModel | None = None  # --max-latency-ms: calibrated in setup, for the plan
    latency_info: LatencyInfo | None = None  # --max-latency-ms: the exported model, timed
    decisions: list[Decision] = field(default_factory=list)  # made from the data, in setup
    # onnxruntime's test-pass images/s for a model, timed untrained (the runner sets it:
    # deliver/evaluate.untrained_speed), so the plan keeps the time its model's test pass takes
    test_speed: Callable[[TrialConfig], float] | None = None

    @property
    def args(self) -> RunArgs:
        return self.journal.args

    @property
    def budget(self) -> Budget:
        return self.journal.args.budget

    @property
    def seed(self) -> int:
        return self.journal.args.seed

    @property
    def run_dir(self) -> Path:
        return self.journal.run_dir

    @property
    def storage(self) -> Storage:
        """Where Tune's state and the checkpoints go: `--storage`, else the run directory."""
        return Storage(self.args.storage or str(self.run_dir.resolve() / "tune"))

    @property
    def resumed(self) -> bool:
        return bool(self.clock.spent_before)

    def start_phase(self, name: str) -> None:
        """The clock's next phase, said as an event (the budget bar and timeline show it)."""
        self.clock.start_phase(name)
        events.emit(self.log, "phase", "phase: %s", name, show=False, phase=name)

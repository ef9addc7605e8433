"""The service's request and response bodies (the run's own records, `records.Summary` and
`records.BestSoFarRecord`, are served as they are on disk)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from autofit.budget import MAX_PARAMS, parse_params
from autofit.errors import UsageError
from autofit.presets import listed
from autofit.records import BestSoFarRecord, Summary

MAX_MINUTES = 7 * 24 * 60.0  # a week: beyond that a typo is likelier than a plan
RunStatus = Literal["queued", "running", "finished", "failed", "stopped"]


def _preset(kind: str, name: str) -> str:
    """A preset by name only: a request never names a file on the server."""
    known = [p.name for p in listed(kind)]
    if name not in known:
        raise ValueError(f"unknown {kind.replace('_', ' ').rstrip('s')} {name!r} (known: "
                         f"{', '.join(known)})")
    return name


class RunRequest(BaseModel):
    """`POST /v1/runs`: what `autofit run` is given, by name and number only."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(min_length=1, max_length=64)
    minutes: float | None = Field(default=None, gt=0, le=MAX_MINUTES,
                                  description="wall-clock budget; default: the budget preset's")
    max_params: int | None = Field(default=None, description="parameter cap, 2000000 or '2M'")
    max_latency_ms: float | None = Field(default=None, gt=0, allow_inf_nan=False, description=(
        "latency cap: batch-1 ms in onnxruntime on the server (autofit run --max-latency-ms)"))
    space: str = "default"
    budget: str = "default"
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    quantize: Literal["int8"] | None = Field(default=None, description="int8: also "
                                             "model.int8.onnx (autofit run --quantize)")

    @field_validator("max_params", mode="before")
    @classmethod
    def _params(cls, value: Any) -> int | None:
        if value is None:
            return None
        try:
            return parse_params(value)
        except UsageError:
            raise ValueError(f"must be a count like 2M, 500k or 250000 between 1 and "
                             f"{MAX_PARAMS:,}") from None

    @field_validator("space")
    @classmethod
    def _space(cls, value: str) -> str:
        return _preset("search_spaces", value)

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: str) -> str:
        return _preset("budgets", value)


class RunCreated(BaseModel):
    id: str
    status: RunStatus
    position: int | None


class RunView(BaseModel):
    """`GET /v1/runs/{id}`: the queue's facts and the run's own files, read as they are."""

    id: str
    dataset: str
    status: RunStatus
    position: int | None = None
    request: RunRequest
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None
    queued_s: float | None = None  # seconds it waited in the queue before its budget started
    budget_s: float | None = None
    used_s: float | None = None  # budget seconds used, every life together
    phase: str | None = None
    stop_requested: bool = False
    best_so_far: BestSoFarRecord | None = None
    test_accuracy: float | None = None
    error: str | None = None
    files: list[str] = []
    summary: Summary | None = None


class RunList(BaseModel):
    runs: list[RunView]


class DatasetView(BaseModel):
    id: str
    name: str
    format: str
    classes: list[str]
    images: int
    test_images: int | None
    bytes: int
    created_at: float


class DatasetList(BaseModel):
    datasets: list[DatasetView]


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)


class TokenView(BaseModel):
    id: str
    name: str
    admin: bool
    created_at: float
    revoked: bool


class TokenCreated(BaseModel):
    id: str
    name: str
    token: str  # shown once: only its hash is kept
    created_at: float


class TokenList(BaseModel):
    tokens: list[TokenView]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    queued: int
    running: int

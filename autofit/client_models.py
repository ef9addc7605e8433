"""The service's response bodies as `autofit.client` returns them (fields per docs/service.md).

Kept apart from the client's HTTP code so both stay short; like the client, this imports only
pydantic.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

ENDED = frozenset({"finished", "failed", "stopped"})


class _Model(BaseModel):
    """A response body: keys a newer server adds are ignored, so an older client still reads."""

    model_config = ConfigDict(extra="ignore")


class Health(_Model):
    status: str
    queued: int = 0
    running: int = 0


class Token(_Model):
    """`token` (the secret) is set only in `create_token`'s answer: the server shows it once."""

    id: str
    name: str
    admin: bool = False
    created_at: float | None = None
    revoked: bool = False
    token: str | None = None


class Dataset(_Model):
    id: str
    name: str
    format: str
    classes: list[str] = []
    images: int = 0
    test_images: int | None = None
    bytes: int = 0
    created_at: float | None = None


class RunRequest(_Model):
    dataset: str
    minutes: float | None = None
    max_params: int | str | None = None
    space: str | None = None
    budget: str | None = None
    seed: int | None = None


class RunCreated(_Model):
    id: str
    status: str = "queued"
    position: int | None = None


class Run(_Model):
    id: str
    dataset: str
    status: str
    position: int | None = None
    request: RunRequest | None = None
    created_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    queued_s: float | None = None
    budget_s: float | None = None
    used_s: float | None = None
    phase: str | None = None
    best_so_far: dict[str, Any] | None = None
    test_accuracy: float | None = None
    error: str | None = None
    files: list[str] = []
    summary: dict[str, Any] | None = None

    @property
    def ended(self) -> bool:
        """Finished, failed or stopped: nothing about it changes any more."""
        return self.status in ENDED


class Label(_Model):
    label: str
    probability: float


class Prediction(_Model):
    """One image's answer, as `autofit predict --json` prints it: `top` or `error`."""

    image: str
    top: list[Label] = []
    error: str | None = None

    @property
    def label(self) -> str | None:
        return self.top[0].label if self.top else None

"""The ledger: one row per accepted POST, which is what tests count charges with.

``GET /v2/logs`` is the provider-shaped view of the same rows, which clients use to reconcile a
POST whose answer they never received.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from .config import CREDITS_PER_USD, MODEL

GenerationStatus = Literal["queued", "generating", "completed", "error"]
LogStatus = Literal["pending", "succeeded", "failed"]
LOG_STATUS: dict[GenerationStatus, LogStatus] = {
    "queued": "pending",
    "generating": "pending",
    "completed": "succeeded",
    "error": "failed",
}


class LedgerEntry(BaseModel):
    """An accepted generation and what it cost. Times are unix seconds; None until reached."""

    generation_id: str
    request_fingerprint: str
    model: str = MODEL
    fields: dict[str, Any] = Field(default_factory=dict)  # an extra model's own fields, as sent
    client_request_id: str | None = None
    prompt: str
    strength: float
    seed: int
    accepted_at: float
    started_at: float | None = None
    completed_at: float | None = None
    status: GenerationStatus = "queued"
    error: dict[str, Any] | None = None
    output_sha256: str | None = None
    output_bytes: int | None = None
    credits: int = 0
    polls: int = 0
    row_id: str = Field(default_factory=lambda: str(uuid.uuid4()))  # the usage-log row's own id

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "error")


def iso_utc(unix_seconds: float) -> str:
    """``2025-01-31T12:00:00.000Z``, the timestamp style of the provider's bodies."""
    return datetime.fromtimestamp(unix_seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log_row(entry: LedgerEntry, shape: str = "standard") -> dict[str, Any]:
    """The ``GET /v2/logs`` row for an entry, in one of the shapes a client must survive."""
    row: dict[str, Any] = {
        "id": entry.row_id,
        "time": iso_utc(entry.accepted_at),
        "model": entry.model,
        "status": LOG_STATUS[entry.status],
        "client_request_id": entry.client_request_id,
        "credits": entry.credits,
        "cost": entry.credits / CREDITS_PER_USD,
    }
    if shape == "standard":
        row.update(generation_id=entry.generation_id, inference_id=entry.generation_id)
    elif shape == "inference_id_only":
        row.update(inference_id=entry.generation_id)
    else:  # "unidentifiable": the id sits under a name no client could know
        row.update(task_reference=entry.generation_id)
    return row


def refused_row(client_request_id: str | None, at: float, status_code: int) -> dict[str, Any]:
    """A POST refused before acceptance (4xx/5xx, by the provider or a gateway): failed, zero cost, no id."""
    return {
        "id": str(uuid.uuid4()),
        "time": iso_utc(at),
        "model": MODEL,
        "status": "failed",
        "client_request_id": client_request_id,
        "credits": 0,
        "cost": 0.0,
        "status_code": status_code,
    }

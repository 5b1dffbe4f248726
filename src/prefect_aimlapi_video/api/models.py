"""Pydantic models of what comes back: the provider's answers, read leniently, and our result.

The provider documents `meta.usage.credits_used` on POST but `tokens_used` on GET (and shows
`tokens_used` in its POST sample), types `error` as "anything" on GET, and has more status words
than its schema lists. `Generation` reads all of that without failing. What we send is strict and
lives in `api.requests`.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field

CREDITS_PER_USD = 2_000_000

PENDING_STATUSES = frozenset({"queued", "generating", "waiting", "active"})
COMPLETED_STATUSES = frozenset({"completed"})
FAILED_STATUSES = frozenset({"error", "failed"})


class Phase(str, Enum):
    """Where a generation stands, whatever word the provider used for it."""

    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    UNKNOWN = "unknown"


class Usage(BaseModel):
    model_config = ConfigDict(extra="allow")

    credits_used: float | None = None
    tokens_used: float | None = None

    @property
    def credits(self) -> float | None:
        return self.credits_used if self.credits_used is not None else self.tokens_used


class Meta(BaseModel):
    model_config = ConfigDict(extra="allow")

    usage: Usage | None = None


class ResultVideo(BaseModel):
    model_config = ConfigDict(extra="allow")

    url: str
    duration: float | None = None


class Generation(BaseModel):
    """One answer of POST or GET `/v2/video/generations`, read leniently."""

    model_config = ConfigDict(extra="allow")

    id: str
    status: str
    video: ResultVideo | None = None
    duration: float | None = None
    error: Any = None
    meta: Meta | None = None

    @property
    def phase(self) -> Phase:
        status = self.status.lower()
        if status in COMPLETED_STATUSES:
            return Phase.COMPLETED
        if status in FAILED_STATUSES:
            return Phase.FAILED
        if status in PENDING_STATUSES:
            return Phase.PENDING
        return Phase.UNKNOWN

    @property
    def credits(self) -> float | None:
        return self.meta.usage.credits if self.meta and self.meta.usage else None

    @property
    def video_duration(self) -> float | None:
        return (self.video.duration if self.video else None) or self.duration

    def error_summary(self) -> tuple[str, str]:
        """(name, message) from either error shape the provider uses, or from anything else."""
        error = self.error
        if isinstance(error, dict):
            if "detail" in error and isinstance(error["detail"], list):
                parts = []
                for item in error["detail"]:
                    if isinstance(item, dict):
                        loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                        parts.append(f"{loc}: {item.get('msg', '')}".strip(": "))
                return "ValidationError", "; ".join(parts) or "invalid request"
            name = str(error.get("name") or error.get("type") or "GenerationError")
            return name, str(error.get("message") or error.get("msg") or json.dumps(error)[:500])
        if isinstance(error, str) and error:
            return "GenerationError", error
        return "GenerationError", "the provider reported status 'error' without details"


def credits_to_usd(credits: float | None) -> float | None:
    return None if credits is None else credits / CREDITS_PER_USD



class VideoInfo(BaseModel):
    """What a video file holds, for validation and for the run's summary."""

    width: int
    height: int
    frames: int
    fps: float | None = None
    duration: float | None = None
    codec: str | None = None
    size_bytes: int | None = None

    def describe(self) -> str:
        fps = f" @ {self.fps:g} fps" if self.fps else ""
        return f"{self.width}x{self.height}, {self.frames} frames{fps}"


class Timing(BaseModel):
    """Durations of one generation's phases, in seconds (None where not observed)."""

    queued_s: float | None = None
    generating_s: float | None = None
    download_s: float | None = None
    total_s: float | None = None


class StatusChange(BaseModel):
    status: str
    at: float = Field(description="unix time when we first saw this status")


class VideoToVideoResult(BaseModel):
    """Everything about one generation: the flow's return value, its summary artifact, its sidecar.

    Besides `model` and `prompt`, it carries the request's other fields as they are declared by
    the model's request class (`api.requests`): for the Krea model `strength`, `seed` and
    `enable_prompt_expansion`, at the top level of the sidecar like every other field. Holds no
    secret: the input is shown as a path, an https URL without its query, or s3://...
    """

    model_config = ConfigDict(extra="allow")  # the request's own fields, whatever its model has

    status: str
    model: str
    prompt: str | None = None  # None for a generation collected by id (the request is not known)
    input: str
    input_info: VideoInfo | None = None
    generation_id: str | None = None
    client_request_id: str | None = None
    request_ids: list[str] = []
    resumed: bool = False
    timeline: list[StatusChange] = []
    timing: Timing = Timing()
    polls: int | None = None
    credits: float | None = None
    estimate_credits: float | None = None  # what it was expected to cost, before it was paid
    # What this run adds to the bill: the credits of a generation it is the first to see charged, 0
    # for one another run already reported (a resume, an adoption, a collect), or not charged.
    charged_credits: float | None = 0.0
    output: str | None = None
    sidecar: str | None = None
    strip: str | None = None  # where the before/after preview image was stored
    collect_command: str | None = None  # set when a paid generation was left behind (timeout, cancel)
    budget: str | None = None  # the spend cap's state after this generation (spent, in flight, cap)
    output_info: VideoInfo | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    error_name: str | None = None
    error_message: str | None = None
    flow_run_id: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def usd(self) -> float | None:
        return credits_to_usd(self.credits)

    def one_line(self) -> str:
        """`completed: <output> (bytes, sha256, credits, seconds, generation id)`, as the CLI prints it."""
        credits = f"{self.credits:,.0f} credits" if self.credits is not None else "usage unknown"
        if self.resumed and not self.charged_credits:
            credits = f"resumed: no new charge, {credits} when first paid"
        total = f"{self.timing.total_s:.1f} s" if self.timing.total_s is not None else "?"
        return (
            f"{self.status}: {self.output} ({self.size_bytes or 0:,} bytes, sha256 {(self.sha256 or '?')[:16]}..., "
            f"{credits}, {total}, generation {self.generation_id})"
        )

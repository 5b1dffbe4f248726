"""Pydantic models at the API's edge: strict on what we send, lenient on what we receive.

The provider documents `meta.usage.credits_used` on POST but `tokens_used` on GET (and shows
`tokens_used` in its POST sample), types `error` as "anything" on GET, and has more status words
than its schema lists. `Generation` reads all of that without failing; `GenerationParams`
refuses anything we would be charged for sending wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator

MODEL = "krea/krea-wan-14b/video-to-video"
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1
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


class GenerationParams(BaseModel):
    """The user's choices for one generation, validated before anything is sent or spent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    strength: float = 0.85
    seed: int | None = None
    enable_prompt_expansion: bool = True

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"prompt must be text, got {type(value).__name__}")
        value = value.strip()
        if not value:
            raise ValueError("prompt is empty: describe the look you want, e.g. 'watercolor painting'")
        if len(value) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt has {len(value)} characters; the maximum is {MAX_PROMPT_CHARS}")
        return value

    @field_validator("strength", mode="before")
    @classmethod
    def _strength(cls, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"strength must be a number between 0 and 1, got {value!r}")
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"strength must be between 0 and 1 (0 keeps the original), got {value!r}")
        return float(value)

    @field_validator("seed", mode="before")
    @classmethod
    def _seed(cls, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"seed must be a whole number or omitted, got {value!r}")
        if not 0 <= value <= MAX_SEED:
            raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {value}")
        return value

    @field_validator("enable_prompt_expansion", mode="before")
    @classmethod
    def _expansion(cls, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"enable_prompt_expansion must be true or false, got {value!r}")
        return value

    def payload(self, video_url: str) -> dict[str, Any]:
        """The POST body, exactly the fields the provider documents."""
        body: dict[str, Any] = {
            "model": MODEL,
            "prompt": self.prompt,
            "video_url": video_url,
            "strength": self.strength,
            "enable_prompt_expansion": self.enable_prompt_expansion,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        return body

    def fingerprint(self, video_identity: str) -> str:
        """A stable hash of the logical request: same choices on the same video -> same value."""
        canonical = json.dumps(
            {**self.model_dump(), "model": MODEL, "video": video_identity},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


def from_text(values: dict[str, Any]) -> dict[str, Any]:
    """Parameters that arrive as text (CSV cells, S3 metadata, trigger templates) as typed values.

    Only clean conversions are made; anything else is left as text for `GenerationParams` to
    refuse with a message naming the field.
    """
    out = dict(values)
    for name, kind in (("strength", float), ("seed", int)):
        if isinstance(out.get(name), str):
            try:
                out[name] = kind(out[name].strip())
            except ValueError:
                pass
    flag = out.get("enable_prompt_expansion")
    if isinstance(flag, str) and flag.strip().lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        out["enable_prompt_expansion"] = flag.strip().lower() in ("true", "1", "yes", "on")
    return out


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

    Holds no secret: the input is shown as a path, an https URL without its query, or s3://...
    """

    status: str
    model: str = MODEL
    prompt: str
    strength: float
    seed: int | None
    enable_prompt_expansion: bool
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
    output: str | None = None
    sidecar: str | None = None
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

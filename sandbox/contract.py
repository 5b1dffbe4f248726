"""The provider's HTTP contract: request validation and the shapes of response and error bodies."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .config import MODEL
from .inputs import parse_data_uri
from .ledger import LedgerEntry, iso_utc


class GenerationRequest(BaseModel):
    """``POST /v2/video/generations`` body, validated strictly (no "7" for 7, no true for 1)."""

    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)

    model: str
    prompt: str = Field(min_length=1)
    video_url: str
    strength: float = Field(0.85, ge=0, le=1)
    enable_prompt_expansion: bool = True
    seed: int | None = None

    @field_validator("video_url")
    @classmethod
    def _supported_scheme(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme.lower() == "data" or (parts.scheme.lower() in ("http", "https") and parts.hostname):
            return url
        raise ValueError("must be an https (or http) URL or a data: URI")


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """``[{field, message}]`` from pydantic, without echoing inputs (a data URI can be megabytes)."""
    return [
        {"field": ".".join(map(str, e["loc"])) or "body", "message": e["msg"]} for e in exc.errors(include_input=False)
    ]


class BodyError(Exception):
    """A request body the API refuses with 400; ``errors`` name the offending fields."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        super().__init__("Body validation error: " + "; ".join(f"{e['field']}: {e['message']}" for e in errors))


@dataclass(frozen=True)
class Submission:
    request: GenerationRequest
    inline_video: bytes | None  # decoded data URI, None for a URL
    fingerprint: str  # sha256 of the canonical JSON body
    extra: dict[str, Any] = field(default_factory=dict)  # an extra model's own fields


def parse_submission(raw: bytes, max_data_uri_bytes: int, extra_models: Sequence[str] = ()) -> Submission:
    """Validate a POST body, decode a data URI, fingerprint the request; raises BodyError. The model
    must be Krea's, or one of `extra_models` (whose other fields are kept in `Submission.extra`)."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BodyError([{"field": "body", "message": f"not valid JSON ({exc})"}]) from None
    if not isinstance(body, dict):
        raise BodyError([{"field": "body", "message": "must be a JSON object"}])
    try:
        request = GenerationRequest.model_validate(body)
    except ValidationError as exc:
        raise BodyError(field_errors(exc)) from None
    if request.model != MODEL and request.model not in extra_models:
        raise BodyError([{"field": "model", "message": f"Input should be '{MODEL}'"}])
    extra = {k: v for k, v in body.items() if k not in GenerationRequest.model_fields} if request.model != MODEL else {}
    inline = None
    if request.video_url[:5].lower() == "data:":
        try:
            inline = parse_data_uri(request.video_url, max_data_uri_bytes)
        except ValueError as exc:
            raise BodyError([{"field": "video_url", "message": str(exc)}]) from None
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return Submission(request, inline, hashlib.sha256(canonical.encode()).hexdigest(), extra)


def new_generation_id(model: str = MODEL) -> str:
    """Ids look like the provider's: ``<uuid4>:<model>`` (so they hold ':' and '/')."""
    return f"{uuid.uuid4()}:{model}"


def error_body(status: int, message: str, path: str, request_id: str, **extra: Any) -> dict[str, Any]:
    """The provider's error shape."""
    return {
        "message": message,
        "path": path,
        "requestId": request_id,
        "statusCode": status,
        "timestamp": iso_utc(time.time()),
        **extra,
    }


def usage(credits: int) -> dict[str, Any]:
    """POST's schema requires ``credits_used``, GET's ``tokens_used``; send both on both."""
    return {"usage": {"tokens_used": credits, "credits_used": credits}}


def generation_body(
    entry: LedgerEntry, *, status: str, credits: int, video_url: str | None, duration: float | None
) -> dict[str, Any]:
    """A generation as POST and GET report it; ``status`` may be a masked (unknown) word."""
    body: dict[str, Any] = {"id": entry.generation_id, "status": status}
    if status == "completed" and video_url is not None:
        body["video"] = {"url": video_url, "duration": duration}
        body["duration"] = duration
    elif status == "error":
        body["error"] = entry.error
    body["meta"] = usage(credits)
    return body

"""The run's settings (everything but the request itself), checked before anything is paid.

The flows run with Prefect's parameter validation off (their own messages say what to change), so
a value from a deployment, the UI, the CLI or a trigger template arrives as whatever JSON gave:
a poll policy as a dict, a number as text. `RunSettings` coerces what is clearly meant and
refuses the rest with one message naming each field, before the first paid call; nothing fails
for a setting after the POST.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.media.limits import InputLimits
from prefect_aimlapi_video.media.video_checks import DEFAULT_PRESIGN_SECONDS
from prefect_aimlapi_video.storage.templates import check_template
from prefect_aimlapi_video.submission.polling import DEFAULT_RECONCILE_SECONDS, DEFAULT_TIMEOUT_SECONDS, PollPolicy

MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # S3's limit for SigV4 presigned URLs
Scope = Literal["flow-run", "request"]
class RunSettings(BaseModel):
    """How to run one generation: where things go, how long to wait, what counts as the same generation."""

    model_config = ConfigDict(extra="forbid")

    output: str | None = None
    output_storage: str | None = None
    aws_credentials: str | None = None
    stage_to: str | None = None
    presign_expiry_seconds: int = Field(default=DEFAULT_PRESIGN_SECONDS, gt=0, le=MAX_PRESIGN_SECONDS)
    idempotency_key: str | None = Field(default=None, max_length=512)
    idempotency_scope: Scope = "flow-run"
    submissions: str | None = None
    timeout_seconds: float = Field(default=DEFAULT_TIMEOUT_SECONDS, gt=0)
    reconcile_grace_seconds: float = Field(default=DEFAULT_RECONCILE_SECONDS, ge=0)
    poll_policy: PollPolicy | None = None  # None: learned from past generations (see `submission.learned_polling`)
    max_usd: float | None = Field(default=None, gt=0)
    max_credits: float | None = Field(default=None, gt=0)
    budget: str | None = Field(default=None, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")
    limits: InputLimits = Field(default_factory=InputLimits)

    @field_validator("limits", mode="before")
    @classmethod
    def _limits(cls, value: Any) -> InputLimits:
        return InputLimits.parse(value)

    @field_validator("output", "output_storage", "aws_credentials", "stage_to", "submissions", "idempotency_key",
                     "budget", mode="before")
    @classmethod
    def _text_or_none(cls, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError(f"must be text, got {type(value).__name__}")
        return value.strip() or None

    @field_validator("output")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        return None if value is None else check_template(value)

    @field_validator("submissions")
    @classmethod
    def _store(cls, value: str | None) -> str | None:
        if value is not None and "://" in value and not value.startswith("s3://"):
            raise ValueError(f"{value!r}: use a local directory or s3://bucket/prefix")
        return value

    @field_validator("timeout_seconds", "reconcile_grace_seconds", mode="before")
    @classmethod
    def _finite_number(cls, value: Any) -> float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ValueError(f"must be a number of seconds, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"must be a finite number of seconds, got {value!r}")
        return float(value)

    @field_validator("presign_expiry_seconds", mode="before")
    @classmethod
    def _whole_seconds(cls, value: Any) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number of seconds, got {value!r}")
        return value

    @field_validator("poll_policy", mode="before")
    @classmethod
    def _policy(cls, value: Any) -> Any:
        """None to learn from past generations; a dict (deployments, the UI) or JSON text (templates)."""
        if value is None or value == "":
            return None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError(f"must be a PollPolicy or an object of its fields, got {value[:80]!r}") from None
        return value


def validate_settings(**values: Any) -> RunSettings:
    """`RunSettings` from flow parameters, or `InvalidInputError` naming every field that is wrong."""
    try:
        return RunSettings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {str(e['msg']).removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise InvalidInputError(f"Invalid settings: {problems}") from None

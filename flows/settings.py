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
    """The advanced options every flow shares: where things go besides `output`, how long to wait,
    what counts as the same generation, what it may cost. One parameter (`settings`), a form in the
    UI; a dict or JSON text of its fields is accepted too (deployments, trigger templates)."""

    model_config = ConfigDict(extra="forbid")

    output_storage: str | None = Field(None, description="A writable filesystem block, `block-type-slug/name`, "
                                       "that `output` is a path in.")
    aws_credentials: str | None = Field(None, description="An AwsCredentials block name for s3:// inputs, outputs "
                                        "and records (default: the AWS default chain).")
    stage_to: str | None = Field(None, description="An S3Bucket block (`s3-bucket/name`) to upload local files "
                                 "above the inline cap to.")
    presign_expiry_seconds: int = Field(DEFAULT_PRESIGN_SECONDS, gt=0, le=MAX_PRESIGN_SECONDS,
                                        description="Lifetime of the presigned URL the API fetches an S3 input with.")
    idempotency_scope: Scope = Field("flow-run", description="Without an idempotency key, what counts as the same "
                                     "generation: this flow run and its retries, or the request itself in any run.")
    submissions: str | None = Field(None, description="Where the exactly-once records live: a directory (one host) "
                                    "or s3://bucket/prefix (every worker); default AIMLAPI_SUBMISSIONS_DIR, else "
                                    "$PREFECT_HOME/aimlapi/submissions.")
    timeout_seconds: float = Field(DEFAULT_TIMEOUT_SECONDS, gt=0, description="Stop waiting after this long (the "
                                   "generation may still finish: run again to resume, or collect it).")
    reconcile_grace_seconds: float = Field(DEFAULT_RECONCILE_SECONDS, ge=0, description="The longest a POST with an "
                                           "unknown outcome waits to show in the usage log before it is sent again "
                                           "(less where this account's log has been learned).")
    poll_policy: PollPolicy | None = Field(None, description="The polling schedule; default: learned from past "
                                           "generations (`submission.learned_polling`).")
    max_usd: float | None = Field(None, gt=0, description="A spend cap in USD for the budget (see `budget`).")
    max_credits: float | None = Field(None, gt=0, description="A spend cap in credits (2,000,000 = $1).")
    budget: str | None = Field(None, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$", description="The name of the "
                               "budget a cap applies to, shared by every run naming it; default: this run (or batch).")
    limits: InputLimits = Field(default_factory=InputLimits, description="What an input may be and what one "
                                "generation may cost, checked before paying.")

    @classmethod
    def parse(cls, value: Any) -> RunSettings:
        """From a flow parameter: None (the defaults), the model, a dict or JSON text; `InvalidInputError`."""
        if isinstance(value, cls):
            return value
        return _validated(cls, _given(value))

    @field_validator("limits", mode="before")
    @classmethod
    def _limits(cls, value: Any) -> InputLimits:
        return InputLimits.parse(value)

    @field_validator("output_storage", "aws_credentials", "stage_to", "submissions", "budget", mode="before")
    @classmethod
    def _text_or_none(cls, value: Any) -> str | None:
        return _text(value)

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


class CheckedRun(RunSettings):
    """A run's settings with the flow's own `output` and `idempotency_key`, all checked together."""

    output: str | None = None
    idempotency_key: str | None = Field(None, max_length=512)

    @field_validator("output", "idempotency_key", mode="before")
    @classmethod
    def _own_text(cls, value: Any) -> str | None:
        return _text(value)

    @field_validator("output")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        return None if value is None else check_template(value)


def check_run(settings: Any = None, **own: Any) -> CheckedRun:
    """The run's settings (`settings`: anything `RunSettings.parse` takes) with the flow's own
    `output` and `idempotency_key`, or `InvalidInputError` naming every field that is wrong."""
    return _validated(CheckedRun, {**_given(settings), **own})


def _given(value: Any) -> dict[str, Any]:
    """The fields a `settings` parameter gives, unchecked: None, the model, a dict or JSON text."""
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InvalidInputError(f"settings is not JSON: {value[:100]!r}") from None
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_unset=True)
    if not isinstance(value, dict):
        raise InvalidInputError(f"settings must be an object of {', '.join(RunSettings.model_fields)}.")
    return value


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"must be text, got {type(value).__name__}")
    return value.strip() or None


def _validated(model: type[RunSettings], values: dict[str, Any]) -> Any:
    try:
        return model(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {str(e['msg']).removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise InvalidInputError(f"Invalid settings: {problems}") from None

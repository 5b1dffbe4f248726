"""What we ask the provider for: one class per model on `POST /v2/video/generations`, declared once.

A request class owns everything about its model: the model name, the fields with their limits and
defaults, the POST body, the fingerprint that names a logical generation, and how long a
generation usually takes. The rest derives from it: the flows' defaults (`DEFAULTS`), the
per-video overrides they accept, batch item fields, the S3 metadata names the bridge and the sweep
read, the CLI's options, and the request part of a result. Adding a model on the same endpoint is
one subclass and `@register`.

Strict on what we send: anything we would be charged for sending wrong is refused here, with a
message naming the field, before anything is spent.
"""

from __future__ import annotations

import hashlib
import json
import math
import types
import typing
import unicodedata
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from prefect_aimlapi_video.api.errors import InvalidInputError

MAX_SEED = 2**32 - 1
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class VideoRequest(BaseModel):
    """A generation request for one model: its fields are exactly the POST body's, less `video_url`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    MODEL: ClassVar[str]
    EXPECTED_SECONDS: ClassVar[float]  # typical processing time, for progress and polling

    def payload(self, video_url: str) -> dict[str, Any]:
        """The POST body: the model, `video_url`, and every field that is set (None means "omit")."""
        return {"model": self.MODEL, "video_url": video_url, **self.model_dump(exclude_none=True)}

    def fingerprint(self, video_identity: str) -> str:
        """A stable hash of the logical request: same choices on the same video -> same value."""
        canonical = json.dumps({**self.model_dump(), "model": self.MODEL, "video": video_identity},
                               sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(cls.model_fields)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {name: f.default for name, f in cls.model_fields.items() if not f.is_required()}

    @classmethod
    def from_text(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Values that arrive as text (CSV cells, S3 metadata, trigger templates) typed by the field.

        Only clean conversions are made; anything else is left as text for validation to refuse
        with a message naming the field.
        """
        out = dict(values)
        for name, value in values.items():
            kind = _scalar(cls.model_fields[name].annotation) if name in cls.model_fields else None
            if not isinstance(value, str) or kind in (None, str):
                continue
            text = value.strip()
            if kind is bool and text.lower() in _TRUE + _FALSE:
                out[name] = text.lower() in _TRUE
            elif kind in (int, float):
                try:
                    out[name] = kind(text)
                except ValueError:
                    pass
        return out

    @classmethod
    def validated(cls, **values: Any) -> VideoRequest:
        """The request, or `InvalidInputError` naming every field that is wrong and how."""
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))} is required" if e["type"] == "missing"
                                 else str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
            raise InvalidInputError(f"Invalid parameters: {problems}") from None


def _scalar(annotation: Any) -> type | None:
    """`float` for `float`, `int` for `int | None`, ...: the type a text value converts to."""
    if isinstance(annotation, str):
        annotation = {"str": str, "float": float, "int": int, "bool": bool}.get(annotation.split("|")[0].strip())
    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = kinds[0] if len(kinds) == 1 else None
    return annotation if annotation in (str, int, float, bool) else None


REQUEST_MODELS: dict[str, type[VideoRequest]] = {}


def register(cls: type[VideoRequest]) -> type[VideoRequest]:
    """Make a request class available by its model name (flows' `model` parameter)."""
    REQUEST_MODELS[cls.MODEL] = cls
    return cls


def request_model(model: str) -> type[VideoRequest]:
    try:
        return REQUEST_MODELS[model]
    except KeyError:
        raise InvalidInputError(f"model {model!r} is not supported; known: {', '.join(REQUEST_MODELS)}.") from None


def request_fields() -> tuple[str, ...]:
    """Every field of every registered model, in declaration order (CLI options, metadata names)."""
    return tuple(dict.fromkeys(name for cls in REQUEST_MODELS.values() for name in cls.model_fields))


@register
class KreaWan14bVideoToVideo(VideoRequest):
    """`krea/krea-wan-14b/video-to-video`: restyle a video with a prompt (the provider's page, `../shared/api`)."""

    MODEL: ClassVar[str] = "krea/krea-wan-14b/video-to-video"
    EXPECTED_SECONDS: ClassVar[float] = 150.0  # the provider's docs quote ~2.5 min for this model
    MAX_PROMPT_CHARS: ClassVar[int] = 2000

    prompt: str = Field(description="What the result should look like.")
    strength: float = Field(0.85, description="0 keeps the original, 1 remakes it.")
    seed: int | None = Field(None, description="Fix it to make a result reproducible; None lets the provider choose.",
                             json_schema_extra={"when_unset": "random (provider-chosen)"})
    enable_prompt_expansion: bool = Field(True, title="Prompt expansion", description="Let the provider expand the prompt.")

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"prompt must be text, got {type(value).__name__}")
        value = value.strip()
        if not value:
            raise ValueError("prompt is empty: describe the look you want, e.g. 'watercolor painting'")
        control = sorted({f"U+{ord(c):04X}" for c in value if unicodedata.category(c) == "Cc" and c not in "\n\t"})
        if control:
            raise ValueError(f"prompt holds control characters ({', '.join(control[:5])}); only newlines and tabs "
                             "are allowed")
        if len(value) > cls.MAX_PROMPT_CHARS:
            raise ValueError(f"prompt has {len(value)} characters; the maximum is {cls.MAX_PROMPT_CHARS}")
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


DEFAULT_MODEL = KreaWan14bVideoToVideo.MODEL
# The flows' defaults for the request fields, for their explicit signatures (Prefect's parameter
# schema needs literal defaults): `strength: float = DEFAULTS["strength"]`.
DEFAULTS = KreaWan14bVideoToVideo.defaults()
# The 0.1 name of the request class, kept for users' code.
GenerationParams = KreaWan14bVideoToVideo

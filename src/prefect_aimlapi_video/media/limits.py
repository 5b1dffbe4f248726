"""What an input may be, and what one generation may cost, before anything is paid. No Prefect here.

The provider publishes no limit on the input's duration, frame size or bytes, and no price (see
`../shared/api/NOTES.md`); its sibling text-to-video model documents 18-162 frames at 16 fps (about
1-10 s) and an 832x480 output. A generation is charged by the second, so an input whose header
claims two hours is charged for two hours if the provider takes it. So the flows refuse, before the
POST, what a person would not send on purpose, and say which setting raises the limit:

* `max_duration_seconds` 30: three times the longest clip the model family documents;
* `max_long_side` x `max_short_side` 1920 x 1080: Full HD either way round (8K is refused);
* `max_input_bytes` 512 MiB: what an S3 HEAD says of the object (a local file sent inline has its
  own, lower cap);
* `max_generation_usd` 2.00: the estimate of this one generation (`submission.estimate`), whatever
  budget is set; raise it on purpose for long inputs.

An input whose duration cannot be read is refused: what cannot be measured cannot be estimated.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.api.models import VideoInfo


class InputLimits(BaseModel):
    """Limits checked before the POST; each message names the field that raises it."""

    model_config = ConfigDict(extra="forbid")

    max_duration_seconds: float = Field(30.0, gt=0, description="Refuse longer inputs (charged by the second).")
    max_long_side: int = Field(1920, gt=0, description="Refuse frames wider (or taller) than this.")
    max_short_side: int = Field(1080, gt=0, description="...and whose shorter side is above this.")
    max_input_bytes: int = Field(512 * 1024 * 1024, gt=0, description="Refuse larger input files or S3 objects.")
    max_generation_usd: float = Field(2.0, gt=0, description="Refuse a generation estimated above this.")
    fetch_deadline_seconds: float = Field(60.0, gt=0, description="The longest checking a remote input may take.")

    @classmethod
    def parse(cls, value: Any) -> InputLimits:
        """From a flow parameter: None (the defaults), the model, a dict or JSON text (deployments, the UI)."""
        if value is None or value == "":
            return cls()
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError(f"must be an object of {', '.join(cls.model_fields)}, got {value[:80]!r}") from None
        return value if isinstance(value, cls) else cls.model_validate(value)

    def check(self, info: VideoInfo | None, size_bytes: int | None, shown: str) -> float:
        """The input's duration in seconds, once it is within every limit; else `InvalidInputError`."""
        if size_bytes is not None and size_bytes > self.max_input_bytes:
            raise InvalidInputError(f"video {shown} is {size_bytes:,} bytes, above max_input_bytes "
                                    f"({self.max_input_bytes:,}); nothing was sent.")
        if info is None or not info.duration:
            raise InvalidInputError(f"video {shown}: its duration cannot be read, so its cost cannot be estimated; "
                                    "nothing was sent. Re-encode it as MP4 (H.264), or check the URL serves it whole.")
        if info.duration > self.max_duration_seconds:
            raise InvalidInputError(
                f"video {shown} is {info.duration:,.1f} s long, above max_duration_seconds "
                f"({self.max_duration_seconds:g}): it would be charged for every second. Trim it, or raise the limit "
                "(--max-duration) on purpose; nothing was sent."
            )
        long_side, short_side = max(info.width, info.height), min(info.width, info.height)
        if long_side > self.max_long_side or short_side > self.max_short_side:
            raise InvalidInputError(
                f"video {shown} is {info.width}x{info.height}, above {self.max_long_side}x{self.max_short_side} "
                "(max_long_side x max_short_side); scale it down, or raise the limits on purpose; nothing was sent."
            )
        return info.duration

"""The request a flow run sends, made from the flow's own arguments and its `overrides`.

The flows name the default model's fields as parameters (a form in the UI, keyword arguments in
Python). Any registered model's fields, the default's included, also reach every flow through
`overrides` (and a batch item's own columns), validated by the model's request class alone: so a
new model is one subclass in `api.requests` and reaches the flows, the batch and the CLI unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.api.requests import DEFAULT_MODEL, VideoRequest, request_model

# The request fields `video_to_video` takes as named parameters (the default model's); the rest of
# any model's fields travel in `overrides`.
NAMED_FIELDS = ("prompt", "strength", "seed", "enable_prompt_expansion")


def parse_overrides(overrides: dict[str, Any] | str | None, request: type[VideoRequest] | None = None) -> dict[str, Any]:
    """Per-video values of the request's fields, typed; unknown keys are refused so a typo never passes.
    JSON text is accepted: trigger templates and deployment parameters render text."""
    request = request or request_model(DEFAULT_MODEL)
    if overrides in (None, "", "null"):
        return {}
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError:
            raise InvalidInputError(f"overrides is not JSON: {overrides[:100]!r}") from None
    allowed = request.field_names()
    if not isinstance(overrides, dict):
        raise InvalidInputError(f"overrides must be an object of {', '.join(allowed)}.")
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise InvalidInputError(f"overrides has unknown keys {unknown}; allowed: {', '.join(allowed)}.")
    return request.from_text(overrides)


def chosen_fields(request: type[VideoRequest], overrides: dict[str, Any] | str | None, **named: Any) -> dict[str, Any]:
    """The request's field values: the flow's named arguments that are this model's fields and not
    None (None: the model's default), then `overrides` over them. The other named arguments (another
    model's) are ignored."""
    return {**{name: value for name, value in named.items() if name in request.model_fields and value is not None},
            **parse_overrides(overrides, request)}


def build_request(model: str, overrides: dict[str, Any] | str | None = None, **named: Any) -> VideoRequest:
    """The validated request of `model` (`InvalidInputError` naming each wrong field)."""
    request = request_model(model)
    return request.validated(**chosen_fields(request, overrides, **named))

"""Prefect events about each generation, for automations: submitted, completed, failed.

`aimlapi.generation.submitted`, `.completed` and `.failed` (and `.skipped` when a spend cap keeps
one from being sent) concern the generation itself: the resource is `aimlapi.generation.<id>` (or
the flow run, when nothing was submitted), and Prefect's events worker relates each to the flow
run, its flow and its deployment. The payload says what it cost (credits, USD), how long it took
and where the result is: never a signed URL, never the key. `credits` is what the generation cost;
`charged_credits` is what this run adds to the bill (0 on `submitted`, and on a resumed, adopted
or collected generation whose charge another run's event already carried), so an automation that
sums `charged_credits` over events counts every charge once.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from prefect.events import emit_event

from prefect_aimlapi_video.api.models import VideoToVideoResult
from prefect_aimlapi_video.api.redact import redact

Kind = Literal["submitted", "completed", "failed", "skipped"]
EVENT_PREFIX = "aimlapi.generation"
# Prefect refuses an event over its size limit (EventTooLarge); a provider's error text is unbounded.
MAX_ERROR_CHARS = 2000
logger = logging.getLogger(__name__)


def generation_resource(result: VideoToVideoResult) -> dict[str, str]:
    if result.generation_id:
        resource = {"prefect.resource.id": f"{EVENT_PREFIX}.{result.generation_id}",
                    "prefect.resource.name": result.generation_id.split(":", 1)[0]}
    else:  # refused or stopped before anything was submitted: the run is what there is to point at
        resource = {"prefect.resource.id": f"{EVENT_PREFIX}.unsubmitted.{result.flow_run_id or 'local'}",
                    "prefect.resource.name": "not submitted"}
    return {**resource, "aimlapi.model": result.model, "aimlapi.client-request-id": result.client_request_id or ""}


def event_payload(result: VideoToVideoResult) -> dict[str, Any]:
    return {
        "status": result.status,
        "model": result.model,
        "input": result.input,
        "output": result.output,
        "sidecar": result.sidecar,
        "credits": result.credits,
        "usd": result.usd,
        "charged_credits": result.charged_credits,
        "resumed": result.resumed,
        "durations": result.timing.model_dump(),
        "error_name": result.error_name,
        "error_message": result.error_message[:MAX_ERROR_CHARS] if result.error_message else None,
        "collect_command": result.collect_command,
    }


def emit_generation_event(kind: Kind, result: VideoToVideoResult) -> None:
    """Best effort, like Prefect's own events: never fails the run that emits it."""
    try:
        emit_event(event=f"{EVENT_PREFIX}.{kind}", resource=generation_resource(result), payload=event_payload(result))
    except Exception as exc:  # e.g. EventTooLarge: the generation's outcome stands without its event
        logger.warning("Event %s.%s not emitted: %s: %s", EVENT_PREFIX, kind, type(exc).__name__, redact(str(exc))[:200])

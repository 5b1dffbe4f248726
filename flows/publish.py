"""A generation's story, told once for any flow: its result, its summary and link artifacts, its events.

`video_to_video` fills its result with these helpers as the three tasks return (`new_result`,
`note_submitted`, `note_outcome`, `note_stored`) and reports a failure with `report_failure`.
`publish_generation` does the same from what the tasks returned in a user's own flow, so a flow
that composes `submit_generation`, `wait_for_generation` and `download_video` gets the same summary
artifact, output link and `aimlapi.generation.completed` / `.failed` events.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from pathlib import Path
from typing import Any

from prefect.logging import get_run_logger

from prefect_aimlapi_video.api.errors import AimlApiError, BudgetExceeded, DeliveryFailed, GenerationFailedError
from prefect_aimlapi_video.api.models import Timing, VideoInfo, VideoToVideoResult
from prefect_aimlapi_video.api.redact import redact, safe_url
from prefect_aimlapi_video.api.requests import VideoRequest
from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.flows.events import emit_generation_event
from prefect_aimlapi_video.flows.summary import publish_result, publish_summary
from prefect_aimlapi_video.media.probe import probe_video
from prefect_aimlapi_video.media.video_checks import scheme_of
from prefect_aimlapi_video.storage.delivery import GenerationOutcome, StoredVideo
from prefect_aimlapi_video.storage.record_store import default_location
from prefect_aimlapi_video.storage.sources import VideoSource
from prefect_aimlapi_video.submission.record import SubmittedGeneration

DEFAULT_CREDENTIALS_BLOCK = "aimlapi"
SKIPPED_BUDGET = "skipped (budget)"
FAILURE_REPORT_SECONDS = 10.0


def new_result(request: VideoRequest, shown: str, *, info: VideoInfo | None = None, flow_run_id: str | None = None,
               **fields: Any) -> VideoToVideoResult:
    """The result of a generation about to be submitted: the request, and the input as it may be shown."""
    return VideoToVideoResult(status="submitting", model=request.MODEL, input=shown, input_info=info,
                              flow_run_id=flow_run_id, **fields, **request.model_dump())


def note_submitted(result: VideoToVideoResult, submitted: SubmittedGeneration) -> None:
    result.generation_id = submitted.generation_id
    result.client_request_id = submitted.client_request_id
    result.resumed = submitted.resumed
    result.request_ids = [r for r in [submitted.request_id] if r]


def note_outcome(result: VideoToVideoResult, outcome: GenerationOutcome) -> None:
    result.generation_id = outcome.generation_id
    result.timeline, result.polls = outcome.timeline, outcome.polls
    result.request_ids += [r for r in outcome.request_ids if r not in result.request_ids]
    result.credits, result.charged_credits = outcome.credits, outcome.charged_credits


def note_stored(result: VideoToVideoResult, outcome: GenerationOutcome, stored: StoredVideo, started: float) -> None:
    result.status = outcome.status
    result.output, result.output_info = stored.location, stored.info
    result.sha256, result.size_bytes = stored.sha256, stored.size_bytes
    result.timing = Timing(queued_s=outcome.queued_s, generating_s=outcome.generating_s,
                           download_s=stored.download_s, total_s=time.time() - started)


def collect_command(generation_id: str | None, credentials: Any = None, *, output: str | None = None,
                    submissions: str | None = None, aws_credentials: str | None = None) -> str | None:
    """The command that downloads an accepted generation later, at no new cost."""
    if not generation_id:
        return None
    parts = ["aimlapi-video", "collect", generation_id]
    if output:
        parts += ["--output", output]
    if submissions:
        parts += ["--submissions", submissions]
    if aws_credentials:
        parts += ["--aws-credentials", aws_credentials]
    if isinstance(credentials, str) and credentials != DEFAULT_CREDENTIALS_BLOCK:
        parts += ["--credentials", credentials]
    return " ".join(shlex.quote(part) for part in parts)


async def report_failure(result: VideoToVideoResult, exc: BaseException, started: float, credentials: Any = None,
                         **where: str | None) -> BaseException:
    """Leave a summary (and an event) that says why, and return the exception to end the run with.

    An accepted generation that did not fail at the provider (we stopped waiting, the run was
    cancelled, the download failed) is paid or about to be: the summary, the event and the error name
    the exact command that collects it without a new charge (`where`: `collect_command`'s options).
    An error of ours after acceptance (an OSError storing it) becomes `DeliveryFailed`: paid, not lost.
    """
    result.generation_id = result.generation_id or getattr(exc, "generation_id", None)
    collect = collect_command(result.generation_id, credentials, **where)
    failure = exc
    if result.generation_id and isinstance(exc, Exception) and not isinstance(exc, AimlApiError):
        failure = DeliveryFailed(result.generation_id, exc)
    result.status = "failed" if isinstance(failure, Exception) else "cancelled"
    if isinstance(failure, BudgetExceeded):
        result.status = SKIPPED_BUDGET
        result.error_name, result.error_message = type(failure).__name__, str(failure)
    elif isinstance(failure, GenerationFailedError):
        result.error_name, result.error_message = failure.error_name, failure.error_message
    else:
        result.error_name, result.error_message = type(failure).__name__, redact(str(failure)) or type(failure).__name__
        result.collect_command = collect
    result.timing = Timing(total_s=time.time() - started)
    try:
        await asyncio.wait_for(asyncio.shield(publish_summary(result)), FAILURE_REPORT_SECONDS)
        emit_generation_event("skipped" if result.status == SKIPPED_BUDGET else "failed", result)
    except Exception as report_error:  # the run's own failure is what matters; never hide it
        get_run_logger().warning("Could not publish the failure summary: %s", report_error)
    if collect and isinstance(failure, AimlApiError) and not isinstance(failure, GenerationFailedError):
        failure.name_collect_command(collect, result.generation_id)
    return failure


async def shown_input(video: str | VideoSource) -> tuple[str, VideoInfo | None]:
    """The input as it may be shown anywhere (never a data URI's content or a URL's query), and what it is
    when that can be read without fetching: a checked source's probe, or a local file's."""
    if isinstance(video, VideoSource):
        return video.display, video.info
    try:
        scheme = scheme_of(video)
    except AimlApiError:
        return safe_url(str(video)), None
    video = video.strip()
    if scheme == "data":
        payload = video.partition(",")[2]
        return f"data URI ({len(payload) * 3 // 4 - payload[-2:].count('=')} bytes)", None
    if scheme:
        return safe_url(video), None
    path = Path(video).expanduser().resolve()
    try:
        return str(path), await asyncio.to_thread(probe_video, path, label="the input")
    except Exception:  # best effort: the summary shows the input without its size
        return str(path), None


async def publish_generation(
    request: VideoRequest,
    video: str | VideoSource,
    submitted: SubmittedGeneration | None = None,
    outcome: GenerationOutcome | None = None,
    stored: StoredVideo | None = None,
    *,
    error: BaseException | None = None,
    started: float | None = None,
    credentials: str | AimlApiCredentials | None = None,
    output: str | None = None,
) -> VideoToVideoResult:
    """Publish, from your own flow, what `video_to_video` publishes: the summary and link artifacts and
    the `aimlapi.generation.completed` (or, with `error`, `.failed`) event of one generation.

    Call it in the flow that ran `submit_generation`, `wait_for_generation` and `download_video`, with
    what they returned: after the three, or with `error=` where one of them (or your code) raised,
    passing whatever had returned by then (None for the rest). It returns the generation's
    `VideoToVideoResult`; with `error` it does not raise: re-raise your exception to fail the run.
    Artifact keys follow your flow's name (`aimlapi-<flow>-summary`, `-output`), and the events are
    related to its flow run. What it does not do: emit `.submitted` (the flow does that as the
    POST is accepted) or write the sidecar JSON and strip image beside the output.

    Args:
        request: the request passed to `submit_generation` (e.g. `GenerationParams(prompt=..., seed=...)`).
        video: the input as passed to `submit_generation`; shown without a URL's query or a data
            URI's content, with its resolution when it is a local file.
        submitted: what `submit_generation` returned, if it did.
        outcome: what `wait_for_generation` returned, if it did.
        stored: what `download_video` returned, if it did.
        error: the exception that ended the generation: the summary says why and the `.failed`
            event is emitted; for a paid generation left behind, both (and `error`'s message, for an
            `AimlApiError`) name the command that collects it at no new charge.
        started: `time.time()` when your flow began, for the total duration (default: when the
            provider accepted the request).
        credentials: the credentials' block name, named in that collect command (unless "aimlapi").
        output: the output template, named in that collect command.
    """
    shown, info = await shown_input(video)
    result = new_result(request, shown, info=info, flow_run_id=_flow_run_id())
    if submitted is not None:
        note_submitted(result, submitted)
    if outcome is not None:
        note_outcome(result, outcome)
    began = started if started is not None else (submitted.accepted_at if submitted is not None else time.time())
    if error is not None:
        store = submitted.store if submitted is not None else None
        submissions = store.location if store and store.location != default_location() else None
        await report_failure(result, error, began, credentials, output=output, submissions=submissions,
                             aws_credentials=store.aws_credentials if store else None)
        return result
    if outcome is None or stored is None:
        raise ValueError("publish_generation: pass what wait_for_generation and download_video returned, "
                         "or error= with the exception that stopped them.")
    note_stored(result, outcome, stored, began)
    await publish_result(result, stored.strip, stored.location)
    emit_generation_event("completed", result)
    return result


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    return str(flow_run.id) if flow_run.id else None

"""The three retryable steps of a generation, usable on their own in your flows.

* `submit_generation` retries only where a resend is safe: failures that certainly were not
  accepted (connection refused, 429, 5xx answers), and lost answers, which the next attempt
  reconciles through the usage log before sending anything (see `prefect_aimlapi_video.flows.submissions`).
* `wait_for_generation` polls (free) with an adaptive schedule and absorbs transient errors
  itself; it raises on `error` and on its overall timeout.
* `download_video` streams and verifies the result, retrying transient and truncated downloads
  with a fresh result URL; partial files never survive a failed attempt.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import BaseModel

from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.flows.artifacts import ProgressArtifact
from prefect_aimlapi_video.flows.errors import (
    AimlApiError,
    DownloadError,
    GenerationFailedError,
    GenerationTimeoutError,
    RateLimitedError,
    TransientApiError,
)
from prefect_aimlapi_video.flows.inputs import VideoInput, video_url_for
from prefect_aimlapi_video.flows.models import GenerationParams, Phase, StatusChange, VideoInfo
from prefect_aimlapi_video.flows.outputs import OutputTarget, staging_file, store_file
from prefect_aimlapi_video.flows.polling import DEFAULT_TIMEOUT_SECONDS, PollPolicy
from prefect_aimlapi_video.flows.probe import probe_video
from prefect_aimlapi_video.flows.record_store import default_location
from prefect_aimlapi_video.flows.submissions import (
    DEFAULT_RECONCILE_SECONDS,
    StoreRef,
    SubmittedGeneration,
    mark_failed,
    submit_once,
)

MAX_CONSECUTIVE_POLL_ERRORS = 10
EXPECTED_GENERATION_SECONDS = 150.0  # the provider's docs quote ~2.5 min for this model
_RESULT_URL_TTL = 60.0

# Result URLs are signed: keep them in this process only (never in a task result that may be
# persisted). The download task takes a fresh one from here or asks the API again.
_fresh_result_urls: dict[str, tuple[str, float]] = {}


def _retry_if_retryable(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry only errors flagged `retryable` (see `prefect_aimlapi_video.flows.errors`).

    The engine hands us `Failed(data=<the exception>)`, so the exception is read from `data`.
    """
    error = state.data
    return isinstance(error, AimlApiError) and error.retryable


async def _respect_retry_after(exc: AimlApiError) -> None:
    """Sleep out a 429's Retry-After before Prefect's own retry delay starts."""
    if isinstance(exc, RateLimitedError) and exc.retry_after:
        await asyncio.sleep(min(exc.retry_after, 120.0))


@task(
    name="submit-generation",
    retries=4,
    retry_delay_seconds=[1, 4, 10, 30],
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_if_retryable,
    cache_policy=NO_CACHE,
)
async def submit_generation(
    params: GenerationParams,
    video: str,
    source: VideoInput,
    credentials: AimlApiCredentials,
    idempotency_key: str,
    reconcile_grace_seconds: float = DEFAULT_RECONCILE_SECONDS,
    submissions: str | None = None,
    aws_credentials: str | None = None,
    shared_scope: bool = True,
) -> SubmittedGeneration:
    """POST one generation at most once for `idempotency_key` (see `flows.submissions`).

    `submissions`: where the records live (a directory or s3://bucket/prefix; default
    `AIMLAPI_SUBMISSIONS_DIR` or `$PREFECT_HOME/aimlapi/submissions`). `shared_scope`: False only
    for a scope no other run can share (this flow run's own): then the first attempt of its first
    run needs no usage-log read.
    """
    from prefect.runtime import flow_run, task_run

    logger = get_run_logger()
    ref = StoreRef(location=(submissions or default_location()), aws_credentials=aws_credentials)
    store = await ref.open()
    may_repeat = shared_scope or task_run.run_count > 1 or flow_run.run_count > 1
    async with credentials.get_client() as client:
        try:
            submitted = await submit_once(
                client, store, params, source.identity, idempotency_key,
                lambda: video_url_for(video, source),
                reconcile_seconds=reconcile_grace_seconds, may_repeat=may_repeat, logger=logger,
            )
        except AimlApiError as exc:
            await _respect_retry_after(exc)
            raise
    return submitted.model_copy(update={"store": ref})


class GenerationOutcome(BaseModel):
    """A finished generation as seen by polling. Holds no result URL (that is a credential)."""

    generation_id: str
    status: str
    timeline: list[StatusChange]
    credits: float | None = None
    video_duration: float | None = None
    request_ids: list[str] = []
    polls: int = 0
    queued_s: float | None = None
    generating_s: float | None = None


def _progress(status_phase: str, since_generating: float) -> float:
    if status_phase == "queued":
        return 5.0
    return 10.0 + 85.0 * (1 - math.exp(-since_generating / EXPECTED_GENERATION_SECONDS))


@task(
    name="wait-for-generation",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=_retry_if_retryable,
    cache_policy=NO_CACHE,
)
async def wait_for_generation(
    submitted: SubmittedGeneration,
    credentials: AimlApiCredentials,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    poll_policy: PollPolicy | None = None,
) -> GenerationOutcome:
    """Poll until the generation completes; raise `GenerationFailedError` or `GenerationTimeoutError`."""
    logger = get_run_logger()
    generation_id = submitted.generation_id
    schedule = (poll_policy or PollPolicy()).schedule()
    timeline = [StatusChange(status=submitted.initial_status, at=submitted.accepted_at)]
    request_ids: list[str] = []
    started = time.monotonic()
    last_note = started
    polls = errors = 0
    retry_after: float | None = None
    first_generating: float | None = None
    async with credentials.get_client() as client, ProgressArtifact(min_interval=10.0) as progress:
        while True:
            try:
                answer = await client.get_generation(generation_id)
                errors, retry_after = 0, None
            except RateLimitedError as exc:
                retry_after = exc.retry_after or 5.0
                logger.warning("Polling is rate limited; waiting %.1f s.", retry_after)
            except TransientApiError as exc:
                errors += 1
                if errors >= MAX_CONSECUTIVE_POLL_ERRORS:
                    raise
                logger.warning("Poll %d failed (%s); polling again.", polls + 1, exc)
            else:
                polls += 1
                generation = answer.generation
                if answer.request_id and answer.request_id not in request_ids[-1:]:
                    request_ids.append(answer.request_id)
                now = time.time()
                if generation.status != timeline[-1].status:
                    timeline.append(StatusChange(status=generation.status, at=now))
                    if generation.phase is Phase.UNKNOWN:
                        logger.warning("Unknown status %r; treating it as not finished yet.", generation.status)
                    else:
                        logger.info("Generation %s is %s.", generation_id, generation.status)
                if generation.status == "generating" and first_generating is None:
                    first_generating = now
                if generation.phase is Phase.COMPLETED:
                    progress.update(100, f"{generation_id}: completed")
                    return _outcome(submitted, generation, timeline, request_ids, polls, first_generating, now)
                if generation.phase is Phase.FAILED:
                    if submitted.store is not None:
                        await mark_failed(await submitted.store.open(), submitted.record_key, generation_id)
                    name, detail = generation.error_summary()
                    progress.update(100, f"{generation_id}: failed")
                    raise GenerationFailedError(generation_id, name, detail, raw=generation.error)
                since = now - first_generating if first_generating else 0.0
                progress.update(
                    _progress("queued" if first_generating is None else "generating", since),
                    f"{generation_id}: {generation.status} ({time.monotonic() - started:.0f} s)",
                )
            elapsed = time.monotonic() - started
            if elapsed >= timeout_seconds:
                raise GenerationTimeoutError(generation_id, elapsed, timeline[-1].status)
            if time.monotonic() - last_note >= 30:
                logger.info("Still waiting for %s: %s after %.0f s.", generation_id, timeline[-1].status, elapsed)
                last_note = time.monotonic()
            await asyncio.sleep(min(schedule.next_delay(elapsed, retry_after), timeout_seconds - elapsed))


def _outcome(
    submitted: SubmittedGeneration,
    generation: Any,
    timeline: list[StatusChange],
    request_ids: list[str],
    polls: int,
    first_generating: float | None,
    completed_at: float,
) -> GenerationOutcome:
    if generation.video and generation.video.url:
        _fresh_result_urls[generation.id] = (generation.video.url, time.monotonic())
    start_generating = first_generating or completed_at
    return GenerationOutcome(
        generation_id=generation.id,
        status=generation.status,
        timeline=timeline,
        credits=generation.credits if generation.credits is not None else submitted.credits,
        video_duration=generation.video_duration,
        request_ids=request_ids,
        polls=polls,
        queued_s=(start_generating - submitted.accepted_at) if first_generating else None,
        generating_s=(completed_at - first_generating) if first_generating else None,
    )


class StoredVideo(BaseModel):
    """The verified result, where it was put."""

    location: str
    sha256: str
    size_bytes: int
    info: VideoInfo
    download_s: float


async def _result_url(client: Any, generation_id: str, fresh_ok: bool) -> str:
    cached = _fresh_result_urls.pop(generation_id, None)
    if fresh_ok and cached and time.monotonic() - cached[1] < _RESULT_URL_TTL:
        return cached[0]
    generation = (await client.get_generation(generation_id)).generation
    if generation.phase is not Phase.COMPLETED or not generation.video:
        raise DownloadError(f"Generation {generation_id} has no result to download (status {generation.status!r}).")
    return generation.video.url


@task(
    name="download-video",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_if_retryable,
    cache_policy=NO_CACHE,
)
async def download_video(
    generation_id: str, credentials: AimlApiCredentials, target: OutputTarget, path: str
) -> StoredVideo:
    """Stream the result to `path` of `target`, verified (length, MP4, decodable) and atomic."""
    from prefect.runtime import task_run

    logger = get_run_logger()
    started = time.monotonic()
    with staging_file(target, path, ".download.mp4") as staged:
        async with credentials.get_client() as client:
            url = await _result_url(client, generation_id, fresh_ok=task_run.run_count <= 1)
            downloaded = await client.download(url, staged)
        try:
            info = probe_video(staged, label="the downloaded result")
        except AimlApiError as exc:
            raise DownloadError(f"The result of {generation_id} is not a playable video: {exc}") from None
        location = await store_file(target, staged, path, sha256=downloaded.sha256)
    elapsed = time.monotonic() - started
    logger.info("Stored %s (%d bytes, sha256 %s) in %.1f s.", location, downloaded.size_bytes, downloaded.sha256, elapsed)
    return StoredVideo(
        location=location, sha256=downloaded.sha256, size_bytes=downloaded.size_bytes, info=info, download_s=elapsed
    )

"""The three retryable steps of a generation, usable on their own in your flows.

Each task is a thin wrapper over plain async code, adding Prefect's retries, logging and progress:

* `submit_generation` (over `submission.protocol.submit_once`) retries where a retry cannot pay
  twice: refusals that prove nothing was accepted (connection refused, 429), and unclear outcomes
  (lost answers, gateway answers, the provider's own 5xx), which the next attempt reconciles
  through the usage log before sending anything.
* `wait_for_generation` (over `submission.waiting.observe`) polls (free) on a schedule, absorbs
  transient errors itself, and raises on `error` and on its overall timeout.
* `download_video` (over `storage.delivery.store_result`) streams and verifies the result, retrying
  transient and truncated downloads with a fresh result URL; partial files never survive.

They take what a user has: a video (a path, URL, data URI or s3:// URL, or an already checked
source), the credentials block or its name, an output template or a checked destination.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from prefect_aimlapi_video.api.errors import AimlApiError, GenerationFailedError, RateLimitedError
from prefect_aimlapi_video.api.models import Phase
from prefect_aimlapi_video.api.requests import VideoRequest, request_model
from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.storage.delivery import GenerationOutcome, StoredVideo, remember_result_url, store_result
from prefect_aimlapi_video.storage.destinations import Destination, resolve_output
from prefect_aimlapi_video.storage.record_store import default_location
from prefect_aimlapi_video.storage.sources import VideoSource, inspect_video
from prefect_aimlapi_video.submission.budget import BudgetRef
from prefect_aimlapi_video.submission.learned_polling import LearnedPollPolicy
from prefect_aimlapi_video.submission.log_visibility import (
    sighting_of,
)
from prefect_aimlapi_video.submission.polling import DEFAULT_RECONCILE_SECONDS, DEFAULT_TIMEOUT_SECONDS, PollPolicy
from prefect_aimlapi_video.submission.protocol import StoreRef, SubmittedGeneration, submit_once
from prefect_aimlapi_video.submission.record import read_durations
from prefect_aimlapi_video.submission.waiting import Tracker, observe
from prefect_aimlapi_video.tasks.bookkeeping import LastSeen, after_completion, after_failure, watch_listing_of
from prefect_aimlapi_video.tasks.output_path import check_path_choice, render_output_path
from prefect_aimlapi_video.tasks.progress import ProgressArtifact

STILL_WAITING_EVERY_SECONDS = 30.0

__all__ = ["GenerationOutcome", "StoredVideo", "SubmittedGeneration", "download_video", "submit_generation",
           "wait_for_generation"]


def _retry_if_retryable(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry only errors flagged `retryable` (see `api.errors`).

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
    params: VideoRequest,
    video: str | VideoSource,
    credentials: str | AimlApiCredentials,
    scope: str,
    reconcile_grace_seconds: float = DEFAULT_RECONCILE_SECONDS,
    submissions: str | None = None,
    aws_credentials: str | None = None,
    shared_scope: bool = True,
    budget: BudgetRef | None = None,
    estimate_credits: float | None = None,
) -> SubmittedGeneration:
    """POST one generation at most once in `scope` (see `submission.protocol`).

    `scope`: what counts as the same generation: a user's idempotency key, `flow-run:<id>`, or
    `request:<digest>` (the flows make it); with the request's fingerprint it names the record
    (`record_key`). `video`: a checked source, or anything `video_to_video` takes (checked here). `submissions`:
    where the records live (a directory or s3://bucket/prefix; default `AIMLAPI_SUBMISSIONS_DIR`
    or `$PREFECT_HOME/aimlapi/submissions`). `shared_scope`: False only for a scope no other run
    can share (this flow run's own): then the first attempt of its first run needs no log read.
    `budget`: a spend cap to reserve this generation's cost (`estimate_credits`, else its largest
    quote) against before the POST (kept in the same store); `BudgetExceeded` when it could pass the
    cap, and then nothing is sent.
    """
    from prefect.runtime import flow_run, task_run

    creds = await AimlApiCredentials.resolve(credentials)
    source = video if isinstance(video, VideoSource) else await inspect_video(
        video, aws_credentials=aws_credentials, allow_local=creds.on_loopback)
    ref = StoreRef(location=(submissions or default_location()), aws_credentials=aws_credentials)
    may_repeat = shared_scope or task_run.run_count > 1 or flow_run.run_count > 1
    store = await ref.open()
    await store.check()  # once per process and store: it exists and really compares and swaps
    async with creds.get_client() as client:
        try:
            submitted = await submit_once(
                client, store, params, source.identity, scope, source.video_url,
                reconcile_seconds=reconcile_grace_seconds, may_repeat=may_repeat, logger=get_run_logger(),
                budget=budget.open(store) if budget else None, estimate_credits=estimate_credits,
            )
        except AimlApiError as exc:
            await _respect_retry_after(exc)
            raise
    return submitted.model_copy(update={"store": ref, "budget": budget})


@task(
    name="wait-for-generation",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=_retry_if_retryable,
    cache_policy=NO_CACHE,
)
async def wait_for_generation(
    submitted: SubmittedGeneration,
    credentials: str | AimlApiCredentials,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    poll_policy: PollPolicy | LearnedPollPolicy | None = None,
    progress: bool = True,
) -> GenerationOutcome:
    """Poll until the generation completes; raise `GenerationFailedError` or `GenerationTimeoutError`.

    Without a `poll_policy` the schedule is learned from the durations of past generations in the
    same record store (dense around the expected finish), or today's schedule without history.
    `progress`: show a progress artifact (a batch turns it off for its children: its own shows theirs).
    """
    logger = get_run_logger()
    generation_id = submitted.generation_id
    expected = request_model(submitted.model).EXPECTED_SECONDS if submitted.model else 150.0
    tracker = Tracker(submitted.initial_status, submitted.accepted_at)
    last_note = time.monotonic()
    creds = await AimlApiCredentials.resolve(credentials)
    store = await submitted.store.open() if submitted.store else None
    if poll_policy is None:
        poll_policy = LearnedPollPolicy.from_durations(await read_durations(store) if store else [])
    async with creds.get_client() as client, ProgressArtifact(min_interval=10.0, enabled=progress) as shown:
        last_seen = LastSeen()
        watcher = await watch_listing_of(store, submitted, client, last_seen)
        schedule = poll_policy.schedule()
        try:
            async for seen in observe(client, generation_id, schedule, timeout_seconds=timeout_seconds):
                if seen.kind == "limited":
                    logger.warning("Polling is rate limited; waiting %.1f s.", seen.retry_after)
                    continue
                if seen.kind == "failed":
                    logger.warning("Poll %d failed (%s); polling again.", tracker.polls + 1, seen.error)
                    continue
                generation = seen.generation
                assert generation is not None
                last_seen.saw(seen.at, seen.final)
                if tracker.add(seen):
                    if generation.phase is Phase.UNKNOWN:
                        logger.warning("Unknown status %r; treating it as not finished yet.", generation.status)
                    else:
                        logger.info("Generation %s is %s.", generation_id, generation.status)
                if generation.phase is Phase.FAILED:
                    shown.update(100, f"{generation_id}: failed")
                    await after_failure(store, submitted)
                    name, detail = generation.error_summary()
                    raise GenerationFailedError(generation_id, name, detail, raw=generation.error)
                if generation.phase is Phase.COMPLETED:
                    shown.update(100, f"{generation_id}: completed")
                    remember_result_url(generation)
                    charged = await after_completion(store, submitted, generation, seen.at - submitted.accepted_at,
                                                      await sighting_of(watcher, finished=True))
                    return GenerationOutcome(
                        generation_id=generation.id, status=generation.status, timeline=tracker.timeline,
                        credits=generation.credits if generation.credits is not None else submitted.credits,
                        charged_credits=charged, video_duration=generation.video_duration,
                        request_ids=tracker.request_ids, polls=tracker.polls,
                        **tracker.durations(seen.at, submitted.accepted_at),
                    )
                shown.update(tracker.progress(expected),
                                f"{generation_id}: {generation.status} ({seen.elapsed:.0f} s)")
                if time.monotonic() - last_note >= STILL_WAITING_EVERY_SECONDS:
                    logger.info("Still waiting for %s: %s after %.0f s.", generation_id, generation.status,
                                seen.elapsed)
                    last_note = time.monotonic()
        finally:
            await sighting_of(watcher, finished=False)  # no-op once it has been read
    raise AssertionError("observe() ends with a final status or raises")


@task(
    name="download-video",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_if_retryable,
    cache_policy=NO_CACHE,
)
async def download_video(
    generation_id: str, credentials: str | AimlApiCredentials, target: str | Destination, path: str | None = None,
    before: str | None = None, strip_in_helper: bool = False, fields: Mapping[str, Any] | None = None,
) -> StoredVideo:
    """Stream the result to `target`, verified (length, MP4, decodable) and atomic, with a before/after strip.

    Where it goes is said once, either way:

    * leave `path` out (recommended): `target`'s template is rendered, as `video_to_video` renders
      its `output`. `{generation}`, `{flow_run}` and `{date}` are filled in here; the request's own
      fields come from `fields` (`{"stem": video, "seed": 42}`: `stem` may be the input as given, a
      path or URL, and becomes its name without the suffix, as in the flows). A field the template
      uses but nobody gave is refused by name (`InvalidInputError`).
    * or pass `path`, a finished location in `target` (a local file path; a key from the root of
      `target`'s bucket; a path in its block), used exactly as given. It is never rendered: a `{...}`
      in it is refused (`InvalidInputError`), and so is a `target` written as a template (with `{...}`)
      together with a `path`, whose template would go unused.

    Args:
        generation_id: the completed generation (`wait_for_generation(...).generation_id`).
        credentials: an `AimlApiCredentials` block or its name.
        target: where results go: a local path or directory, `s3://bucket/key`, with template
            fields as `video_to_video`'s `output` takes them, or a checked destination.
        path: a finished path in `target` instead of rendering its template (see above).
        before: the input as a local file, if at hand, for the top row of the strip.
        strip_in_helper: make the strip in this process's strip helper rather than a thread (for
            many runs sharing one event loop: a batch's children).
        fields: values of the template's request fields (`stem`, `seed`, `strength`, `fingerprint`).

    These refusals come after the generation was paid for (it stays collectable by its id, at no
    new charge); `video_to_video` checks its template before paying.
    """
    from prefect.runtime import flow_run, task_run

    check_path_choice(target, path)
    destination = target if isinstance(target, Destination) else await resolve_output(target)
    if path is None:
        path = render_output_path(destination, generation_id, str(flow_run.id) if flow_run.id else None, fields)
    creds = await AimlApiCredentials.resolve(credentials)
    async with creds.get_client() as client:
        stored = await store_result(client, generation_id, destination, path, fresh_ok=task_run.run_count <= 1,
                                    before=Path(before) if before else None, strip_in_helper=strip_in_helper)
    get_run_logger().info("Stored %s (%d bytes, sha256 %s) in %.1f s.", stored.location, stored.size_bytes,
                          stored.sha256, stored.download_s)
    return stored

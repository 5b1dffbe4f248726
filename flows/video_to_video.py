"""The `video_to_video` flow: one generation, one flow run, with everything about it on that run.

Order matters for money: every check that can fail for free (the request, the settings, the
credentials block and a free access check, the record store, the input video, the output
destination) runs before the first and only paid call.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from prefect_aimlapi_video.api.models import VideoToVideoResult
from prefect_aimlapi_video.api.requests import DEFAULT_MODEL, VideoRequest
from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.flows.batch_context import defer, in_batch, keep_outcome, owns_key
from prefect_aimlapi_video.flows.choices import build_request
from prefect_aimlapi_video.flows.events import emit_generation_event
from prefect_aimlapi_video.flows.publish import (
    DEFAULT_CREDENTIALS_BLOCK,
    new_result,
    note_outcome,
    note_stored,
    note_submitted,
    report_failure,
)
from prefect_aimlapi_video.flows.publish import (
    SKIPPED_BUDGET as SKIPPED_BUDGET,  # where the batch reads it
)
from prefect_aimlapi_video.flows.settings import CheckedRun, RunSettings, check_run
from prefect_aimlapi_video.flows.summary import publish_result
from prefect_aimlapi_video.media.strip import MEDIA_TYPE as STRIP_MEDIA_TYPE
from prefect_aimlapi_video.media.strip import SUFFIX as STRIP_SUFFIX
from prefect_aimlapi_video.storage.destinations import Destination, resolve_output
from prefect_aimlapi_video.storage.record_store import RecordStore, open_store
from prefect_aimlapi_video.storage.sources import VideoSource, file_stem, inspect_video
from prefect_aimlapi_video.storage.templates import template_fields
from prefect_aimlapi_video.submission.budget import BudgetRef, budget_summary, credits_cap
from prefect_aimlapi_video.submission.estimate import check_ceiling, estimate, learn_rate
from prefect_aimlapi_video.tasks.steps import download_video, submit_generation, wait_for_generation

RUN_TAGS = ("aimlapi", "video-to-video")


def video_label(video: Any) -> str:
    """A short name for a video in run names and tables: never the URL's query or a data URI."""
    text = str(video or "video")
    return "inline" if text.startswith("data:") else file_stem(text)[:40]


def _run_name() -> str:
    """`v2v-<input stem>-seed-<seed>`: readable in the UI, and never the URL or a data URI."""
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    seed = parameters.get("seed")
    return f"v2v-{video_label(parameters.get('video'))}-seed-{'random' if seed is None else seed}"


async def tag_run() -> None:
    """Add our tags with one request, unless the run was created with them (as batch children are)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    current = set(flow_run.tags)
    wanted = current | set(RUN_TAGS)
    if not flow_run.id or wanted == current:
        return
    async with get_client() as client:
        await client.update_flow_run(flow_run.id, tags=sorted(wanted))


@flow(
    name="aimlapi-video-to-video",
    flow_run_name=_run_name,
    validate_parameters=False,  # the request and settings classes validate, with messages that say what to change
)
async def video_to_video(
    video: str,
    prompt: str | None = None,
    strength: float | None = None,
    seed: int | None = None,
    enable_prompt_expansion: bool | None = None,
    credentials: str | AimlApiCredentials = DEFAULT_CREDENTIALS_BLOCK,
    output: str | None = None,
    idempotency_key: str | None = None,
    overrides: dict[str, Any] | str | None = None,
    model: str = DEFAULT_MODEL,
    settings: RunSettings | None = None,
) -> VideoToVideoResult:
    """Restyle `video` with `prompt` through `krea/krea-wan-14b/video-to-video` (or another registered `model`).

    Args:
        video: an https URL, a `data:video/...;base64,` URI, a local file path or `s3://bucket/key`.
        prompt: what the result should look like (the model's required field; `overrides` may give it).
        strength: 0 keeps the original, 1 remakes it (None: the model's default, 0.85 for Krea).
        seed: fix it to make a result reproducible; None lets the provider choose.
        enable_prompt_expansion: let the provider expand the prompt (None: the model's default, on).
            These are the default model's fields; another model takes those it shares, and its own
            through `overrides`.
        credentials: an `AimlApiCredentials` block or its name.
        output: a local path or directory, `s3://bucket/key`, or (with `settings.output_storage`) a path
            in that block. May use {stem} {seed} {strength} {generation} {fingerprint} {flow_run} {date}.
        idempotency_key: the same key (with the same request) never pays twice, across flow runs,
            deployments and hosts that share the records; default: `settings.idempotency_scope`.
        overrides: per-video values of the request's fields (any registered model's) that win over the
            arguments above, e.g. an S3 object's metadata passed by the event bridge; JSON text accepted.
        model: the model on the provider's video endpoint; its request class (`api.requests`) decides
            the fields and their limits.
        settings: the advanced options (`RunSettings`: output storage, AWS credentials, records, waits,
            polling, spend caps, input limits), a dict or JSON text of its fields accepted.
    """
    from prefect.runtime import flow_run

    logger = get_run_logger()
    started = time.time()
    run_id = str(flow_run.id) if flow_run.id else None

    params = build_request(model, overrides, prompt=prompt, strength=strength, seed=seed,
                           enable_prompt_expansion=enable_prompt_expansion)
    settings = check_run(settings, output=output, idempotency_key=idempotency_key)
    spend = budget_ref(settings, f"flow-run-{run_id}")
    creds = await AimlApiCredentials.resolve(credentials)
    await creds.check_access()
    store = await open_store(settings.submissions, settings.aws_credentials)
    await store.check()
    source = await inspect_video(video, aws_credentials=settings.aws_credentials, stage_to=settings.stage_to,
                                 presign_seconds=settings.presign_expiry_seconds, allow_local=creds.on_loopback,
                                 fetch_deadline_seconds=settings.limits.fetch_deadline_seconds)
    cost = await estimate(store, settings.limits.check(source.info, source.size_bytes, source.display))
    check_ceiling(cost, settings.limits)
    target = await resolve_output(settings.output, settings.output_storage, settings.aws_credentials)
    await tag_run()
    logger.info("Input %s (%s); output to %s.", source.display,
                source.info.describe() if source.info else "not probed", target.kind)
    logger.info("Estimate before paying: %s.", cost.describe())

    result = new_result(params, source.display, info=source.info, flow_run_id=run_id,
                        estimate_credits=round(cost.credits))
    try:
        scope, shared = _scope(settings, params, source, run_id)
        submitted = await submit_generation(params, source, creds, scope, settings.reconcile_grace_seconds,
                                            settings.submissions, settings.aws_credentials, shared, spend, cost.credits)
        note_submitted(result, submitted)
        emit_generation_event("submitted", result)
        # A batch's children show no progress of their own and share one strip helper (flows.batch_context).
        outcome = await wait_for_generation(submitted, creds, settings.timeout_seconds, settings.poll_policy,
                                            progress=not in_batch())
        note_outcome(result, outcome)
        path = _output_path(target, source, params, outcome.generation_id, run_id)
        with source.local_copy() as before:
            stored = await download_video(outcome.generation_id, creds, target, path, str(before) if before else None,
                                          strip_in_helper=in_batch())
        note_stored(result, outcome, stored, started)
        result.sidecar = target.location(f"{path}.json")
        if stored.strip is not None:
            result.strip = await target.write_bytes(f"{path}{STRIP_SUFFIX}", stored.strip.image,
                                                     content_type=STRIP_MEDIA_TYPE)
        result.budget = await budget_text(spend, settings)
        await _learn_rate(store, result)
        await asyncio.gather(  # independent writes: don't pay their round trips one after another
            target.write_sidecar(path, result.model_dump(mode="json")),
            defer(publish_result(result, stored.strip, stored.location)),
        )
    except BaseException as exc:  # a failure, or a cancellation: say what became of any paid generation
        failure = await report_failure(result, exc, started, credentials, output=settings.output,
                                       submissions=settings.submissions, aws_credentials=settings.aws_credentials)
        keep_outcome(failure=failure)
        if failure is not exc:
            raise failure from exc
        raise
    keep_outcome(result=result)
    emit_generation_event("completed", result)
    logger.info(
        "Done: %s -> %s (%s credits, %.1f s).", result.generation_id, result.output,
        f"{result.credits:,.0f}" if result.credits is not None else "unknown", result.timing.total_s,
    )
    return result


def _scope(settings: CheckedRun, params: VideoRequest, source: VideoSource, run_id: str | None) -> tuple[str, bool]:
    """What counts as the same logical generation, and whether another run may share it.

    An explicit key is taken as is (a trigger's object+etag, a batch item). The request scope is
    the request itself, wherever its output goes: the same command run twice is one generation, and
    run again with another `--output` it delivers the same paid generation there.
    """
    if settings.idempotency_key:  # shared, unless the batch running this child made it for it alone
        return settings.idempotency_key, not owns_key(settings.idempotency_key)
    if settings.idempotency_scope == "request":
        return f"request:{hashlib.sha256(params.fingerprint(source.identity).encode()).hexdigest()}", True
    return f"flow-run:{run_id}", False


def _output_path(
    target: Destination, source: VideoSource, params: VideoRequest, generation_id: str, run_id: str | None
) -> str:
    return target.render(template_fields(
        stem=source.stem, seed=getattr(params, "seed", None), strength=getattr(params, "strength", 0.0),
        fingerprint=params.fingerprint(source.identity), generation_id=generation_id, flow_run_id=run_id,
    ))


async def _learn_rate(store: RecordStore, result: VideoToVideoResult) -> None:
    """What this generation was charged per second of output: the next estimates learn from it."""
    try:
        await learn_rate(store, result.credits, result.output_info.duration if result.output_info else None)
    except Exception as exc:  # a hint for estimates: never fails a delivered generation
        get_run_logger().warning("Could not keep the rate this generation was charged (%s).", exc)


def budget_ref(settings: RunSettings, default_name: str) -> BudgetRef | None:
    """The spend cap of a run, if it has one: a named budget in the record store."""
    cap = credits_cap(settings.max_usd, settings.max_credits)
    if cap is None and settings.budget is None:
        return None
    return BudgetRef(name=settings.budget or default_name, cap_credits=cap)


async def budget_text(spend: BudgetRef | None, settings: RunSettings) -> str | None:
    """`<name>: spent ..., in flight ..., cap ...` of a spend cap, for summaries and tables."""
    if spend is None:
        return None
    store = await open_store(settings.submissions, settings.aws_credentials)
    return f"{spend.name}: {budget_summary(await spend.open(store).state(), spend.cap_credits)}"

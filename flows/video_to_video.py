"""The `video_to_video` flow: one generation, one flow run, with everything about it on that run.

Order matters for money: every check that can fail for free (the request, the settings, the
credentials block and a free access check, the record store, the input video, the output
destination) runs before the first and only paid call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shlex
import time
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from prefect_aimlapi_video.api.errors import AimlApiError, DeliveryFailed, GenerationFailedError, InvalidInputError
from prefect_aimlapi_video.api.models import Timing, VideoToVideoResult
from prefect_aimlapi_video.api.redact import redact
from prefect_aimlapi_video.api.requests import DEFAULT_MODEL, DEFAULTS, VideoRequest, request_model
from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.flows.batch_context import defer, in_batch, owns_key
from prefect_aimlapi_video.flows.events import emit_generation_event
from prefect_aimlapi_video.flows.settings import RunSettings, Scope, validate_settings
from prefect_aimlapi_video.flows.summary import publish_result, publish_summary
from prefect_aimlapi_video.media.limits import InputLimits
from prefect_aimlapi_video.media.strip import MEDIA_TYPE as STRIP_MEDIA_TYPE
from prefect_aimlapi_video.media.strip import SUFFIX as STRIP_SUFFIX
from prefect_aimlapi_video.storage.destinations import Destination, resolve_output
from prefect_aimlapi_video.storage.record_store import RecordStore, open_store
from prefect_aimlapi_video.storage.sources import DEFAULT_PRESIGN_SECONDS, VideoSource, file_stem, inspect_video
from prefect_aimlapi_video.storage.templates import template_fields
from prefect_aimlapi_video.submission.budget import BudgetExceeded, BudgetRef, budget_summary, credits_cap
from prefect_aimlapi_video.submission.estimate import check_ceiling, estimate, learn_rate
from prefect_aimlapi_video.submission.polling import DEFAULT_RECONCILE_SECONDS, DEFAULT_TIMEOUT_SECONDS, PollPolicy
from prefect_aimlapi_video.tasks.steps import download_video, submit_generation, wait_for_generation

DEFAULT_CREDENTIALS_BLOCK = "aimlapi"
SKIPPED_BUDGET = "skipped (budget)"
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


def parse_overrides(overrides: dict[str, Any] | str | None, request: type[VideoRequest] | None = None) -> dict[str, Any]:
    """Per-video values of the request's fields, typed; unknown keys are refused so a typo never passes."""
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
    prompt: str,
    strength: float = DEFAULTS["strength"],
    seed: int | None = DEFAULTS["seed"],
    enable_prompt_expansion: bool = DEFAULTS["enable_prompt_expansion"],
    credentials: str | AimlApiCredentials = DEFAULT_CREDENTIALS_BLOCK,
    output: str | None = None,
    output_storage: str | None = None,
    aws_credentials: str | None = None,
    stage_to: str | None = None,
    presign_expiry_seconds: int = DEFAULT_PRESIGN_SECONDS,
    idempotency_key: str | None = None,
    idempotency_scope: Scope = "flow-run",
    submissions: str | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    reconcile_grace_seconds: float = DEFAULT_RECONCILE_SECONDS,
    poll_policy: PollPolicy | None = None,
    overrides: dict[str, Any] | str | None = None,
    model: str = DEFAULT_MODEL,
    max_usd: float | None = None,
    max_credits: float | None = None,
    budget: str | None = None,
    limits: InputLimits | None = None,
) -> VideoToVideoResult:
    """Restyle `video` with `prompt` through `krea/krea-wan-14b/video-to-video` (or another registered `model`).

    Args:
        video: an https URL, a `data:video/...;base64,` URI, a local file path or `s3://bucket/key`.
        prompt: what the result should look like.
        strength: 0 keeps the original, 1 remakes it (default 0.85).
        seed: fix it to make a result reproducible; None lets the provider choose.
        enable_prompt_expansion: let the provider expand the prompt (default on).
        credentials: an `AimlApiCredentials` block or its name.
        output: a local path or directory, `s3://bucket/key`, or (with `output_storage`) a path in that
            block. May use {stem} {seed} {strength} {generation} {fingerprint} {flow_run} {date}.
        output_storage: a writable filesystem block, `block-type-slug/block-name`.
        aws_credentials: an `AwsCredentials` block name for s3:// input/output (default AWS chain if unset).
        stage_to: an `S3Bucket` block (`s3-bucket/name`) to upload local files above the inline cap to.
        presign_expiry_seconds: lifetime of the presigned URL the API fetches an S3 input with.
        idempotency_key: the same key (with the same request) never pays twice, across flow runs,
            deployments and hosts that share `submissions`; default: see `idempotency_scope`.
        idempotency_scope: without a key, what counts as the same generation: "flow-run" (this flow
            run and its retries) or "request" (the same input content, choices and output, in any run:
            what the CLI uses, so running a command again resumes it or returns its output).
        submissions: where the exactly-once records live: a directory (one host) or s3://bucket/prefix
            (all workers; uses `aws_credentials`). Default AIMLAPI_SUBMISSIONS_DIR, else
            $PREFECT_HOME/aimlapi/submissions.
        timeout_seconds: stop waiting after this long (the generation may still finish; re-run to resume).
        reconcile_grace_seconds: how long a POST whose outcome is unclear (lost answer, gateway error)
            must stay absent from the usage log before it is sent again (default 20 minutes: long
            enough for a provider that lists a request only once its generation completes).
        poll_policy: polling schedule (default: every ~1 s for 12 s, then backing off to 10 s); a
            PollPolicy, or a dict / JSON object of its fields.
        overrides: per-video values of the request's fields (prompt / strength / seed /
            enable_prompt_expansion) that win over the arguments above, e.g. an S3 object's metadata
            passed by the event bridge. A JSON string is accepted (trigger templates render text).
        model: the model on the provider's video endpoint; its request class (`api.requests`)
            decides the fields and their limits.
        max_usd, max_credits: a spend cap (2,000,000 credits = $1): before the POST, what the budget
            spent plus what is in flight plus this generation's estimate must stay within it, or
            nothing is sent (the run ends Failed: skipped (budget)).
        budget: the name of the budget the cap applies to, shared by every run (and worker, with a
            shared `submissions` store) that names it; default: this flow run alone.
        limits: what an input may be and what one generation may cost, checked before the POST
            (`InputLimits`: duration, frame size, bytes, the per-generation ceiling in USD, the
            input fetch deadline); default: its defaults.
    """
    from prefect.runtime import flow_run

    logger = get_run_logger()
    started = time.time()
    run_id = str(flow_run.id) if flow_run.id else None

    request = request_model(model)
    chosen = dict(prompt=prompt, strength=strength, seed=seed, enable_prompt_expansion=enable_prompt_expansion)
    params = request.validated(**{**{k: v for k, v in chosen.items() if k in request.model_fields},
                                  **parse_overrides(overrides, request)})
    settings = validate_settings(
        output=output, output_storage=output_storage, aws_credentials=aws_credentials, stage_to=stage_to,
        presign_expiry_seconds=presign_expiry_seconds, idempotency_key=idempotency_key,
        idempotency_scope=idempotency_scope, submissions=submissions, timeout_seconds=timeout_seconds,
        reconcile_grace_seconds=reconcile_grace_seconds, poll_policy=poll_policy, max_usd=max_usd,
        max_credits=max_credits, budget=budget, limits=limits,
    )
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

    result = VideoToVideoResult(status="submitting", model=params.MODEL, input=source.display, input_info=source.info,
                                flow_run_id=run_id, estimate_credits=round(cost.credits), **params.model_dump())
    try:
        scope, shared = _scope(settings, params, source, run_id)
        submitted = await submit_generation(params, source, creds, scope, settings.reconcile_grace_seconds,
                                            settings.submissions, settings.aws_credentials, shared, spend, cost.credits)
        result.generation_id = submitted.generation_id
        result.client_request_id = submitted.client_request_id
        result.resumed = submitted.resumed
        result.request_ids = [r for r in [submitted.request_id] if r]
        emit_generation_event("submitted", result)
        # A batch's children show no progress of their own and share one strip helper (flows.batch_context).
        outcome = await wait_for_generation(submitted, creds, settings.timeout_seconds, settings.poll_policy,
                                            progress=not in_batch())
        result.timeline, result.polls = outcome.timeline, outcome.polls
        result.request_ids += [r for r in outcome.request_ids if r not in result.request_ids]
        result.credits, result.charged_credits = outcome.credits, outcome.charged_credits
        path = _output_path(target, source, params, outcome.generation_id, run_id)
        with source.local_copy() as before:
            stored = await download_video(outcome.generation_id, creds, target, path, str(before) if before else None,
                                          strip_in_helper=in_batch())
        result.status = outcome.status
        result.output, result.output_info = stored.location, stored.info
        result.sha256, result.size_bytes = stored.sha256, stored.size_bytes
        result.timing = Timing(queued_s=outcome.queued_s, generating_s=outcome.generating_s,
                               download_s=stored.download_s, total_s=time.time() - started)
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
        result.generation_id = result.generation_id or getattr(exc, "generation_id", None)
        collect = _collect_command(result, credentials, settings)
        failure = exc
        if result.generation_id and isinstance(exc, Exception) and not isinstance(exc, AimlApiError):
            failure = DeliveryFailed(result.generation_id, exc)  # an OSError storing it: paid, not lost
        await _report_failure(result, failure, started, collect)
        if collect and isinstance(failure, AimlApiError) and not isinstance(failure, GenerationFailedError):
            failure.name_collect_command(collect)
        if failure is not exc:
            raise failure from exc
        raise
    emit_generation_event("completed", result)
    logger.info(
        "Done: %s -> %s (%s credits, %.1f s).", result.generation_id, result.output,
        f"{result.credits:,.0f}" if result.credits is not None else "unknown", result.timing.total_s,
    )
    return result


def _scope(settings: RunSettings, params: VideoRequest, source: VideoSource, run_id: str | None) -> tuple[str, bool]:
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


def _collect_command(result: VideoToVideoResult, credentials: Any, settings: RunSettings) -> str | None:
    """The command that downloads an accepted generation later, at no new cost."""
    if not result.generation_id:
        return None
    parts = ["aimlapi-video", "collect", result.generation_id]
    if settings.output:
        parts += ["--output", settings.output]
    if settings.submissions:
        parts += ["--submissions", settings.submissions]
    if settings.aws_credentials:
        parts += ["--aws-credentials", settings.aws_credentials]
    if isinstance(credentials, str) and credentials != DEFAULT_CREDENTIALS_BLOCK:
        parts += ["--credentials", credentials]
    return " ".join(shlex.quote(part) for part in parts)


async def _report_failure(result: VideoToVideoResult, exc: BaseException, started: float, collect: str | None) -> None:
    """Leave a summary (and an event) that says why, then let the exception end the run.

    An accepted generation that did not fail at the provider (we stopped waiting, the run was
    cancelled, the download failed) is paid or about to be: the summary names it and the exact
    command that collects it without a new charge.
    """
    result.status = "failed" if isinstance(exc, Exception) else "cancelled"
    if isinstance(exc, BudgetExceeded):
        result.status = SKIPPED_BUDGET
        result.error_name, result.error_message = type(exc).__name__, str(exc)
    elif isinstance(exc, GenerationFailedError):
        result.error_name, result.error_message = exc.error_name, exc.error_message
    else:
        result.error_name, result.error_message = type(exc).__name__, redact(str(exc)) or type(exc).__name__
        result.collect_command = collect
    result.timing = Timing(total_s=time.time() - started)
    try:
        await asyncio.wait_for(asyncio.shield(publish_summary(result)), 10)
        emit_generation_event("skipped" if result.status == SKIPPED_BUDGET else "failed", result)
    except Exception as report_error:  # the run's own failure is what matters; never hide it
        get_run_logger().warning("Could not publish the failure summary: %s", report_error)

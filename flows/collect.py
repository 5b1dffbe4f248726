"""The `collect_generation` flow: download a generation that was already paid for, by its id.

For a run that stopped waiting (its timeout, a cancellation, a crash) after the provider accepted
its request: the generation finishes and is charged either way, and this collects it with the same
verification, sidecar, preview and artifacts as `video_to_video`, without ever sending a POST.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

from prefect import flow
from prefect.logging import get_run_logger

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.api.models import Timing, VideoToVideoResult
from prefect_aimlapi_video.api.requests import DEFAULT_MODEL, REQUEST_MODELS
from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.flows.events import emit_generation_event
from prefect_aimlapi_video.flows.settings import RunSettings, check_run
from prefect_aimlapi_video.flows.summary import publish_result
from prefect_aimlapi_video.flows.video_to_video import DEFAULT_CREDENTIALS_BLOCK, tag_run
from prefect_aimlapi_video.media.strip import MEDIA_TYPE as STRIP_MEDIA_TYPE
from prefect_aimlapi_video.media.strip import SUFFIX as STRIP_SUFFIX
from prefect_aimlapi_video.storage.destinations import resolve_output
from prefect_aimlapi_video.storage.record_store import default_location
from prefect_aimlapi_video.storage.templates import template_fields
from prefect_aimlapi_video.submission.learned_polling import LearnedPollPolicy
from prefect_aimlapi_video.submission.record import StoreRef, SubmittedGeneration
from prefect_aimlapi_video.tasks.steps import download_video, wait_for_generation

COLLECTED_STEM = "collected"


def _model_of(generation_id: str) -> str:
    """The provider's ids end with the model (`<uuid>:krea/krea-wan-14b/video-to-video`)."""
    model = generation_id.partition(":")[2]
    return model if model in REQUEST_MODELS else DEFAULT_MODEL


@flow(name="aimlapi-collect-generation", flow_run_name="collect-{generation_id}", validate_parameters=False)
async def collect_generation(
    generation_id: str,
    credentials: str | AimlApiCredentials = DEFAULT_CREDENTIALS_BLOCK,
    output: str | None = None,
    settings: RunSettings | None = None,
) -> VideoToVideoResult:
    """Wait for generation `generation_id` if it is still running, then download it; no new charge.

    Args:
        generation_id: the id a summary, a log line or the dashboard names.
        output: as for `video_to_video` (`{stem}` is "collected"; `{generation}` is the id's first part).
        settings: as for `video_to_video`; what a collect uses of it: `output_storage`, `aws_credentials`,
            `timeout_seconds`, `poll_policy`, and `submissions`, the record store the generation's run used,
            which tells whether another run's events already reported this generation's charge.
    """
    from prefect.runtime import flow_run

    if not isinstance(generation_id, str) or not generation_id.strip():
        raise InvalidInputError("generation_id is empty: give the id of a generation that was submitted.")
    generation_id = generation_id.strip()
    started = time.time()
    run_id = str(flow_run.id) if flow_run.id else None
    settings = check_run(settings, output=output)
    creds = await AimlApiCredentials.resolve(credentials)
    await creds.check_access()
    target = await resolve_output(settings.output, settings.output_storage, settings.aws_credentials)
    result = VideoToVideoResult(status="collecting", model=_model_of(generation_id), input=f"generation {generation_id}",
                                generation_id=generation_id, flow_run_id=run_id, resumed=True)
    submitted = SubmittedGeneration(
        generation_id=generation_id, client_request_id="", accepted_at=time.time(), resumed=True, record_key="",
        model=result.model, store=StoreRef(location=settings.submissions or default_location(),
                                           aws_credentials=settings.aws_credentials),
    )
    policy = settings.poll_policy or LearnedPollPolicy.from_durations([])
    await tag_run()
    outcome = await wait_for_generation(submitted, creds, settings.timeout_seconds, policy)
    path = target.render(template_fields(
        stem=COLLECTED_STEM, seed=None, strength=0.0, fingerprint=hashlib.sha256(generation_id.encode()).hexdigest(),
        generation_id=generation_id, flow_run_id=run_id,
    ))
    stored = await download_video(generation_id, creds, target, path)
    result.status, result.credits, result.timeline, result.polls = outcome.status, outcome.credits, outcome.timeline, \
        outcome.polls
    result.charged_credits = outcome.charged_credits
    result.request_ids = outcome.request_ids
    result.output, result.output_info = stored.location, stored.info
    result.sha256, result.size_bytes = stored.sha256, stored.size_bytes
    result.timing = Timing(download_s=stored.download_s, total_s=time.time() - started)
    result.sidecar = target.location(f"{path}.json")
    if stored.strip is not None:
        result.strip = await target.write_bytes(f"{path}{STRIP_SUFFIX}", stored.strip.image,
                                                 content_type=STRIP_MEDIA_TYPE)
    await asyncio.gather(target.write_sidecar(path, result.model_dump(mode="json")),
                         publish_result(result, stored.strip, stored.location))
    emit_generation_event("completed", result)
    get_run_logger().info("Collected %s -> %s (no new request sent).", generation_id, result.output)
    return result

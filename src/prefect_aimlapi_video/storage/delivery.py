"""A finished generation: what polling saw of it, and its result stored where the user asked.

Plain async code (no Prefect): the wait and download tasks wrap it. Result URLs are signed and
short-lived, so they are kept in this process only (never in a task result that may be persisted):
the download takes the one polling just saw, if fresh, or asks the API again.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pydantic import BaseModel

from prefect_aimlapi_video.api.client import AimlApiClient
from prefect_aimlapi_video.api.errors import AimlApiError, DownloadError
from prefect_aimlapi_video.api.models import Generation, Phase, StatusChange, VideoInfo
from prefect_aimlapi_video.media.probe import probe_video
from prefect_aimlapi_video.media.strip import Strip, make_strip
from prefect_aimlapi_video.media.strip_helper import make_strip_in_helper
from prefect_aimlapi_video.storage.destinations import Destination

RESULT_URL_TTL_SECONDS = 60.0
_fresh_result_urls: dict[str, tuple[str, float]] = {}


class GenerationOutcome(BaseModel):
    """A finished generation as seen by polling. Holds no result URL (that is a credential)."""

    generation_id: str
    status: str
    timeline: list[StatusChange]
    credits: float | None = None
    charged_credits: float | None = 0.0  # this run's share of the charge: 0 if another run reported it
    video_duration: float | None = None
    request_ids: list[str] = []
    polls: int = 0
    queued_s: float | None = None
    generating_s: float | None = None


class StoredVideo(BaseModel):
    """The verified result, where it was put, and a before/after strip of it (best effort)."""

    location: str
    sha256: str
    size_bytes: int
    info: VideoInfo
    download_s: float
    strip: Strip | None = None


def remember_result_url(generation: Generation) -> None:
    """Keep a completed generation's signed URL for a download soon after, in this process only."""
    if generation.video and generation.video.url:
        _fresh_result_urls[generation.id] = (generation.video.url, time.monotonic())


async def result_url(client: AimlApiClient, generation_id: str, *, fresh_ok: bool = True) -> str:
    cached = _fresh_result_urls.pop(generation_id, None)
    if fresh_ok and cached and time.monotonic() - cached[1] < RESULT_URL_TTL_SECONDS:
        return cached[0]
    generation = (await client.get_generation(generation_id)).generation
    if generation.phase is not Phase.COMPLETED or not generation.video:
        raise DownloadError(f"Generation {generation_id} has no result to download (status {generation.status!r}).")
    return generation.video.url


async def _make_strip(before: Path | None, after: Path, in_helper: bool) -> Strip | None:
    """In the process's strip helper where many runs share this event loop (PyAV's GIL hand-backs in a
    thread would hold the loop up), else in a thread (a run alone in its process would spend more
    starting a helper than the strip costs; see benchmarks/README.md)."""
    if in_helper:
        return await make_strip_in_helper(before, after)
    return await asyncio.to_thread(make_strip, before, after)


async def store_result(
    client: AimlApiClient, generation_id: str, destination: Destination, path: str, *, fresh_ok: bool = True,
    before: Path | None = None, strip: bool = True, strip_in_helper: bool = False,
) -> StoredVideo:
    """Stream the result to `path` of `destination`, verified (length, MP4, decodable) and atomic.

    With `strip`, a before/after strip is made from the verified file before it is stored (`before`:
    the input as a local file, when at hand; else the strip shows the output alone).
    """
    started = time.monotonic()
    with destination.staging(path, ".download.mp4") as staged:
        downloaded = await client.download(await result_url(client, generation_id, fresh_ok=fresh_ok), staged)
        try:
            info = probe_video(staged, label="the downloaded result")
        except AimlApiError as exc:
            raise DownloadError(f"The result of {generation_id} is not a playable video: {exc}") from None
        preview = await _make_strip(before, staged, strip_in_helper) if strip else None
        location = await destination.store(staged, path, sha256=downloaded.sha256)
    return StoredVideo(location=location, sha256=downloaded.sha256, size_bytes=downloaded.size_bytes, info=info,
                       download_s=time.monotonic() - started, strip=preview)

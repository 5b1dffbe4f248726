"""Turning the user's `video` argument into something the API can fetch, checked before any POST.

`inspect_video` runs first and fails fast with a specific message; it returns a `VideoInput`
that is safe to log and persist (no signed URL, no data URI payload). `video_url_for` produces
the value actually sent as `video_url` (a data URI, the user's URL, or a presigned S3 URL) only
inside the submit task, so that secret never crosses a task boundary.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import mimetypes
import re
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

import httpx
from pydantic import BaseModel

from prefect_aimlapi_video.flows.client import is_loopback
from prefect_aimlapi_video.flows.errors import InvalidInputError
from prefect_aimlapi_video.flows.models import VideoInfo
from prefect_aimlapi_video.flows.probe import probe_url, probe_video
from prefect_aimlapi_video.flows.redact import safe_url

# A local file is sent inline: read and base64-encoded inside the submit task, it travels in the
# POST body. Keep bodies well below what an API gateway accepts: 20 MiB of video is about 27 MiB
# of request. Larger files go through S3 (`stage_to`, or pass s3://bucket/key).
MAX_INLINE_FILE_BYTES = 20 * 1024 * 1024
# A data URI given as the `video` parameter is stored with the flow run, and Prefect's API refuses
# parameters above 512 KB; 256 KiB of video (~342 KB of base64) leaves room for the rest.
MAX_DATA_URI_BYTES = 256 * 1024
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".mkv")
# A queued job may wait before the API fetches its input, so presigned input URLs live for hours.
DEFAULT_PRESIGN_SECONDS = 3 * 3600
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)(?P<params>(?:;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,")

Kind = Literal["url", "data_uri", "local_file", "s3"]


class VideoInput(BaseModel):
    """A checked video source. Every field is safe to show in logs, artifacts and results."""

    kind: Kind
    display: str
    identity: str
    stem: str
    size_bytes: int | None = None
    info: VideoInfo | None = None
    aws_credentials: str | None = None
    stage_to: str | None = None
    presign_seconds: int = DEFAULT_PRESIGN_SECONDS
    version_id: str | None = None  # s3: the version that was checked (versioned buckets)
    etag: str | None = None  # s3: the etag that was checked


def file_stem(name: str) -> str:
    stem = Path(unquote(name)).stem or "video"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")[:60] or "video"


def _decode_data_uri(video: str, max_bytes: int) -> bytes:
    match = _DATA_URI.match(video)
    if not match:
        raise InvalidInputError(
            "video is a malformed data URI: expected 'data:video/mp4;base64,<payload>'."
        )
    if not match.group("mime").startswith("video/") and match.group("mime") != "application/octet-stream":
        raise InvalidInputError(f"video data URI has media type {match.group('mime')!r}; expected video/*.")
    if not match.group("b64"):
        raise InvalidInputError("video data URI must be base64-encoded (';base64,').")
    payload = video[match.end():]
    size = len(payload) * 3 // 4 - len(payload) + len(payload.rstrip("="))
    if size > max_bytes:
        raise InvalidInputError(
            f"video data URI holds about {size} bytes, above the {max_bytes}-byte cap for a data URI "
            "parameter (Prefect stores parameters with the flow run); pass a local path or s3://bucket/key."
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError("video data URI has an invalid base64 payload.") from None


def data_uri(content: bytes, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64,{base64.b64encode(content).decode()}"


async def _check_remote(url: str) -> None:
    """Cheap reachability check: the first bytes of the URL, so a dead link fails before a POST."""
    shown = safe_url(url)
    try:
        async with httpx.AsyncClient(timeout=15.0, follow_redirects=True) as http:
            async with http.stream("GET", url, headers={"Range": "bytes=0-1023"}) as response:
                if response.status_code >= 400:
                    raise InvalidInputError(f"video URL {shown} answered {response.status_code}; is it public?")
                if response.headers.get("content-type", "").startswith("text/html"):
                    raise InvalidInputError(f"video URL {shown} serves a web page, not a video file.")
    except httpx.HTTPError as exc:
        raise InvalidInputError(f"video URL {shown} cannot be reached ({type(exc).__name__}).") from None


async def inspect_video(
    video: str,
    *,
    aws_credentials: str | None = None,
    stage_to: str | None = None,
    presign_seconds: int = DEFAULT_PRESIGN_SECONDS,
    max_data_uri_bytes: int | None = None,
    max_inline_file_bytes: int | None = None,
    check_url: bool = True,
) -> VideoInput:
    """Validate a video argument without spending anything; raise `InvalidInputError` if unusable.

    `aws_credentials` names an `AwsCredentials` block for s3:// inputs (default AWS chain if None);
    `stage_to` names an `S3Bucket` block through which local files above the data-URI cap are sent;
    `presign_seconds` is how long the presigned URL the API fetches stays valid;
    the caps default to `MAX_DATA_URI_BYTES` and `MAX_INLINE_FILE_BYTES`.
    """
    max_data_uri_bytes = max_data_uri_bytes or MAX_DATA_URI_BYTES
    if not isinstance(video, str) or not video.strip():
        raise InvalidInputError("video is empty: give an https URL, a data URI, a local path or s3://bucket/key.")
    video = video.strip()
    if video.startswith("data:"):
        content = _decode_data_uri(video, max_data_uri_bytes)
        digest = hashlib.sha256(content).hexdigest()
        info = probe_video(content, label="video data URI")
        return VideoInput(
            kind="data_uri", display=f"data URI ({len(content)} bytes)", identity=f"sha256:{digest}",
            stem=f"inline-{digest[:8]}", size_bytes=len(content), info=info,
        )
    parts = urlsplit(video)
    if parts.scheme == "s3":
        from prefect_aimlapi_video.flows.storage import inspect_s3_video

        source = await inspect_s3_video(video, aws_credentials)
        return source.model_copy(update={"presign_seconds": presign_seconds})
    if parts.scheme in ("http", "https"):
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise InvalidInputError(f"video URL must be https (got {safe_url(video)}); the API fetches it itself.")
        info = None
        if check_url:
            await _check_remote(video)
            info = await asyncio.to_thread(probe_url, video, label=f"video URL {safe_url(video)}")
        return VideoInput(
            kind="url", display=safe_url(video),
            identity=f"{safe_url(video)}#{hashlib.sha256(video.encode()).hexdigest()[:16]}",
            stem=file_stem(parts.path), info=info,
        )
    if parts.scheme and len(parts.scheme) > 1:
        raise InvalidInputError(
            f"video URL scheme {parts.scheme!r} is not supported; use https://, a data URI, a local path "
            "or s3://bucket/key."
        )
    source = await _inspect_local(Path(video).expanduser(), max_inline_file_bytes or MAX_INLINE_FILE_BYTES, stage_to)
    return source.model_copy(update={"presign_seconds": presign_seconds})


async def _inspect_local(path: Path, max_bytes: int, stage_to: str | None) -> VideoInput:
    if not path.exists():
        raise InvalidInputError(f"video file {path} does not exist.")
    if not path.is_file():
        raise InvalidInputError(f"video path {path} is not a file.")
    size = path.stat().st_size
    if size == 0:
        raise InvalidInputError(f"video file {path} is empty.")
    if size > max_bytes and not stage_to:
        raise InvalidInputError(
            f"video file {path} is {size} bytes, above the {max_bytes}-byte cap for sending a file inline; "
            "upload it to S3 and pass s3://bucket/key, or set `stage_to` to an S3Bucket block."
        )
    if stage_to:
        from prefect_aimlapi_video.flows.outputs import load_block

        await load_block(stage_to, what="stage_to")
    info = probe_video(path, label=f"video file {path}")
    return VideoInput(
        kind="local_file", display=str(path.resolve()), identity=f"sha256:{sha256_file(path)}",
        stem=file_stem(path.name), size_bytes=size, info=info, stage_to=stage_to if size > max_bytes else None,
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


async def video_url_for(video: str, source: VideoInput) -> str:
    """The `video_url` to send for a checked source. Call it only where the value can stay secret."""
    if source.kind == "local_file":
        path = Path(source.display)
        if source.stage_to:
            from prefect_aimlapi_video.flows.storage import stage_local_file

            return await stage_local_file(
                path, source.stage_to, source.identity.removeprefix("sha256:"), expires_in=source.presign_seconds
            )
        return data_uri(path.read_bytes(), mimetypes.guess_type(path.name)[0] or "video/mp4")
    if source.kind == "s3":
        from prefect_aimlapi_video.flows.storage import presign_video

        return await presign_video(video, aws_credentials=source.aws_credentials, expires_in=source.presign_seconds,
                                   version_id=source.version_id, etag=source.etag)
    return video.strip()

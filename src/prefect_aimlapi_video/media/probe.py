"""Reading a video's shape (size, frame count, rate) with PyAV, without decoding its pictures."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, BinaryIO

import av

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.api.fetch_guard import FetchRefused
from prefect_aimlapi_video.api.models import VideoInfo
from prefect_aimlapi_video.api.redact import redact


def _describe(container: Any, size: int | None, *, label: str, count_frames: bool) -> VideoInfo:
    if not container.streams.video:
        raise InvalidInputError(f"{label} has no video stream; give an MP4/MOV/WebM video file.")
    stream = container.streams.video[0]
    rate = float(stream.average_rate) if stream.average_rate else None
    duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
    if duration is None and container.duration:
        duration = container.duration / av.time_base
    frames = stream.frames
    if not frames and count_frames:  # e.g. WebM keeps no frame count: count packets (no decoding)
        frames = sum(1 for packet in container.demux(stream) if packet.size)
    if not frames and rate and duration:
        frames = round(rate * duration)
    return VideoInfo(
        width=stream.codec_context.width, height=stream.codec_context.height, frames=frames or 0, fps=rate,
        duration=duration, codec=stream.codec_context.name, size_bytes=size,
    )


def local_media(path: Path) -> str:
    """A local path as FFmpeg must be given it: `file:` first, or a name such as `take:2.mp4` reads as
    a protocol (`take`) FFmpeg does not know."""
    return f"file:{path}"


def probe_video(source: Path | bytes, *, label: str) -> VideoInfo:
    """Describe the first video stream of a file or buffer; `InvalidInputError` if there is none."""
    size = source.stat().st_size if isinstance(source, Path) else len(source)
    opened = local_media(source) if isinstance(source, Path) else io.BytesIO(source)
    try:
        with av.open(opened, mode="r") as container:
            return _describe(container, size, label=label, count_frames=True)
    except InvalidInputError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise InvalidInputError(f"{label} is not a readable video ({type(exc).__name__}: {exc}).") from None


def probe_remote(file: BinaryIO, *, label: str, size: int | None = None) -> VideoInfo | None:
    """Best effort, for the limits and the summary: the shape of a remote video from its header, or None.

    `file` reads the remote video (range requests through the fetch guard, or S3's own client):
    FFmpeg is never handed a URL, so it never follows a redirect nobody checked. PyAV reads only what
    it needs (the MP4 `moov` box, wherever it is). A failure is not an input error here: the caller
    decides what an unknown shape means.
    """
    try:
        with av.open(file, mode="r") as container:
            return _describe(container, size, label=label, count_frames=False)
    except FetchRefused:
        raise  # a hop we refused is the caller's answer, not an unknown shape
    except Exception as exc:  # best effort: FFmpeg's, the network's or S3's error all mean "unknown"
        logging.getLogger(__name__).warning("Could not read the shape of %s: %s", label, redact(str(exc))[:200])
        return None

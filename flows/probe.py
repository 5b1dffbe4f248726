"""Reading a video's shape (size, frame count, rate) with PyAV, without decoding its pictures."""

from __future__ import annotations

import io
from pathlib import Path

import av

from flows.errors import InvalidInputError
from flows.models import VideoInfo


def probe_video(source: Path | bytes, *, label: str) -> VideoInfo:
    """Describe the first video stream of a file or buffer; `InvalidInputError` if there is none."""
    size = source.stat().st_size if isinstance(source, Path) else len(source)
    opened = str(source) if isinstance(source, Path) else io.BytesIO(source)
    try:
        with av.open(opened, mode="r") as container:
            if not container.streams.video:
                raise InvalidInputError(f"{label} has no video stream; give an MP4/MOV/WebM video file.")
            stream = container.streams.video[0]
            frames = stream.frames or sum(1 for p in container.demux(stream) if p.size)
            rate = float(stream.average_rate) if stream.average_rate else None
            duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
            if duration is None and container.duration:
                duration = container.duration / av.time_base
            return VideoInfo(
                width=stream.codec_context.width,
                height=stream.codec_context.height,
                frames=frames,
                fps=rate,
                duration=duration,
                codec=stream.codec_context.name,
                size_bytes=size,
            )
    except InvalidInputError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise InvalidInputError(f"{label} is not a readable video ({type(exc).__name__}: {exc}).") from None

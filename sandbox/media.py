"""Small PyAV helpers: make a synthetic test clip, probe a video, decode it to pixels.

Tests, the demo and the benchmark all need real H.264 input and a way to look inside outputs;
keeping these here means nothing outside the sandbox needs to touch FFmpeg directly.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from pydantic import BaseModel

VideoSource = str | Path | bytes
# Repeatable output: a fixed thread count (not "auto", which follows the CPU count), and no
# macroblock-tree pass, whose SIMD code made the bitstream vary run to run at some frame sizes
# (e.g. 160x96, 320x192) in this FFmpeg build; without it output is bit-exact at every size tried.
X264_THREADS = 2
X264_OPTIONS = {"preset": "veryfast", "crf": "18", "x264-params": "mbtree=0"}


class VideoInfo(BaseModel):
    """What a client (or a test) needs to know about a video file."""

    width: int
    height: int
    frames: int
    fps: float
    codec: str
    pix_fmt: str | None
    duration: float
    has_audio: bool


def open_video(src: VideoSource) -> av.container.InputContainer:
    """Open a path or in-memory bytes for reading."""
    return av.open(io.BytesIO(src) if isinstance(src, bytes) else str(src), mode="r")


def frame_rate(stream: av.video.stream.VideoStream) -> Fraction:
    """The stream's nominal rate; containers without one fall back to 24 fps."""
    return Fraction(stream.average_rate or stream.guessed_rate or 24)


def add_h264_stream(
    container: av.container.OutputContainer, rate: Fraction, width: int, height: int, pix_fmt: str = "yuv420p"
) -> av.video.stream.VideoStream:
    """An x264 stream with settings that give the same bytes for the same frames, fast enough for 832x480."""
    stream = container.add_stream("libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    stream.codec_context.thread_count = X264_THREADS
    stream.options = X264_OPTIONS
    return stream


def make_test_clip(
    path: str | Path,
    width: int = 320,
    height: int = 192,
    seconds: float = 1.0,
    fps: float = 24,
    pattern_seed: int = 0,
) -> Path:
    """Write an H.264 MP4 with smooth moving colour so stylisation and motion are visible.

    Odd sizes are encoded as yuv444p (4:2:0 needs even sizes), which also gives the sandbox a
    non-4:2:0 input to convert.
    """
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    frames = max(1, round(seconds * rate))
    rng = np.random.default_rng(pattern_seed)
    freq = rng.uniform(1.0, 3.0, 3).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3).astype(np.float32)
    box_colour = rng.integers(0, 256, 3, dtype=np.uint8)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    xs, ys = xs / max(width, 1), ys / max(height, 1)
    side = max(2, min(width, height) // 4)
    with av.open(str(path), mode="w") as out:
        stream = add_h264_stream(
            out, rate, width, height, "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        )
        for i in range(frames):
            t = np.float32(i / rate)
            rgb = np.stack(
                [
                    np.sin(2 * np.pi * (f * (xs + ys * (c - 1)) + 0.4 * t) + p)
                    for c, (f, p) in enumerate(zip(freq, phase, strict=True))
                ],
                axis=-1,
            )
            img = ((rgb + 1) * 127.5).astype(np.uint8)
            x0 = int((0.5 + 0.4 * np.sin(2 * np.pi * 0.5 * t)) * (width - side))
            y0 = int((0.5 + 0.4 * np.cos(2 * np.pi * 0.5 * t)) * (height - side))
            img[y0 : y0 + side, x0 : x0 + side] = box_colour
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def probe_video(src: VideoSource) -> VideoInfo:
    """Read stream metadata; the frame count comes from the container or, if absent, from packets."""
    with open_video(src) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        rate = frame_rate(stream)
        frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = frames / rate
        return VideoInfo(
            width=ctx.width,
            height=ctx.height,
            frames=frames,
            fps=float(rate),
            codec=ctx.name,
            pix_fmt=ctx.pix_fmt,
            duration=duration,
            has_audio=bool(container.streams.audio),
        )


def decode_frames(src: VideoSource, pix_fmt: str = "rgb24") -> np.ndarray:
    """Decode every frame into one array (frames first), for pixel comparisons in tests."""
    with open_video(src) as container:
        return np.stack([frame.to_ndarray(format=pix_fmt) for frame in container.decode(video=0)])

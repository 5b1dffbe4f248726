"""A before/after strip: a few key frames of the input (top row) over the restyled output (bottom row).

A restyle is easiest to judge by eye, and the Prefect UI shows markdown, not video; one small JPEG
(inline in the artifact, and written next to the output) shows what changed without downloading
anything. JPEG, not PNG: video frames are photographs, which PNG stores at several times the bytes
and the CPU (`benchmarks/README.md`); in a batch every child sends its strip to the Prefect server
inside its summary, so both add up. It is best effort: an unreadable video, or a strip that cannot fit the byte cap, gives
None and a log line, never an exception, so a generation cannot fail because of it.

Only PyAV (its bundled FFmpeg) is used, to decode, scale and encode the JPEG; the grid is laid out
by copying bytes between frames' planes: no imaging or array library (numpy is not a dependency).
"""

from __future__ import annotations

import base64
import itertools
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
from pydantic import BaseModel, ConfigDict

from prefect_aimlapi_video.api.redact import redact
from prefect_aimlapi_video.media.probe import local_media

logger = logging.getLogger(__name__)

GAP = 4  # px between tiles and around the grid
GAP_COLOUR = (64, 64, 64)  # neutral dark grey, readable on the UI's light and dark themes
MIN_TILE_HEIGHT = 32  # below this a tile shows too little to be worth embedding
SHRINK = 0.75  # tile height factor per attempt when the image is over the byte cap
# Decoding forward is cheaper than a seek (which restarts at a keyframe) when the next target is
# close; further away, seek, so a long 1080p input is never decoded in full.
SEEK_GAP_SECONDS = 2.0
SEEK_BACKOFF_SECONDS = (0.0, 2.0, 8.0, 32.0)  # earlier retries when a seek lands after its target
FALLBACK_FPS = 24  # for the rare stream that states no rate (as in sandbox/media.py)
JPEG_QUALITY = 3  # FFmpeg's qscale, 2 (best) to 31: mean error under 3/255 on a noisy test strip
MEDIA_TYPE = "image/jpeg"
SUFFIX = ".strip.jpg"  # next to the output: <output>.strip.jpg


class Strip(BaseModel):
    """An encoded strip (JPEG) and what it shows; `times` are seconds into the input, one per column."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")  # JPEG bytes are not UTF-8

    image: bytes
    width: int
    height: int
    frames: int
    times: list[float]
    rows: int = 2  # 2: input over output; 1: the output alone


class _Unusable(Exception):
    """A video PyAV opens but that cannot give frames (no video stream, no decodable picture)."""


def _even(value: float | Fraction) -> int:
    return max(2, int(round(value / 2)) * 2)


def _stated_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    """Seconds of video as the file states them (stream, else container), or None."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _seconds(frame: av.VideoFrame, start: int, time_base: Fraction) -> float | None:
    return None if frame.pts is None else float((frame.pts - start) * time_base)


def _seek_before(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    target: float,
    *,
    start: int,
    time_base: Fraction,
    half_frame: float,
) -> Iterator[av.VideoFrame] | None:
    """Frames decoded from a keyframe at or just before `target` seconds; None if the file cannot seek.

    Some containers (MPEG-TS) land on the keyframe after the time asked for; asking again a little
    earlier fixes that, and decoding forward from there costs less than decoding from the start.
    """
    frames: Iterator[av.VideoFrame] | None = None
    for back in SEEK_BACKOFF_SECONDS:
        offset = max(0.0, target - back)
        try:
            container.seek(start + int(offset / time_base), stream=stream, backward=True, any_frame=False)
        except av.FFmpegError as exc:
            logger.debug("Strip: cannot seek (%s); decoding forward.", type(exc).__name__)
            return frames  # a failed seek leaves the position as it was: after the last try, or unmoved
        decoder = container.decode(stream)
        first = next(decoder, None)
        if first is None:  # past the end
            return decoder
        frames = itertools.chain([first], decoder)
        seconds = _seconds(first, start, time_base)
        if seconds is None or seconds <= target + half_frame or offset == 0.0:
            break
    return frames  # after the last back-off, even if still past the target: the nearest frame found


def _pick(path: Path, fractions: Sequence[float]) -> tuple[list[av.VideoFrame], list[float], Fraction]:
    """Decode the frame nearest each fraction of the duration (ascending), and its time in seconds.

    Returns the frames, their times and the stream's sample aspect ratio. Close targets are reached
    by decoding forward; far ones by seeking to the keyframe before them, then decoding forward.
    """
    with av.open(local_media(path), mode="r") as container:
        if not container.streams.video:
            raise _Unusable("no video stream")
        stream = container.streams.video[0]
        rate = Fraction(stream.average_rate or stream.guessed_rate or FALLBACK_FPS)
        half_frame = 0.5 / float(rate)
        start = stream.start_time or 0
        time_base = stream.time_base or Fraction(1, 1_000_000)
        sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        sar = Fraction(sar) if sar and sar > 0 else Fraction(1)
        duration = _stated_duration(container, stream)
        # A file that states no duration (e.g. a raw H.264 stream) seldom seeks either: count its
        # packets in a pass of its own (no decoding), then decode it forward.
        seekable = duration is not None
        if duration is None:
            with av.open(local_media(path), mode="r") as counting:
                packets = sum(1 for packet in counting.demux(counting.streams.video[0]) if packet.size)
            duration = packets / float(rate)

        frames: list[av.VideoFrame] = []
        times: list[float] = []
        decoder: Iterator[av.VideoFrame] | None = None
        last: tuple[float, av.VideoFrame] | None = None
        for fraction in fractions:
            target = fraction * duration
            if last is not None and last[0] + half_frame >= target:  # already there (a very short clip)
                frames.append(last[1])
                times.append(last[0])
                continue
            position = last[0] if last is not None else 0.0
            if seekable and target - position > SEEK_GAP_SECONDS:
                decoder = _seek_before(
                    container, stream, target, start=start, time_base=time_base, half_frame=half_frame
                ) or decoder
            if decoder is None:
                decoder = container.decode(stream)
            for frame in decoder:
                seconds = _seconds(frame, start, time_base)
                if seconds is None:  # no timestamps: count frames instead
                    seconds = last[0] + 1 / float(rate) if last is not None else 0.0
                last = (seconds, frame)
                if seconds + half_frame >= target:
                    break
            # Past the end (the stated duration was long): the last frame decoded stands in.
            if last is None:
                raise _Unusable("no decodable frame")
            frames.append(last[1])
            times.append(last[0])
        return frames, times, sar


def _rows_of(frame: av.VideoFrame) -> tuple[memoryview, int]:
    """A packed frame's first plane and its line size (FFmpeg may pad each line past width * 3 bytes)."""
    plane = frame.planes[0]
    return memoryview(plane), plane.line_size


def _tiles(frames: Sequence[av.VideoFrame], sar: Fraction, height: int) -> list[av.VideoFrame]:
    """RGB24 tiles `height` px high at the frames' display aspect ratio; shared frames scaled once."""
    scaled: dict[int, av.VideoFrame] = {}
    for frame in frames:
        if id(frame) not in scaled:
            width = _even(frame.width * sar * height / frame.height)
            scaled[id(frame)] = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA")
    return [scaled[id(frame)] for frame in frames]


def _grid(rows: Sequence[Sequence[av.VideoFrame]], height: int) -> av.VideoFrame:
    """Rows of tiles on a grey RGB24 canvas: columns as wide as their widest tile, each tile centred.

    Plain byte copies, a tile's line at a time, between the frames' own planes: no array library.
    """
    columns = len(rows[0])
    cell = max(tile.width for row in rows for tile in row)
    canvas = av.VideoFrame(GAP + columns * (cell + GAP), GAP + len(rows) * (height + GAP), "rgb24")
    out, stride = _rows_of(canvas)
    grey = bytes(GAP_COLOUR) * canvas.width
    for y in range(canvas.height):
        out[y * stride : y * stride + len(grey)] = grey
    for r, row in enumerate(rows):
        y = GAP + r * (height + GAP)
        for c, tile in enumerate(row):
            x = GAP + c * (cell + GAP) + (cell - tile.width) // 2
            pixels, line_size = _rows_of(tile)
            span = tile.width * 3
            for line in range(height):
                at = (y + line) * stride + x * 3
                out[at : at + span] = pixels[line * line_size : line * line_size + span]
    return canvas


def _jpeg(rgb: av.VideoFrame) -> bytes:
    """JPEG bytes from FFmpeg's `mjpeg` encoder at a fixed quality (one frame in, one packet out)."""
    chroma = "yuvj420p" if rgb.height % 2 == 0 and rgb.width % 2 == 0 else "yuvj444p"
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = rgb.width, rgb.height, chroma
    codec.time_base = Fraction(1, 1)
    codec.options = {"qmin": str(JPEG_QUALITY), "qmax": str(JPEG_QUALITY)}
    packets = codec.encode(rgb.reformat(format=chroma))
    packets += codec.encode(None)
    return b"".join(bytes(packet) for packet in packets)


def make_strip(
    before: Path | None, after: Path, *, columns: int = 4, tile_height: int = 96, max_bytes: int = 200_000
) -> Strip | None:
    """A JPEG strip of `columns` evenly spaced frames of `before` over the same relative times of `after`.

    Without `before` (an input that is not at hand, such as a URL or an S3 object) the strip is the
    output's row alone, and `times` are the output's.

    Columns sit at the middle of equal slices of each video (so neither a fade-in first frame nor a
    possibly missing last one is shown), which also lines them up when the output has a frame more
    or less than the input. Tiles shrink until the JPEG fits `max_bytes` (it is embedded inline in an
    artifact); None if that needs tiles under 32 px, or if either video cannot be read.
    """
    if columns < 1 or tile_height < 2:
        raise ValueError("make_strip needs columns >= 1 and tile_height >= 2")
    fractions = [(index + 0.5) / columns for index in range(columns)]
    try:
        picked = [_pick(path, fractions) for path in (before, after) if path is not None]
        times = picked[0][1]
        height = tile_height // 2 * 2
        while True:
            rows = [_tiles(frames, sar, height) for frames, _, sar in picked]
            rgb = _grid(rows, height)
            image = _jpeg(rgb)
            if len(image) <= max_bytes:
                return Strip(
                    image=image, width=rgb.width, height=rgb.height, frames=columns,
                    times=[round(seconds, 3) for seconds in times], rows=len(picked),
                )
            smaller = _even(height * SHRINK)
            if smaller < MIN_TILE_HEIGHT or smaller >= height:
                logger.warning(
                    "No before/after strip: %d bytes at %d px tiles is over the %d byte cap.", len(image), height, max_bytes
                )
                return None
            height = smaller
    except Exception as exc:  # best effort by design: a strip must never fail a generation
        logger.warning(
            "No before/after strip for %s -> %s: %s: %s",
            before.name if before else "-", after.name, type(exc).__name__, redact(str(exc))[:200],
        )
        return None


def strip_markdown(strip: Strip, *, alt: str = "before / after") -> str:
    """One markdown line with the image inline, so the artifact needs no file server or storage link."""
    safe_alt = " ".join(alt.split()).replace("[", "(").replace("]", ")")
    return f"![{safe_alt}](data:{MEDIA_TYPE};base64,{base64.b64encode(strip.image).decode('ascii')})"


def write_strip(strip: Strip, path: Path) -> Path:
    """Write the image via a temporary file in the same folder, so no reader ever sees half an image.

    The temporary is opened normally (not with `mkstemp`, whose 0600 mode would then stick to the
    image), so the strip gets the same permissions as the output video beside it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.parent / f".{path.name}.{uuid.uuid4().hex}.part"
    try:
        partial.write_bytes(strip.image)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path

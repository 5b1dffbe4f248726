"""The sandbox's "model": decode -> stylise -> encode, as pure functions on files and bytes.

The look is a posterised, gamma-shifted luma with a three-colour gradient map on the chroma,
picked from a hash of (seed, prompt). It works directly on yuv420p planes with 256-entry lookup
tables and integer blending (no colour conversion; `benchmarks/bench_sandbox.py` times it), and the whole run
is bit-for-bit repeatable. ``strength`` blends input and look linearly: 0 returns the decoded
input unchanged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .media import VideoSource, add_h264_stream, frame_rate, open_video


class InputDecodeError(Exception):
    """The input is not a decodable video (reported to clients as the generation's error)."""


@dataclass(frozen=True)
class Look:
    """Styled value for every input luma: the new luma and the chroma of the gradient map."""

    luma: np.ndarray
    chroma_u: np.ndarray
    chroma_v: np.ndarray


@dataclass(frozen=True)
class TransformResult:
    width: int
    height: int
    frames: int
    fps: Fraction
    sha256: str
    size: int

    @property
    def duration(self) -> float:
        return float(self.frames / self.fps)


def look_for(seed: int, prompt: str) -> Look:
    """Derive the look from sha256(seed, prompt) bytes, so it is the same on every platform."""
    digest = hashlib.sha256(f"{seed}\n{prompt}".encode()).digest()
    levels = 3 + digest[0] % 4
    gamma = 0.55 + digest[1] / 255 * 1.1
    x = np.arange(256) / 255.0
    posterised = np.minimum(np.floor(x * levels), levels - 1) / (levels - 1)
    luma = 16 + 219 * posterised**gamma
    rgb = np.frombuffer(digest[2:11], dtype=np.uint8).reshape(3, 3).astype(np.float64)
    # BT.601 chroma of the shadow, mid and highlight colours, pushed towards full saturation.
    u = (-0.1687 * rgb[:, 0] - 0.3313 * rgb[:, 1] + 0.5 * rgb[:, 2]) * 224 / 255 * 1.6
    v = (0.5 * rgb[:, 0] - 0.4187 * rgb[:, 1] - 0.0813 * rgb[:, 2]) * 224 / 255 * 1.6
    stops = [0.0, 0.5, 1.0]
    return Look(
        luma=np.clip(np.rint(luma), 16, 235).astype(np.uint8),
        chroma_u=np.clip(np.rint(128 + np.interp(posterised, stops, u)), 16, 240).astype(np.uint16),
        chroma_v=np.clip(np.rint(128 + np.interp(posterised, stops, v)), 16, 240).astype(np.uint16),
    )


class Styliser:
    """Applies ``look`` at ``strength`` to flat yuv420p frames of one size, in place."""

    def __init__(self, look: Look, strength: float, width: int, height: int) -> None:
        self.width, self.height = width, height
        x = np.arange(256)
        self.luma = np.rint((1 - strength) * x + strength * look.luma).astype(np.uint8)
        self.k = np.uint16(round(strength * 256))
        self.chroma_u, self.chroma_v = look.chroma_u * self.k, look.chroma_v * self.k

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        w, h = self.width, self.height
        flat = frame.reshape(-1)
        y = flat[: w * h]
        luma_index = y.reshape(h, w)[::2, ::2].reshape(-1)
        keep = np.uint16(256) - self.k
        for plane, table in zip(np.split(flat[w * h :], 2), (self.chroma_u, self.chroma_v), strict=True):
            mixed = plane * keep + table[luma_index] + np.uint16(128)
            plane[:] = mixed >> 8
        y[:] = self.luma[y]
        return frame


def transform_video(src: VideoSource, dst: str | Path, *, prompt: str, strength: float, seed: int) -> TransformResult:
    """Decode ``src``, stylise every frame, write an H.264 yuv420p faststart MP4 without audio.

    Size is kept (rounded down to even, as 4:2:0 needs), as are frame count and frame rate.
    """
    try:
        container = open_video(src)
    except (av.error.FFmpegError, OSError) as exc:
        raise InputDecodeError(f"video_url is not a readable video: {getattr(exc, 'strerror', None) or exc}") from exc
    with container:
        if not container.streams.video:
            raise InputDecodeError("video_url holds no video stream")
        in_stream = container.streams.video[0]
        in_stream.thread_type = "AUTO"
        width, height = in_stream.codec_context.width // 2 * 2, in_stream.codec_context.height // 2 * 2
        if width < 2 or height < 2:
            raise InputDecodeError("video_url has no usable picture size")
        rate = frame_rate(in_stream)
        styliser = Styliser(look_for(seed, prompt), strength, width, height)
        frames = 0
        with av.open(str(dst), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
            stream = add_h264_stream(out, rate, width, height)
            try:
                for frame in container.decode(in_stream):
                    planes = frame.to_ndarray(format="yuv420p", width=width, height=height)
                    styled = av.VideoFrame.from_ndarray(styliser(planes), format="yuv420p")
                    styled.pts = frames
                    frames += 1
                    out.mux(stream.encode(styled))
            except av.error.FFmpegError as exc:
                raise InputDecodeError(f"video_url could not be decoded after {frames} frames: {exc.strerror}") from exc
            if frames == 0:
                raise InputDecodeError("video_url holds no decodable frames")
            out.mux(stream.encode())
    with open(dst, "rb") as written:
        digest = hashlib.file_digest(written, "sha256").hexdigest()
    return TransformResult(width, height, frames, rate, digest, Path(dst).stat().st_size)

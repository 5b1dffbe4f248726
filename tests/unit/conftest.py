"""Fixtures for the fast unit tests: a real tiny H.264 clip made with PyAV, and an API client on a
`httpx.MockTransport`. No servers, no network."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest

CLIP_WIDTH, CLIP_HEIGHT, CLIP_FRAMES = 64, 48, 6


def make_clip_bytes(width: int = CLIP_WIDTH, height: int = CLIP_HEIGHT, frames: int = CLIP_FRAMES, fps: int = 12) -> bytes:
    """A real MP4 (libx264, yuv420p) with `frames` frames, built in memory."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            picture = np.zeros((height, width, 3), dtype=np.uint8)
            picture[:, : (index + 1) * width // frames] = (40 * index % 256, 120, 200)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def clip_bytes() -> bytes:
    content = make_clip_bytes()
    assert content[4:8] == b"ftyp"
    return content


@pytest.fixture
def clip_path(tmp_path: Path, clip_bytes: bytes) -> Path:
    path = tmp_path / "input clip.mp4"
    path.write_bytes(clip_bytes)
    return path


@pytest.fixture(autouse=True)
def no_usage_log_backoff(monkeypatch):
    """Usage-log reads back off between attempts; unit tests need not wait for it."""
    import prefect_aimlapi_video.api.client as client_module

    monkeypatch.setattr(client_module, "LOG_RETRY_BASE_SECONDS", 0.0)


@pytest.fixture(autouse=True)
def unthrottled_usage_log(monkeypatch):
    """A fresh, unthrottled usage-log reader per test (the real one spaces reads to respect the
    provider's rate limit, and is shared per event loop)."""
    from prefect_aimlapi_video.api import usage_log

    monkeypatch.setattr(usage_log, "LOG_READS_PER_MINUTE", 1e9)
    monkeypatch.setattr(usage_log.UsageLog, "_shared", usage_log.UsageLog._shared.__class__())


# A public documentation address (RFC 5737 is not public, so one of example.com's): the fetch guard
# checks it and lets the request through to the test's MockTransport, which never opens a socket.
STUB_PUBLIC_ADDRESS = "93.184.215.14"


@pytest.fixture(autouse=True)
def resolver_stub(monkeypatch):
    """Names resolve to a public address without DNS (no lookup leaves this machine); literal
    addresses stay themselves, so the guard's refusals of private ones are what they would be."""
    from prefect_aimlapi_video.api import fetch_guard

    resolved: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        resolved.append(host)
        return fetch_guard._literal(host) or [STUB_PUBLIC_ADDRESS]

    def resolve_sync(host: str, port: int) -> list[str]:
        resolved.append(host)
        return fetch_guard._literal(host) or [STUB_PUBLIC_ADDRESS]

    monkeypatch.setattr(fetch_guard, "system_resolve", resolve)
    monkeypatch.setattr(fetch_guard, "system_resolve_sync", resolve_sync)
    return resolved

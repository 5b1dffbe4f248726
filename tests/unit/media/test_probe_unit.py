"""media.probe: a video's shape read with PyAV, without decoding pictures; non-videos refused."""

from __future__ import annotations

import pytest

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.media.probe import probe_video
from tests.unit.conftest import CLIP_FRAMES, CLIP_HEIGHT, CLIP_WIDTH


def test_probe_reads_size_frames_and_rate_from_bytes_or_a_file(clip_bytes, clip_path):
    for source in (clip_bytes, clip_path):
        info = probe_video(source, label="the clip")
        assert (info.width, info.height, info.frames) == (CLIP_WIDTH, CLIP_HEIGHT, CLIP_FRAMES)
        assert info.fps == 12 and info.codec == "h264" and info.size_bytes == len(clip_bytes)
        assert info.describe() == f"{CLIP_WIDTH}x{CLIP_HEIGHT}, {CLIP_FRAMES} frames @ 12 fps"


def test_probe_refuses_what_is_not_a_video(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 10)
    with pytest.raises(InvalidInputError, match="notes"):
        probe_video(text, label=f"video file {text}")
    with pytest.raises(InvalidInputError):
        probe_video(b"\x00" * 64, label="some bytes")

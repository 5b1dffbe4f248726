"""Pure pieces (look, styliser, data URIs, media helpers) and the command line."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from fractions import Fraction

import httpx
import numpy as np
import pytest

from prefect_aimlapi_video.sandbox import make_test_clip, probe_video
from prefect_aimlapi_video.sandbox.inputs import parse_data_uri
from prefect_aimlapi_video.sandbox.transform import Styliser, look_for, transform_video


def test_look_depends_on_seed_and_prompt_only() -> None:
    base = look_for(1, "fox")
    assert all(
        np.array_equal(a, b) for a, b in zip(vars(base).values(), vars(look_for(1, "fox")).values(), strict=True)
    )
    for other in (look_for(2, "fox"), look_for(1, "owl")):
        assert not all(np.array_equal(a, b) for a, b in zip(vars(base).values(), vars(other).values(), strict=True))


def test_styliser_blends_linearly_from_identity() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(16, 236, size=(48 * 3 // 2, 64), dtype=np.uint8)
    look = look_for(5, "p")
    assert np.array_equal(Styliser(look, 0.0, 64, 48)(frame.copy()), frame)
    full = Styliser(look, 1.0, 64, 48)(frame.copy())
    assert np.array_equal(full[:48], look.luma[frame[:48]])
    half = Styliser(look, 0.5, 64, 48)(frame.copy()).astype(int)
    assert np.abs(half - (frame.astype(int) + full) / 2).max() <= 1


def test_parse_data_uri() -> None:
    assert parse_data_uri("data:video/mp4;base64,AAEC", 10) == b"\x00\x01\x02"
    assert parse_data_uri("data:,hello%20world", 100) == b"hello world"
    for bad in ("data:video/mp4;base64", "data:;base64,!!!!", "data:;base64,", "data:;base64," + "A" * 100):
        with pytest.raises(ValueError):
            parse_data_uri(bad, 10)


def test_test_clips_are_reproducible_and_probed(tmp_path) -> None:
    a = make_test_clip(tmp_path / "a.mp4", width=96, height=64, seconds=0.5, fps=Fraction(30000, 1001), pattern_seed=1)
    b = make_test_clip(tmp_path / "b.mp4", width=96, height=64, seconds=0.5, fps=Fraction(30000, 1001), pattern_seed=1)
    c = make_test_clip(tmp_path / "c.mp4", width=96, height=64, seconds=0.5, fps=Fraction(30000, 1001), pattern_seed=2)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    info = probe_video(a.read_bytes())
    assert (info.width, info.height, info.frames, info.codec, info.has_audio) == (96, 64, 15, "h264", False)
    assert info.fps == pytest.approx(29.97, abs=0.01) and info.duration == pytest.approx(0.5, abs=0.05)
    result = transform_video(a, tmp_path / "out.mp4", prompt="p", strength=0.7, seed=3)
    assert (result.frames, result.fps) == (15, Fraction(30000, 1001))
    assert result.size == (tmp_path / "out.mp4").stat().st_size


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_command_line_serves_until_signalled(sig) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect_aimlapi_video.sandbox", "--port", "0", "--api-key", "cli-key", "--processing-seconds", "0"],
        cwd=tempfile.gettempdir(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        banner = process.stdout.readline()
        assert "cli-key" in banner
        base_url = next(word for word in banner.split() if word.startswith("http://"))
        response = httpx.get(f"{base_url}/v2/logs", headers={"Authorization": "Bearer cli-key"}, timeout=10)
        assert response.status_code == 200
        process.send_signal(sig)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()

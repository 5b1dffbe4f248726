"""The before/after strip, on real H.264 clips made with PyAV: layout, timing, byte cap, failures."""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

import av
import numpy as np
import pytest

from prefect_aimlapi_video.media.strip import GAP, Strip, make_strip, strip_markdown, write_strip
from prefect_aimlapi_video.sandbox import make_test_clip

BEFORE_COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 40)]
AFTER_COLOURS = [(40, 220, 220), (220, 40, 220), (128, 128, 128), (250, 250, 250)]


def write_clip(path: Path, colours: list[tuple[int, int, int]], *, width: int, height: int, fps: int = 24,
               gop: int | None = None, format: str | None = None) -> Path:
    """An MP4 (or `format`) whose frame i is a flat picture of colours[i] (odd sizes as yuv444p, as x264 needs)."""
    with av.open(str(path), mode="w", format=format) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        stream.options = {"preset": "ultrafast", **({"g": str(gop)} if gop else {})}
        for index, colour in enumerate(colours):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), colour, dtype=np.uint8), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def segments(colours: list[tuple[int, int, int]], lengths: list[int]) -> list[tuple[int, int, int]]:
    return [colour for colour, length in zip(colours, lengths, strict=True) for _ in range(length)]


def jpeg_size(image: bytes) -> tuple[int, int]:
    """(width, height) from the JPEG's start-of-frame marker, read without a decoder."""
    assert image[:3] == b"\xff\xd8\xff"
    at = 2
    while at < len(image):
        marker, length = image[at + 1], int.from_bytes(image[at + 2 : at + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            return int.from_bytes(image[at + 7 : at + 9], "big"), int.from_bytes(image[at + 5 : at + 7], "big")
        at += 2 + length
    raise AssertionError("no start-of-frame marker")


def decode_image(image: bytes) -> np.ndarray:
    with av.open(io.BytesIO(image)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def tile_means(strip: Strip, tile_height: int) -> list[list[np.ndarray]]:
    """Mean colour of the middle of each tile, [row][column], from the encoded image itself."""
    image = decode_image(strip.image)
    cell = (strip.width - GAP) // strip.frames - GAP
    means = []
    for row in range(2):
        y = GAP + row * (tile_height + GAP) + tile_height // 2
        means.append([
            image[y - tile_height // 4 : y + tile_height // 4,
                  GAP + column * (cell + GAP) + cell // 4 : GAP + column * (cell + GAP) + 3 * cell // 4]
            .reshape(-1, 3).mean(axis=0)
            for column in range(strip.frames)
        ])
    return means


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """1 s at 24 fps, four colour segments; the output is a different size and a frame shorter."""
    folder = tmp_path_factory.mktemp("strip clips")
    return {
        "before": write_clip(folder / "before.mp4", segments(BEFORE_COLOURS, [6, 6, 6, 6]), width=161, height=97),
        "after": write_clip(folder / "after.mp4", segments(AFTER_COLOURS, [6, 6, 6, 5]), width=160, height=96),
        "small": write_clip(folder / "small.mp4", segments(BEFORE_COLOURS, [6, 6, 6, 6]), width=64, height=48),
        "wide": write_clip(folder / "wide.mp4", segments(AFTER_COLOURS, [6, 6, 6, 6]), width=96, height=48),
    }


def test_jpeg_header_and_grid_match_the_strip(clips: dict[str, Path]) -> None:
    strip = make_strip(clips["small"], clips["small"], columns=4, tile_height=48)
    assert strip is not None
    assert jpeg_size(strip.image) == (strip.width, strip.height)
    # 64x48 at 48 px high stays 64 wide: four columns and two rows, with gaps around and between.
    assert (strip.width, strip.height) == (GAP + 4 * (64 + GAP), GAP + 2 * (48 + GAP))
    assert decode_image(strip.image).shape == (strip.height, strip.width, 3)
    assert strip.frames == 4 and len(strip.times) == 4


def test_tiles_keep_their_aspect_ratio_and_columns_fit_the_widest(clips: dict[str, Path]) -> None:
    strip = make_strip(clips["small"], clips["wide"], columns=3, tile_height=96)
    assert strip is not None
    # 4:3 gives 128 px tiles, 2:1 gives 192 px: every column is as wide as the widest.
    assert (strip.width, strip.height) == (GAP + 3 * (192 + GAP), GAP + 2 * (96 + GAP))
    image = decode_image(strip.image)
    top_middle = image[GAP + 48, GAP : GAP + 192]
    # The narrower input tile is centred in its cell: grey margins of (192 - 128) / 2 either side
    # (grey within JPEG's error, which grows next to the tile's edge).
    assert np.abs(top_middle[:30].astype(int) - 64).max() <= 8
    assert np.abs(top_middle[40:150].astype(int) - 64).max() > 50


def test_columns_show_the_same_relative_moments_of_both_videos(clips: dict[str, Path]) -> None:
    strip = make_strip(clips["before"], clips["after"], columns=4, tile_height=64)
    assert strip is not None
    assert strip.height == GAP + 2 * (64 + GAP)
    means = tile_means(strip, 64)
    for column in range(4):
        assert np.abs(means[0][column] - BEFORE_COLOURS[column]).max() < 20, (column, means[0][column])
        assert np.abs(means[1][column] - AFTER_COLOURS[column]).max() < 20, (column, means[1][column])
    # Middles of four equal slices of a 1 s input, to the nearest frame.
    assert strip.times == pytest.approx([0.125, 0.375, 0.625, 0.875], abs=1 / 24)


def colour_of_second(second: int) -> tuple[int, int, int]:
    return ((second * 37) % 200 + 30, (second * 91) % 200 + 30, (second * 53) % 200 + 30)


def test_far_apart_columns_are_reached_by_seeking_to_the_right_frame(tmp_path: Path) -> None:
    # 40 s at 12 fps with a keyframe every second; each second has its own colour.
    colour = colour_of_second
    long_clip = write_clip(
        tmp_path / "long.mp4", [colour(index // 12) for index in range(40 * 12)], width=32, height=32, fps=12, gop=12
    )
    strip = make_strip(long_clip, long_clip, columns=8, tile_height=32)
    assert strip is not None
    assert strip.times == pytest.approx([2.5 + 5 * column for column in range(8)], abs=1 / 12)
    means = tile_means(strip, 32)
    for column, seconds in enumerate(strip.times):
        expected = colour(int(seconds))
        assert np.abs(means[0][column] - expected).max() < 20, (column, seconds, means[0][column])
        assert np.abs(means[1][column] - expected).max() < 20, (column, seconds, means[1][column])


@pytest.mark.parametrize(
    ("format", "suffix"),
    [("matroska", "mkv"), ("mpegts", "ts"), ("h264", "h264")],  # MPEG-TS seeks land late; raw H.264 has no duration
)
def test_other_containers_give_the_same_columns(tmp_path: Path, format: str, suffix: str) -> None:
    clip = write_clip(
        tmp_path / f"clip.{suffix}", [colour_of_second(index // 12) for index in range(30 * 12)],
        width=32, height=32, fps=12, gop=12, format=format,
    )
    strip = make_strip(clip, clip, columns=4, tile_height=32)
    assert strip is not None
    means = tile_means(strip, 32)
    for column in range(4):
        expected = colour_of_second(int((column + 0.5) / 4 * 30))  # 3.75 s, 11.25 s, ... of 30 s
        assert np.abs(means[0][column] - expected).max() < 20, (column, strip.times, means[0][column])
    if format != "h264":  # a raw stream states no rate, so its times are only frame counts over a guess
        assert strip.times == pytest.approx([3.75, 11.25, 18.75, 26.25], abs=1 / 12)


def test_more_columns_than_frames_repeats_frames(tmp_path: Path) -> None:
    two_frames = write_clip(tmp_path / "two.mp4", [(200, 0, 0), (0, 0, 200)], width=32, height=32)
    strip = make_strip(two_frames, two_frames, columns=5, tile_height=32)
    assert strip is not None
    assert strip.frames == 5
    assert strip.times == sorted(strip.times)
    means = tile_means(strip, 32)
    assert np.abs(means[0][0] - (200, 0, 0)).max() < 25 and np.abs(means[0][-1] - (0, 0, 200)).max() < 25


def test_byte_cap_shrinks_tiles_until_the_image_fits(tmp_path: Path) -> None:
    busy = make_test_clip(tmp_path / "busy.mp4", width=320, height=192, seconds=0.5, fps=12, pattern_seed=3)
    full = make_strip(busy, busy, max_bytes=10**9)
    assert full is not None and full.height == GAP + 2 * (96 + GAP)
    capped = make_strip(busy, busy, max_bytes=len(full.image) - 1)
    assert capped is not None
    assert len(capped.image) <= len(full.image) - 1
    assert capped.height == GAP + 2 * (72 + GAP)  # one 0.75x step
    assert jpeg_size(capped.image) == (capped.width, capped.height)


def test_an_impossible_byte_cap_gives_none(clips: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="prefect_aimlapi_video.media.strip"):
        assert make_strip(clips["before"], clips["after"], max_bytes=100) is None
    assert "byte cap" in caplog.text


@pytest.mark.parametrize("kind", ["text", "audio only", "missing"])
def test_unusable_input_gives_none_without_raising(
    tmp_path: Path, clips: dict[str, Path], caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    bad = tmp_path / "bad.mp4"
    if kind == "text":
        bad.write_text("secret-ish words that are not a video\n" * 20)
    elif kind == "audio only":
        with av.open(str(bad), mode="w", format="wav") as container:
            stream = container.add_stream("pcm_s16le", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
            frame.sample_rate = 8000
            container.mux(stream.encode(frame))
            container.mux(stream.encode())
    with caplog.at_level(logging.DEBUG, logger="prefect_aimlapi_video.media.strip"):
        assert make_strip(bad, clips["after"]) is None
        assert make_strip(clips["before"], bad) is None
    assert caplog.records and "bad.mp4" in caplog.text
    assert "secret-ish" not in caplog.text


def test_strip_markdown_is_one_inline_image_line(clips: dict[str, Path]) -> None:
    strip = make_strip(clips["small"], clips["small"], tile_height=32)
    assert strip is not None
    markdown = strip_markdown(strip)
    assert "\n" not in markdown
    assert markdown.startswith("![before / after](data:image/jpeg;base64,") and markdown.endswith(")")
    assert base64.b64decode(markdown.split("base64,", 1)[1][:-1]) == strip.image
    odd = strip_markdown(strip, alt="a [tricky]\nalt")
    assert "\n" not in odd and odd.startswith("![a (tricky) alt](data:image/jpeg;base64,")


def test_write_strip_replaces_the_file_and_leaves_no_temporary(tmp_path: Path, clips: dict[str, Path]) -> None:
    strip = make_strip(clips["small"], clips["small"], tile_height=32)
    assert strip is not None
    target = tmp_path / "out.strip.image"
    target.write_bytes(b"old")
    assert write_strip(strip, target) == target
    assert target.read_bytes() == strip.image
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.strip.image"]
    fresh = write_strip(strip, tmp_path / "new folder" / "fresh.jpg")
    reference = tmp_path / "reference.png"
    reference.write_bytes(b"x")
    assert fresh.read_bytes() == strip.image
    assert fresh.stat().st_mode == reference.stat().st_mode  # umask-normal, not a temporary file's 0600


def test_without_an_input_at_hand_the_strip_is_the_outputs_row(tmp_path):
    from prefect_aimlapi_video.sandbox import make_test_clip

    after = make_test_clip(tmp_path / "after.mp4", width=160, height=96, seconds=1.0, fps=12)
    both = make_strip(after, after)
    alone = make_strip(None, after)
    assert alone is not None and both is not None
    assert alone.width == both.width and alone.height < both.height / 2 + 8  # one row of tiles, not two
    assert alone.frames == 4 and len(alone.times) == 4 and (alone.rows, both.rows) == (1, 2)


def test_a_file_whose_name_holds_a_colon_gets_its_strip(tmp_path: Path) -> None:
    """FFmpeg would read `take:2.mp4` as a protocol named `take`; the strip opens it as a file."""
    before = make_test_clip(tmp_path / "take:1.mp4", width=64, height=48, seconds=0.5, fps=12)
    after = make_test_clip(tmp_path / "take:2.mp4", width=64, height=48, seconds=0.5, fps=12)
    strip = make_strip(before, after, columns=2, tile_height=32)
    assert strip is not None and strip.rows == 2


def test_the_strip_needs_no_numpy(clips: dict[str, Path]) -> None:
    """numpy is not a runtime dependency (only the sandbox extra has it): with it unimportable, the
    strip is made all the same, byte for byte."""
    import json
    import subprocess
    import sys

    from prefect_aimlapi_video.media.strip_helper import STAND_IN

    script = STAND_IN + (
        "sys.modules['numpy'] = None  # any `import numpy` now raises ImportError\n"
        "from pathlib import Path\n"
        "from prefect_aimlapi_video.media.strip import make_strip\n"
        f"print(make_strip(Path({str(clips['before'])!r}), Path({str(clips['after'])!r})).model_dump_json())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    expected = make_strip(clips["before"], clips["after"])
    assert expected is not None
    assert Strip.model_validate(json.loads(out.stdout)) == expected

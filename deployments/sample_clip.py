"""`aimlapi-video sample-clip`: a small video to follow the quick start with, made here (no network).

The sandbox's clip maker (`sandbox.make_test_clip`): an H.264 MP4 of moving colour and a moving box,
so a restyle and the motion are both easy to see. The same size as the demo's clip.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from prefect_aimlapi_video.deployments.terminal import fail
from prefect_aimlapi_video.sandbox import make_test_clip

WIDTH, HEIGHT, FPS = 480, 272, 24
DEFAULT_NAME = "sample.mp4"
MIN_SECONDS, MAX_SECONDS = 0.1, 30.0  # 30 s: the longest input the default limits let through


def write_sample_clip(path: Path, seconds: float = 2.0, force: bool = False) -> Path:
    """Write the clip at `path` (a directory: `sample.mp4` in it), whole or not at all; the absolute path.

    `FileExistsError` if something is there and not `force`; `ValueError` for a length out of range or a
    name not ending in .mp4."""
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise ValueError(f"--seconds must be between {MIN_SECONDS:g} and {MAX_SECONDS:g}, not {seconds:g}.")
    path = path.expanduser().absolute()
    if path.is_dir():
        path = path / DEFAULT_NAME
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"{path.name}: the sample clip is an MP4; give a path ending in .mp4.")
    if not force and (path.exists() or path.is_symlink()):
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial.mp4")  # the muxer goes by the suffix
    try:
        make_test_clip(partial, width=WIDTH, height=HEIGHT, seconds=seconds, fps=FPS)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def run_sample_clip(path: str, seconds: float = 2.0, force: bool = False) -> int:
    """Write the clip and print its absolute path (stdout, alone on its line: `clip=$(aimlapi-video sample-clip)`)."""
    try:
        written = write_sample_clip(Path(path), seconds, force)
    except FileExistsError as exc:
        return fail(f"{exc.args[0]} already exists; add --force to replace it, or give another path.", 2)
    except ValueError as exc:
        return fail(str(exc), 2)
    except OSError as exc:
        return fail(f"cannot write {path} ({exc.strerror or exc}).", 2)
    print(written, flush=True)
    return 0

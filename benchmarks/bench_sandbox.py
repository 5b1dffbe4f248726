"""Throughput of the sandbox's transform (decode + stylise + encode) on an 832x480, 5 s, 24 fps clip.

A baseline measured in the same run (the same decode, frame copies and encode, without the
stylisation) turns the stylisation's cost into a ratio that is comparable across machines. The
ratio includes the encoder's extra work on the stylised picture (hard posterised edges and
saturated colour cost x264 more bits and time than the smooth input).
The last line printed is one JSON object with the figures. Target: under 2 s wall per clip.

    python benchmarks/bench_sandbox.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av

from prefect_aimlapi_video.sandbox.media import add_h264_stream, frame_rate, make_test_clip, open_video, probe_video
from prefect_aimlapi_video.sandbox.transform import transform_video

TARGET_SECONDS = 2.0


def reencode(src: Path, dst: Path) -> None:
    """The baseline: the transform's decode, frame copies and encode, without the stylisation.

    Frames are rebuilt from arrays as in the transform: re-encoding decoded frames directly would
    let x264 inherit their picture types and time base, which changes its work and output size.
    """
    with (
        open_video(src) as container,
        av.open(str(dst), mode="w", format="mp4", options={"movflags": "+faststart"}) as out,
    ):
        in_stream = container.streams.video[0]
        in_stream.thread_type = "AUTO"
        width, height = in_stream.codec_context.width, in_stream.codec_context.height
        stream = add_h264_stream(out, frame_rate(in_stream), width, height)
        for index, frame in enumerate(container.decode(in_stream)):
            copy = av.VideoFrame.from_ndarray(frame.to_ndarray(format="yuv420p"), format="yuv420p")
            copy.pts = index
            out.mux(stream.encode(copy))
        out.mux(stream.encode())


def measure(run: Callable[[], object], runs: int, frames: int) -> dict[str, float]:
    walls = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        walls.append(time.perf_counter() - started)
    best = min(walls)
    return {
        "best_s": round(best, 3),
        "median_s": round(statistics.median(walls), 3),
        "frames_per_s": round(frames / best, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clip = make_test_clip(work / "input.mp4", width=832, height=480, seconds=5.0, fps=24)
        frames = probe_video(clip).frames
        transform = measure(
            lambda: transform_video(
                clip, work / "styled.mp4", prompt="a fairy rides the raccoon", strength=0.55, seed=7
            ),
            args.runs,
            frames,
        )
        baseline = measure(lambda: reencode(clip, work / "plain.mp4"), args.runs, frames)
    figures = {
        "clip": "832x480, 5 s, 24 fps",
        "frames": frames,
        "runs": args.runs,
        "transform": transform,
        "baseline_reencode": baseline,
        "transform_over_baseline": round(transform["best_s"] / baseline["best_s"], 2),
        "target_s": TARGET_SECONDS,
        "meets_target": transform["best_s"] < TARGET_SECONDS,
    }
    for name, run in (("transform (decode+stylise+encode)", transform), ("baseline (decode+re-encode)", baseline)):
        print(f"{name:34} {run['best_s']} s best, {run['median_s']} s median, {run['frames_per_s']} frames/s")
    ratio, meets = figures["transform_over_baseline"], figures["meets_target"]
    print(f"transform / baseline = {ratio}; under the {TARGET_SECONDS} s target: {meets}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

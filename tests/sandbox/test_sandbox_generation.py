"""The provider's sample sequence end to end, and what the transform promises about its output."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import av
import httpx
import numpy as np

from prefect_aimlapi_video.sandbox import make_test_clip, probe_video
from prefect_aimlapi_video.sandbox.media import decode_frames


def mean_abs_diff(a: bytes | Path, b: bytes | Path) -> float:
    return float(np.abs(decode_frames(a).astype(np.int16) - decode_frames(b).astype(np.int16)).mean())


def test_provider_sample_sequence_yields_a_playable_mp4(api, clip, clip_uri) -> None:
    posted = api.submit(clip_uri)
    assert posted.status_code == 200
    body = posted.json()
    generation_id = body["id"]
    assert generation_id.endswith(":krea/krea-wan-14b/video-to-video") and "/" in generation_id
    assert body["meta"]["usage"]["tokens_used"] == 315000  # the provider quotes a 5 s clip on POST
    polls = 0
    while True:  # the sample's loop: poll until neither queued nor generating
        polls += 1
        status = api.poll(generation_id).json()
        if status["status"] not in ("queued", "generating"):
            break
        time.sleep(0.02)
    assert status["status"] == "completed"
    download = httpx.get(status["video"]["url"])
    assert download.status_code == 200 and download.headers["content-type"] == "video/mp4"
    assert int(download.headers["content-length"]) == len(download.content)

    with av.open(__import__("io").BytesIO(download.content)) as container:  # decode every frame
        frames = [frame for frame in container.decode(video=0)]
    source, output = probe_video(clip), probe_video(download.content)
    assert len(frames) == output.frames == source.frames == 24
    assert (output.width, output.height, output.fps) == (source.width, source.height, source.fps)
    assert (output.codec, output.pix_fmt, output.has_audio) == ("h264", "yuv420p", False)
    assert download.content.index(b"moov") < download.content.index(b"mdat")  # faststart
    assert status["video"]["duration"] == status["duration"] == 1.0
    assert status["meta"]["usage"]["tokens_used"] == 63000  # charged per output second at completion

    (entry,) = api.handle.ledger()
    assert entry.generation_id == generation_id and entry.status == "completed" and entry.polls == polls
    assert entry.output_sha256 == hashlib.sha256(download.content).hexdigest()
    assert entry.output_bytes == len(download.content) and entry.credits == 63000
    assert entry.accepted_at <= entry.started_at <= entry.completed_at


def test_odd_sizes_are_rounded_to_even_and_frames_kept(api, tmp_path, to_data_uri) -> None:
    odd = make_test_clip(tmp_path / "odd.mp4", width=161, height=97, seconds=0.5, fps=12)
    _, result = api.generate(to_data_uri(odd.read_bytes()))
    info = probe_video(result)
    assert (info.width, info.height, info.frames, info.pix_fmt) == (160, 96, probe_video(odd).frames, "yuv420p")


def test_difference_to_the_input_rises_with_strength(api, clip, clip_uri) -> None:
    diffs = [mean_abs_diff(clip, api.generate(clip_uri, strength=strength)[1]) for strength in (0.0, 0.5, 1.0)]
    assert diffs[0] < 2.5, diffs  # only the H.264 re-encode's loss (about 1 at 832x480, more on tiny clips)
    assert 10 * diffs[0] < diffs[1] < diffs[2], diffs
    assert diffs[2] > 20, diffs


def test_same_seed_and_prompt_give_identical_pixels(api, clip_uri) -> None:
    first = api.generate(clip_uri, seed=11, prompt="neon city")[1]
    again = api.generate(clip_uri, seed=11, prompt="neon city")[1]
    other_seed = api.generate(clip_uri, seed=12, prompt="neon city")[1]
    other_prompt = api.generate(clip_uri, seed=11, prompt="oil painting")[1]
    assert np.array_equal(decode_frames(first), decode_frames(again))
    assert not np.array_equal(decode_frames(first), decode_frames(other_seed))
    assert not np.array_equal(decode_frames(first), decode_frames(other_prompt))


def test_input_from_a_loopback_http_url(api, static_server, clip) -> None:
    _, result = api.generate(f"{static_server}/clip.mp4?X-Amz-Signature=secret")
    assert probe_video(result).frames == probe_video(clip).frames


def test_range_and_head_on_the_result(api, tiny_uri) -> None:
    final, content = api.generate(tiny_uri)
    url = final["video"]["url"]
    part = httpx.get(url, headers={"Range": "bytes=10-109"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 10-109/{len(content)}"
    assert part.content == content[10:110] and part.headers["content-length"] == "100"
    head = httpx.head(url)
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) == len(content)
    assert httpx.get(url, headers={"Range": f"bytes={len(content) + 5}-"}).status_code == 416


def test_result_links_are_signed(api, tiny_uri) -> None:
    url = api.generate(tiny_uri)[0]["video"]["url"]
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    forged = {
        "no signature": base,
        "bad signature": f"{base}?Expires={query['Expires'][0]}&Signature={'0' * 64}",
        "later expiry": f"{base}?Expires={int(query['Expires'][0]) + 60}&Signature={query['Signature'][0]}",
    }
    for name, link in forged.items():
        response = httpx.get(link)
        assert response.status_code == 403, name
        assert response.json()["statusCode"] == 403


def test_result_links_expire(make_api, tiny_uri) -> None:
    api = make_api(processing_seconds=0, result_url_ttl_seconds=0.5)
    url = api.generate(tiny_uri)[0]["video"]["url"]
    expires = int(parse_qs(urlsplit(url).query)["Expires"][0])
    time.sleep(max(0.0, expires + 1.05 - time.time()))
    assert httpx.get(url).status_code == 403
    fresh = api.wait(api.handle.ledger()[0].generation_id)["video"]["url"]  # every poll signs a fresh link
    assert httpx.get(fresh).status_code == 200


def test_request_ids_and_logs_reconcile_a_submission(api, tiny_uri) -> None:
    posted = api.submit(tiny_uri, headers={"X-Client-Request-Id": "order-42:try.1"})
    generation_id = posted.json()["id"]
    assert posted.headers["x-client-request-id"] == "order-42:try.1"
    assert posted.headers["x-inference-id"] == generation_id
    assert posted.headers["x-aimlapi-credits-used"] == "315000"
    assert posted.headers["x-request-id"]
    for invalid in ("has space", "x" * 129, "semi;colon"):
        response = api.submit(tiny_uri, headers={"X-Client-Request-Id": invalid})
        assert response.status_code == 200 and "x-client-request-id" not in response.headers
    api.wait(generation_id)

    (row,) = api.handle.logs(client_request_id="order-42:try.1")
    assert (row["generation_id"], row["inference_id"], row["status"]) == (generation_id, generation_id, "succeeded")
    assert row["credits"] > 0 and row["cost"] == row["credits"] / 2_000_000 and row["time"].endswith("Z")
    assert [e.client_request_id for e in api.handle.ledger()] == ["order-42:try.1", None, None, None]

    rows = api.handle.logs()
    assert [r["generation_id"] for r in rows] == [
        e.generation_id for e in reversed(api.handle.ledger())
    ]  # newest first
    page = api.http.get("/v2/logs", params={"offset": 1, "limit": 2}).json()
    assert (page["total"], page["offset"], page["limit"]) == (4, 1, 2) and page["data"] == rows[1:3]
    assert api.handle.logs(status=["failed"]) == []
    assert len(api.handle.logs(status=["pending", "succeeded"], model="krea/krea-wan-14b/video-to-video")) == 4
    assert api.handle.logs(model="other/model") == []
    assert api.http.get("/v2/logs", params={"limit": 0}).status_code == 400
    assert httpx.get(f"{api.handle.base_url}/v2/logs").status_code == 401


def test_every_response_carries_a_request_id(api, tiny_uri) -> None:
    responses = [
        api.submit(tiny_uri),
        api.poll("nope"),
        httpx.get(f"{api.handle.base_url}/v2/logs"),
        httpx.get(f"{api.handle.base_url}/files/x.mp4"),
        httpx.get(f"{api.handle.base_url}/sandbox/health"),
        httpx.get(f"{api.handle.base_url}/no/such/route"),
    ]
    ids = [response.headers.get("x-request-id") for response in responses]
    assert all(ids) and len(set(ids)) == len(ids)
    assert responses[1].json()["requestId"] == ids[1]


def test_reset_clears_ledger_and_files(api, tiny_uri) -> None:
    url = api.generate(tiny_uri)[0]["video"]["url"]
    api.handle.reset()
    assert api.handle.ledger() == [] and api.handle.max_in_flight() == 0
    assert httpx.get(url).status_code == 404

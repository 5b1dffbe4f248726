"""Queueing is real, the ledger counts every concurrent POST, and a deep queue does not block the server."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx

MODEL = "krea/krea-wan-14b/video-to-video"


async def post_many(api, video_url: str, count: int) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {api.handle.api_key}"}
    async with httpx.AsyncClient(base_url=api.handle.base_url, headers=headers, timeout=60) as client:
        return await asyncio.gather(
            *(
                client.post(
                    "/v2/video/generations", json={"model": MODEL, "prompt": "p", "video_url": video_url, "seed": i}
                )
                for i in range(count)
            )
        )


async def test_fifty_simultaneous_posts_give_fifty_charged_generations(make_api, tiny_uri) -> None:
    api = make_api(processing_seconds=0.2, workers=4)
    responses = await post_many(api, tiny_uri, 50)
    assert [r.status_code for r in responses] == [200] * 50
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 50
    deadline = time.monotonic() + 30
    ledger = api.handle.ledger()
    while not all(entry.finished for entry in ledger) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        ledger = api.handle.ledger()
    assert {entry.generation_id for entry in ledger} == ids
    assert Counter(entry.status for entry in ledger) == {"completed": 50}
    assert all(entry.credits > 0 and entry.output_sha256 for entry in ledger)
    assert api.handle.max_in_flight() > 4  # they were all accepted before the 4 GPU slots drained them
    events = sorted(
        [(e.started_at, 1) for e in ledger] + [(e.completed_at, -1) for e in ledger], key=lambda t: (t[0], t[1])
    )
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 4  # never more generating at once than GPU slots


async def test_two_hundred_queued_generations_do_not_block_a_poll(make_api, tiny_uri) -> None:
    api = make_api(processing_seconds=60, workers=1)
    responses = await post_many(api, tiny_uri, 200)
    assert [r.status_code for r in responses] == [200] * 200
    assert Counter(entry.status for entry in api.handle.ledger()) == {"queued": 199, "generating": 1}
    started = time.monotonic()
    poll = api.poll(responses[-1].json()["id"])
    assert poll.json()["status"] == "queued"
    assert time.monotonic() - started < 1.0
    assert api.handle.max_in_flight() == 200

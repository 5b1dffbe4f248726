"""submission.log_visibility: how long an unknown outcome waits, learned from when this account's usage log
listed past requests; and the watcher that learns it."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from prefect_aimlapi_video.api.client import AimlApiClient
from prefect_aimlapi_video.storage.record_store import LocalRecordStore
from prefect_aimlapi_video.submission import log_visibility
from prefect_aimlapi_video.submission.log_visibility import (
    Sighting,
    add_sighting,
    read_sightings,
    reconcile_wait,
    sighting_of,
    wants_sightings,
    watch_listing,
)

DEFAULT = 1200.0


def seen(seconds: float, phase: str = "acceptance", at: float | None = None) -> Sighting:
    return Sighting(seen_s=seconds, phase=phase, at=at or time.time())


def test_without_enough_history_the_long_default_stands():
    assert reconcile_wait([], [], DEFAULT).seconds == DEFAULT
    assert reconcile_wait([seen(0.5), seen(0.4)], [10.0] * 10, DEFAULT).seconds == DEFAULT


def test_rows_seen_at_acceptance_wait_twice_the_slowest_plus_a_margin():
    wait = reconcile_wait([seen(0.5), seen(2.0), seen(1.0)], [], DEFAULT)
    assert wait.seconds == 2 * 2.0 + log_visibility.ACCEPTANCE_MARGIN_SECONDS
    assert "listed at acceptance, within 2.0 s" in wait.reason


def test_rows_seen_only_at_completion_are_bounded_by_the_longest_generation():
    sightings = [seen(12.0), seen(160.0, "completion"), seen(0.5)]
    assert reconcile_wait(sightings, [150.0] * 3, DEFAULT).seconds == DEFAULT  # too few durations to bound it
    wait = reconcile_wait(sightings, [140.0, 150.0, 155.0, 149.0, 151.0], DEFAULT)
    assert wait.seconds == 2 * 160.0 + log_visibility.COMPLETION_MARGIN_SECONDS and "when they complete" in wait.reason


def test_the_default_is_an_upper_bound_a_user_can_lower():
    slow = [seen(900.0, "completion")] * 3
    assert reconcile_wait(slow, [900.0] * 5, DEFAULT).seconds == DEFAULT
    assert reconcile_wait([seen(1.0)] * 3, [], 5.0).seconds == 5.0


def test_new_generations_are_watched_until_enough_recent_sightings_are_kept():
    assert wants_sightings([]) and wants_sightings([seen(1.0)] * (log_visibility.WANTED_SIGHTINGS - 1))
    assert not wants_sightings([seen(1.0)] * log_visibility.WANTED_SIGHTINGS)
    stale = [seen(1.0, at=time.time() - log_visibility.STALE_AFTER_SECONDS - 10)] * log_visibility.WANTED_SIGHTINGS
    assert wants_sightings(stale)


async def test_sightings_are_kept_beside_the_records(tmp_path):
    store = LocalRecordStore(tmp_path)
    for index in range(log_visibility.KEEP_SIGHTINGS + 3):
        await add_sighting(store, seen(float(index)))
    kept = await read_sightings(store)
    assert len(kept) == log_visibility.KEEP_SIGHTINGS and kept[-1].seen_s == log_visibility.KEEP_SIGHTINGS + 2


class Log:
    """A usage log that lists `crid` from `listed_at` (unix time) on."""

    def __init__(self, crid: str, listed_at: float) -> None:
        self.crid, self.listed_at, self.reads = crid, listed_at, 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.reads += 1
        rows = [{"client_request_id": self.crid, "generation_id": "g", "time": self.listed_at}] \
            if time.time() >= self.listed_at else []
        return httpx.Response(200, json={"data": rows})


@pytest.mark.parametrize("still_running, phase", [(True, "acceptance"), (False, "completion")])
async def test_the_watcher_notes_when_the_row_appeared_and_whether_the_generation_was_still_running(
    still_running, phase, monkeypatch, tmp_path
):
    monkeypatch.setattr(log_visibility, "WATCH_PAUSES", (0.0, 0.1))
    accepted = time.time()
    log = Log("v2v-x-a1", accepted + 0.5)

    async def running() -> bool:
        return still_running

    async with AimlApiClient("k", "https://api.test", transport=httpx.MockTransport(log)) as client:
        sighting = await asyncio.wait_for(watch_listing(client, LocalRecordStore(tmp_path), None, "v2v-x-a1", accepted, running), 5)
    assert sighting is not None and sighting.phase == phase and 0.5 <= sighting.seen_s < 1.5
    assert log.reads >= 3


async def test_a_row_never_listed_teaches_nothing_and_the_watch_ends_with_the_wait(monkeypatch, tmp_path):
    monkeypatch.setattr(log_visibility, "WATCH_PAUSES", (0.0, 0.05))
    monkeypatch.setattr(log_visibility, "AFTER_COMPLETION_SECONDS", 0.3)
    log = Log("v2v-x-a1", time.time() + 3600)

    async def running() -> bool:
        return True

    async with AimlApiClient("k", "https://api.test", transport=httpx.MockTransport(log)) as client:
        watcher = asyncio.ensure_future(watch_listing(client, LocalRecordStore(tmp_path), None, "v2v-x-a1", time.time(), running))
        started = time.monotonic()
        assert await sighting_of(watcher, finished=True) is None
    assert 0.3 <= time.monotonic() - started < 2 and watcher.cancelled()
    assert await sighting_of(None, finished=True) is None


async def test_only_a_few_generations_are_watched_at_once(monkeypatch):
    monkeypatch.setattr(log_visibility, "_watching", log_visibility.MAX_WATCHERS)

    async def running() -> bool:
        return True

    assert await watch_listing(None, None, None, "v2v-x-a1", time.time(), running) is None  # type: ignore[arg-type]

"""When this account's usage log lists a request, learned, so that an unknown outcome waits only as
long as it must before the request is sent again.

The provider does not document when a row appears: when it accepts a request, or only when the
generation completes (its charges are recorded then). After a POST whose answer says nothing (a
gateway's 502, a lost answer, the provider's own 500), silence in the log proves non-acceptance only
once a row *would* have appeared. Without history that is `reconcile_grace_seconds` (20 minutes:
longer than a generation takes). With history of this account it can be much less:

* after accepted POSTs, a few generations at a time are watched (`watch_listing`): the log is read
  (through the shared `UsageLog`, its reads booked in the store: `submission.log_pacing`) until the
  request appears, and the wait's next poll tells whether the generation was still running: then
  the row came at acceptance (`Sighting.phase`);
* `reconcile_wait` turns the sightings, kept beside the records so every worker sharing the store
  learns from them, and the learned durations into the wait:
  - every sighting at acceptance: twice the slowest sighting plus `ACCEPTANCE_MARGIN_SECONDS`;
  - any sighting only at completion: the row cannot appear before the generation completes, so the
    longest generation (or sighting) seen, twice, plus `COMPLETION_MARGIN_SECONDS`: a generation
    queued for longer than that on a suddenly busier provider could still be listed too late (the
    risk this trades for not waiting 20 minutes; `reconcile_grace_seconds` stays the upper bound);
  - fewer than `MIN_SIGHTINGS`, or no durations to bound a completion: the long default.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from pydantic import BaseModel

from prefect_aimlapi_video.api.client import AimlApiClient
from prefect_aimlapi_video.api.usage_log import UsageLog
from prefect_aimlapi_video.storage.record_store import RecordStore
from prefect_aimlapi_video.submission.log_pacing import store_pace
from prefect_aimlapi_video.submission.record import append_capped, read_durations, read_list

SIGHTINGS_KEY = "log-sightings"
KEEP_SIGHTINGS = 50
MIN_SIGHTINGS = 3
WANTED_SIGHTINGS = 5  # watch new generations until this many are kept, and again once they are stale
STALE_AFTER_SECONDS = 24 * 3600
MIN_DURATIONS = 5
ACCEPTANCE_MARGIN_SECONDS = 10.0
COMPLETION_MARGIN_SECONDS = 60.0
WATCH_PAUSES = (0.0, 1.0, 2.0, 4.0, 8.0, 15.0)  # then every 15 s
AFTER_COMPLETION_SECONDS = 10.0  # how long a finished generation's row is still awaited
MAX_WATCHERS = 2  # generations watched at once per process: the log's reads are rate limited
_watching = 0


class Sighting(BaseModel):
    """One request first seen in the usage log: `seen_s` after its acceptance, while its generation
    was still running (`acceptance`) or not provably so (`completion`)."""

    seen_s: float
    phase: Literal["acceptance", "completion"]
    at: float  # when, unix time (old sightings are refreshed)


class Wait(BaseModel):
    seconds: float
    reason: str


def reconcile_wait(sightings: list[Sighting], durations: list[float], default: float) -> Wait:
    """How long an unknown outcome must stay absent from the log before it is sent again."""
    recent = sightings[-KEEP_SIGHTINGS:]
    if len(recent) < MIN_SIGHTINGS:
        return Wait(seconds=default, reason=f"{len(recent)} sightings of when this account's usage log lists a "
                    f"request (fewer than {MIN_SIGHTINGS}): waiting the default {default:.0f} s")
    slowest = max(s.seen_s for s in recent)
    if all(s.phase == "acceptance" for s in recent):
        bound = 2 * slowest + ACCEPTANCE_MARGIN_SECONDS
        reason = f"the last {len(recent)} requests were listed at acceptance, within {slowest:.1f} s"
    elif len(durations) < MIN_DURATIONS:
        return Wait(seconds=default, reason="this account's usage log lists requests only once they complete, and "
                    f"fewer than {MIN_DURATIONS} durations are known: waiting the default {default:.0f} s")
    else:
        longest = max(slowest, max(durations))
        bound = 2 * longest + COMPLETION_MARGIN_SECONDS
        reason = f"this account's usage log lists requests when they complete; the longest took {longest:.0f} s"
    seconds = min(default, bound)
    return Wait(seconds=seconds, reason=f"{reason}: waiting {seconds:.0f} s")


async def read_sightings(store: RecordStore) -> list[Sighting]:
    return [Sighting.model_validate(item) for item in await read_list(store, SIGHTINGS_KEY) if isinstance(item, dict)]


def wants_sightings(sightings: list[Sighting]) -> bool:
    """Too few sightings, or only old ones: watch this generation too (if few others are watched)."""
    return len(sightings) < WANTED_SIGHTINGS or time.time() - sightings[-1].at > STALE_AFTER_SECONDS


async def watch_listing(
    client: AimlApiClient, store: RecordStore, model: str | None, client_request_id: str, accepted_at: float,
    running: Callable[[], Awaitable[bool]],
) -> Sighting | None:
    """Read the log until it lists `client_request_id`, then ask `running()` whether the generation was
    still running then (the wait's next poll says). None when `MAX_WATCHERS` generations are already
    watched in this process. The caller cancels it when it stops caring (`sighting_of`)."""
    global _watching
    if _watching >= MAX_WATCHERS:
        return None
    _watching += 1
    try:
        log = UsageLog.of(client, model, store_pace(store, client))
        for pause in itertools.chain(WATCH_PAUSES, itertools.repeat(WATCH_PAUSES[-1])):
            await asyncio.sleep(pause)
            finding = await log.find(client, client_request_id, accepted_at)
            if any(row.client_request_id == client_request_id for row in finding.rows):
                seen_s = time.time() - accepted_at
                phase: Literal["acceptance", "completion"] = "acceptance" if await running() else "completion"
                return Sighting(seen_s=round(seen_s, 3), phase=phase, at=time.time())
        raise AssertionError("unreachable")
    finally:
        _watching -= 1


async def sighting_of(watcher: asyncio.Task[Sighting | None] | None, *, finished: bool) -> Sighting | None:
    """The watcher's sighting: awaited for `AFTER_COMPLETION_SECONDS` more once the generation has
    `finished` (a row listed at completion comes a little after), else cancelled. Never raises: a
    sighting is a hint, and a log that cannot be read simply teaches nothing."""
    if watcher is None:
        return None
    if finished:
        with contextlib.suppress(Exception):  # the timeout (it cancels the watcher), or an unreadable log
            return await asyncio.wait_for(watcher, AFTER_COMPLETION_SECONDS)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    return None


async def add_sighting(store: RecordStore, sighting: Sighting) -> None:
    await append_capped(store, SIGHTINGS_KEY, sighting.model_dump(), KEEP_SIGHTINGS)


async def learned_wait(store: RecordStore, default: float) -> Wait:
    """`reconcile_wait` from what this store has learned; the default if it cannot be read (a hint)."""
    try:
        sightings, durations = await read_sightings(store), await read_durations(store)
    except Exception:
        sightings, durations = [], []
    return reconcile_wait(sightings, durations, default)

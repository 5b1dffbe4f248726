"""What a wait records as a generation ends, none of which may fail a paid generation: the budget
settled (or released), the charge reported once, the duration and the usage-log sighting learned."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prefect.logging import get_run_logger

from prefect_aimlapi_video.api.models import Generation
from prefect_aimlapi_video.storage.record_store import RecordStore
from prefect_aimlapi_video.submission.log_visibility import (
    Sighting,
    add_sighting,
    read_sightings,
    wants_sightings,
    watch_listing,
)
from prefect_aimlapi_video.submission.protocol import SubmittedGeneration, mark_failed
from prefect_aimlapi_video.submission.record import add_duration, claim_charge


class LastSeen:
    """What the wait's polls last saw, for the log watcher: whether the generation was still running
    when its row appeared is told by the first poll after the sighting, with no request of its own."""

    def __init__(self) -> None:
        self.at, self.final = 0.0, False
        self._next = asyncio.Event()

    def saw(self, at: float, final: bool) -> None:
        self.at, self.final = at, final
        self._next.set()
        self._next = asyncio.Event()

    async def running_after(self, moment: float) -> bool:
        while self.at < moment and not self.final:
            await self._next.wait()
        return not self.final


async def watch_listing_of(store: RecordStore | None, submitted: SubmittedGeneration, client: Any,
                         last_seen: LastSeen) -> Any:
    """Watch when the usage log lists this fresh acceptance, while the store still wants to learn it
    (see `submission.log_visibility`); None when there is nothing to learn here."""
    if store is None or submitted.resumed or not submitted.client_request_id:
        return None
    try:
        if not wants_sightings(await read_sightings(store)):
            return None
    except Exception:  # a hint: a store that cannot say simply teaches nothing now
        return None

    async def running() -> bool:
        return await last_seen.running_after(time.time())

    return asyncio.ensure_future(watch_listing(client, store, submitted.model, submitted.client_request_id,
                                               submitted.accepted_at, running))


async def after_failure(store: RecordStore | None, submitted: SubmittedGeneration) -> None:
    """A failed generation is not charged: its record lets the next attempt post anew, and its budget
    reservation goes back. Neither may hide the failure itself."""
    if store is None or not submitted.record_key:
        return
    try:
        await mark_failed(store, submitted.record_key, submitted.generation_id)
        if submitted.budget:
            await submitted.budget.open(store).release(submitted.record_key)
    except Exception as exc:
        get_run_logger().warning("Could not record that generation %s failed (%s).", submitted.generation_id, exc)


async def after_completion(store: RecordStore | None, submitted: SubmittedGeneration, generation: Generation,
                            took: float, sighting: Sighting | None) -> float | None:
    """What the store learns from a completed generation, and this run's share of its charge (0 when
    another run has reported it). Bookkeeping only: none of it may fail a paid generation."""
    logger = get_run_logger()
    credits = generation.credits if generation.credits is not None else submitted.credits
    if store is None:
        return 0.0 if submitted.resumed else credits
    try:
        if submitted.budget and submitted.record_key:
            await submitted.budget.open(store).settle(submitted.record_key, generation.credits)
        if sighting is not None:
            await add_sighting(store, sighting)
        if not submitted.resumed:  # resumed: we did not see it accepted
            await add_duration(store, took)
    except Exception as exc:
        logger.warning("Could not update what the record store learns about %s (%s).", generation.id, exc)
    try:
        return credits if await claim_charge(store, generation.id) else 0.0
    except Exception as exc:
        logger.warning("Could not note that %s's charge was reported (%s).", generation.id, exc)
        return 0.0 if submitted.resumed else credits

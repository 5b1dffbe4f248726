"""A live claim on a submission record: what lets one attempt, and only one, send a POST.

An attempt that is about to POST holds the record in state `pending` with itself as `owner`. The
claim is a lease: while the holder works (reserving budget, staging the input) a heartbeat
rewrites the record every few seconds, and right before the POST the holder renews it once more
with a compare-and-swap (`renew`). Whoever finds the record unchanged for `lease_seconds` may take
it over (`submission.protocol`), and that takeover changes the record's version, so a holder that was
paused (SIGSTOP, a long GC, a host that froze) fails its renewal on waking and sends nothing. A lost
lease, or a store that cannot be written, stops the send: nothing is sent without a renewal.

The lease is declared by its holder (the record's `lease_seconds`) and measured by the one who
would take over on its *own* clock (see `Silence`): an attempt never compares its clock with the
writer's. It has a floor (`LEASE_FLOOR_SECONDS`) and is at least twice the longest a POST can take
(`AimlApiClient.post_deadline_seconds`), so a POST in flight always ends (and records what it
proved) before anyone may take its record over.

Clock assumptions between hosts: the takeover of a live claim uses only the reader's monotonic
clock. A record whose writer's own `updated_at` is older than the lease by more than
`CLOCK_SKEW_SECONDS` is also taken as unrefreshed without waiting a whole lease: that shortcut
assumes the hosts' clocks agree within `CLOCK_SKEW_SECONDS` (NTP keeps them within a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from prefect_aimlapi_video.api.errors import TransientApiError
from prefect_aimlapi_video.storage.record_store import RecordStore
from prefect_aimlapi_video.submission.record import SubmissionRecord, dump_record, load_record

LEASE_FLOOR_SECONDS = 30.0
HEARTBEAT_SECONDS = 5.0
CLOCK_SKEW_SECONDS = 60.0


def lease_for(post_deadline_seconds: float) -> float:
    """The lease a holder declares: at least the floor, and twice its longest possible POST."""
    return max(LEASE_FLOOR_SECONDS, 2 * post_deadline_seconds)


class LeaseLost(Exception):
    """Someone took the record over: it is theirs now; nothing may be sent under it."""


class Silence:
    """How long a record has stayed at one version, on this process's own clock; the writer's
    `updated_at` shortens it only beyond `CLOCK_SKEW_SECONDS` (see the module's docstring)."""

    def __init__(self, version: str) -> None:
        self.version, self.since = version, time.monotonic()

    def seen(self, version: str) -> None:
        if version != self.version:
            self.version, self.since = version, time.monotonic()

    def seconds(self, record: SubmissionRecord) -> float:
        return max(time.monotonic() - self.since, time.time() - record.updated_at - CLOCK_SKEW_SECONDS)


class Lease:
    """The claim one attempt holds on one record, with its heartbeat. `async with` runs the heartbeat;
    leaving it stops the heartbeat and never raises."""

    def __init__(self, store: RecordStore, record: SubmissionRecord, version: str,
                 logger: logging.Logger | logging.LoggerAdapter) -> None:
        self.store, self.record, self.version, self.logger = store, record, version, logger
        self.owner = record.owner
        self.lost = False
        self._writing = asyncio.Lock()  # the heartbeat and `renew` never race each other's version
        self._beat: asyncio.Task[None] | None = None

    @property
    def interval(self) -> float:
        return max(0.25, min(HEARTBEAT_SECONDS, (self.record.lease_seconds or LEASE_FLOOR_SECONDS) / 6))

    async def __aenter__(self) -> Lease:
        self._beat = asyncio.create_task(self._heartbeat())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._beat

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self._refresh()
            except LeaseLost:
                self.logger.warning("Record %s was taken over by another attempt; this one sends nothing.",
                                    self.record.key[:12])
                return
            except Exception as exc:  # the store failed: keep trying; `renew`'s own write decides
                self.logger.warning("Could not refresh record %s (%s); retrying.", self.record.key[:12], exc)

    async def _refresh(self) -> None:
        async with self._writing:
            if self.lost:
                raise LeaseLost
            fresh = self.record.model_copy(update={"updated_at": time.time()})
            version = await self.store.replace(self.record.key, dump_record(fresh), self.version)
            if version is None:
                self.lost = True
                raise LeaseLost
            self.record, self.version = fresh, version

    async def renew(self) -> None:
        """Right before the POST: prove the claim is still ours and fresh, or send nothing.

        `LeaseLost` if another attempt took it over; `TransientApiError` if the store cannot be
        written (then nobody can see that we are alive, so we must not send)."""
        try:
            await self._refresh()
        except LeaseLost:
            raise
        except Exception as exc:
            raise TransientApiError(
                f"Submission record store {self.store.location}: cannot renew the claim before sending ({exc}); "
                "nothing was sent."
            ) from None

    # -- what the POST proved, written under the claim ---------------------------------------------

    async def settle(self, **changes: object) -> SubmissionRecord:
        """Write what the POST proved. If the record moved on meanwhile, an acceptance is still written
        (the generation exists and is paid for); anything else yields to the newer state."""
        update = {"updated_at": time.time(), **changes}
        if changes.get("state") != "accepted":
            update.setdefault("owner", None)
        key, version = self.record.key, self.version
        wanted = self.record.model_copy(update=update)
        while True:
            if await self.store.replace(key, dump_record(wanted), version) is not None:
                return wanted
            found = await self.store.read(key)
            if found is None:
                return wanted
            record, version = load_record(found[0]), found[1]
            if changes.get("state") != "accepted" and record.owner != self.owner:
                return record
            if record.state == "accepted" and record.generation_id != wanted.generation_id:
                self.logger.error(
                    "Generation %s was accepted for this request while another attempt's generation %s was recorded: "
                    "both may be charged. Keeping %s.", wanted.generation_id, record.generation_id,
                    record.generation_id)
                return wanted
            wanted = record.model_copy(update=update)

    async def settle_quietly(self, **changes: object) -> None:
        """Record what a POST that was not accepted proved; if the store fails, the claim just expires."""
        try:
            await self.settle(**changes)
        except Exception as exc:
            self.logger.warning("Could not record the outcome of request %s (%s); it will be reconciled.",
                                self.record.client_request_id, exc)

    async def record_acceptance(self, acceptance: dict[str, object], deadline_seconds: float) -> SubmissionRecord:
        """Write an accepted answer, retrying a failing store with backoff for up to `deadline_seconds`."""
        deadline = time.monotonic() + deadline_seconds
        pause = 0.5
        while True:
            try:
                return await self.settle(**acceptance)
            except Exception as exc:
                if time.monotonic() + pause > deadline:
                    raise
                self.logger.warning("Could not record generation %s yet (%s); trying again for up to %.0f s.",
                                    acceptance["generation_id"], exc, deadline - time.monotonic())
                await asyncio.sleep(pause * random.uniform(0.5, 1.5))
                pause = min(pause * 2, 10.0)

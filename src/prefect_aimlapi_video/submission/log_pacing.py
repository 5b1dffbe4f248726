"""The usage log's read budget, booked in the record store so that every process sharing it keeps one pace.

The provider limits `GET /v2/logs` per key (about 200 reads per 60 s), not per process. In a work
pool every flow run is a process of its own, each with its own `UsageLog`: spaced per process,
25 children watching or reconciling at once read 200 times a minute (measured by the pool soak).
So each read is booked in the store: one small object per account holds when the next read may go
out, and a compare-and-swap moves it on by one spacing. Every process (and host) that shares the
store then reads at most `LOG_READS_PER_MINUTE` together.

Booking is a hint, never a gate: a store that cannot be read or written, or a booking lost to other
processes `BOOK_ATTEMPTS` times in a row, falls back to this process's own spacing (the log's 429s
are still retried), and a booking further ahead than `MAX_AHEAD_SECONDS` (a host whose clock runs
fast wrote it) is not waited for beyond that.
"""

from __future__ import annotations

import json
import logging
import time

from prefect_aimlapi_video.api.client import AimlApiClient
from prefect_aimlapi_video.api.usage_log import LocalPace, account_of
from prefect_aimlapi_video.storage.record_store import RecordStore

PACE_KEY_PREFIX = "log-pace-"
BOOK_ATTEMPTS = 20
MAX_AHEAD_SECONDS = 60.0  # a queue of processes needs far less: each books one read at a time

logger = logging.getLogger(__name__)


class StorePace:
    """Reads of one account's log, booked in a record store shared by every process that reads it."""

    def __init__(self, store: RecordStore, account: str) -> None:
        self.store, self.key = store, PACE_KEY_PREFIX + account[:32]
        self.local = LocalPace()

    async def book(self, spacing: float) -> float:
        try:
            for _ in range(BOOK_ATTEMPTS):
                found = await self.store.read(self.key)
                now = time.time()
                start = min(max(now, _booked(found[0]) if found else 0.0), now + MAX_AHEAD_SECONDS)
                data = json.dumps({"next": start + spacing}).encode()
                written = await (self.store.create(self.key, data) if found is None
                                 else self.store.replace(self.key, data, found[1]))
                if written is not None:
                    return start - time.time()
        except Exception as exc:
            logger.debug("Could not book a usage-log read in %s (%s); spacing this process alone.",
                         self.store.location, exc)
        return await self.local.book(spacing)


def store_pace(store: RecordStore, client: AimlApiClient) -> StorePace:
    return StorePace(store, account_of(client))


def _booked(data: bytes) -> float:
    try:
        value = json.loads(data).get("next")
    except (ValueError, AttributeError):
        return 0.0
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0

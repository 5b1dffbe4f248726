"""The provider's usage log (`GET /v2/logs`), read to learn what became of a POST we cannot account for.

It is the only way to find out, after an answer was lost or came from a gateway, whether the
provider accepted a request and under which generation id: every POST carries a deterministic
`X-Client-Request-Id`, and the log lists rows with that id. What is *not* documented, and what
this module is built to survive whatever the answer:

* the row's shape: the generation id is looked for under a documented precedence of field names
  (`GENERATION_ID_FIELDS`), never the row's own `id`; a row that matches our request but has no
  recognisable generation id is reported as `unidentified`, and the caller fails closed;
* when a row appears (at acceptance, or only when the generation completes, minutes later): the
  caller decides how long silence must last before a resend; this module only reads;
* how far back the log reaches: a scan that runs out of pages before it passes the time of the
  request cannot prove absence and raises `ReconciliationUnavailable` instead of answering "absent".

The log is rate limited (about 200 reads per 60 s per key), so reads are shared: one `UsageLog`
per account and event loop coalesces every pending lookup into one scan, and spaces its requests
to stay under `LOG_READS_PER_MINUTE`. A batch of a hundred retried children costs a scan or two,
not a hundred. The spacing is a `Pace`: this process's own (`LocalPace`), or one that every process
sharing a record store books its reads in (`submission.log_pacing`), since the limit is the key's,
and a work pool runs each flow run in a process of its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from prefect_aimlapi_video.api.client import AimlApiClient
from prefect_aimlapi_video.api.errors import ReconciliationUnavailable

# Where a row may carry the generation id, in order of preference. `x-inference-id` equals the
# generation id for async video, so `inference_id` is the likeliest name after `generation_id`.
# A row's own `id` names the log row, not the generation: adopting it would poll a 404 forever.
GENERATION_ID_FIELDS = ("generation_id", "inference_id", "generationId", "inferenceId")
TIME_FIELDS = ("time", "created_at", "createdAt", "timestamp", "date")
FAILED_ROW_STATUSES = frozenset({"failed", "error"})
LOG_READS_PER_MINUTE = 120  # per key (per process without a shared pace); the provider answers 429 above ~200 per 60 s
PAGE_SIZE = 100
MAX_PAGES = 50
# How far back to look for a logical generation with no record of when it was first tried.
DEFAULT_LOOKBACK_SECONDS = 24 * 3600
CLOCK_SLACK_SECONDS = 600  # our clock against the provider's row times
# A time without a zone may be in any of them (UTC-12 to UTC+14): read as UTC, it may be up to 12 h
# early, so only a row older than that by its latest reading proves the scan has passed our request.
NAIVE_TIME_SLACK_SECONDS = 12 * 3600
_ATTEMPT = re.compile(r"-a(\d+)$")


class LogRow(BaseModel):
    """One usage-log row, read leniently: only the client request id is a documented field."""

    model_config = ConfigDict(extra="allow")

    client_request_id: str | None = None
    status: str | None = None

    @property
    def generation_id(self) -> str | None:
        extra = self.model_extra or {}
        return next((str(extra[n]) for n in GENERATION_ID_FIELDS if isinstance(extra.get(n), str) and extra[n]), None)

    @property
    def failed(self) -> bool:
        """A generation that ended in error, or a request the provider refused: neither is charged."""
        return (self.status or "").lower() in FAILED_ROW_STATUSES

    @property
    def at(self) -> float | None:
        """The latest the row can have been written, as unix seconds, when a field we know holds a
        time we can read: a time without a zone counts as its latest reading (see
        `NAIVE_TIME_SLACK_SECONDS`), so it never ends a scan before our row."""
        extra = self.model_extra or {}
        for name in TIME_FIELDS:
            value = extra.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return value / 1000 if value > 1e11 else float(value)  # milliseconds or seconds
            if isinstance(value, str):
                try:
                    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
                except ValueError:
                    continue
                if parsed.tzinfo is None:
                    return parsed.replace(tzinfo=dt.timezone.utc).timestamp() + NAIVE_TIME_SLACK_SECONDS
                return parsed.timestamp()
        return None


def attempt_of(client_request_id: str | None) -> int:
    match = _ATTEMPT.search(client_request_id or "")
    return int(match.group(1)) if match else 0


@dataclass
class Finding:
    """What the log says about one logical generation (all its attempts), newest row first."""

    rows: list[LogRow] = field(default_factory=list)

    @property
    def live(self) -> LogRow | None:
        """The newest row with a generation id that did not fail: accepted, charged or about to be."""
        return next((r for r in self.rows if r.generation_id and not r.failed), None)

    @property
    def unidentified(self) -> LogRow | None:
        """A row for our request with no generation id we can recognise, that is not a refusal."""
        return next((r for r in self.rows if not r.generation_id and not r.failed), None)

    def refused(self, client_request_id: str) -> bool:
        """The log lists this very request as failed: not accepted, or failed at the provider, and
        either way not charged (failed requests cost nothing), so sending it again cannot pay twice."""
        mine = [r for r in self.rows if r.client_request_id == client_request_id]
        return bool(mine) and all(r.failed for r in mine)

    @property
    def highest_attempt(self) -> int:
        return max((attempt_of(r.client_request_id) for r in self.rows), default=0)


def account_of(client: AimlApiClient) -> str:
    """The account a client reads as (its base URL and key), for what is shared per account."""
    return hashlib.sha256(f"{client.base_url}|{client.key_fingerprint}".encode()).hexdigest()


class Pace(Protocol):
    """When the next read of one account's log may go out."""

    async def book(self, spacing: float) -> float:
        """Book the next read, `spacing` after the one booked before it: the seconds to wait first."""
        ...


class LocalPace:
    """Reads spaced within this process only."""

    def __init__(self) -> None:
        self._next = 0.0

    async def book(self, spacing: float) -> float:
        now = time.monotonic()
        wait, self._next = self._next - now, max(now, self._next) + spacing
        return wait


@dataclass
class _Lookup:
    prefix: str
    since: float
    client: AimlApiClient
    answer: asyncio.Future[Finding]


class UsageLog:
    """The usage log of one account and model, read by one coalescing, throttled scanner per event loop."""

    _shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, UsageLog]] = weakref.WeakKeyDictionary()

    def __init__(self, model: str | None = None, reads_per_minute: float | None = None) -> None:
        self.model = model
        self.spacing = 60.0 / (reads_per_minute or LOG_READS_PER_MINUTE)
        self.pages_read = 0
        self.pace: Pace = LocalPace()
        self._waiting: list[_Lookup] = []
        self._scanner: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, client: AimlApiClient, model: str | None = None, pace: Pace | None = None) -> UsageLog:
        """The shared reader for this client's account (base URL and key) and model on the running loop.
        `pace`: books its reads with other processes; the first one given is kept."""
        per_account = cls._shared.setdefault(asyncio.get_running_loop(), {})
        account = f"{account_of(client)}|{model}"
        if account not in per_account:
            per_account[account] = cls(model)
        reader = per_account[account]
        if pace is not None and isinstance(reader.pace, LocalPace):
            reader.pace = pace
        return reader

    async def find(self, client: AimlApiClient, prefix: str, since: float | None = None) -> Finding:
        """Rows whose client request id starts with `prefix` (one logical generation, every attempt).

        `since`: when the earliest attempt may have been sent (unix time); the scan reads back at
        least that far, or raises `ReconciliationUnavailable` if the log runs out of pages first.
        """
        lookup = _Lookup(prefix, since if since is not None else time.time() - DEFAULT_LOOKBACK_SECONDS, client,
                         asyncio.get_running_loop().create_future())
        self._waiting.append(lookup)
        if self._scanner is None or self._scanner.done():
            self._scanner = asyncio.ensure_future(self._scan_while_waiting())
        return await lookup.answer

    async def _scan_while_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                findings = await self._scan(batch)
            except Exception as exc:  # each waiter gets the failure; the next lookup scans again
                for lookup in batch:
                    if not lookup.answer.done():
                        lookup.answer.set_exception(exc)
                continue
            for lookup in batch:
                if not lookup.answer.done():
                    lookup.answer.set_result(findings[lookup.prefix])

    async def _scan(self, batch: list[_Lookup]) -> dict[str, Finding]:
        findings = {lookup.prefix: Finding() for lookup in batch}
        oldest = min(lookup.since for lookup in batch) - CLOCK_SLACK_SECONDS
        client = batch[-1].client  # a waiter's client: it stays open while its owner awaits the answer
        for page in range(MAX_PAGES):
            rows = await self._read(client, page * PAGE_SIZE)
            passed_oldest = False
            for row in _rows(rows):
                crid = row.client_request_id or ""
                for prefix, finding in findings.items():
                    if crid.startswith(prefix):
                        finding.rows.append(row)
                at = row.at
                passed_oldest = passed_oldest or (at is not None and at < oldest)
            if len(rows) < PAGE_SIZE or passed_oldest:
                return findings
        raise ReconciliationUnavailable(
            f"The usage log holds more than {MAX_PAGES * PAGE_SIZE} rows since "
            f"{dt.datetime.fromtimestamp(oldest, dt.timezone.utc):%Y-%m-%d %H:%M} UTC (or its rows carry no time "
            "we can read), so the absence of our request cannot be proven."
        )

    async def _read(self, client: AimlApiClient, offset: int) -> list[Any]:
        """One page, no sooner than `spacing` after the previous read of this account (as its pace books it)."""
        wait = await self.pace.book(self.spacing)
        if wait > 0:
            await asyncio.sleep(wait)
        self.pages_read += 1
        return await client.read_log_page(offset, PAGE_SIZE, model=self.model)


def _rows(raw_rows: Iterable[Any]) -> Iterable[LogRow]:
    for raw in raw_rows:
        if isinstance(raw, dict):
            yield LogRow.model_validate(raw)

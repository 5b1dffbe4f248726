"""prefect_aimlapi_video.api.usage_log: reading rows we do not know the shape of, scanning back far
enough to prove absence (or saying it cannot), and sharing reads across concurrent lookups."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from prefect_aimlapi_video.api import usage_log
from prefect_aimlapi_video.api.client import AimlApiClient
from prefect_aimlapi_video.api.errors import ReconciliationUnavailable
from prefect_aimlapi_video.api.usage_log import Finding, LogRow, UsageLog, attempt_of

NOW = time.time()


def test_generation_id_precedence_and_never_the_rows_own_id():
    assert LogRow.model_validate({"generation_id": "a", "inference_id": "b", "id": "c"}).generation_id == "a"
    assert LogRow.model_validate({"inference_id": "b", "id": "c"}).generation_id == "b"
    assert LogRow.model_validate({"generationId": "d"}).generation_id == "d"
    assert LogRow.model_validate({"inferenceId": "e"}).generation_id == "e"
    assert LogRow.model_validate({"id": "c"}).generation_id is None  # the row's id names the row
    assert LogRow.model_validate({"generation_id": "", "inference_id": 7}).generation_id is None


@pytest.mark.parametrize("value, expected", [
    ("2026-11-29T10:00:00.000Z", 1795946400.0),
    ("2026-11-29T10:00:00+00:00", 1795946400.0),
    (1795946400, 1795946400.0),
    (1795946400000, 1795946400.0),  # milliseconds
    ("yesterday", None),
])
def test_row_time_from_iso_or_epoch(value, expected):
    assert LogRow.model_validate({"time": value}).at == expected


def test_finding_live_unidentified_and_attempts():
    rows = [LogRow.model_validate(r) for r in (
        {"client_request_id": "v2v-k-a3", "status": "failed", "cost": 0},  # a refusal: no id, not charged
        {"client_request_id": "v2v-k-a2", "status": "failed", "generation_id": "g2"},  # errored: not charged
        {"client_request_id": "v2v-k-a1", "status": "succeeded", "generation_id": "g1"},
    )]
    finding = Finding(rows)
    assert finding.live.generation_id == "g1" and finding.unidentified is None and finding.highest_attempt == 3
    pending_without_id = Finding([LogRow.model_validate({"client_request_id": "v2v-k-a1", "status": "pending"})])
    assert pending_without_id.live is None and pending_without_id.unidentified is not None
    assert Finding().live is None and Finding().highest_attempt == 0
    assert attempt_of("v2v-k-a12") == 12 and attempt_of(None) == 0 and attempt_of("other") == 0


class Log:
    """A fake `/v2/logs`, newest first, counting pages read."""

    def __init__(self, rows):
        self.rows, self.pages = rows, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        offset, limit = int(request.url.params["offset"]), int(request.url.params["limit"])
        self.pages.append(offset)
        return httpx.Response(200, json={"data": self.rows[offset: offset + limit]})


def rows_at(times, prefix="v2v-other-a"):
    return [{"client_request_id": f"{prefix}{i}", "generation_id": f"g{i}", "time": at} for i, at in enumerate(times)]


async def test_scan_stops_once_it_passes_the_time_of_the_request(monkeypatch):
    monkeypatch.setattr(usage_log, "PAGE_SIZE", 10)
    # 100 rows, one a minute going back; ours is the 35th.
    rows = rows_at([NOW - 60 * i for i in range(100)])
    rows[35]["client_request_id"] = "v2v-ours-a1"
    log = Log(rows)
    async with AimlApiClient("k", "https://api.test", transport=httpx.MockTransport(log)) as client:
        finding = await UsageLog().find(client, "v2v-ours-a", since=NOW - 36 * 60 + usage_log.CLOCK_SLACK_SECONDS)
    assert finding.live.generation_id == "g35"
    assert log.pages == [0, 10, 20, 30]  # stopped after the page holding a row older than `since`


async def test_a_log_longer_than_the_scan_cannot_prove_absence(monkeypatch):
    monkeypatch.setattr(usage_log, "PAGE_SIZE", 10)
    monkeypatch.setattr(usage_log, "MAX_PAGES", 3)
    log = Log(rows_at([NOW] * 100))  # every row newer than the request we look for
    async with AimlApiClient("k", "https://api.test", transport=httpx.MockTransport(log)) as client:
        with pytest.raises(ReconciliationUnavailable, match="cannot be proven"):
            await UsageLog().find(client, "v2v-ours-a", since=NOW - 3600)
    assert len(log.pages) == 3


async def test_end_of_the_log_proves_absence():
    log = Log(rows_at([NOW] * 5))
    async with AimlApiClient("k", "https://api.test", transport=httpx.MockTransport(log)) as client:
        finding = await UsageLog().find(client, "v2v-ours-a")
    assert finding.rows == [] and log.pages == [0]


async def test_concurrent_lookups_share_scans():
    log = Log(rows_at([NOW] * 3, prefix="v2v-p1-a") + rows_at([NOW] * 2, prefix="v2v-p7-a"))
    reader = UsageLog()
    async with AimlApiClient("k", "https://api.test", transport=httpx.MockTransport(log)) as client:
        findings = await asyncio.gather(*(reader.find(client, f"v2v-p{i}-a") for i in range(20)))
    assert len(findings[1].rows) == 3 and len(findings[7].rows) == 2 and findings[2].rows == []
    assert len(log.pages) <= 2  # the first lookup's scan, then one for everyone who arrived meanwhile


async def test_reads_are_spaced_to_respect_the_rate_limit(monkeypatch):
    monkeypatch.setattr(usage_log, "LOG_READS_PER_MINUTE", 600)  # one read per 0.1 s
    log = Log([])
    reader = UsageLog()
    async with AimlApiClient("k", "https://api.test", transport=httpx.MockTransport(log)) as client:
        started = time.monotonic()
        for i in range(6):
            await reader.find(client, f"v2v-{i}-a")
        elapsed = time.monotonic() - started
    assert len(log.pages) == 6 and elapsed >= 0.5


async def test_one_reader_per_account_and_loop():
    async with AimlApiClient("key-1", "https://api.test") as a, AimlApiClient("key-1", "https://api.test") as b, \
            AimlApiClient("key-2", "https://api.test") as c:
        assert UsageLog.of(a) is UsageLog.of(b) and UsageLog.of(a) is not UsageLog.of(c)


def test_a_time_without_a_zone_counts_as_its_latest_reading():
    """A naive time may be in any zone from UTC-12 to UTC+14: read as UTC it may be 12 h early, so it
    is taken as 12 h later than its UTC reading (a scan never stops before our row because of it)."""
    naive = LogRow.model_validate({"time": "2026-11-29T10:00:00"}).at
    assert naive == 1795946400.0 + usage_log.NAIVE_TIME_SLACK_SECONDS


async def test_rows_with_naive_times_never_end_the_scan_before_our_row(monkeypatch):
    """The provider writes local times without a zone, 5 h behind UTC: read as UTC they look 5 h older
    than they are. Our row (sent 10 minutes ago) lies on the third page; the scan must get there."""
    import datetime as dt

    monkeypatch.setattr(usage_log, "PAGE_SIZE", 10)
    local = dt.timezone(dt.timedelta(hours=-5))
    rows = [{"client_request_id": f"v2v-other-a{i}", "generation_id": f"g{i}",
             "time": dt.datetime.fromtimestamp(NOW - 20 * i, local).replace(tzinfo=None).isoformat()}
            for i in range(40)]
    rows[25]["client_request_id"] = "v2v-ours-a1"
    log = Log(rows)
    async with AimlApiClient("k", "https://api.test", transport=httpx.MockTransport(log)) as client:
        finding = await UsageLog().find(client, "v2v-ours-a", since=NOW - 600)
    assert finding.live is not None and finding.live.generation_id == "g25"


def test_a_request_is_refused_only_if_every_row_of_it_failed():
    failed = LogRow.model_validate({"client_request_id": "v2v-k-a1", "status": "failed", "cost": 0})
    live = LogRow.model_validate({"client_request_id": "v2v-k-a1", "status": "pending", "generation_id": "g"})
    other = LogRow.model_validate({"client_request_id": "v2v-k-a2", "status": "failed"})
    assert Finding([failed]).refused("v2v-k-a1")
    assert not Finding([failed, live]).refused("v2v-k-a1")
    assert not Finding([other]).refused("v2v-k-a1") and not Finding().refused("v2v-k-a1")

"""submission.lease: a claim on a record, kept fresh by a heartbeat, renewed right before the POST, measured
by whoever would take it over on their own clock."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from prefect_aimlapi_video.api.errors import TransientApiError
from prefect_aimlapi_video.storage.record_store import LocalRecordStore
from prefect_aimlapi_video.submission import lease as lease_module
from prefect_aimlapi_video.submission.lease import (
    CLOCK_SKEW_SECONDS,
    LEASE_FLOOR_SECONDS,
    Lease,
    LeaseLost,
    Silence,
    lease_for,
)
from prefect_aimlapi_video.submission.record import SubmissionRecord, load_record

LOGGER = logging.getLogger("test")


def test_the_lease_outlasts_any_post_by_far():
    assert lease_for(1.0) == LEASE_FLOOR_SECONDS
    assert lease_for(70.0) == 140.0  # the default client: 10 s connect + 2 x 30 s


async def claimed(store: LocalRecordStore, lease_seconds: float = 1.2) -> tuple[SubmissionRecord, str]:
    now = time.time()
    record = SubmissionRecord(key="k" * 64, fingerprint="f", scope="s", owner="me", outcome="in_flight",
                              lease_seconds=lease_seconds, created_at=now, updated_at=now)
    return record, await store.create(record.key, record.model_dump_json().encode())


def test_silence_is_measured_on_the_readers_own_clock_within_the_clock_skew(monkeypatch):
    record = SubmissionRecord(key="k", fingerprint="f", scope="s", created_at=0, updated_at=time.time() - 50)
    silence = Silence("v1")
    assert silence.seconds(record) < 1  # 50 s by the writer's clock: within the skew, not trusted
    old = record.model_copy(update={"updated_at": time.time() - CLOCK_SKEW_SECONDS - 30})
    assert 29 < silence.seconds(old) < 31  # older than the skew: the excess counts
    silence.since -= 10
    silence.seen("v1")
    assert silence.seconds(record) >= 10  # the same version: the silence goes on
    silence.seen("v2")
    assert silence.seconds(record) < 1  # a new version: the holder is alive


async def test_the_heartbeat_keeps_the_claim_fresh_and_renew_proves_it_is_still_ours(tmp_path):
    store = LocalRecordStore(tmp_path)
    record, version = await claimed(store)  # interval: 1.2 / 6 = 0.2 s
    async with Lease(store, record, version, LOGGER) as lease:
        await asyncio.sleep(0.7)
        assert lease.version != version  # refreshed by the heartbeat
        await lease.renew()
        found = await store.read(record.key)
        assert found[1] == lease.version and load_record(found[0]).updated_at >= record.updated_at


async def test_a_claim_taken_over_is_lost_for_good(tmp_path):
    store = LocalRecordStore(tmp_path)
    record, version = await claimed(store, lease_seconds=60)
    async with Lease(store, record, version, LOGGER) as lease:
        taken = record.model_copy(update={"owner": "another", "outcome": "unknown", "updated_at": time.time()})
        assert await store.replace(record.key, taken.model_dump_json().encode(), version)
        with pytest.raises(LeaseLost):
            await lease.renew()
        with pytest.raises(LeaseLost):
            await lease.renew()
    assert load_record((await store.read(record.key))[0]).owner == "another"  # untouched


async def test_a_failing_store_stops_the_send_and_the_heartbeat_never_raises(tmp_path, monkeypatch):
    store = LocalRecordStore(tmp_path)
    record, version = await claimed(store)

    async def unavailable(*_args):
        raise TransientApiError("S3 answered 503")

    async with Lease(store, record, version, LOGGER) as lease:
        monkeypatch.setattr(store, "replace", unavailable)
        await asyncio.sleep(0.5)  # heartbeats fail: logged, never raised
        with pytest.raises(TransientApiError, match="cannot renew the claim before sending"):
            await lease.renew()
    await lease.stop()  # stopping twice is harmless


async def test_an_acceptance_is_written_even_over_a_takeover(tmp_path):
    store = LocalRecordStore(tmp_path)
    record, version = await claimed(store, lease_seconds=60)
    lease = Lease(store, record, version, LOGGER)
    taken = record.model_copy(update={"owner": None, "outcome": "unknown", "updated_at": time.time()})
    assert await store.replace(record.key, taken.model_dump_json().encode(), version)
    written = await lease.record_acceptance({"state": "accepted", "generation_id": "g1", "owner": None}, 5)
    stored = load_record((await store.read(record.key))[0])
    assert written.generation_id == stored.generation_id == "g1" and stored.state == "accepted"


async def test_an_outcome_other_than_acceptance_yields_to_a_takeover(tmp_path):
    store = LocalRecordStore(tmp_path)
    record, version = await claimed(store, lease_seconds=60)
    lease = Lease(store, record, version, LOGGER)
    taken = record.model_copy(update={"owner": "another", "updated_at": time.time()})
    assert await store.replace(record.key, taken.model_dump_json().encode(), version)
    await lease.settle_quietly(state="rejected", outcome=None)
    assert load_record((await store.read(record.key))[0]).owner == "another"


def test_the_heartbeat_interval_follows_the_declared_lease(monkeypatch):
    record = SubmissionRecord(key="k", fingerprint="f", scope="s", created_at=0, updated_at=0, lease_seconds=140)
    assert Lease(None, record, "1", LOGGER).interval == lease_module.HEARTBEAT_SECONDS  # type: ignore[arg-type]
    short = record.model_copy(update={"lease_seconds": 0.6})
    assert Lease(None, short, "1", LOGGER).interval == 0.25  # type: ignore[arg-type]

"""prefect_aimlapi_video.submission.record: the record of one logical generation, on a real local store.

Client request ids (deterministic per attempt, in the provider's alphabet, read back by the usage
log), the record's serialised form, what the submit step hands on (`as_submitted`), marking a
failed generation when a concurrent writer got there first, and the shared list of durations
(compare-and-swap, capped, a hint that gives up quietly). The protocol that writes records is in
test_submissions_unit.py.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from pydantic import ValidationError

from prefect_aimlapi_video.api.usage_log import attempt_of
from prefect_aimlapi_video.storage.record_store import LocalRecordStore
from prefect_aimlapi_video.submission.record import (
    DURATIONS_KEY,
    KEEP_DURATIONS,
    StoreRef,
    SubmissionRecord,
    add_duration,
    as_submitted,
    dump_record,
    load_record,
    mark_failed,
    read_durations,
    record_key,
)

FINGERPRINT = "f" * 64


def make_record(**fields) -> SubmissionRecord:
    values = {"key": record_key(FINGERPRINT, "run-1"), "fingerprint": FINGERPRINT, "scope": "run-1",
              "created_at": 1_000.0, "updated_at": 1_010.0, **fields}
    return SubmissionRecord(**values)


@pytest.fixture
def store(tmp_path) -> LocalRecordStore:
    return LocalRecordStore(tmp_path / "records")


# ---------------------------------------------------------------- keys and client request ids


def test_record_key_is_stable_and_separates_requests_and_scopes():
    key = record_key(FINGERPRINT, "run-1")
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert record_key(FINGERPRINT, "run-1") == key
    assert record_key(FINGERPRINT, "run-2") != key
    assert record_key("e" * 64, "run-1") != key


@pytest.mark.parametrize("attempt", [1, 2, 17, 10_000])
def test_client_request_id_fits_the_provider_and_is_read_back_as_its_attempt(attempt):
    record = make_record(attempt=attempt)
    crid = record.client_request_id
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", crid)
    assert crid.startswith(record.logical_prefix)
    assert attempt_of(crid) == attempt  # the usage log tells attempts of one generation apart by it
    assert make_record(attempt=attempt + 1).logical_prefix == record.logical_prefix
    assert make_record(attempt=attempt, key=record_key(FINGERPRINT, "other")).logical_prefix != record.logical_prefix


# ---------------------------------------------------------------- serialised form


def test_a_dumped_record_loads_back_equal_and_an_unknown_state_is_refused():
    record = make_record(attempt=3, state="accepted", outcome=None, owner="task-9", generation_id="gen-1:krea",
                         request_id="req-1", initial_status="generating", credits=1234.5, accepted_at=1_005.25)
    assert load_record(dump_record(record)) == record
    assert load_record(dump_record(make_record())) == make_record()
    data = dump_record(make_record()).replace(b'"pending"', b'"charged"')  # not a state we know
    with pytest.raises(ValidationError):
        load_record(data)


def test_as_submitted_fills_what_an_older_record_lacks():
    record = make_record(attempt=2, state="accepted", generation_id="gen-7", initial_status=None,
                         accepted_at=None, credits=None)
    submitted = as_submitted(record, resumed=True, reconciled=False)
    assert submitted.initial_status == "queued"
    assert submitted.accepted_at == record.updated_at
    assert submitted.client_request_id == record.client_request_id and submitted.client_request_id.endswith("-a2")
    assert (submitted.generation_id, submitted.record_key) == ("gen-7", record.key)
    assert (submitted.resumed, submitted.reconciled) == (True, False)
    assert submitted.store is None and submitted.budget is None


async def test_a_store_ref_passed_as_plain_values_reopens_the_same_records(tmp_path):
    ref = StoreRef(location=str(tmp_path / "records"))
    writer = await ref.open()
    await writer.create("k", b"hello")
    reader = await StoreRef.model_validate_json(ref.model_dump_json()).open()
    found = await reader.read("k")
    assert found is not None and found[0] == b"hello"


# ---------------------------------------------------------------- mark_failed under a concurrent writer


class InterferingStore(LocalRecordStore):
    """A local store where another writer changes the record just before our first replace lands."""

    def __init__(self, directory, interfere) -> None:
        super().__init__(directory)
        self.interfere = interfere
        self.replaces = 0

    async def replace(self, key: str, data: bytes, version: str) -> str | None:
        self.replaces += 1
        if self.replaces == 1:
            current = await super().read(key)
            assert current is not None
            await super().replace(key, dump_record(self.interfere(load_record(current[0]))), current[1])
        return await super().replace(key, data, version)


async def test_mark_failed_retries_after_losing_a_race_to_an_unrelated_update(tmp_path):
    store = InterferingStore(tmp_path, lambda r: r.model_copy(update={"credits": 10.0, "updated_at": 2_000.0}))
    record = make_record(state="accepted", generation_id="gen-1")
    await store.create(record.key, dump_record(record))
    await mark_failed(store, record.key, "gen-1")
    final = load_record((await store.read(record.key))[0])
    assert (final.state, final.credits) == ("failed", 10.0)  # the other writer's change is kept
    assert store.replaces == 2


async def test_mark_failed_leaves_a_record_that_moved_on_to_another_generation(tmp_path):
    store = InterferingStore(tmp_path, lambda r: r.model_copy(update={"attempt": 2, "generation_id": "gen-2"}))
    record = make_record(state="accepted", generation_id="gen-1")
    await store.create(record.key, dump_record(record))
    await mark_failed(store, record.key, "gen-1")
    final = load_record((await store.read(record.key))[0])
    assert (final.state, final.generation_id, final.attempt) == ("accepted", "gen-2", 2)


# ---------------------------------------------------------------- durations


async def test_durations_start_empty_and_are_appended_rounded(store):
    assert await read_durations(store) == []
    await add_duration(store, 12.345678)
    await add_duration(store, 30)
    assert await read_durations(store) == [12.346, 30.0]


async def test_only_the_most_recent_durations_are_kept(store):
    await store.create(DURATIONS_KEY, str([float(i) for i in range(KEEP_DURATIONS)]).encode())
    await add_duration(store, 999.0)
    durations = await read_durations(store)
    assert len(durations) == KEEP_DURATIONS
    assert durations[0] == 1.0 and durations[-1] == 999.0


async def test_concurrent_writers_lose_no_duration(store):
    await asyncio.gather(*(add_duration(store, float(seconds)) for seconds in (1, 2, 3, 4)))
    assert sorted(await read_durations(store)) == [1.0, 2.0, 3.0, 4.0]


async def test_add_duration_gives_up_quietly_after_its_attempts(store, monkeypatch):
    await add_duration(store, 5.0)
    reads = 0
    real_read = store.read

    async def read(key):
        nonlocal reads
        reads += 1
        return await real_read(key)

    async def always_loses(key, data, version):
        return None

    monkeypatch.setattr(store, "read", read)
    monkeypatch.setattr(store, "replace", always_loses)
    await add_duration(store, 6.0)  # returns, raises nothing
    assert reads == 5  # append_capped's attempts
    assert await read_durations(LocalRecordStore(store.directory)) == [5.0]

"""The record of one logical generation, and what the submit step hands on.

Kept apart from the protocol (`submission.protocol`) that writes it: the wait step marks a failed
generation here, and tests and tools read records without running the protocol.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Literal

from pydantic import BaseModel

from prefect_aimlapi_video.storage.record_store import RecordStore, open_store
from prefect_aimlapi_video.submission.budget import BudgetRef

State = Literal["pending", "accepted", "rejected", "failed"]
Outcome = Literal["in_flight", "unknown", "provider_error"]


class SubmissionRecord(BaseModel):
    """The write-ahead record of one logical generation."""

    key: str
    fingerprint: str
    scope: str
    attempt: int = 1
    state: State = "pending"
    outcome: Outcome | None = None  # for `pending`: what is known of the last POST
    owner: str | None = None  # the attempt that holds a `pending` record
    lease_seconds: float | None = None  # how long its holder may leave it unrefreshed (`submission.lease`)
    generation_id: str | None = None
    request_id: str | None = None
    initial_status: str | None = None
    credits: float | None = None
    created_at: float
    updated_at: float
    accepted_at: float | None = None

    @property
    def logical_prefix(self) -> str:
        """What every client request id of this logical generation starts with."""
        return client_request_prefix(self.key)

    @property
    def client_request_id(self) -> str:
        """Deterministic per logical generation and attempt; fits the provider's 1-128 [A-Za-z0-9._:-]."""
        return f"{self.logical_prefix}{self.attempt}"


def client_request_prefix(key: str) -> str:
    return f"v2v-{key[:32]}-a"


class StoreRef(BaseModel):
    """Where a record lives, as plain values a task can take (the store itself is reopened)."""

    location: str
    aws_credentials: str | None = None

    async def open(self) -> RecordStore:
        return await open_store(self.location, self.aws_credentials)


class SubmittedGeneration(BaseModel):
    """What `submit_generation` hands on: enough to wait, and to tell the story in the summary."""

    generation_id: str
    client_request_id: str
    request_id: str | None = None
    initial_status: str = "queued"
    accepted_at: float
    credits: float | None = None
    resumed: bool = False
    reconciled: bool = False
    record_key: str
    model: str | None = None  # the request's model (its expected duration paces progress)
    store: StoreRef | None = None
    budget: BudgetRef | None = None  # the spend cap this generation counts against


def record_key(fingerprint: str, scope: str) -> str:
    return hashlib.sha256(f"{fingerprint}|{scope}".encode()).hexdigest()


def load_record(data: bytes) -> SubmissionRecord:
    return SubmissionRecord.model_validate_json(data)


def dump_record(record: SubmissionRecord) -> bytes:
    return record.model_dump_json().encode()


def acceptance(generation_id: str | None, request_id: str | None, status: str | None,
               credits: float | None) -> dict[str, object]:
    """What a record becomes when its generation was accepted (or adopted from the usage log)."""
    now = time.time()
    return dict(state="accepted", outcome=None, owner=None, generation_id=generation_id, request_id=request_id,
                initial_status=status, credits=credits, accepted_at=now, updated_at=now)


def as_submitted(record: SubmissionRecord, *, resumed: bool, reconciled: bool) -> SubmittedGeneration:
    assert record.generation_id is not None
    return SubmittedGeneration(
        generation_id=record.generation_id,
        client_request_id=record.client_request_id,
        request_id=record.request_id,
        initial_status=record.initial_status or "queued",
        accepted_at=record.accepted_at or record.updated_at,
        credits=record.credits,
        resumed=resumed,
        reconciled=reconciled,
        record_key=record.key,
    )



async def mark_failed(store: RecordStore, key: str, generation_id: str) -> None:
    """The generation ended in `error` (not charged): let the next attempt post anew."""
    while True:
        found = await store.read(key)
        if found is None:
            return
        record = load_record(found[0])
        if record.state != "accepted" or record.generation_id != generation_id:
            return
        failed = record.model_copy(update={"state": "failed", "updated_at": time.time()})
        if await store.replace(key, dump_record(failed), found[1]) is not None:
            return


# The durations of recent completed generations (acceptance to `completed`), kept beside the
# records so that every worker sharing the store learns from all of them (`LearnedPollPolicy`).
DURATIONS_KEY = "durations"
KEEP_DURATIONS = 200


async def read_list(store: RecordStore, key: str) -> list[Any]:
    """A JSON list kept beside the records (what the flows learn), empty when there is none yet."""
    found = await store.read(key)
    value = json.loads(found[0]) if found is not None else []
    return value if isinstance(value, list) else []


async def append_capped(store: RecordStore, key: str, item: Any, keep: int, attempts: int = 5) -> bool:
    """Append `item` to the JSON list at `key`, keeping the newest `keep` (compare-and-swap; gives up
    after a few lost races and says so: what is kept this way is a hint, never a guarantee)."""
    for _ in range(attempts):
        found = await store.read(key)
        items = json.loads(found[0]) if found is not None else []
        data = json.dumps([*(items if isinstance(items, list) else []), item][-keep:]).encode()
        written = await (store.create(key, data) if found is None else store.replace(key, data, found[1]))
        if written is not None:
            return True
    return False


def charge_key(generation_id: str) -> str:
    return "charged-" + hashlib.sha256(generation_id.encode()).hexdigest()[:32]


async def claim_charge(store: RecordStore, generation_id: str) -> bool:
    """Whether this run is the first to see this generation's charge, so that its events carry the
    credits and every later run's (a resume, an adoption, a collect) carry 0: summed over all events,
    the charged credits equal what was paid. A create-if-absent in the store every run shares."""
    return await store.create(charge_key(generation_id), json.dumps({"at": time.time()}).encode()) is not None


async def read_durations(store: RecordStore) -> list[float]:
    return [float(d) for d in await read_list(store, DURATIONS_KEY)]


async def add_duration(store: RecordStore, seconds: float) -> None:
    """Append one duration (a hint: gives up quietly after a few lost races)."""
    await append_capped(store, DURATIONS_KEY, round(seconds, 3), KEEP_DURATIONS)

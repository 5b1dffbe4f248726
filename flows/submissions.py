"""Exactly-once submission: a write-ahead record per logical generation, and the protocol over it.

The API has no idempotency key and every accepted POST is charged, so we keep our own:

* A logical generation is (the request's fingerprint, a scope). The scope is the flow run id by
  default (so task retries, flow retries and re-runs of a crashed run share it) or an explicit
  `idempotency_key` (so a duplicate trigger for the same S3 object version shares it too).
* Before a POST we durably write a `pending` record holding a deterministic client request id,
  sent as `X-Client-Request-Id`. After an accepted POST the record becomes `accepted` with the
  generation id, and every later attempt resumes waiting on it instead of posting.
* If an attempt finds a `pending` record (a POST whose answer was lost, or a crash mid-POST) it
  asks the provider's usage log for that client request id and adopts the generation found.
  Only when the log shows nothing, checked again after `grace_seconds`, does it post again
  (with the same client request id). `grace_seconds` runs from the last write of the record,
  which a live sender refreshes (a heartbeat) until its POST is answered, so only an abandoned
  record is ever resent. If the log cannot be read it fails and names the risk.
* A generation that ended in `error` is not charged; the record becomes `failed` and the next
  attempt posts anew under a new attempt number (a new client request id).

Records are JSON files in a directory (default `$PREFECT_HOME/aimlapi/submissions`, or
`AIMLAPI_SUBMISSIONS_DIR`): share that directory between workers that may run the same logical
generation. A `pending` record is created with O_EXCL, so two runs racing on one logical
generation cannot both post without one of them reconciling first.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from prefect_aimlapi_video.flows.client import AimlApiClient
from prefect_aimlapi_video.flows.errors import AimlApiError, ReconciliationUnavailable, SubmissionOutcomeUnknown
from prefect_aimlapi_video.flows.models import Generation, GenerationParams

# After a lost answer, how long the usage log must stay silent before a resend. It must cover a
# POST still in flight elsewhere (the client's request timeout, 30 s by default) plus the time the
# provider takes to list an accepted request.
DEFAULT_GRACE_SECONDS = 60.0
State = Literal["pending", "accepted", "rejected", "failed"]


class SubmissionRecord(BaseModel):
    key: str
    fingerprint: str
    scope: str
    attempt: int = 1
    state: State = "pending"
    generation_id: str | None = None
    request_id: str | None = None
    initial_status: str | None = None
    credits: float | None = None
    created_at: float
    updated_at: float
    accepted_at: float | None = None

    @property
    def client_request_id(self) -> str:
        """Deterministic per logical generation and attempt; fits the provider's 1-128 [A-Za-z0-9._:-]."""
        return f"v2v-{self.key[:32]}-a{self.attempt}"


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


def default_store_directory() -> Path:
    configured = os.environ.get("AIMLAPI_SUBMISSIONS_DIR")
    if configured:
        return Path(configured).expanduser()
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()) / "aimlapi" / "submissions"


class SubmissionStore:
    """JSON records on a filesystem, one per logical generation, written atomically."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory else default_store_directory()
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def load(self, key: str) -> SubmissionRecord | None:
        try:
            return SubmissionRecord.model_validate_json(self._path(key).read_text())
        except FileNotFoundError:
            return None

    def create(self, record: SubmissionRecord) -> bool:
        """Write a new record; False if one exists already (someone else got there first)."""
        try:
            fd = os.open(self._path(record.key), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            handle.write(record.model_dump_json())
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def save(self, record: SubmissionRecord) -> None:
        record.updated_at = time.time()
        temporary = self.directory / f".{record.key}.{uuid.uuid4().hex}.tmp"
        temporary.write_text(record.model_dump_json())
        os.replace(temporary, self._path(record.key))

    def mark_failed(self, key: str) -> None:
        record = self.load(key)
        if record and record.state == "accepted":
            record.state = "failed"
            self.save(record)


def record_key(fingerprint: str, scope: str) -> str:
    return hashlib.sha256(f"{fingerprint}|{scope}".encode()).hexdigest()


def _accepted(record: SubmissionRecord, *, resumed: bool, reconciled: bool) -> SubmittedGeneration:
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


async def submit_once(
    client: AimlApiClient,
    store: SubmissionStore,
    params: GenerationParams,
    video_identity: str,
    scope: str,
    video_url: Callable[[], Awaitable[str]],
    *,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    logger: logging.Logger | logging.LoggerAdapter = logging.getLogger(__name__),
) -> SubmittedGeneration:
    """Make sure exactly one accepted POST exists for this logical generation, and return it."""
    fingerprint = params.fingerprint(video_identity)
    key = record_key(fingerprint, scope)
    record = store.load(key)
    if record is None:
        now = time.time()
        fresh = SubmissionRecord(key=key, fingerprint=fingerprint, scope=scope, created_at=now, updated_at=now)
        if store.create(fresh):  # written as `pending`, fsynced: the write-ahead record of this POST
            return await _post(client, store, fresh, params, video_url, grace_seconds, logger, written=True)
        record = store.load(key) or fresh  # another run created it a moment ago
    if record.state == "accepted":
        logger.info("Resuming generation %s (already submitted; no new request sent).", record.generation_id)
        return _accepted(record, resumed=True, reconciled=False)
    if record.state == "pending":
        adopted = await _reconcile(client, store, record, grace_seconds, logger)
        if adopted:
            return adopted
    elif record.state == "failed":
        record.attempt += 1
        record.generation_id = None
        logger.info("The previous generation failed (not charged); submitting attempt %d.", record.attempt)
    return await _post(client, store, record, params, video_url, grace_seconds, logger)


async def _heartbeat(store: SubmissionStore, record: SubmissionRecord, interval: float) -> None:
    while True:
        await asyncio.sleep(max(interval, 0.05))
        store.save(record)


async def _post(
    client: AimlApiClient,
    store: SubmissionStore,
    record: SubmissionRecord,
    params: GenerationParams,
    video_url: Callable[[], Awaitable[str]],
    grace_seconds: float,
    logger: logging.Logger | logging.LoggerAdapter,
    *,
    written: bool = False,
) -> SubmittedGeneration:
    """Send the POST under a durable `pending` record; a lost answer leaves it pending for reconciliation.

    While this attempt prepares the input and waits for the answer, a heartbeat keeps the record
    fresh, so a concurrent attempt keeps reconciling instead of deciding the sender is gone.
    `written`: the record is already stored as `pending` (just created).
    """
    if not written:
        record.state = "pending"
        store.save(record)
    heartbeat = asyncio.create_task(_heartbeat(store, record, grace_seconds / 3))
    answered = False
    try:
        try:
            url = await video_url()
        except Exception:
            record.state = "rejected"  # nothing was sent
            raise
        try:
            answer = await client.submit(params.payload(url), client_request_id=record.client_request_id)
            answered = True
        except SubmissionOutcomeUnknown:
            raise
        except AimlApiError:
            record.state = "rejected"
            raise
    finally:
        heartbeat.cancel()
        await asyncio.gather(heartbeat, return_exceptions=True)
        if not answered:  # `rejected` (nothing sent) or still `pending` (answer lost): record it
            store.save(record)
    generation = answer.generation
    _accept(store, record, generation, answer.request_id)
    logger.info(
        "Submitted generation %s (status %s, client request id %s, x-request-id %s).",
        generation.id, generation.status, record.client_request_id, answer.request_id,
    )
    return _accepted(record, resumed=False, reconciled=False)


def _accept(store: SubmissionStore, record: SubmissionRecord, generation: Generation, request_id: str | None) -> None:
    record.state = "accepted"
    record.generation_id = generation.id
    record.request_id = request_id
    record.initial_status = generation.status
    record.credits = generation.credits
    record.accepted_at = time.time()
    store.save(record)


async def _reconcile(
    client: AimlApiClient,
    store: SubmissionStore,
    record: SubmissionRecord,
    grace_seconds: float,
    logger: logging.Logger | logging.LoggerAdapter,
) -> SubmittedGeneration | None:
    """Resolve a pending record through the usage log: adopt what the provider accepted, if anything."""
    crid = record.client_request_id
    logger.warning(
        "A previous attempt may have submitted this generation (client request id %s); checking the "
        "provider's usage log before sending anything.", crid,
    )
    while True:
        latest = store.load(record.key) or record
        if latest.state == "accepted":  # a concurrent attempt finished its POST meanwhile
            return _accepted(latest, resumed=True, reconciled=False)
        try:
            row = await client.find_submission(crid)
        except ReconciliationUnavailable as exc:
            raise ReconciliationUnavailable(
                f"Cannot tell whether an earlier POST with client request id {crid} was accepted: {exc} "
                "Sending it again could charge twice. Check GET /v2/logs (or the usage page of your "
                "AI/ML API dashboard) for that client_request_id, then re-run this flow run."
            ) from None
        if row is not None:
            generation = Generation(id=row.resolved_generation_id or "", status="queued")
            _accept(store, record, generation, request_id=None)
            logger.info("Adopted generation %s found in the usage log; no new request sent.", generation.id)
            return _accepted(record, resumed=True, reconciled=True)
        remaining = latest.updated_at + grace_seconds - time.time()
        if remaining <= 0:
            logger.info("The usage log shows no request %s after the grace period; submitting it.", crid)
            return None
        await asyncio.sleep(min(remaining, 2.0))

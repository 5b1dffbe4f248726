"""Exactly-once submission: a write-ahead record per logical generation, and the protocol over it.

Every accepted POST is charged and the API has no idempotency key, so the guarantee is ours.

* A logical generation is (the request's fingerprint, a scope). The scope is the flow run by
  default (task retries, flow retries and re-runs of a crashed run share it), an explicit
  `idempotency_key` (a duplicate trigger for the same S3 object version shares it), or the request
  itself (the CLI: the same command twice is one generation). Each of its POSTs carries a
  deterministic client request id, `v2v-<key>-a<attempt>`, one attempt number per POST.
* The record lives in a `RecordStore` (a local directory, or S3 for many hosts) and every
  transition is a compare-and-swap, so of two attempts that read the same record, one acts and
  the other sees what it did. A `pending` record is written before the POST and kept fresh while
  the POST is in flight (a heartbeat); afterwards it holds the generation id (`accepted`), a
  definite refusal (`rejected`), or what is known of an unclear outcome.
* The usage log is read before every POST that is not provably the first of its logical
  generation (a record exists, a task or flow retry, an explicit or request scope another run may
  share): a live row is adopted, a row whose generation id cannot be identified fails closed.
* An unclear outcome (a lost answer, a gateway's 502/504 or HTML page, a crash mid-POST) is sent
  again only when the log still shows nothing after `reconcile_seconds` of silence: by default
  long enough for a provider that lists a request only when its generation completes. The
  provider's own 500/503 JSON answer needs only a short pause before that log read. A definite
  refusal (connection refused, 400/401/403/422, 429) allows a new POST at once.
* A generation that ended in `error` is not charged; its record becomes `failed` and the next
  attempt posts anew.

Without a shared store, an attempt on another host finds the first only through the usage log
(see the README, "Where the records live").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from prefect_aimlapi_video.flows.budget import Budget
from prefect_aimlapi_video.flows.client import AimlApiClient
from prefect_aimlapi_video.flows.errors import (
    AimlApiError,
    ProviderSubmitError,
    ReconciliationUnavailable,
    SubmissionOutcomeUnknown,
    UnidentifiedGenerationError,
)
from prefect_aimlapi_video.flows.polling import DEFAULT_RECONCILE_SECONDS
from prefect_aimlapi_video.flows.record_store import RecordStore
from prefect_aimlapi_video.flows.requests import VideoRequest
from prefect_aimlapi_video.flows.submission_record import (
    StoreRef,
    SubmissionRecord,
    SubmittedGeneration,
    as_submitted,
    client_request_prefix,
    dump_record,
    load_record,
    mark_failed,
    record_key,
)
from prefect_aimlapi_video.flows.usage_log import Finding, UsageLog, attempt_of

__all__ = ["StoreRef", "SubmissionRecord", "SubmittedGeneration", "mark_failed",
           "record_key", "submit_once"]

# After the provider's own 500/503 JSON answer: the pause before the one log read that decides.
PROVIDER_ERROR_PAUSE_SECONDS = 5.0
HEARTBEAT_SECONDS = 5.0
_LOG_RECHECK_MAX_SECONDS = 15.0

class _Restart(Exception):
    """The record changed under us: read it again and decide afresh."""


class Submission:
    """One call of `submit_once`: the decisions about one logical generation, made against its record."""

    def __init__(
        self,
        client: AimlApiClient,
        store: RecordStore,
        params: VideoRequest,
        video_identity: str,
        scope: str,
        video_url: Callable[[], Awaitable[str]],
        *,
        reconcile_seconds: float,
        may_repeat: bool,
        logger: logging.Logger | logging.LoggerAdapter,
        budget: Budget | None = None,
    ) -> None:
        self.client, self.store, self.params, self.video_url = client, store, params, video_url
        self.budget = budget
        self.fingerprint = params.fingerprint(video_identity)
        self.scope = scope
        self.key = record_key(self.fingerprint, scope)
        self.reconcile_seconds = reconcile_seconds
        self.may_repeat = may_repeat
        self.logger = logger
        self.owner = uuid.uuid4().hex
        self.log = UsageLog.of(client, params.MODEL)
        self._announced = False

    # -- reading -----------------------------------------------------------------------------------

    async def _read(self) -> tuple[SubmissionRecord, str] | None:
        found = await self.store.read(self.key)
        return None if found is None else (load_record(found[0]), found[1])

    async def _find(self, record: SubmissionRecord | None) -> Finding:
        """The log's rows for every attempt of this generation, back to when the record began."""
        prefix = client_request_prefix(self.key)
        try:
            finding = await self.log.find(self.client, prefix, record.created_at if record else None)
        except ReconciliationUnavailable as exc:
            named = f"{record.client_request_id} (or another {prefix}N)" if record else f"{prefix}N"
            raise ReconciliationUnavailable(
                f"Cannot tell whether an earlier POST with client request id {named} was accepted: {exc} "
                "Sending it again could charge twice. Check GET /v2/logs (or the usage page of your AI/ML API "
                "dashboard) for that client_request_id, then re-run this flow run."
            ) from None
        if finding.live is None and finding.unidentified is not None:
            crid = finding.unidentified.client_request_id
            raise UnidentifiedGenerationError(
                f"The usage log lists our request {crid} (status {finding.unidentified.status!r}) but no generation "
                "id we can recognise in its row, so it was accepted and may be charged. It will not be sent again. "
                f"Find the generation for client request id {crid} in your AI/ML API dashboard, then collect its "
                "result by id (or pass that id to wait_for_generation / download_video)."
            )
        return finding

    # -- the decision --------------------------------------------------------------------------------

    async def run(self) -> SubmittedGeneration:
        while True:
            try:
                return await self._step()
            except _Restart:
                continue

    async def _step(self) -> SubmittedGeneration:
        current = await self._read()
        if current is None:
            return await self._first()
        record, version = current
        if record.state == "accepted":
            self.logger.info("Resuming generation %s (already submitted; no new request sent).", record.generation_id)
            return as_submitted(record, resumed=True, reconciled=False)
        if record.state == "pending":
            return await self._reconcile(record, version)
        finding = await self._find(record)  # rejected or failed: not the first POST
        if finding.live is not None:
            return await self._adopt(record, version, finding)
        if record.state == "failed":
            self.logger.info("The previous generation failed (not charged); submitting a new attempt.")
        return await self._claim_and_post(record, version, finding)

    async def _first(self) -> SubmittedGeneration:
        """No record here. Unless this is provably the first attempt, ask the log before posting."""
        attempt = 1
        now = time.time()
        fresh = SubmissionRecord(key=self.key, fingerprint=self.fingerprint, scope=self.scope, created_at=now,
                                 updated_at=now)
        if self.may_repeat:
            finding = await self._find(None)
            if finding.live is not None:
                adopted = fresh.model_copy(update=self._acceptance(finding.live.generation_id, None, "queued", None))
                adopted.attempt = max(1, attempt_of(finding.live.client_request_id))
                if await self.store.create(self.key, dump_record(adopted)) is None:
                    raise _Restart
                self.logger.info("Adopted generation %s found in the usage log (client request id %s); no new "
                                 "request sent.", adopted.generation_id, finding.live.client_request_id)
                return as_submitted(adopted, resumed=True, reconciled=True)
            attempt = finding.highest_attempt + 1
        fresh = fresh.model_copy(update=dict(attempt=attempt, outcome="in_flight", owner=self.owner))
        version = await self.store.create(self.key, dump_record(fresh))
        if version is None:
            raise _Restart  # created by another attempt a moment ago
        return await self._post(fresh, version)

    async def _reconcile(self, record: SubmissionRecord, version: str) -> SubmittedGeneration:
        """A `pending` record: a POST in flight elsewhere, or one whose outcome is unclear."""
        if not self._announced:
            self._announced = True
            self.logger.warning(
                "A previous attempt may have submitted this generation (client request id %s, %s); checking the "
                "provider's usage log before sending anything.", record.client_request_id, record.outcome or "pending",
            )
        pause = 2.0
        while True:
            read_at = time.time()
            finding = await self._find(record)
            if finding.live is not None:
                return await self._adopt(record, version, finding)
            needed = PROVIDER_ERROR_PAUSE_SECONDS if record.outcome == "provider_error" else self.reconcile_seconds
            silent = read_at - record.updated_at
            if silent >= needed:
                self.logger.info("The usage log shows no request %s* after %.0f s without a sign of it; submitting "
                                 "again.", record.logical_prefix, silent)
                return await self._claim_and_post(record, version, finding)
            await asyncio.sleep(max(0.05, min(pause, needed - silent)))
            pause = min(pause * 2, _LOG_RECHECK_MAX_SECONDS)
            current = await self._read()
            if current is None or current[0].state != "pending":
                raise _Restart
            record, version = current

    async def _adopt(self, record: SubmissionRecord, version: str, finding: Finding) -> SubmittedGeneration:
        assert finding.live is not None and finding.live.generation_id
        adopted = record.model_copy(update=self._acceptance(finding.live.generation_id, None, "queued", None))
        adopted.attempt = attempt_of(finding.live.client_request_id) or record.attempt
        if await self.store.replace(self.key, dump_record(adopted), version) is None:
            raise _Restart
        self.logger.info("Adopted generation %s found in the usage log (client request id %s); no new request sent.",
                         adopted.generation_id, finding.live.client_request_id)
        return as_submitted(adopted, resumed=True, reconciled=True)

    async def _claim_and_post(self, record: SubmissionRecord, version: str, finding: Finding) -> SubmittedGeneration:
        claim = record.model_copy(update=dict(
            state="pending", outcome="in_flight", owner=self.owner, generation_id=None, request_id=None,
            attempt=max(record.attempt, finding.highest_attempt) + 1, updated_at=time.time(),
        ))
        claimed = await self.store.replace(self.key, dump_record(claim), version)
        if claimed is None:
            raise _Restart  # another attempt claimed it first: it posts, we see what it did
        return await self._post(claim, claimed)

    # -- the POST ------------------------------------------------------------------------------------

    async def _post(self, record: SubmissionRecord, version: str) -> SubmittedGeneration:
        """Send the POST under our `pending` record, kept fresh until answered; record what it proved."""
        held = _Held(record, version)
        heartbeat = asyncio.create_task(self._heartbeat(held))
        try:
            if self.budget is not None:  # before anything is sent: the cap holds or nothing goes out
                await self.budget.reserve(self.key)
            url = await self.video_url()
        except Exception:
            await _stop(heartbeat)
            await self._settle(held, state="rejected", outcome=None)  # nothing was sent
            if self.budget is not None:
                await self.budget.release(self.key)
            raise
        try:
            answer = await self.client.submit(self.params.payload(url), client_request_id=record.client_request_id)
        except AimlApiError as exc:
            await _stop(heartbeat)
            if isinstance(exc, SubmissionOutcomeUnknown):
                await self._settle(held, state="pending", outcome="unknown")
            elif isinstance(exc, ProviderSubmitError):
                await self._settle(held, state="pending", outcome="provider_error")
            else:  # refused by the provider, or never sent
                await self._settle(held, state="rejected", outcome=None)
                if self.budget is not None:
                    await self.budget.release(self.key)
            raise
        finally:
            await _stop(heartbeat)
        generation = answer.generation
        if self.budget is not None:
            await self.budget.quoted(self.key, generation.credits)
        accepted = await self._settle(held, **self._acceptance(generation.id, answer.request_id, generation.status,
                                                                generation.credits))
        self.logger.info(
            "Submitted generation %s (status %s, client request id %s, x-request-id %s).",
            generation.id, generation.status, record.client_request_id, answer.request_id,
        )
        return as_submitted(accepted, resumed=False, reconciled=False)

    @staticmethod
    def _acceptance(generation_id: str | None, request_id: str | None, status: str | None,
                    credits: float | None) -> dict[str, object]:
        now = time.time()
        return dict(state="accepted", outcome=None, owner=None, generation_id=generation_id, request_id=request_id,
                    initial_status=status, credits=credits, accepted_at=now, updated_at=now)

    async def _heartbeat(self, held: _Held) -> None:
        interval = max(0.25, min(HEARTBEAT_SECONDS, self.reconcile_seconds / 4))
        while True:
            await asyncio.sleep(interval)
            fresh = held.record.model_copy(update={"updated_at": time.time()})
            version = await self.store.replace(self.key, dump_record(fresh), held.version)
            if version is None:
                self.logger.warning("Record %s was taken over while our POST was in flight.", self.key[:12])
                return
            held.record, held.version = fresh, version

    async def _settle(self, held: _Held, **changes: object) -> SubmissionRecord:
        """Write what the POST proved. If the record moved on meanwhile, an acceptance is still written
        (the generation exists and is paid for); anything else yields to the newer state."""
        update = {"updated_at": time.time(), **changes}
        if changes.get("state") != "accepted":
            update.setdefault("owner", None)
        wanted = held.record.model_copy(update=update)
        while True:
            if await self.store.replace(self.key, dump_record(wanted), held.version) is not None:
                return wanted
            current = await self._read()
            if current is None:
                return wanted
            record, version = current
            if changes.get("state") != "accepted" and record.owner != self.owner:
                return record
            if record.state == "accepted" and record.generation_id != wanted.generation_id:
                self.logger.error(
                    "Generation %s was accepted for this request while another attempt's generation %s was recorded: "
                    "both may be charged. Keeping %s.", wanted.generation_id, record.generation_id,
                    record.generation_id)
                return wanted
            held.record, held.version = record, version
            wanted = record.model_copy(update=update)


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class _Held:
    """The record our POST holds, with its latest version (the heartbeat moves both)."""

    def __init__(self, record: SubmissionRecord, version: str) -> None:
        self.record, self.version = record, version


async def submit_once(
    client: AimlApiClient,
    store: RecordStore,
    params: VideoRequest,
    video_identity: str,
    scope: str,
    video_url: Callable[[], Awaitable[str]],
    *,
    reconcile_seconds: float = DEFAULT_RECONCILE_SECONDS,
    may_repeat: bool = True,
    logger: logging.Logger | logging.LoggerAdapter = logging.getLogger(__name__),
    budget: Budget | None = None,
) -> SubmittedGeneration:
    """Make sure exactly one accepted POST exists for this logical generation, and return it.

    `may_repeat`: False only when this call is provably the first of its logical generation (a
    fresh flow-run scope on its first run); then a missing record needs no usage-log read.
    """
    submitted = await Submission(
        client, store, params, video_identity, scope, video_url,
        reconcile_seconds=reconcile_seconds, may_repeat=may_repeat, logger=logger, budget=budget,
    ).run()
    return submitted.model_copy(update={"model": params.MODEL})

"""Exactly-once submission: a write-ahead record per logical generation, and the protocol over it.

Every accepted POST is charged and the API has no idempotency key, so the guarantee is ours.

* A logical generation is (the request's fingerprint, a scope). The scope is the flow run by
  default (task retries, flow retries and re-runs of a crashed run share it), an explicit
  `idempotency_key` (a duplicate trigger for the same S3 object version shares it), or the request
  itself (the CLI: the same command twice is one generation). Each of its POSTs carries a
  deterministic client request id, `v2v-<key>-a<attempt>`, one attempt number per POST.
* The record lives in a `RecordStore` (a local directory, or S3 for many hosts) that has proven it
  compares and swaps, and every transition is a compare-and-swap, so of two attempts that read
  the same record, one acts and the other sees what it did. A `pending` record is a claim: a
  lease (`flows.lease`) its holder keeps fresh and renews right before the POST; a lost or
  unwritable lease sends nothing. Afterwards the record holds the generation id (`accepted`), a
  definite refusal (`rejected`), or an unknown outcome.
* Once a POST answers 2xx, its generation id is logged before anything else can fail, and no
  bookkeeping error throws it away: the record write is retried until `RECORD_DEADLINE_SECONDS`,
  the budget is told later (and a budget that cannot be told never fails the generation), and if
  the record still cannot be written the run fails with `GenerationNotRecorded`, which names the
  generation and the command that collects it.
* The usage log is read before every POST that is not provably the first of its logical
  generation (a record exists, a task or flow retry, an explicit or request scope another run may
  share): a live row is adopted, a row whose generation id cannot be identified fails closed.
* An unknown outcome (a lost answer, a gateway's or the provider's own 5xx, a crash mid-POST) is
  sent again at once if the log lists that very request as failed (failed requests cost nothing),
  and otherwise only when the log still shows nothing after the wait `flows.log_visibility` learns
  for this account (the long default without history). A definite refusal (connection refused,
  400/401/403/422, 429) allows a new POST at once.
* A generation that ended in `error` is not charged; its record becomes `failed` and the next
  attempt posts anew.

Without a shared store, an attempt on another host finds the first only through the usage log
(see the README, "Where the records live").
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from prefect_aimlapi_video.flows.budget import Budget
from prefect_aimlapi_video.flows.client import AimlApiClient
from prefect_aimlapi_video.flows.errors import (
    AimlApiError,
    GenerationNotRecorded,
    ReconciliationUnavailable,
    SubmissionOutcomeUnknown,
    UnidentifiedGenerationError,
)
from prefect_aimlapi_video.flows.lease import LEASE_FLOOR_SECONDS, Lease, LeaseLost, Silence, lease_for
from prefect_aimlapi_video.flows.log_visibility import Wait, read_sightings, reconcile_wait
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
    read_durations,
    record_key,
)
from prefect_aimlapi_video.flows.usage_log import Finding, UsageLog, attempt_of

__all__ = ["StoreRef", "SubmissionRecord", "SubmittedGeneration", "mark_failed",
           "record_key", "submit_once"]

RECORD_DEADLINE_SECONDS = 120.0  # how long the record of an accepted POST is retried before giving up
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
        estimate_credits: float | None = None,
    ) -> None:
        self.client, self.store, self.params, self.video_url = client, store, params, video_url
        self.budget, self.estimate_credits = budget, estimate_credits
        self.fingerprint = params.fingerprint(video_identity)
        self.scope = scope
        self.key = record_key(self.fingerprint, scope)
        self.reconcile_seconds = reconcile_seconds
        self.may_repeat = may_repeat
        self.logger = logger
        self.owner = uuid.uuid4().hex
        self.lease_seconds = lease_for(client.post_deadline_seconds)
        self.log = UsageLog.of(client, params.MODEL)
        self._announced = False
        self._wait: Wait | None = None

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
        fresh = fresh.model_copy(update=dict(attempt=attempt, outcome="in_flight", owner=self.owner,
                                             lease_seconds=self.lease_seconds))
        version = await self.store.create(self.key, dump_record(fresh))
        if version is None:
            raise _Restart  # created by another attempt a moment ago
        return await self._post(fresh, version)

    async def _reconcile(self, record: SubmissionRecord, version: str) -> SubmittedGeneration:
        """A `pending` record: a claim held elsewhere (`in_flight`), or a POST whose outcome is unknown."""
        if not self._announced:
            self._announced = True
            self.logger.warning(
                "A previous attempt may have submitted this generation (client request id %s, %s); checking the "
                "provider's usage log before sending anything.", record.client_request_id, record.outcome or "pending",
            )
        silence = Silence(version)
        pause = 0.5  # doubling: a live holder usually answers within a second
        while True:
            finding = await self._find(record)
            if finding.live is not None:
                return await self._adopt(record, version, finding)
            silent = silence.seconds(record)
            if record.outcome == "in_flight":  # a live holder refreshes it; one that stopped lost its lease
                needed = max(record.lease_seconds or LEASE_FLOOR_SECONDS, LEASE_FLOOR_SECONDS)
                if silent >= needed:
                    await self._expire(record, version, silent)
            elif finding.refused(record.client_request_id):
                self.logger.info("The usage log lists request %s as failed (not charged); sending it again.",
                                 record.client_request_id)
                return await self._claim_and_post(record, version, finding)
            else:
                needed = (await self._unknown_wait()).seconds
                if silent >= needed:
                    self.logger.info("The usage log shows no request %s* after %.0f s without a sign of it; "
                                     "submitting again.", record.logical_prefix, silent)
                    return await self._claim_and_post(record, version, finding)
            await asyncio.sleep(max(0.05, min(pause, needed - silent)))
            pause = min(pause * 2, _LOG_RECHECK_MAX_SECONDS)
            current = await self._read()
            if current is None or current[0].state != "pending":
                raise _Restart
            record, version = current
            silence.seen(version)

    async def _expire(self, record: SubmissionRecord, version: str, silent: float) -> None:
        """Take over a claim whose holder stopped refreshing it: from now on its outcome is unknown (it
        may have sent its POST), and the holder, if it wakes, fails to renew and sends nothing."""
        expired = record.model_copy(update=dict(outcome="unknown", owner=None, updated_at=time.time()))
        if await self.store.replace(self.key, dump_record(expired), version) is not None:
            self.logger.warning("Record %s was not refreshed by its holder for %.0f s: taking it over; its POST, if "
                                "sent, is reconciled through the usage log.", self.key[:12], silent)
        raise _Restart

    async def _unknown_wait(self) -> Wait:
        """How long this account's usage log needs to show a request (learned; the default without)."""
        if self._wait is None:
            try:
                sightings, durations = await read_sightings(self.store), await read_durations(self.store)
            except Exception:  # a hint only: without it, the long default
                sightings, durations = [], []
            self._wait = reconcile_wait(sightings, durations, self.reconcile_seconds)
            self.logger.info("Before sending it again: %s.", self._wait.reason)
        return self._wait

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
            state="pending", outcome="in_flight", owner=self.owner, lease_seconds=self.lease_seconds,
            generation_id=None, request_id=None, attempt=max(record.attempt, finding.highest_attempt) + 1,
            updated_at=time.time(),
        ))
        claimed = await self.store.replace(self.key, dump_record(claim), version)
        if claimed is None:
            raise _Restart  # another attempt claimed it first: it posts, we see what it did
        return await self._post(claim, claimed)

    # -- the POST ------------------------------------------------------------------------------------

    async def _post(self, record: SubmissionRecord, version: str) -> SubmittedGeneration:
        """Send the POST under our lease, renewed right before it; record what the answer proved."""
        async with Lease(self.store, record, version, self.logger) as lease:
            try:
                if self.budget is not None:  # before anything is sent: the cap holds or nothing goes out
                    await self.budget.reserve(self.key, self.estimate_credits)
                url = await self.video_url()
                await lease.renew()
            except LeaseLost:
                await self._release_budget()
                raise _Restart from None  # nothing was sent; the record is another attempt's now
            except Exception:
                await lease.settle_quietly(state="rejected", outcome=None)  # nothing was sent
                await self._release_budget()
                raise
            try:
                answer = await self.client.submit(self.params.payload(url), client_request_id=record.client_request_id)
            except AimlApiError as exc:
                await lease.stop()
                if isinstance(exc, SubmissionOutcomeUnknown):
                    await lease.settle_quietly(state="pending", outcome="unknown")
                else:  # refused by the provider, or never sent
                    await lease.settle_quietly(state="rejected", outcome=None)
                    await self._release_budget()
                raise
        generation = answer.generation
        self.logger.info(  # first of all: whatever fails next, the run's log names what was paid for
            "Accepted: generation %s (client request id %s, x-request-id %s, status %s).",
            generation.id, record.client_request_id, answer.request_id, generation.status,
        )
        try:
            accepted = await lease.record_acceptance(self._acceptance(
                generation.id, answer.request_id, generation.status, generation.credits), RECORD_DEADLINE_SECONDS)
        except Exception as exc:
            raise GenerationNotRecorded(generation.id, record.client_request_id, self.store.location,
                                        str(exc) or type(exc).__name__) from None
        if self.budget is not None:
            try:
                await self.budget.quoted(generation.credits)
            except Exception as exc:  # the reservation stands (the cap errs on the safe side)
                self.logger.warning("Budget %r not told this generation's quote (%s).", self.budget.name, exc)
        return as_submitted(accepted, resumed=False, reconciled=False)

    @staticmethod
    def _acceptance(generation_id: str | None, request_id: str | None, status: str | None,
                    credits: float | None) -> dict[str, object]:
        now = time.time()
        return dict(state="accepted", outcome=None, owner=None, generation_id=generation_id, request_id=request_id,
                    initial_status=status, credits=credits, accepted_at=now, updated_at=now)

    async def _release_budget(self) -> None:
        if self.budget is not None:
            try:
                await self.budget.release(self.key)
            except Exception as exc:  # a reservation left behind only makes the cap stricter
                self.logger.warning("Budget %r: could not release this generation's reservation (%s).",
                                    self.budget.name, exc)


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
    estimate_credits: float | None = None,
) -> SubmittedGeneration:
    """Make sure exactly one accepted POST exists for this logical generation, and return it.

    `may_repeat`: False only when this call is provably the first of its logical generation (a
    fresh flow-run scope on its first run); then a missing record needs no usage-log read.
    `estimate_credits`: this input's expected charge, reserved against `budget` (else its largest quote).
    """
    submitted = await Submission(
        client, store, params, video_identity, scope, video_url,
        reconcile_seconds=reconcile_seconds, may_repeat=may_repeat, logger=logger, budget=budget,
        estimate_credits=estimate_credits,
    ).run()
    return submitted.model_copy(update={"model": params.MODEL})

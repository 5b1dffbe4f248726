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
  lease (`submission.lease`) its holder keeps fresh and renews right before the POST; a lost or
  unwritable lease sends nothing. Afterwards the record holds the generation id (`accepted`), a
  definite refusal (`rejected`), or an unknown outcome.
* Once a POST answers 2xx, its generation id is logged before anything else can fail, and no
  bookkeeping error throws it away (`submission.sending`): the record write is retried until a deadline,
  the budget is told later (and a budget that cannot be told never fails the generation), and if
  the record still cannot be written the run fails with `GenerationNotRecorded`, which names the
  generation and the command that collects it.
* The usage log is read before every POST that is not provably the first of its logical
  generation (a record exists, a task or flow retry, an explicit or request scope another run may
  share): a live row is adopted, a row whose generation id cannot be identified fails closed.
* An unknown outcome (a lost answer, a gateway's or the provider's own 5xx, a crash mid-POST) is
  sent again at once if the log lists that very request as failed (failed requests cost nothing),
  and otherwise only when the log still shows nothing after the wait `submission.log_visibility` learns
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

from prefect_aimlapi_video.api.client import AimlApiClient
from prefect_aimlapi_video.api.requests import VideoRequest
from prefect_aimlapi_video.api.usage_log import Finding, UsageLog, attempt_of
from prefect_aimlapi_video.storage.record_store import RecordStore
from prefect_aimlapi_video.submission.budget import Budget
from prefect_aimlapi_video.submission.lease import LEASE_FLOOR_SECONDS, LeaseLost, Silence, lease_for
from prefect_aimlapi_video.submission.log_lookup import look_up
from prefect_aimlapi_video.submission.log_pacing import store_pace
from prefect_aimlapi_video.submission.log_visibility import Wait, learned_wait
from prefect_aimlapi_video.submission.polling import DEFAULT_RECONCILE_SECONDS
from prefect_aimlapi_video.submission.record import (
    StoreRef,
    SubmissionRecord,
    SubmittedGeneration,
    acceptance,
    as_submitted,
    dump_record,
    load_record,
    mark_failed,
    record_key,
)
from prefect_aimlapi_video.submission.sending import Sender

__all__ = ["StoreRef", "SubmissionRecord", "SubmittedGeneration", "mark_failed",
           "record_key", "submit_once"]

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
        self.budget = budget
        self.fingerprint = params.fingerprint(video_identity)
        self.scope = scope
        self.record_key = record_key(self.fingerprint, scope)
        self.reconcile_seconds = reconcile_seconds
        self.may_repeat = may_repeat
        self.logger = logger
        self.owner = uuid.uuid4().hex
        self.lease_seconds = lease_for(client.post_deadline_seconds)
        self.log = UsageLog.of(client, params.MODEL, store_pace(store, client))
        self.sender = Sender(client, store, params, video_url, logger, budget, estimate_credits)
        self._announced = False
        self._wait: Wait | None = None

    # -- reading -----------------------------------------------------------------------------------

    async def _read(self) -> tuple[SubmissionRecord, str] | None:
        found = await self.store.read(self.record_key)
        return None if found is None else (load_record(found[0]), found[1])

    async def _find(self, record: SubmissionRecord | None) -> Finding:
        return await look_up(self.log, self.client, self.record_key, record)

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
        fresh = SubmissionRecord(key=self.record_key, fingerprint=self.fingerprint, scope=self.scope, created_at=now,
                                 updated_at=now)
        if self.may_repeat:
            finding = await self._find(None)
            if finding.live is not None:
                adopted = fresh.model_copy(update=acceptance(finding.live.generation_id, None, "queued", None))
                adopted.attempt = max(1, attempt_of(finding.live.client_request_id))
                if await self.store.create(self.record_key, dump_record(adopted)) is None:
                    raise _Restart
                self.logger.info("Adopted generation %s found in the usage log (client request id %s); no new "
                                 "request sent.", adopted.generation_id, finding.live.client_request_id)
                return as_submitted(adopted, resumed=True, reconciled=True)
            attempt = finding.highest_attempt + 1
        fresh = fresh.model_copy(update=dict(attempt=attempt, outcome="in_flight", owner=self.owner,
                                             lease_seconds=self.lease_seconds))
        version = await self.store.create(self.record_key, dump_record(fresh))
        if version is None:
            raise _Restart  # created by another attempt a moment ago
        return await self._send(fresh, version)

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
        if await self.store.replace(self.record_key, dump_record(expired), version) is not None:
            self.logger.warning("Record %s was not refreshed by its holder for %.0f s: taking it over; its POST, if "
                                "sent, is reconciled through the usage log.", self.record_key[:12], silent)
        raise _Restart

    async def _unknown_wait(self) -> Wait:
        """How long this account's usage log needs to show a request (learned; the default without).

        Learned again on every look, and never shorter than before: generations that complete slowly
        while we wait (a provider that got busier, a queue behind a burst) lengthen the wait before our
        own, accepted at the same time and as slow, could be sent again (a wait learned once, when the
        reconciling began, can be outlasted by the burst it did not see)."""
        wait = await learned_wait(self.store, self.reconcile_seconds)
        if self._wait is None or wait.seconds > self._wait.seconds:
            self.logger.info("Before sending it again: %s.", wait.reason)
            self._wait = wait
        return self._wait

    async def _adopt(self, record: SubmissionRecord, version: str, finding: Finding) -> SubmittedGeneration:
        assert finding.live is not None and finding.live.generation_id
        adopted = record.model_copy(update=acceptance(finding.live.generation_id, None, "queued", None))
        adopted.attempt = attempt_of(finding.live.client_request_id) or record.attempt
        if await self.store.replace(self.record_key, dump_record(adopted), version) is None:
            raise _Restart
        self.logger.info("Adopted generation %s found in the usage log (client request id %s); no new request sent.",
                         adopted.generation_id, finding.live.client_request_id)
        return as_submitted(adopted, resumed=True, reconciled=True)

    async def _send(self, record: SubmissionRecord, version: str) -> SubmittedGeneration:
        try:
            return await self.sender.send(record, version)
        except LeaseLost:
            raise _Restart from None  # nothing was sent; the record is another attempt's now

    async def _claim_and_post(self, record: SubmissionRecord, version: str, finding: Finding) -> SubmittedGeneration:
        claim = record.model_copy(update=dict(
            state="pending", outcome="in_flight", owner=self.owner, lease_seconds=self.lease_seconds,
            generation_id=None, request_id=None, attempt=max(record.attempt, finding.highest_attempt) + 1,
            updated_at=time.time(),
        ))
        claimed = await self.store.replace(self.record_key, dump_record(claim), version)
        if claimed is None:
            raise _Restart  # another attempt claimed it first: it posts, we see what it did
        return await self._send(claim, claimed)


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

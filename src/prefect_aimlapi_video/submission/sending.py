"""The POST itself, under a live claim: the budget reserved, the input made ready, the claim renewed,
then the one paid request, and what its answer proved recorded. See `submission.protocol` for when
a POST may be sent at all, and `submission.lease` for the claim.

Once the provider accepts, its generation id is logged before anything else can fail; the record
write is retried until `RECORD_DEADLINE_SECONDS` and otherwise ends in `GenerationNotRecorded`
(which names the generation and how to collect it); the budget is told quietly.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from prefect_aimlapi_video.api.client import AimlApiClient
from prefect_aimlapi_video.api.errors import AimlApiError, GenerationNotRecorded, SubmissionOutcomeUnknown
from prefect_aimlapi_video.api.requests import VideoRequest
from prefect_aimlapi_video.storage.record_store import RecordStore
from prefect_aimlapi_video.submission.budget import Budget
from prefect_aimlapi_video.submission.lease import Lease, LeaseLost
from prefect_aimlapi_video.submission.record import SubmissionRecord, SubmittedGeneration, acceptance, as_submitted

RECORD_DEADLINE_SECONDS = 120.0  # how long the record of an accepted POST is retried before giving up


class Sender:
    """What one logical generation's POSTs need; `send` makes one (`LeaseLost`: nothing was sent)."""

    def __init__(self, client: AimlApiClient, store: RecordStore, params: VideoRequest,
                 video_url: Callable[[], Awaitable[str]], logger: logging.Logger | logging.LoggerAdapter,
                 budget: Budget | None, estimate_credits: float | None) -> None:
        self.client, self.store, self.params, self.video_url, self.logger = client, store, params, video_url, logger
        self.budget, self.estimate_credits = budget, estimate_credits

    async def send(self, record: SubmissionRecord, version: str) -> SubmittedGeneration:
        """Send the POST under our lease, renewed right before it; record what the answer proved."""
        async with Lease(self.store, record, version, self.logger) as lease:
            try:
                if self.budget is not None:  # before anything is sent: the cap holds or nothing goes out
                    await self.budget.reserve(record.key, self.estimate_credits)
                url = await self.video_url()
                await lease.renew()
            except LeaseLost:
                await self._release_budget(record.key)
                raise  # nothing was sent; the record is another attempt's now
            except Exception:
                await lease.settle_quietly(state="rejected", outcome=None)  # nothing was sent
                await self._release_budget(record.key)
                raise
            try:
                answer = await self.client.submit(self.params.payload(url), client_request_id=record.client_request_id)
            except AimlApiError as exc:
                await lease.stop()
                if isinstance(exc, SubmissionOutcomeUnknown):
                    await lease.settle_quietly(state="pending", outcome="unknown")
                else:  # refused by the provider, or never sent
                    await lease.settle_quietly(state="rejected", outcome=None)
                    await self._release_budget(record.key)
                raise
        generation = answer.generation
        self.logger.info(  # first of all: whatever fails next, the run's log names what was paid for
            "Accepted: generation %s (client request id %s, x-request-id %s, status %s).",
            generation.id, record.client_request_id, answer.request_id, generation.status,
        )
        try:
            accepted = await lease.record_acceptance(acceptance(
                generation.id, answer.request_id, generation.status, generation.credits), RECORD_DEADLINE_SECONDS)
        except Exception as exc:
            raise GenerationNotRecorded(generation.id, record.client_request_id, self.store.location,
                                        str(exc) or type(exc).__name__) from None
        if self.budget is not None:
            await self.budget.quietly(self.budget.quoted(generation.credits), self.logger, "take this quote")
        return as_submitted(accepted, resumed=False, reconciled=False)

    async def _release_budget(self, record_key: str) -> None:
        if self.budget is not None:  # a reservation left behind only makes the cap stricter
            await self.budget.quietly(self.budget.release(record_key), self.logger, "release its reservation")

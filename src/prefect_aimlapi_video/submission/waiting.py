"""Waiting for a generation: a plain async generator of what polling observes. No Prefect here.

`observe` polls on a schedule and yields one `Observation` per poll (or per absorbed failure), and
stops after the one that shows a final status. Single failures are absorbed (a 5xx, a reset, a
429 with its `Retry-After`); it raises after `max_errors` failed polls in a row, and
`GenerationTimeoutError` at the overall timeout. `Tracker` folds observations into what the rest
needs to know: the status timeline, the provider's request ids, when generating began. The wait
task wraps both with logging and progress; tests drive them with a fake client.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from prefect_aimlapi_video.api.client import ApiAnswer
from prefect_aimlapi_video.api.errors import GenerationTimeoutError, RateLimitedError, TransientApiError
from prefect_aimlapi_video.api.models import Generation, Phase, StatusChange

MAX_CONSECUTIVE_POLL_ERRORS = 10


class Schedule(Protocol):
    def next_delay(self, elapsed: float, retry_after: float | None = None) -> float: ...


class Poller(Protocol):
    async def get_generation(self, generation_id: str) -> ApiAnswer: ...


class Observation(BaseModel):
    """One poll: the generation as seen (`seen`), or why there is nothing to see (`failed`, `limited`)."""

    kind: Literal["seen", "failed", "limited"]
    elapsed: float
    at: float
    generation: Generation | None = None
    request_id: str | None = None
    error: str | None = None
    retry_after: float | None = None

    @property
    def final(self) -> bool:
        return self.generation is not None and self.generation.phase in (Phase.COMPLETED, Phase.FAILED)


async def observe(
    client: Poller, generation_id: str, schedule: Schedule, *, timeout_seconds: float,
    max_errors: int = MAX_CONSECUTIVE_POLL_ERRORS,
) -> AsyncIterator[Observation]:
    """Poll until the generation reaches a final status (yielded last) or the timeout."""
    started = time.monotonic()
    errors = 0
    last_status = "queued"
    while True:
        retry_after = None
        elapsed = time.monotonic() - started
        try:
            answer = await client.get_generation(generation_id)
        except RateLimitedError as exc:
            retry_after = exc.retry_after or 5.0
            yield Observation(kind="limited", elapsed=elapsed, at=time.time(), retry_after=retry_after, error=str(exc))
        except TransientApiError as exc:
            errors += 1
            if errors >= max_errors:
                raise
            yield Observation(kind="failed", elapsed=elapsed, at=time.time(), error=str(exc))
        else:
            errors = 0
            last_status = answer.generation.status
            observation = Observation(kind="seen", elapsed=elapsed, at=time.time(), generation=answer.generation,
                                      request_id=answer.request_id)
            yield observation
            if observation.final:
                return
        elapsed = time.monotonic() - started
        if elapsed >= timeout_seconds:
            raise GenerationTimeoutError(generation_id, elapsed, last_status)
        await asyncio.sleep(min(schedule.next_delay(elapsed, retry_after), timeout_seconds - elapsed))


class Tracker:
    """What a wait learned: the status timeline (each status when first seen), request ids, polls."""

    def __init__(self, initial_status: str, accepted_at: float) -> None:
        self.timeline = [StatusChange(status=initial_status, at=accepted_at)]
        self.request_ids: list[str] = []
        self.polls = 0
        self.first_generating: float | None = None

    def add(self, observation: Observation) -> bool:
        """Fold in one observation; True when it shows a new status."""
        generation = observation.generation
        if generation is None:
            return False
        self.polls += 1
        if observation.request_id and observation.request_id not in self.request_ids[-1:]:
            self.request_ids.append(observation.request_id)
        if generation.status == "generating" and self.first_generating is None:
            self.first_generating = observation.at
        if generation.status == self.timeline[-1].status:
            return False
        self.timeline.append(StatusChange(status=generation.status, at=observation.at))
        return True

    def progress(self, expected_seconds: float) -> float:
        """A percentage for a progress bar: 5 while queued, then rising towards 95 over a typical run."""
        if self.first_generating is None:
            return 5.0
        since = time.time() - self.first_generating
        return 10.0 + 85.0 * (1 - math.exp(-since / expected_seconds))

    def durations(self, completed_at: float, accepted_at: float) -> dict[str, Any]:
        """Queued and generating seconds, when generating was seen at all."""
        if self.first_generating is None:
            return {"queued_s": None, "generating_s": None}
        return {"queued_s": self.first_generating - accepted_at, "generating_s": completed_at - self.first_generating}

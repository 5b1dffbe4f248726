"""submission.waiting: the poll loop as a plain async generator, driven by a fake client (no Prefect)."""

from __future__ import annotations

import pytest

from prefect_aimlapi_video.api.client import ApiAnswer
from prefect_aimlapi_video.api.errors import GenerationTimeoutError, RateLimitedError, TransientApiError
from prefect_aimlapi_video.api.models import Generation
from prefect_aimlapi_video.submission.waiting import Tracker, observe


class Script:
    """Answers from a list: a status word, or an exception to raise; the last answer repeats."""

    def __init__(self, *answers):
        self.answers, self.calls = list(answers), 0

    async def get_generation(self, generation_id: str) -> ApiAnswer:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return ApiAnswer(generation=Generation(id=generation_id, status=answer), request_id=f"r{self.calls}")


class Quick:
    def __init__(self):
        self.retry_afters = []

    def next_delay(self, elapsed, retry_after=None):
        self.retry_afters.append(retry_after)
        return 0.001


async def collect(client, **options):
    return [o async for o in observe(client, "g1", Quick(), timeout_seconds=options.pop("timeout", 10), **options)]


async def test_yields_each_poll_and_stops_after_the_final_status():
    seen = await collect(Script("queued", "generating", "generating", "completed", "completed"))
    assert [o.generation.status for o in seen] == ["queued", "generating", "generating", "completed"]
    assert seen[-1].final and not seen[0].final


async def test_absorbs_single_failures_and_honours_retry_after():
    schedule = Quick()
    client = Script(TransientApiError("503"), RateLimitedError("429", retry_after=2.5), "error")
    seen = [o async for o in observe(client, "g1", schedule, timeout_seconds=10)]
    assert [o.kind for o in seen] == ["failed", "limited", "seen"]
    assert seen[-1].final and schedule.retry_afters[:2] == [None, 2.5]


async def test_gives_up_after_too_many_failures_in_a_row():
    with pytest.raises(TransientApiError):
        await collect(Script(TransientApiError("503")), max_errors=3)


async def test_times_out_naming_the_generation():
    with pytest.raises(GenerationTimeoutError, match="g1.*'generating'"):
        await collect(Script("generating"), timeout=0.05)


def test_tracker_keeps_each_status_once_and_when_generating_began():
    from prefect_aimlapi_video.submission.waiting import Observation

    tracker = Tracker("queued", accepted_at=100.0)
    statuses = ["queued", "generating", "generating", "completed"]
    changes = [tracker.add(Observation(kind="seen", elapsed=i, at=101.0 + i, request_id="same",
                                       generation=Generation(id="g", status=s))) for i, s in enumerate(statuses)]
    assert changes == [False, True, False, True]
    assert [c.status for c in tracker.timeline] == ["queued", "generating", "completed"]
    assert tracker.polls == 4 and tracker.request_ids == ["same"]
    assert tracker.durations(completed_at=104.0, accepted_at=100.0) == {"queued_s": 2.0, "generating_s": 2.0}

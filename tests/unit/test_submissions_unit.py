"""prefect_aimlapi_video.flows.submissions: the exactly-once protocol against a stateful fake API.

The fake provider (on httpx.MockTransport) accepts, refuses or loses POSTs in every way the
client must tell apart, and lists requests in its usage log in each plausible way (at acceptance,
only at completion, with the generation id under different names, or none we can recognise).
Each test counts what would be charged: `fake.accepted`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

import httpx
import pytest

from prefect_aimlapi_video.flows import submissions as submissions_module
from prefect_aimlapi_video.flows.client import AimlApiClient
from prefect_aimlapi_video.flows.errors import (
    InvalidRequestError,
    ProviderSubmitError,
    RateLimitedError,
    ReconciliationUnavailable,
    SubmissionOutcomeUnknown,
    TransientApiError,
    UnidentifiedGenerationError,
)
from prefect_aimlapi_video.flows.record_store import LocalRecordStore
from prefect_aimlapi_video.flows.requests import DEFAULT_MODEL as MODEL
from prefect_aimlapi_video.flows.requests import GenerationParams
from prefect_aimlapi_video.flows.submissions import SubmissionRecord, mark_failed, record_key, submit_once

API_KEY = "sk-unit-test-SECRET-KEY-0123456789"
BASE_URL = "https://api.test"
IDENTITY = "sha256:" + "ab" * 32
PROVIDER_503 = {"message": "Service unavailable", "path": "/v2/video/generations", "requestId": "r-1",
                "statusCode": 503, "timestamp": "2026-11-29T00:00:00.000Z"}


class FakeApi:
    """Just enough of the provider to count charges.

    post_mode: "ok"; "lost_after_accept" (accepted, then the answer is lost); "lost_before_accept"
    (never arrived); "gateway_502_after_accept" (accepted, then a gateway's HTML 502);
    "provider_503" (the provider's own JSON error: not accepted); "html_503" (a 503 page from
    something in between: not accepted, but it does not say so); "429"; "400"; "refused_connect".
    log_mode: "ok" or "fail". log_visibility: "at_acceptance", or "at_completion" (rows appear only
    for generations in `self.completed`). row_shape: "standard", "inference_id_only", "row_id_only",
    "unidentifiable".
    """

    def __init__(self) -> None:
        self.post_mode = "ok"
        self.log_mode = "ok"
        self.log_visibility = "at_acceptance"
        self.row_shape = "standard"
        self.list_refused = True
        self.post_delay = 0.0
        self.post_attempts: list[dict] = []  # every POST that reached us, with its time
        self.accepted: list[dict] = []  # generations we accepted (each one would be charged)
        self.refused: list[dict] = []
        self.completed: set[str] = set()
        self.failed: set[str] = set()
        self.log_reads = 0
        self.lock = threading.Lock()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/v2/video/generations":
            return await self._post(request)
        if request.method == "GET" and request.url.path == "/v2/logs":
            return self._logs(request)
        return httpx.Response(404, json={"message": "no route"})

    def _row(self, accepted: dict) -> dict:
        row = {"id": f"row-{accepted['n']}", "client_request_id": accepted["crid"], "model": MODEL,
               "status": "failed" if accepted["id"] in self.failed else "pending", "time": accepted["time"],
               "cost": 0.1}
        if self.row_shape == "standard":
            row.update(generation_id=accepted["id"], inference_id=accepted["id"])
        elif self.row_shape == "inference_id_only":
            row.update(inference_id=accepted["id"])
        elif self.row_shape == "unidentifiable":
            row.update(job_ref=accepted["id"])
        return row  # "row_id_only": nothing but the row's own id

    def _logs(self, request: httpx.Request) -> httpx.Response:
        self.log_reads += 1
        if self.log_mode == "fail":
            return httpx.Response(503, json={"message": "logs temporarily unavailable"})
        offset, limit = int(request.url.params["offset"]), int(request.url.params["limit"])
        visible = [a for a in self.accepted if self.log_visibility == "at_acceptance" or a["id"] in self.completed]
        rows = [self._row(a) for a in visible] + (self.refused if self.list_refused else [])
        rows.sort(key=lambda r: r["time"], reverse=True)
        return httpx.Response(200, json={"data": rows[offset: offset + limit]})

    def accept(self, crid: str | None) -> str:
        with self.lock:
            generation_id = f"{uuid.uuid4()}:{MODEL}"
            self.accepted.append({"crid": crid, "id": generation_id, "n": len(self.accepted), "time": time.time()})
            return generation_id

    async def _post(self, request: httpx.Request) -> httpx.Response:
        crid = request.headers.get("x-client-request-id")
        self.post_attempts.append({"crid": crid, "at": time.time(), "body": json.loads(request.content)})
        mode = self.post_mode
        refusals = {"provider_503": httpx.Response(503, json=PROVIDER_503),
                    "html_503": httpx.Response(503, text="<html>503 Service Unavailable</html>"),
                    "429": httpx.Response(429, json={"message": "Too many requests", "statusCode": 429}),
                    "400": httpx.Response(400, json={"message": "Body validation error", "statusCode": 400})}
        if mode in refusals:
            self.refused.append({"id": f"refused-{len(self.refused)}", "client_request_id": crid, "model": MODEL,
                                 "status": "failed", "cost": 0, "time": time.time()})
            return refusals[mode]
        if mode == "refused_connect":
            self.post_attempts.pop()
            raise httpx.ConnectError("connection refused", request=request)
        if mode == "lost_before_accept":
            raise httpx.ReadTimeout("no answer", request=request)
        generation_id = self.accept(crid)
        if self.post_delay:
            await asyncio.sleep(self.post_delay)
        if mode == "lost_after_accept":
            raise httpx.ReadTimeout("no answer", request=request)
        if mode == "gateway_502_after_accept":
            return httpx.Response(502, text="<html><title>502 Bad Gateway</title></html>",
                                  headers={"content-type": "text/html"})
        return httpx.Response(
            201,
            json={"id": generation_id, "status": "queued", "meta": {"usage": {"tokens_used": 315000}}},
            headers={"x-request-id": f"req-{len(self.post_attempts)}", "x-client-request-id": crid or ""},
        )


class VideoUrl:
    """The `video_url` callable, counting how often it is awaited."""

    def __init__(self, value: str = "https://cdn.test/in.mp4", delay: float = 0.0) -> None:
        self.value, self.delay = value, delay
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return self.value


@pytest.fixture
def fake() -> FakeApi:
    return FakeApi()


@pytest.fixture
async def client(fake):
    async with AimlApiClient(API_KEY, BASE_URL, transport=httpx.MockTransport(fake)) as api:
        yield api


@pytest.fixture
def store(tmp_path) -> LocalRecordStore:
    return LocalRecordStore(tmp_path / "submissions")


@pytest.fixture(autouse=True)
def short_provider_pause(monkeypatch):
    monkeypatch.setattr(submissions_module, "PROVIDER_ERROR_PAUSE_SECONDS", 0.3)


PARAMS = GenerationParams(prompt="watercolor painting", strength=0.6, seed=11)


def key_for(scope: str, params: GenerationParams = PARAMS) -> str:
    return record_key(params.fingerprint(IDENTITY), scope)


async def load(store: LocalRecordStore, scope: str = "run-1") -> SubmissionRecord | None:
    found = await store.read(key_for(scope))
    return None if found is None else SubmissionRecord.model_validate_json(found[0])


def submit(client, store, video_url=None, *, scope="run-1", params=PARAMS, wait=0.3, may_repeat=True):
    return submit_once(client, store, params, IDENTITY, scope, video_url or VideoUrl(),
                       reconcile_seconds=wait, may_repeat=may_repeat)


# -- the first POST ------------------------------------------------------------------------------


async def test_first_attempt_of_a_fresh_scope_posts_once_without_reading_the_log(client, store, fake):
    video_url = VideoUrl()
    result = await submit(client, store, video_url, may_repeat=False)
    assert len(fake.post_attempts) == 1 and len(fake.accepted) == 1
    assert result.generation_id == fake.accepted[0]["id"]
    assert (result.resumed, result.reconciled, result.credits, result.request_id) == (False, False, 315000, "req-1")
    record = await load(store)
    assert record.state == "accepted" and record.generation_id == result.generation_id and record.attempt == 1
    assert fake.post_attempts[0]["crid"] == record.client_request_id == result.client_request_id
    assert result.client_request_id.endswith("-a1")
    assert fake.post_attempts[0]["body"] == PARAMS.payload("https://cdn.test/in.mp4")
    assert video_url.calls == 1 and fake.log_reads == 0


async def test_a_scope_others_may_share_reads_the_log_before_its_first_post(client, store, fake):
    await submit(client, store, may_repeat=True)
    assert fake.log_reads == 1 and len(fake.accepted) == 1


async def test_another_host_without_the_record_adopts_from_the_log(client, tmp_path, fake):
    """Two hosts, two record directories: the second finds the first's POST in the usage log."""
    first = await submit(client, LocalRecordStore(tmp_path / "host-a"))
    video_url = VideoUrl()
    second = await submit(client, LocalRecordStore(tmp_path / "host-b"), video_url)
    assert len(fake.accepted) == 1 and video_url.calls == 0
    assert second.generation_id == first.generation_id and second.reconciled is True


def test_client_request_id_fits_provider_rules():
    record = SubmissionRecord(key="f" * 64, fingerprint="x", scope="s", created_at=0, updated_at=0, attempt=12)
    crid = record.client_request_id
    assert 1 <= len(crid) <= 128 and all(c.isalnum() or c in "._:-" for c in crid)
    assert crid.endswith("-a12") and crid.startswith(record.logical_prefix)


async def test_second_call_same_scope_resumes_without_post(client, store, fake):
    first = await submit(client, store)
    video_url = VideoUrl()
    again = await submit(client, store, video_url)
    assert len(fake.post_attempts) == 1 and video_url.calls == 0
    assert (again.resumed, again.reconciled) == (True, False)
    assert again.generation_id == first.generation_id and again.client_request_id == first.client_request_id


async def test_different_scope_or_params_is_a_new_generation(client, store, fake):
    first = await submit(client, store)
    other = await submit(client, store, scope="run-2")
    changed = await submit(client, store, params=GenerationParams(prompt="watercolor painting", strength=0.7, seed=11))
    assert len(fake.accepted) == 3
    assert len({first.generation_id, other.generation_id, changed.generation_id}) == 3


# -- unclear outcomes ------------------------------------------------------------------------------


async def test_lost_answer_then_adopted_from_the_log(client, store, fake):
    fake.post_mode = "lost_after_accept"
    with pytest.raises(SubmissionOutcomeUnknown) as info:
        await submit(client, store)
    record = await load(store)
    assert (record.state, record.outcome, record.generation_id) == ("pending", "unknown", None)
    assert info.value.client_request_id == record.client_request_id

    fake.post_mode = "ok"
    video_url = VideoUrl()
    result = await submit(client, store, video_url, wait=60)
    assert (result.reconciled, result.resumed) == (True, True)
    assert result.generation_id == fake.accepted[0]["id"]
    assert len(fake.post_attempts) == 1 and video_url.calls == 0
    assert (await load(store)).state == "accepted"


async def test_gateway_502_after_acceptance_is_unknown_and_adopted_never_resent(client, store, fake):
    fake.post_mode = "gateway_502_after_accept"
    with pytest.raises(SubmissionOutcomeUnknown) as info:
        await submit(client, store)
    assert "502" in str(info.value) and info.value.client_request_id.endswith("-a1")
    fake.post_mode = "ok"
    result = await submit(client, store, wait=60)
    assert result.reconciled and len(fake.accepted) == 1 and len(fake.post_attempts) == 1


async def test_row_listed_only_at_completion_is_waited_for_not_resent(client, store, fake):
    """The provider may list a request only when its generation completes: silence is not absence."""
    fake.post_mode, fake.log_visibility = "lost_after_accept", "at_completion"
    with pytest.raises(SubmissionOutcomeUnknown):
        await submit(client, store)
    fake.post_mode = "ok"

    async def complete_later() -> None:
        await asyncio.sleep(1.0)
        fake.completed.add(fake.accepted[0]["id"])

    completer = asyncio.ensure_future(complete_later())
    result = await submit(client, store, wait=5.0)
    await completer
    assert result.reconciled and result.generation_id == fake.accepted[0]["id"]
    assert len(fake.post_attempts) == 1 and fake.log_reads >= 2


async def test_lost_request_absent_from_log_is_resent_after_the_wait_as_a_new_attempt(client, store, fake):
    fake.post_mode = "lost_before_accept"
    with pytest.raises(SubmissionOutcomeUnknown):
        await submit(client, store)
    pending = await load(store)
    fake.post_mode = "ok"
    video_url = VideoUrl()
    result = await submit(client, store, video_url, wait=0.4)
    assert (result.resumed, result.reconciled) == (False, False)
    assert len(fake.post_attempts) == 2 and len(fake.accepted) == 1
    first, second = fake.post_attempts
    assert first["crid"].endswith("-a1") and second["crid"].endswith("-a2")  # one id per POST
    assert second["at"] >= pending.updated_at + 0.4  # the wait was served
    assert fake.log_reads >= 2 and video_url.calls == 1
    assert (await load(store)).attempt == 2


async def test_provider_json_503_waits_a_short_pause_then_the_log_decides(client, store, fake):
    fake.post_mode = "provider_503"
    with pytest.raises(ProviderSubmitError):
        await submit(client, store)
    assert (await load(store)).outcome == "provider_error"
    fake.post_mode = "ok"
    started = time.monotonic()
    result = await submit(client, store, wait=600)  # not the long wait: the provider answered itself
    assert time.monotonic() - started < 5
    assert result.client_request_id.endswith("-a2") and len(fake.accepted) == 1
    assert fake.log_reads >= 1


async def test_a_503_page_not_in_the_providers_shape_is_unknown(client, store, fake):
    fake.post_mode = "html_503"
    with pytest.raises(SubmissionOutcomeUnknown):
        await submit(client, store)
    record = await load(store)
    assert (record.state, record.outcome) == ("pending", "unknown")
    fake.post_mode = "ok"
    with pytest.raises(asyncio.TimeoutError):  # silence must last the whole wait: no resend in 1 s
        await asyncio.wait_for(submit(client, store, wait=600), 1.0)
    assert len(fake.post_attempts) == 1


async def test_log_unavailable_fails_naming_the_risk(client, store, fake):
    fake.post_mode = "lost_after_accept"
    with pytest.raises(SubmissionOutcomeUnknown) as info:
        await submit(client, store)
    fake.post_mode, fake.log_mode = "ok", "fail"
    video_url = VideoUrl()
    with pytest.raises(ReconciliationUnavailable) as unavailable:
        await submit(client, store, video_url)
    text = str(unavailable.value)
    assert info.value.client_request_id.removesuffix("1") in text
    assert "charge twice" in text and "/v2/logs" in text
    assert len(fake.post_attempts) == 1 and video_url.calls == 0
    assert (await load(store)).state == "pending"


# -- what a row may look like ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["unidentifiable", "row_id_only"])
async def test_a_row_without_a_recognisable_generation_id_fails_closed(client, store, fake, shape):
    fake.post_mode, fake.row_shape = "lost_after_accept", shape
    with pytest.raises(SubmissionOutcomeUnknown) as info:
        await submit(client, store)
    fake.post_mode = "ok"
    with pytest.raises(UnidentifiedGenerationError) as unidentified:
        await submit(client, store, wait=0.1)
    assert info.value.client_request_id in str(unidentified.value)
    assert "will not be sent again" in str(unidentified.value)
    assert len(fake.post_attempts) == 1  # nothing resent, even after the wait
    with pytest.raises(UnidentifiedGenerationError):  # and never on later runs either
        await submit(client, store, wait=0.0)
    assert len(fake.post_attempts) == 1


async def test_generation_id_only_as_inference_id_is_adopted(client, store, fake):
    fake.post_mode, fake.row_shape = "lost_after_accept", "inference_id_only"
    with pytest.raises(SubmissionOutcomeUnknown):
        await submit(client, store)
    fake.post_mode = "ok"
    result = await submit(client, store)
    assert result.generation_id == fake.accepted[0]["id"] and len(fake.post_attempts) == 1


# -- definite refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, error", [("429", RateLimitedError), ("400", InvalidRequestError),
                                         ("refused_connect", TransientApiError)])
async def test_a_definite_refusal_allows_the_next_post_at_once(client, store, fake, mode, error):
    fake.post_mode = mode
    with pytest.raises(error):
        await submit(client, store)
    assert (await load(store)).state == "rejected"
    fake.post_mode = "ok"
    started = time.monotonic()
    result = await submit(client, store, wait=600)
    assert time.monotonic() - started < 2.0  # no wait: the refusal proved nothing was accepted
    assert len(fake.accepted) == 1 and result.resumed is False
    assert (await load(store)).state == "accepted"


async def test_after_mark_failed_next_call_is_a_new_attempt(client, store, fake):
    first = await submit(client, store)
    fake.failed.add(first.generation_id)  # the provider lists it as failed (not charged)
    await mark_failed(store, key_for("run-1"), first.generation_id)
    assert (await load(store)).state == "failed"
    video_url = VideoUrl()
    second = await submit(client, store, video_url)
    assert second.client_request_id.endswith("-a2") and fake.post_attempts[1]["crid"] == second.client_request_id
    assert second.generation_id != first.generation_id and second.resumed is False and video_url.calls == 1
    record = await load(store)
    assert (record.attempt, record.state, record.generation_id) == (2, "accepted", second.generation_id)


async def test_mark_failed_only_changes_the_accepted_generation(client, store, fake):
    first = await submit(client, store)
    await mark_failed(store, "missing", "g")
    await mark_failed(store, key_for("run-1"), "another-generation")
    assert (await load(store)).state == "accepted"
    await mark_failed(store, key_for("run-1"), first.generation_id)
    assert (await load(store)).state == "failed"


async def test_video_url_failure_marks_rejected_without_post(client, store, fake):
    async def broken() -> str:
        raise RuntimeError("cannot stage the video")

    with pytest.raises(RuntimeError):
        await submit(client, store, broken)
    assert fake.post_attempts == [] and (await load(store)).state == "rejected"


# -- concurrency ----------------------------------------------------------------------------------


async def test_concurrent_calls_make_exactly_one_post(client, store, fake):
    fake.post_delay = 0.3
    first_url, second_url = VideoUrl(), VideoUrl()
    results = await asyncio.gather(submit(client, store, first_url, wait=5), submit(client, store, second_url, wait=5))
    assert len(fake.post_attempts) == 1 and len(fake.accepted) == 1
    assert {r.generation_id for r in results} == {fake.accepted[0]["id"]}
    assert first_url.calls + second_url.calls == 1


async def test_concurrent_calls_with_slow_video_url_make_one_post(client, store, fake):
    """The winner prepares its input for longer than the wait: its heartbeat keeps the record alive."""
    results = await asyncio.gather(submit(client, store, VideoUrl(delay=1.5), wait=0.5),
                                   submit(client, store, VideoUrl(delay=1.5), wait=0.5))
    assert len(fake.accepted) == 1 and len({r.generation_id for r in results}) == 1


async def test_two_attempts_released_together_on_a_stale_record_never_both_post(tmp_path, fake):
    """A pending record whose sender died long ago; two attempts, each on its own thread, event loop,
    client and store instance (two workers), race to resend it. 20 rounds: one POST each time."""
    directory = tmp_path / "shared"
    for round_number in range(20):
        scope = f"stale-{round_number}"
        key = key_for(scope)
        stale = SubmissionRecord(key=key, fingerprint=PARAMS.fingerprint(IDENTITY), scope=scope, state="pending",
                                 outcome="unknown", created_at=time.time() - 100, updated_at=time.time() - 100)
        assert await LocalRecordStore(directory).create(key, stale.model_dump_json().encode())
        barrier = threading.Barrier(2)
        results: list = []

        def attempt() -> None:
            async def run() -> object:
                async with AimlApiClient(API_KEY, BASE_URL, transport=httpx.MockTransport(fake)) as api:
                    barrier.wait()
                    return await submit_once(api, LocalRecordStore(directory), PARAMS, IDENTITY, scope, VideoUrl(),
                                             reconcile_seconds=30)
            results.append(asyncio.run(run()))

        threads = [threading.Thread(target=attempt) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        posts = [p for p in fake.post_attempts if p["crid"].startswith(stale.logical_prefix)]
        assert len(posts) == 1, f"round {round_number}: {len(posts)} POSTs"
        assert len({r.generation_id for r in results}) == 1


async def test_a_generation_that_could_pass_the_spend_cap_is_never_sent(client, store, fake):
    from prefect_aimlapi_video.flows.budget import DEFAULT_ESTIMATE_CREDITS, Budget, BudgetExceeded

    budget = Budget(store, "cap", cap_credits=1.5 * DEFAULT_ESTIMATE_CREDITS)
    first = await submit_once(client, store, PARAMS, IDENTITY, "run-1", VideoUrl(), budget=budget)
    assert (await budget.state()).reserved == {key_for("run-1"): 315000}  # the POST answer's own quote
    video_url = VideoUrl()
    with pytest.raises(BudgetExceeded):
        await submit_once(client, store, PARAMS, IDENTITY, "run-2", video_url, budget=budget)
    assert len(fake.post_attempts) == 1 and video_url.calls == 0  # nothing sent, nothing staged
    assert (await load(store, "run-2")).state == "rejected"
    await budget.settle(key_for("run-1"), 100_000)  # the first one completed, cheaper than quoted
    again = await submit_once(client, store, PARAMS, IDENTITY, "run-2", VideoUrl(), budget=budget)
    assert again.generation_id != first.generation_id and len(fake.accepted) == 2

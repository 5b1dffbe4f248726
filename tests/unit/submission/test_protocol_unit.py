"""prefect_aimlapi_video.submission.protocol: the exactly-once protocol against a stateful fake API.

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

from prefect_aimlapi_video.api.client import AimlApiClient
from prefect_aimlapi_video.api.errors import (
    InvalidRequestError,
    RateLimitedError,
    ReconciliationUnavailable,
    SubmissionOutcomeUnknown,
    TransientApiError,
    UnidentifiedGenerationError,
)
from prefect_aimlapi_video.api.requests import DEFAULT_MODEL as MODEL
from prefect_aimlapi_video.api.requests import GenerationParams
from prefect_aimlapi_video.storage.record_store import LocalRecordStore
from prefect_aimlapi_video.submission import lease as lease_module
from prefect_aimlapi_video.submission import protocol as submissions_module
from prefect_aimlapi_video.submission import sending as sending_module
from prefect_aimlapi_video.submission.protocol import SubmissionRecord, mark_failed, record_key, submit_once

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
    something in between: not accepted, but it does not say so); "provider_500_after_accept" (accepted,
    then the provider's own JSON 500); "429"; "400"; "refused_connect". `on_accept`, if set, is called
    with each accepted generation id (a test's hook into the moment of acceptance).
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
        self.on_accept = None
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
        if self.on_accept is not None:
            self.on_accept(generation_id)
        if self.post_delay:
            await asyncio.sleep(self.post_delay)
        if mode == "provider_500_after_accept":
            return httpx.Response(500, json={**PROVIDER_503, "statusCode": 500, "message": "Internal server error"})
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
def quick_heartbeat(monkeypatch):
    """The lease's heartbeat every 0.1 s (5 s in production), so a POST of 0.3 s spans a few."""
    monkeypatch.setattr(lease_module, "HEARTBEAT_SECONDS", 0.1)


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


@pytest.mark.parametrize("mode", ["lost_after_accept", "provider_500_after_accept"])
async def test_row_listed_only_at_completion_is_waited_for_not_resent(client, store, fake, mode):
    """The provider may list a request only when its generation completes: silence is not absence,
    after a lost answer or after the provider's own 500 alike (it used to be resent after 5 s)."""
    fake.post_mode, fake.log_visibility, fake.list_refused = mode, "at_completion", False
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


@pytest.mark.parametrize("mode", ["provider_503", "html_503"])
async def test_a_503_the_log_lists_as_failed_is_sent_again_at_once(client, store, fake, mode):
    """Failed requests cost nothing: a row for this very request with status failed proves it was not
    accepted, whoever answered the POST (the provider's own JSON, or a gateway's page)."""
    fake.post_mode = mode
    with pytest.raises(SubmissionOutcomeUnknown):
        await submit(client, store)
    record = await load(store)
    assert (record.state, record.outcome) == ("pending", "unknown")
    fake.post_mode = "ok"
    started = time.monotonic()
    result = await submit(client, store, wait=600)
    assert time.monotonic() - started < 5
    assert result.client_request_id.endswith("-a2") and len(fake.accepted) == 1 and len(fake.post_attempts) == 2


@pytest.mark.parametrize("mode", ["provider_503", "html_503"])
async def test_a_503_the_log_does_not_list_waits_the_whole_wait(client, store, fake, mode):
    """The provider's own 500/503 is an unknown outcome like a gateway's: without a failed row, silence
    must last the whole wait (a log that lists requests at completion cannot show it seconds later)."""
    fake.post_mode, fake.list_refused = mode, False
    with pytest.raises(SubmissionOutcomeUnknown):
        await submit(client, store)
    fake.post_mode = "ok"
    with pytest.raises(asyncio.TimeoutError):  # no resend in 1.5 s
        await asyncio.wait_for(submit(client, store, wait=600), 1.5)
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
    from prefect_aimlapi_video.api.errors import BudgetExceeded
    from prefect_aimlapi_video.submission.budget import DEFAULT_ESTIMATE_CREDITS, Budget

    budget = Budget(store, "cap", cap_credits=1.5 * DEFAULT_ESTIMATE_CREDITS)
    first = await submit_once(client, store, PARAMS, IDENTITY, "run-1", VideoUrl(), budget=budget)
    assert (await budget.state()).reserved == {key_for("run-1"): DEFAULT_ESTIMATE_CREDITS}  # no estimate given
    assert (await budget.state()).largest_quote == 315000  # the POST answer's quote, for the next estimate
    video_url = VideoUrl()
    with pytest.raises(BudgetExceeded):
        await submit_once(client, store, PARAMS, IDENTITY, "run-2", video_url, budget=budget)
    assert len(fake.post_attempts) == 1 and video_url.calls == 0  # nothing sent, nothing staged
    assert (await load(store, "run-2")).state == "rejected"
    await budget.settle(key_for("run-1"), 100_000)  # the first one completed, cheaper than quoted
    again = await submit_once(client, store, PARAMS, IDENTITY, "run-2", VideoUrl(), budget=budget)
    assert again.generation_id != first.generation_id and len(fake.accepted) == 2


# -- bookkeeping that fails after the POST: the accepted answer is never thrown away ------------------


class FlakyStore(LocalRecordStore):
    """A local store whose writes fail (like S3 answering 503 after boto3's retries) while `failing`."""

    def __init__(self, directory) -> None:
        super().__init__(directory)
        self.failing = False
        self.failed_writes = 0

    def _fail_if_failing(self) -> None:
        if self.failing:
            self.failed_writes += 1
            raise TransientApiError("Submission record store: updating a record failed (ServiceUnavailable).")

    async def replace(self, key, data, version):
        self._fail_if_failing()
        return await super().replace(key, data, version)

    async def create(self, key, data):
        self._fail_if_failing()
        return await super().create(key, data)


def fail_store_for(store: FlakyStore, seconds: float):
    """A `FakeApi.on_accept` hook: the store fails from the moment of acceptance for `seconds`."""
    def on_accept(_generation_id: str) -> None:
        store.failing = True
        asyncio.get_running_loop().call_later(seconds, setattr, store, "failing", False)
    return on_accept


async def test_a_heartbeat_that_fails_during_the_post_never_throws_the_answer_away(client, tmp_path, fake):
    """The store fails while the POST is in flight (the heartbeat's writes) and just after it: the
    accepted generation is still recorded, and nothing is sent twice."""
    store = FlakyStore(tmp_path / "records")
    fake.post_delay, fake.on_accept = 0.5, fail_store_for(store, 1.5)
    result = await submit(client, store)
    assert store.failed_writes >= 3  # heartbeats during the POST, then the first tries of the record write
    assert result.generation_id == fake.accepted[0]["id"] and len(fake.post_attempts) == 1
    record = await load(store)
    assert (record.state, record.generation_id) == ("accepted", result.generation_id)
    again = await submit(client, store)  # and a retry resumes it
    assert again.resumed and len(fake.post_attempts) == 1


async def test_a_record_that_cannot_be_written_fails_naming_the_generation_and_how_to_collect_it(
    client, tmp_path, fake, monkeypatch
):
    from prefect_aimlapi_video.api.errors import GenerationNotRecorded

    monkeypatch.setattr(sending_module, "RECORD_DEADLINE_SECONDS", 1.0)
    store = FlakyStore(tmp_path / "records")
    fake.on_accept = fail_store_for(store, 60)
    with pytest.raises(GenerationNotRecorded) as caught:
        await submit(client, store)
    generation_id = fake.accepted[0]["id"]
    text = str(caught.value)
    assert generation_id in text and f"aimlapi-video collect {generation_id}" in text
    assert fake.post_attempts[0]["crid"] in text and caught.value.retryable is False
    assert len(fake.post_attempts) == 1


async def test_a_budget_that_cannot_be_told_the_quote_never_fails_a_paid_generation(client, store, fake, monkeypatch):
    from prefect_aimlapi_video.submission.budget import Budget

    budget = Budget(store, "cap", cap_credits=10_000_000)

    async def contended(*_args):
        raise TransientApiError("Budget 'cap': still contended")

    monkeypatch.setattr(budget, "quoted", contended)
    result = await submit_once(client, store, PARAMS, IDENTITY, "run-1", VideoUrl(), budget=budget)
    assert result.generation_id == fake.accepted[0]["id"]
    assert key_for("run-1") in (await budget.state()).reserved  # the estimate's reservation stands


# -- the lease: a POST goes out only under a live claim ---------------------------------------------


async def test_a_claim_taken_over_before_the_post_sends_nothing(client, store, fake):
    """While this attempt stages its input, another takes the record over (and gets its generation
    accepted): the renewal right before the POST fails, nothing is sent, and the other's is resumed."""
    class TakenOver(VideoUrl):
        async def __call__(self) -> str:
            found = await store.read(key_for("run-1"))
            record = SubmissionRecord.model_validate_json(found[0])
            theirs = record.model_copy(update={"state": "accepted", "owner": None, "generation_id": "theirs:g",
                                               "accepted_at": time.time(), "updated_at": time.time()})
            assert await store.replace(record.key, theirs.model_dump_json().encode(), found[1])
            return await super().__call__()

    result = await submit(client, store, TakenOver())
    assert fake.post_attempts == [] and result.generation_id == "theirs:g" and result.resumed


async def test_a_store_that_cannot_renew_the_claim_sends_nothing(client, tmp_path, fake):
    store = FlakyStore(tmp_path / "records")

    class StoreFailsWhileStaging(VideoUrl):
        async def __call__(self) -> str:
            store.failing = True
            return await super().__call__()

    with pytest.raises(TransientApiError, match="cannot renew the claim"):
        await submit(client, store, StoreFailsWhileStaging())
    assert fake.post_attempts == []


async def test_a_claim_is_taken_over_only_after_its_lease_on_the_readers_own_clock(client, store, fake, monkeypatch):
    """A claim refreshed 50 s ago by the writer's clock (hosts' clocks may differ by up to a minute)
    with a lease of 1 s: the reader waits the lease on its own clock, then treats the POST as unknown."""
    monkeypatch.setattr(submissions_module, "LEASE_FLOOR_SECONDS", 1.0)
    now = time.time()
    claim = SubmissionRecord(key=key_for("run-1"), fingerprint=PARAMS.fingerprint(IDENTITY), scope="run-1",
                             state="pending", outcome="in_flight", owner="another-host", lease_seconds=1.0,
                             created_at=now - 50, updated_at=now - 50)
    assert await store.create(claim.key, claim.model_dump_json().encode())
    started = time.monotonic()
    result = await submit(client, store, wait=0.5)
    assert time.monotonic() - started >= 1.5  # its lease (own clock), then the wait for an unknown outcome
    assert len(fake.post_attempts) == 1 and result.client_request_id.endswith("-a2")


async def test_a_claim_refreshed_by_its_holder_is_never_taken_over(client, store, fake, monkeypatch):
    """The holder keeps refreshing its claim (its POST is slow): another attempt waits, however long
    past the lease that is, and resumes what the holder recorded."""
    monkeypatch.setattr(submissions_module, "LEASE_FLOOR_SECONDS", 0.5)
    fake.post_delay = 2.0
    first = asyncio.ensure_future(submit(client, store, wait=0.2))
    await asyncio.sleep(0.3)
    second = await submit(client, store, wait=0.2)
    assert (await first).generation_id == second.generation_id and len(fake.post_attempts) == 1


# -- how long an unknown outcome waits: learned from this account ------------------------------------


async def test_an_unknown_outcome_waits_what_the_account_showed_not_the_default(client, store, fake, monkeypatch):
    """Three past requests were listed at acceptance within 0.2 s: a lost request (never accepted)
    is sent again after twice that plus the margin, not after the 600 s default."""
    from prefect_aimlapi_video.submission import log_visibility
    from prefect_aimlapi_video.submission.log_visibility import Sighting, add_sighting

    monkeypatch.setattr(log_visibility, "ACCEPTANCE_MARGIN_SECONDS", 0.5)
    for _ in range(3):
        await add_sighting(store, Sighting(seen_s=0.2, phase="acceptance", at=time.time()))
    fake.post_mode = "lost_before_accept"
    with pytest.raises(SubmissionOutcomeUnknown):
        await submit(client, store)
    fake.post_mode = "ok"
    started = time.monotonic()
    result = await submit(client, store, wait=600)
    assert 0.9 <= time.monotonic() - started < 5
    assert len(fake.accepted) == 1 and result.client_request_id.endswith("-a2")


async def test_generations_that_complete_slowly_meanwhile_lengthen_the_wait(client, store, fake, monkeypatch):
    """Rows are listed at completion and generations took 0.3 s: the wait starts at 2 x 0.3 + 0.5 s.
    Then the provider gets busier: other generations, accepted with ours, complete after 3 s while we
    wait. Our answer was lost after acceptance and its row comes at 4 s: it must be adopted, not sent
    again at 1.1 s (the wait learned once, at the start, paid it twice)."""
    from prefect_aimlapi_video.submission import log_visibility
    from prefect_aimlapi_video.submission.log_visibility import Sighting, add_sighting
    from prefect_aimlapi_video.submission.record import add_duration

    monkeypatch.setattr(log_visibility, "COMPLETION_MARGIN_SECONDS", 0.5)
    for _ in range(3):
        await add_sighting(store, Sighting(seen_s=0.3, phase="completion", at=time.time()))
    for _ in range(5):
        await add_duration(store, 0.3)
    fake.post_mode, fake.log_visibility, fake.list_refused = "lost_after_accept", "at_completion", False
    with pytest.raises(SubmissionOutcomeUnknown):
        await submit(client, store)
    fake.post_mode = "ok"

    async def busier_provider() -> None:
        await asyncio.sleep(0.6)
        await add_duration(store, 3.0)  # generations accepted with ours, completing slowly
        await asyncio.sleep(3.4)
        fake.completed.add(fake.accepted[0]["id"])  # ours, listed at last

    provider = asyncio.ensure_future(busier_provider())
    result = await submit(client, store, wait=600)
    await provider
    assert len(fake.post_attempts) == 1, fake.post_attempts  # never sent again
    assert result.reconciled and result.generation_id == fake.accepted[0]["id"]

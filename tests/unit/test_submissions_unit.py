"""prefect_aimlapi_video.flows.submissions: the exactly-once protocol against a stateful fake API on httpx.MockTransport."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest

from prefect_aimlapi_video.flows.client import AimlApiClient
from prefect_aimlapi_video.flows.errors import ReconciliationUnavailable, SubmissionOutcomeUnknown, TransientApiError
from prefect_aimlapi_video.flows.models import MODEL, GenerationParams
from prefect_aimlapi_video.flows.submissions import SubmissionRecord, SubmissionStore, record_key, submit_once

API_KEY = "sk-unit-test-SECRET-KEY-0123456789"
BASE_URL = "https://api.test"
IDENTITY = "sha256:" + "ab" * 32


class FakeApi:
    """Just enough of the provider: POST accepts (and logs) a generation, GET /v2/logs lists rows.

    post_mode: "ok"; "lost_after_accept" (accepted and logged, then the answer is lost: ReadTimeout);
    "lost_before_accept" (the request never arrived: ReadTimeout, nothing logged); "503".
    log_mode: "ok" or "fail" (503).
    """

    def __init__(self) -> None:
        self.post_mode = "ok"
        self.log_mode = "ok"
        self.post_delay = 0.0
        self.post_attempts: list[dict] = []  # every POST that reached us, with its time
        self.accepted: list[dict] = []  # generations we accepted (each one would be charged)
        self.log_reads = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/v2/video/generations":
            return await self._post(request)
        if request.method == "GET" and request.url.path == "/v2/logs":
            self.log_reads += 1
            if self.log_mode == "fail":
                return httpx.Response(503, json={"message": "logs temporarily unavailable"})
            offset, limit = int(request.url.params["offset"]), int(request.url.params["limit"])
            rows = [
                {"client_request_id": a["crid"], "generation_id": a["id"], "model": MODEL, "status": "queued"}
                for a in reversed(self.accepted)
            ]
            return httpx.Response(200, json={"data": rows[offset: offset + limit]})
        return httpx.Response(404, json={"message": "no route"})

    async def _post(self, request: httpx.Request) -> httpx.Response:
        crid = request.headers.get("x-client-request-id")
        self.post_attempts.append({"crid": crid, "at": time.time(), "body": json.loads(request.content)})
        if self.post_mode == "503":
            return httpx.Response(503, json={"message": "Service unavailable"})
        if self.post_mode == "lost_before_accept":
            raise httpx.ReadTimeout("no answer", request=request)
        generation_id = f"{uuid.uuid4()}:{MODEL}"
        self.accepted.append({"crid": crid, "id": generation_id})
        if self.post_delay:
            await asyncio.sleep(self.post_delay)
        if self.post_mode == "lost_after_accept":
            raise httpx.ReadTimeout("no answer", request=request)
        return httpx.Response(
            201,
            json={"id": generation_id, "status": "queued", "meta": {"usage": {"tokens_used": 315000}}},
            headers={"x-request-id": f"req-{len(self.post_attempts)}", "x-client-request-id": crid or ""},
        )


class VideoUrl:
    """The `video_url` callable, counting how often it is awaited."""

    def __init__(self, value: str = "https://cdn.test/in.mp4") -> None:
        self.value = value
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        return self.value


@pytest.fixture
def fake() -> FakeApi:
    return FakeApi()


@pytest.fixture
async def client(fake):
    async with AimlApiClient(API_KEY, BASE_URL, transport=httpx.MockTransport(fake)) as api:
        yield api


@pytest.fixture
def store(tmp_path) -> SubmissionStore:
    return SubmissionStore(tmp_path / "submissions")


PARAMS = GenerationParams(prompt="watercolor painting", strength=0.6, seed=11)


def key_for(scope: str, params: GenerationParams = PARAMS) -> str:
    return record_key(params.fingerprint(IDENTITY), scope)


async def test_first_call_posts_once_and_records_accepted(client, store, fake):
    video_url = VideoUrl()
    result = await submit_once(client, store, PARAMS, IDENTITY, "run-1", video_url, grace_seconds=0.2)
    assert len(fake.post_attempts) == 1 and len(fake.accepted) == 1
    assert result.generation_id == fake.accepted[0]["id"]
    assert result.resumed is False and result.reconciled is False
    assert result.credits == 315000
    assert result.request_id == "req-1"
    assert result.initial_status == "queued"
    record = store.load(key_for("run-1"))
    assert record.state == "accepted" and record.generation_id == result.generation_id
    assert record.attempt == 1
    assert fake.post_attempts[0]["crid"] == record.client_request_id == result.client_request_id
    assert result.client_request_id.endswith("-a1")
    assert fake.post_attempts[0]["body"] == PARAMS.payload("https://cdn.test/in.mp4")
    assert video_url.calls == 1
    assert fake.log_reads == 0


def test_client_request_id_fits_provider_rules():
    record = SubmissionRecord(key="f" * 64, fingerprint="x", scope="s", created_at=0, updated_at=0, attempt=12)
    crid = record.client_request_id
    assert 1 <= len(crid) <= 128
    assert all(c.isalnum() or c in "._:-" for c in crid)
    assert crid.endswith("-a12")


async def test_second_call_same_key_resumes_without_post(client, store, fake):
    first = await submit_once(client, store, PARAMS, IDENTITY, "run-1", VideoUrl(), grace_seconds=0.2)
    video_url = VideoUrl()
    again = await submit_once(client, store, PARAMS, IDENTITY, "run-1", video_url, grace_seconds=0.2)
    assert len(fake.post_attempts) == 1
    assert again.resumed is True and again.reconciled is False
    assert again.generation_id == first.generation_id
    assert again.client_request_id == first.client_request_id
    assert video_url.calls == 0
    assert fake.log_reads == 0


async def test_different_scope_is_a_new_generation(client, store, fake):
    first = await submit_once(client, store, PARAMS, IDENTITY, "run-1", VideoUrl(), grace_seconds=0.2)
    other = await submit_once(client, store, PARAMS, IDENTITY, "run-2", VideoUrl(), grace_seconds=0.2)
    assert len(fake.post_attempts) == 2
    assert other.resumed is False
    assert other.generation_id != first.generation_id
    assert other.client_request_id != first.client_request_id


async def test_different_params_same_scope_is_a_new_generation(client, store, fake):
    await submit_once(client, store, PARAMS, IDENTITY, "run-1", VideoUrl(), grace_seconds=0.2)
    changed = GenerationParams(prompt="watercolor painting", strength=0.7, seed=11)
    result = await submit_once(client, store, changed, IDENTITY, "run-1", VideoUrl(), grace_seconds=0.2)
    assert result.resumed is False and len(fake.post_attempts) == 2


async def test_lost_answer_then_adopted_from_the_log(client, store, fake):
    fake.post_mode = "lost_after_accept"
    with pytest.raises(SubmissionOutcomeUnknown) as info:
        await submit_once(client, store, PARAMS, IDENTITY, "run-1", VideoUrl(), grace_seconds=0.2)
    record = store.load(key_for("run-1"))
    assert record.state == "pending" and record.generation_id is None
    assert info.value.client_request_id == record.client_request_id

    fake.post_mode = "ok"
    video_url = VideoUrl()
    result = await submit_once(client, store, PARAMS, IDENTITY, "run-1", video_url, grace_seconds=0.2)
    assert result.reconciled is True and result.resumed is True
    assert result.generation_id == fake.accepted[0]["id"]
    assert len(fake.post_attempts) == 1 and len(fake.accepted) == 1
    assert video_url.calls == 0
    assert fake.log_reads >= 1
    record = store.load(key_for("run-1"))
    assert record.state == "accepted" and record.generation_id == result.generation_id

    # and from now on it simply resumes
    again = await submit_once(client, store, PARAMS, IDENTITY, "run-1", VideoUrl(), grace_seconds=0.2)
    assert again.generation_id == result.generation_id and len(fake.post_attempts) == 1


async def test_lost_request_absent_from_log_waits_grace_then_reposts_same_id(client, store, fake):
    fake.post_mode = "lost_before_accept"
    with pytest.raises(SubmissionOutcomeUnknown):
        await submit_once(client, store, PARAMS, IDENTITY, "run-1", VideoUrl(), grace_seconds=0.2)
    assert fake.accepted == []
    pending = store.load(key_for("run-1"))
    assert pending.state == "pending"

    fake.post_mode = "ok"
    video_url = VideoUrl()
    result = await submit_once(client, store, PARAMS, IDENTITY, "run-1", video_url, grace_seconds=0.2)
    assert result.resumed is False and result.reconciled is False
    assert len(fake.post_attempts) == 2 and len(fake.accepted) == 1
    first, second = fake.post_attempts
    assert second["crid"] == first["crid"]  # same X-Client-Request-Id
    assert second["at"] >= pending.updated_at + 0.2  # the grace period was waited out
    assert fake.log_reads >= 2  # checked, then checked again after the grace period
    assert video_url.calls == 1
    assert store.load(key_for("run-1")).state == "accepted"


async def test_log_unavailable_fails_naming_the_risk(client, store, fake):
    fake.post_mode = "lost_after_accept"
    with pytest.raises(SubmissionOutcomeUnknown) as info:
        await submit_once(client, store, PARAMS, IDENTITY, "run-1", VideoUrl(), grace_seconds=0.2)
    crid = info.value.client_request_id

    fake.post_mode, fake.log_mode = "ok", "fail"
    video_url = VideoUrl()
    with pytest.raises(ReconciliationUnavailable) as unavailable:
        await submit_once(client, store, PARAMS, IDENTITY, "run-1", video_url, grace_seconds=0.2)
    text = str(unavailable.value)
    assert crid in text
    assert "charge twice" in text
    assert "/v2/logs" in text
    assert len(fake.post_attempts) == 1 and video_url.calls == 0
    assert store.load(key_for("run-1")).state == "pending"


async def test_http_503_marks_rejected_and_next_call_posts_directly(client, store, fake):
    fake.post_mode = "503"
    with pytest.raises(TransientApiError):
        await submit_once(client, store, PARAMS, IDENTITY, "run-1", VideoUrl(), grace_seconds=0.2)
    assert store.load(key_for("run-1")).state == "rejected"

    fake.post_mode = "ok"
    started = time.monotonic()
    result = await submit_once(client, store, PARAMS, IDENTITY, "run-1", VideoUrl(), grace_seconds=5.0)
    assert time.monotonic() - started < 2.0  # no grace wait
    assert fake.log_reads == 0
    assert len(fake.post_attempts) == 2 and len(fake.accepted) == 1
    assert result.resumed is False
    assert store.load(key_for("run-1")).state == "accepted"


async def test_after_mark_failed_next_call_is_attempt_2(client, store, fake):
    first = await submit_once(client, store, PARAMS, IDENTITY, "run-1", VideoUrl(), grace_seconds=0.2)
    key = key_for("run-1")
    store.mark_failed(key)
    assert store.load(key).state == "failed"
    video_url = VideoUrl()
    second = await submit_once(client, store, PARAMS, IDENTITY, "run-1", video_url, grace_seconds=0.2)
    assert len(fake.post_attempts) == 2
    assert second.client_request_id.endswith("-a2")
    assert fake.post_attempts[1]["crid"] == second.client_request_id
    assert second.generation_id != first.generation_id
    assert second.resumed is False
    assert video_url.calls == 1
    record = store.load(key)
    assert record.attempt == 2 and record.state == "accepted" and record.generation_id == second.generation_id
    assert fake.log_reads == 0


def test_mark_failed_only_changes_accepted_records(store):
    assert store.mark_failed("missing") is None
    record = SubmissionRecord(key="k1", fingerprint="f", scope="s", created_at=1, updated_at=1)
    assert store.create(record) is True
    assert store.create(record) is False  # O_EXCL: someone else got there first
    store.mark_failed("k1")
    assert store.load("k1").state == "pending"


async def test_video_url_failure_marks_rejected_without_post(client, store, fake):
    async def broken() -> str:
        raise RuntimeError("cannot stage the video")

    with pytest.raises(RuntimeError):
        await submit_once(client, store, PARAMS, IDENTITY, "run-1", broken, grace_seconds=0.2)
    assert fake.post_attempts == []
    assert store.load(key_for("run-1")).state == "rejected"


async def test_concurrent_calls_make_exactly_one_post(client, store, fake):
    fake.post_delay = 0.3
    first_url, second_url = VideoUrl(), VideoUrl()
    results = await asyncio.gather(
        submit_once(client, store, PARAMS, IDENTITY, "run-1", first_url, grace_seconds=1.0),
        submit_once(client, store, PARAMS, IDENTITY, "run-1", second_url, grace_seconds=1.0),
    )
    assert len(fake.post_attempts) == 1 and len(fake.accepted) == 1
    assert {r.generation_id for r in results} == {fake.accepted[0]["id"]}
    assert sorted(r.reconciled for r in results) == [False, True]
    assert first_url.calls + second_url.calls == 1
    record = store.load(key_for("run-1"))
    assert record.state == "accepted" and record.generation_id == fake.accepted[0]["id"]


def test_store_leaves_no_temporary_files(store):
    record = SubmissionRecord(key="k2", fingerprint="f", scope="s", created_at=1, updated_at=1)
    store.create(record)
    record.state = "accepted"
    record.generation_id = "g"
    store.save(record)
    assert [p.name for p in store.directory.iterdir()] == ["k2.json"]
    loaded = store.load("k2")
    assert loaded.state == "accepted" and loaded.generation_id == "g" and loaded.updated_at > 1


async def test_concurrent_calls_with_slow_video_url_make_one_post(client, store, fake):
    # The winner spends longer preparing `video_url` (reading/staging the video) than the grace
    # period. The loser's grace window is measured from the winner's `pending` write, which happens
    # before `video_url` is awaited, so the loser sees an empty log, "waits out" a grace period that
    # has already elapsed, and posts too: two accepted generations, two charges.
    # (Scaled down: grace 0.2 s vs a 0.5 s video_url; the default is 30 s vs a slow upload/stage.)
    async def slow_video_url() -> str:
        await asyncio.sleep(0.5)
        return "https://cdn.test/in.mp4"

    results = await asyncio.gather(
        submit_once(client, store, PARAMS, IDENTITY, "run-1", slow_video_url, grace_seconds=0.2),
        submit_once(client, store, PARAMS, IDENTITY, "run-1", slow_video_url, grace_seconds=0.2),
    )
    assert len(fake.accepted) == 1, f"{len(fake.accepted)} generations accepted (charged) for one logical request"
    assert len({r.generation_id for r in results}) == 1

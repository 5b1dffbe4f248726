"""deployments.event_emitter: the events' JSON is POSTed to the Prefect API's /events (the configured
API or the one the emitter was given), and only a 2xx answer counts; every other outcome is an
EmitError. Prefect's real client is used, on an `httpx.MockTransport`: no server."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from uuid import uuid4

import httpx
import pytest
from prefect.client import orchestration
from prefect.events import Event
from prefect.settings import PREFECT_API_URL, temporary_settings

from prefect_aimlapi_video.deployments.event_emitter import EmitError, PrefectEventEmitter


def event(key: str) -> Event:
    return Event(id=uuid4(), occurred=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                 event="aimlapi.s3.object.created", resource={"prefect.resource.id": f"s3://media/{key}"},
                 payload={"overrides": {"prompt": "p"}})


@pytest.fixture
def api(monkeypatch):
    """Every Prefect client made during the test talks to `answer` through a MockTransport; the
    requests it saw are in `api.requests`. The client's CSRF token request is answered as by a
    server with CSRF protection off (Prefect's default), unless `csrf` says otherwise."""

    class Api:
        def __init__(self) -> None:
            self.requests: list[httpx.Request] = []
            self.csrf = httpx.Response(422, json={"detail": "CSRF protection is disabled."})
            self.answer = lambda request: httpx.Response(200)

    api = Api()
    real_get_client = orchestration.get_client

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/csrf-token"):
            return api.csrf
        api.requests.append(request)
        return api.answer(request)

    def get_client(httpx_settings=None, sync_client=False):
        return real_get_client({**(httpx_settings or {}), "transport": httpx.MockTransport(handler)}, sync_client)

    monkeypatch.setattr(orchestration, "get_client", get_client)
    return api


async def test_the_events_are_posted_as_json_to_the_given_api(api):
    events = [event("a.mp4"), event("b.mp4")]

    await PrefectEventEmitter("http://prefect.test:4200/api").emit(events)

    (request,) = api.requests
    assert (request.method, str(request.url)) == ("POST", "http://prefect.test:4200/api/events")
    sent = json.loads(request.content)
    assert [item["id"] for item in sent] == [str(e.id) for e in events]
    assert sent[0]["resource"] == {"prefect.resource.id": "s3://media/a.mp4"}
    assert sent[0]["payload"] == {"overrides": {"prompt": "p"}}


async def test_without_an_api_url_the_configured_prefect_api_is_used(api):
    with temporary_settings({PREFECT_API_URL: "http://configured.test/api"}):
        await PrefectEventEmitter().emit([event("a.mp4")])
    assert str(api.requests[0].url) == "http://configured.test/api/events"


async def test_the_given_api_url_wins_over_the_configured_one_and_is_not_left_configured(api):
    with temporary_settings({PREFECT_API_URL: "http://configured.test/api"}):
        await PrefectEventEmitter("http://given.test/api").emit([])
        assert PREFECT_API_URL.value() == "http://configured.test/api"
    assert str(api.requests[0].url) == "http://given.test/api/events"


async def test_an_empty_batch_is_a_real_request_so_it_can_probe_the_api(api):
    await PrefectEventEmitter("http://prefect.test/api").emit([])
    (request,) = api.requests
    assert json.loads(request.content) == []


@pytest.mark.parametrize("status", [401, 422, 500])
async def test_a_non_2xx_answer_is_an_emit_error(api, status):
    api.answer = lambda request: httpx.Response(status, json={"detail": "no"})
    with pytest.raises(EmitError, match=rf"POST /api/events failed: .*{status}") as raised:
        await PrefectEventEmitter("http://prefect.test/api").emit([event("a.mp4")])
    assert isinstance(raised.value.__cause__, httpx.HTTPStatusError)


@pytest.mark.parametrize("failure", [httpx.ConnectError("connection refused"), ConnectionResetError("reset")])
async def test_network_and_socket_failures_are_emit_errors(api, failure):
    def broken(request: httpx.Request) -> httpx.Response:
        raise failure

    api.answer = broken
    with pytest.raises(EmitError, match="POST /api/events failed") as raised:
        await PrefectEventEmitter("http://prefect.test/api").emit([event("a.mp4")])
    assert raised.value.__cause__ is failure


async def test_an_api_url_that_answers_with_a_web_page_is_an_emit_error(api):
    api.csrf = httpx.Response(200, text="<!doctype html><title>Prefect</title>")
    with pytest.raises(EmitError):
        await PrefectEventEmitter("http://prefect.test").emit([])

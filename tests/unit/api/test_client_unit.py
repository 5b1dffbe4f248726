"""prefect_aimlapi_video.api.client: answer mapping, submit/get/find_submission over httpx.MockTransport, base URL checks."""

from __future__ import annotations

import email.utils
import json
import time

import httpx
import pytest
from pydantic import SecretStr

from prefect_aimlapi_video.api.answers import parse_retry_after, raise_for_answer
from prefect_aimlapi_video.api.client import AimlApiClient
from prefect_aimlapi_video.api.connection import check_base_url
from prefect_aimlapi_video.api.errors import (
    AimlApiError,
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    OutOfCreditsError,
    ProviderSubmitError,
    RateLimitedError,
    ReconciliationUnavailable,
    SubmissionOutcomeUnknown,
    TransientApiError,
)
from prefect_aimlapi_video.api.requests import DEFAULT_MODEL as MODEL

API_KEY = "sk-unit-test-SECRET-KEY-0123456789"
BASE_URL = "https://api.test"

GEN_ID = "3637be63-e8d1-4ac1-9a4b-00afbdf10a55:krea/krea-wan-14b/video-to-video"
SIGNED = "https://bucket.s3.amazonaws.com/in.mp4?X-Amz-Credential=AKIALEAK&X-Amz-Signature=SIGLEAK123"
REQUEST = httpx.Request("POST", f"{BASE_URL}/v2/video/generations")


def answer(status: int, body=None, headers=None, text: str | None = None) -> httpx.Response:
    if text is not None:
        return httpx.Response(status, text=text, headers=headers, request=REQUEST)
    return httpx.Response(status, json=body if body is not None else {}, headers=headers, request=REQUEST)


def fail_with(exc: Exception):
    raise exc


def make_client(handler, **kwargs) -> AimlApiClient:
    return AimlApiClient(API_KEY, BASE_URL, transport=httpx.MockTransport(handler), **kwargs)


# ---------------------------------------------------------------- raise_for_answer


def test_2xx_passes():
    for status in (200, 201, 202):
        raise_for_answer(answer(status, {"id": "g", "status": "queued"}), "Submitting")


def test_401_is_authentication_error_naming_the_block():
    with pytest.raises(AuthenticationError) as info:
        raise_for_answer(answer(401, {"message": "Unauthorized", "statusCode": 401}), "Submitting")
    assert "AimlApiCredentials" in str(info.value) and "401" in str(info.value)
    assert info.value.retryable is False and info.value.status_code == 401


def test_403_out_of_credits():
    body = {"message": "You've run out of credits", "path": "/v2/video/generations", "statusCode": 403,
            "requestId": "r", "timestamp": "2024-01-01T00:00:00Z"}
    with pytest.raises(OutOfCreditsError) as info:
        raise_for_answer(answer(403, body), "Submitting")
    assert not isinstance(info.value, AuthenticationError)
    assert info.value.retryable is False
    assert "run out of credits" in str(info.value) and "Top up" in str(info.value)


def test_other_403_is_authentication_error():
    with pytest.raises(AuthenticationError) as info:
        raise_for_answer(answer(403, {"message": "Forbidden: model not enabled for this key"}), "Submitting")
    assert not isinstance(info.value, OutOfCreditsError)
    assert "AimlApiCredentials" in str(info.value)


@pytest.mark.parametrize("status", [400, 422])
def test_bad_request_with_field_hint(status):
    body = {
        "message": "Body validation error",
        "detail": [{"loc": ["body", "strength"], "msg": "Expected number <= 1, received 3", "type": "too_big",
                    "input": 3}],
    }
    with pytest.raises(InvalidRequestError) as info:
        raise_for_answer(answer(status, body), "Submitting")
    text = str(info.value)
    assert "Body validation error" in text
    assert "strength: Expected number <= 1, received 3" in text
    assert info.value.retryable is False and info.value.status_code == status


def test_404_not_found():
    with pytest.raises(NotFoundError) as info:
        raise_for_answer(answer(404, {"message": "Generation not found"}), f"Checking generation {GEN_ID}")
    assert "404" in str(info.value) and "Generation not found" in str(info.value)
    assert info.value.retryable is False


def test_429_with_retry_after_seconds():
    with pytest.raises(RateLimitedError) as info:
        raise_for_answer(answer(429, {"message": "Too many requests"}, {"Retry-After": "7"}), "Submitting")
    assert info.value.retry_after == 7.0
    assert info.value.retryable is True
    assert "retry after 7 s" in str(info.value)


def test_429_with_retry_after_http_date():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    with pytest.raises(RateLimitedError) as info:
        raise_for_answer(answer(429, {"message": "Too many requests"}, {"Retry-After": when}), "Submitting")
    assert 27 <= info.value.retry_after <= 31


def test_429_without_retry_after():
    with pytest.raises(RateLimitedError) as info:
        raise_for_answer(answer(429, {"message": "Too many requests"}), "Submitting")
    assert info.value.retry_after is None
    assert "retry after" not in str(info.value)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_transient(status):
    with pytest.raises(TransientApiError) as info:
        raise_for_answer(answer(status, {"message": "model is under maintenance"}), "Submitting")
    assert info.value.retryable is True and info.value.status_code == status
    assert f"{status}" in str(info.value)


def test_x_request_id_in_message():
    with pytest.raises(TransientApiError) as info:
        raise_for_answer(answer(502, {"message": "bad gateway"}, {"x-request-id": "req-abc-123"}), "Submitting")
    assert "req-abc-123" in str(info.value)
    assert info.value.request_id == "req-abc-123"


def test_unexpected_status_is_base_error():
    with pytest.raises(AimlApiError) as info:
        raise_for_answer(answer(409, {"message": "conflict"}), "Submitting")
    assert type(info.value) is AimlApiError and "409" in str(info.value)


def test_non_json_error_body():
    with pytest.raises(TransientApiError) as info:
        raise_for_answer(answer(502, text="<html>Bad Gateway</html>"), "Submitting")
    assert "Bad Gateway" in str(info.value)


def test_signed_url_echoed_in_detail_input_does_not_leak():
    body = {"message": "Body validation error",
            "detail": [{"loc": ["body", "video_url"], "msg": "could not fetch video", "type": "value_error",
                        "input": SIGNED}]}
    with pytest.raises(InvalidRequestError) as info:
        raise_for_answer(answer(400, body), "Submitting")
    text = str(info.value)
    assert "video_url: could not fetch video" in text
    assert "SIGLEAK123" not in text and "AKIALEAK" not in text


@pytest.mark.parametrize("status", [400, 403, 500])
def test_signed_url_echoed_in_message_does_not_leak(status):
    with pytest.raises(AimlApiError) as info:
        raise_for_answer(answer(status, {"message": f"Failed to download {SIGNED}"}), "Submitting")
    assert "SIGLEAK123" not in str(info.value) and "AKIALEAK" not in str(info.value)
    assert "https://bucket.s3.amazonaws.com/in.mp4" in str(info.value)


def test_signed_url_in_non_json_body_does_not_leak():
    with pytest.raises(TransientApiError) as info:
        raise_for_answer(answer(502, text=f"upstream fetch of {SIGNED} failed"), "Submitting")
    assert "SIGLEAK123" not in str(info.value)


# ---------------------------------------------------------------- parse_retry_after


def test_parse_retry_after_values():
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(email.utils.formatdate(time.time() - 100, usegmt=True)) == 0.0


# ---------------------------------------------------------------- check_base_url


@pytest.mark.parametrize(
    "url, expected",
    [
        ("https://api.aimlapi.com", "https://api.aimlapi.com"),
        ("https://api.aimlapi.com/", "https://api.aimlapi.com"),
        ("http://127.0.0.1:8787", "http://127.0.0.1:8787"),
        ("http://localhost:8787/", "http://localhost:8787"),
        ("http://[::1]:8787", "http://[::1]:8787"),
    ],
)
def test_check_base_url_accepts(url, expected):
    assert check_base_url(url) == expected


@pytest.mark.parametrize("url", ["http://example.com", "http://10.0.0.5:8787", "ftp://api.test", "https://", "api.aimlapi.com"])
def test_check_base_url_refuses(url):
    with pytest.raises(ValueError, match="https"):
        check_base_url(url)


def test_check_base_url_message_hides_credentials():
    with pytest.raises(ValueError) as info:
        check_base_url("http://user:hunter2@example.com/?api_key=LEAKYKEY")
    assert "hunter2" not in str(info.value) and "LEAKYKEY" not in str(info.value)


def test_client_refuses_plain_http_remote_and_empty_key():
    with pytest.raises(ValueError):
        AimlApiClient(API_KEY, "http://example.com")
    with pytest.raises(AuthenticationError):
        AimlApiClient("", BASE_URL)
    with pytest.raises(AuthenticationError):
        AimlApiClient(SecretStr(""), BASE_URL)


# ---------------------------------------------------------------- submit


async def test_submit_sends_bearer_client_request_id_and_json():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            201,
            json={"id": GEN_ID, "status": "queued", "meta": {"usage": {"tokens_used": 315000}}},
            headers={"x-request-id": "req-1", "x-client-request-id": "v2v-abc-a1", "x-aimlapi-credits-used": "315000"},
        )

    payload = {"model": MODEL, "prompt": "p", "video_url": "https://cdn.test/in.mp4", "strength": 0.5}
    async with make_client(handler) as client:
        result = await client.submit(payload, client_request_id="v2v-abc-a1")
    assert len(seen) == 1
    request = seen[0]
    assert request.method == "POST"
    assert request.url == httpx.URL(f"{BASE_URL}/v2/video/generations")
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["x-client-request-id"] == "v2v-abc-a1"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == payload
    assert result.generation.id == GEN_ID
    assert result.generation.credits == 315000
    assert result.request_id == "req-1"
    assert result.client_request_id == "v2v-abc-a1"
    assert result.credits_header == 315000.0


async def test_submit_accepts_secretstr_key():
    seen = []

    def handler(request):
        seen.append(request.headers["authorization"])
        return httpx.Response(200, json={"id": "g", "status": "queued"})

    async with AimlApiClient(SecretStr(API_KEY), BASE_URL, transport=httpx.MockTransport(handler)) as client:
        await client.submit({"model": MODEL}, client_request_id="c")
    assert seen == [f"Bearer {API_KEY}"]


async def test_submit_connect_error_is_transient_not_sent():
    def handler(request):
        raise httpx.ConnectError("connection refused", request=request)

    async with make_client(handler) as client:
        with pytest.raises(TransientApiError) as info:
            await client.submit({"model": MODEL}, client_request_id="v2v-x-a1")
    assert not isinstance(info.value, SubmissionOutcomeUnknown)
    assert info.value.retryable is True
    assert "not sent" in str(info.value)


@pytest.mark.parametrize("error", [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError])
async def test_submit_lost_answer_is_outcome_unknown(error):
    def handler(request):
        raise error("no answer", request=request)

    async with make_client(handler) as client:
        with pytest.raises(SubmissionOutcomeUnknown) as info:
            await client.submit({"model": MODEL}, client_request_id="v2v-lost-a1")
    assert info.value.client_request_id == "v2v-lost-a1"
    assert "v2v-lost-a1" in str(info.value)
    assert info.value.retryable is True


@pytest.mark.parametrize("body", ["<html>oops</html>", '{"status": "queued"}', "[]"])
async def test_submit_2xx_unreadable_body_is_outcome_unknown(body):
    def handler(request):
        return httpx.Response(200, text=body, headers={"x-request-id": "req-9"})

    async with make_client(handler) as client:
        with pytest.raises(SubmissionOutcomeUnknown) as info:
            await client.submit({"model": MODEL}, client_request_id="v2v-weird-a1")
    assert info.value.client_request_id == "v2v-weird-a1"
    assert info.value.request_id == "req-9"


async def test_submit_http_error_answer_maps_to_specific_error():
    def handler(request):
        return httpx.Response(403, json={"message": "You've run out of credits"})

    async with make_client(handler) as client:
        with pytest.raises(OutOfCreditsError):
            await client.submit({"model": MODEL}, client_request_id="c")


PROVIDER_SHAPE = {"path": "/v2/video/generations", "requestId": "req-p", "timestamp": "2026-11-29T00:00:00.000Z"}


@pytest.mark.parametrize("status", [500, 503])
async def test_submit_providers_own_5xx_is_a_provider_error(status):
    body = {"message": "model is under maintenance", "statusCode": status, **PROVIDER_SHAPE}
    async with make_client(lambda r: httpx.Response(status, json=body)) as client:
        with pytest.raises(ProviderSubmitError) as info:
            await client.submit({"model": MODEL}, client_request_id="v2v-p-a1")
    assert info.value.client_request_id == "v2v-p-a1" and info.value.retryable


@pytest.mark.parametrize(
    "response",
    [
        lambda: httpx.Response(502, text="<html><title>502 Bad Gateway</title></html>"),
        lambda: httpx.Response(502, json={"message": "Bad gateway", "statusCode": 502, **PROVIDER_SHAPE}),
        lambda: httpx.Response(504, json={"message": "Generation timeout", "statusCode": 504, **PROVIDER_SHAPE}),
        lambda: httpx.Response(503, text="Service Unavailable"),
        lambda: httpx.Response(500, json={"message": "oops"}),  # not the provider's whole shape
        lambda: httpx.Response(503, json={"message": "x", "statusCode": 500, **PROVIDER_SHAPE}),  # status disagrees
        lambda: httpx.Response(408, text="Request Timeout"),
        lambda: httpx.Response(499, text=""),
    ],
    ids=["502-html", "502-json", "504", "503-text", "500-partial-shape", "503-mismatch", "408", "499"],
)
async def test_submit_gateway_and_unrecognised_answers_are_unknown_never_refused(response):
    async with make_client(lambda r: response()) as client:
        with pytest.raises(SubmissionOutcomeUnknown) as info:
            await client.submit({"model": MODEL}, client_request_id="v2v-g-a1")
    assert info.value.client_request_id == "v2v-g-a1" and "v2v-g-a1" in str(info.value)


@pytest.mark.parametrize("status, error", [(400, InvalidRequestError), (401, AuthenticationError),
                                           (404, NotFoundError), (422, InvalidRequestError),
                                           (429, RateLimitedError)])
async def test_submit_refusals_are_definite(status, error):
    async with make_client(lambda r: httpx.Response(status, text="<html>nope</html>")) as client:
        with pytest.raises(error):
            await client.submit({"model": MODEL}, client_request_id="c")


# ---------------------------------------------------------------- get_generation


async def test_get_generation_puts_id_in_query_not_path():
    seen: list[httpx.Request] = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200, json={"id": GEN_ID, "status": "completed",
                                         "video": {"url": "https://cdn.test/o.mp4"},
                                         "meta": {"usage": {"tokens_used": 5}}})

    async with make_client(handler) as client:
        result = await client.get_generation(GEN_ID)
    request = seen[0]
    assert request.method == "GET"
    assert request.url.path == "/v2/video/generations"
    assert request.url.params["generation_id"] == GEN_ID
    raw_query = request.url.query.decode()
    assert "%3A" in raw_query and "%2F" in raw_query and "/" not in raw_query
    assert result.generation.video.url == "https://cdn.test/o.mp4"


async def test_get_generation_id_with_reserved_characters_round_trips():
    odd = "a&b=c+d#e?f:model/x"
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200, json={"id": odd, "status": "queued"})

    async with make_client(handler) as client:
        await client.get_generation(odd)
    assert seen[0].url.path == "/v2/video/generations"
    assert dict(seen[0].url.params) == {"generation_id": odd}


async def test_get_generation_network_error_is_transient_and_404_not_found():
    def failing(request):
        raise httpx.ReadTimeout("slow", request=request)

    async with make_client(failing) as client:
        with pytest.raises(TransientApiError):
            await client.get_generation(GEN_ID)

    async with make_client(lambda r: httpx.Response(404, json={"message": "not found"})) as client:
        with pytest.raises(NotFoundError):
            await client.get_generation(GEN_ID)


# ---------------------------------------------------------------- the key stays secret


async def test_api_key_never_in_repr_or_exception_messages():
    scenarios = [
        lambda r: fail_with(httpx.ConnectError(f"refused {r.headers['authorization']}", request=r)),
        lambda r: fail_with(httpx.ReadTimeout(f"timeout {r.headers['authorization']}", request=r)),
        lambda r: httpx.Response(401, json={"message": f"Invalid header: {r.headers['authorization']}"}),
        lambda r: httpx.Response(403, json={"message": f"forbidden for {r.headers['authorization']}"}),
        lambda r: httpx.Response(500, text=f"crash dump: Authorization: {r.headers['authorization']}"),
        lambda r: httpx.Response(200, text="not json"),
    ]
    for handler in scenarios:
        client = make_client(handler)
        assert API_KEY not in repr(client) and API_KEY not in str(client)
        for call in (lambda: client.submit({"model": MODEL}, client_request_id="c"),
                     lambda: client.get_generation(GEN_ID),
                     lambda: client.read_log_page(0, 10)):
            with pytest.raises(AimlApiError) as info:
                await call()
            assert API_KEY not in str(info.value)
            assert API_KEY not in repr(info.value)
            assert "SECRET-KEY" not in str(info.value)
        await client.aclose()


# ---------------------------------------------------------------- read_log_page


@pytest.mark.parametrize("shape", ["data", "list"])
async def test_read_log_page_asks_for_our_model_and_a_window(shape):
    seen = []

    def handler(request):
        seen.append(dict(request.url.params))
        rows = [{"client_request_id": "v2v-x-a1", "generation_id": GEN_ID}]
        return httpx.Response(200, json={"data": rows} if shape == "data" else rows)

    async with make_client(handler) as client:
        rows = await client.read_log_page(200, 100, model=MODEL)
    assert rows == [{"client_request_id": "v2v-x-a1", "generation_id": GEN_ID}]
    assert seen == [{"model": MODEL, "offset": "200", "limit": "100"}]


@pytest.mark.parametrize(
    "handler",
    [
        lambda r: httpx.Response(503, json={"message": "unavailable"}),
        lambda r: httpx.Response(500, text="oops"),
        lambda r: httpx.Response(401, json={"message": "bad key"}),
        lambda r: httpx.Response(200, text="<html>not json</html>"),
        lambda r: fail_with(httpx.ConnectError("refused", request=r)),
        lambda r: fail_with(httpx.ReadTimeout("slow", request=r)),
    ],
    ids=["503", "500", "401", "non-json", "connect-error", "read-timeout"],
)
async def test_read_log_page_unavailable(handler):
    async with make_client(handler) as client:
        with pytest.raises(ReconciliationUnavailable) as info:
            await client.read_log_page(0, 100)
    assert "usage log" in str(info.value)


async def test_read_log_page_json_null_is_unavailable():
    # A 200 whose JSON is not a list or an object cannot be read: that is "unavailable", not a crash.
    for body in (b"null", b"42", b'"ok"'):
        handler = lambda r, body=body: httpx.Response(200, content=body, headers={"content-type": "application/json"})
        async with make_client(handler) as client:
            with pytest.raises(ReconciliationUnavailable):
                await client.read_log_page(0, 100)


async def test_read_log_page_unrecognised_shape_is_unavailable_not_absent():
    # The row IS there, under a key the client does not know. Answering "no rows" would let
    # submit_once post again (a double charge); an unreadable log must be "unavailable".
    body = {"result": [{"client_request_id": "v2v-abc-a1", "generation_id": GEN_ID}]}
    async with make_client(lambda r: httpx.Response(200, json=body)) as client:
        with pytest.raises(ReconciliationUnavailable):
            await client.read_log_page(0, 100)

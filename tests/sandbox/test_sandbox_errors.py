"""Errors the way a real service reports them: status codes, error bodies, failed generations."""

from __future__ import annotations

import socket

import httpx
import pytest

MODEL = "krea/krea-wan-14b/video-to-video"
ERROR_KEYS = {"message", "path", "requestId", "statusCode", "timestamp"}


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key", "Basic c2FuZGJveC1rZXk=", "sandbox-key"])
def test_missing_or_wrong_key_is_401_with_an_error_body(api, tiny_uri, authorization) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    base = api.handle.base_url
    for response in (
        httpx.post(
            f"{base}/v2/video/generations", json={"model": MODEL, "prompt": "p", "video_url": tiny_uri}, headers=headers
        ),
        httpx.get(f"{base}/v2/video/generations", params={"generation_id": "x"}, headers=headers),
        httpx.get(f"{base}/v2/logs", headers=headers),
    ):
        assert response.status_code == 401
        body = response.json()
        assert (
            body.keys() >= ERROR_KEYS
            and body["statusCode"] == 401
            and body["requestId"] == response.headers["x-request-id"]
        )
    assert api.handle.ledger() == []


MISSING = object()
BAD_FIELDS = [
    ("model", "krea/krea-wan-14b/text-to-video"),
    ("model", MISSING),
    ("prompt", MISSING),
    ("prompt", 42),
    ("prompt", ""),
    ("strength", 1.01),
    ("strength", -0.1),
    ("strength", "0.5"),
    ("strength", True),
    ("seed", 1.5),
    ("seed", "7"),
    ("seed", True),
    ("enable_prompt_expansion", "yes"),
    ("video_url", MISSING),
    ("video_url", 12),
    ("video_url", "ftp://example.com/clip.mp4"),
    ("video_url", "file:///etc/passwd"),
    ("video_url", "https://"),
    ("video_url", "clip.mp4"),
    ("video_url", "data:video/mp4;base64"),
    ("video_url", "data:video/mp4;base64,@@not base64@@"),
    ("video_url", "data:video/mp4;base64,"),
]


@pytest.mark.parametrize(
    ("field", "value"), BAD_FIELDS, ids=[f"{f}={'missing' if v is MISSING else repr(v)}" for f, v in BAD_FIELDS]
)
def test_invalid_bodies_are_rejected_naming_the_field(api, tiny_uri, field, value) -> None:
    body = {"model": MODEL, "prompt": "p", "video_url": tiny_uri, "strength": 0.5, "seed": 1, field: value}
    if value is MISSING:
        del body[field]
    response = api.http.post("/v2/video/generations", json=body)
    assert response.status_code in (400, 422), response.text
    error = response.json()
    assert error.keys() >= ERROR_KEYS and error["statusCode"] == response.status_code
    assert field in error["message"] and [e["field"] for e in error["errors"]] == [field]
    assert api.handle.ledger() == []


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"', b"{}"])
def test_malformed_bodies_are_400(api, raw) -> None:
    response = api.http.post("/v2/video/generations", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "Body validation error" in response.json()["message"]


def test_data_uri_above_the_cap_is_400_naming_video_url(make_api, clip_uri) -> None:
    api = make_api(max_data_uri_bytes=1000)
    response = api.submit(clip_uri)
    assert response.status_code == 400 and "video_url" in response.json()["message"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("unreachable", "InputFetchError"),
        ("http 404", "InputFetchError"),
        ("text over http", "InputDecodeError"),
        ("text data uri", "InputDecodeError"),
        ("truncated mp4", "InputDecodeError"),
    ],
)
def test_unusable_inputs_end_the_generation_in_error(api, static_server, clip, to_data_uri, source, name) -> None:
    video_url = {
        "unreachable": f"http://127.0.0.1:{closed_port()}/clip.mp4?Signature=secret-token",
        "http 404": f"{static_server}/missing.mp4?Signature=secret-token",
        "text over http": f"{static_server}/notes.txt",
        "text data uri": to_data_uri(b"just some text", "text/plain"),
        "truncated mp4": to_data_uri(clip.read_bytes()[:2000]),
    }[source]
    posted = api.submit(video_url)
    assert posted.status_code == 200  # accepted: the input is only fetched and decoded later
    final = api.wait(posted.json()["id"])
    assert final["status"] == "error" and final["error"]["name"] == name and final["error"]["message"]
    assert "secret-token" not in final["error"]["message"]  # presigned URLs are credentials
    assert final["meta"]["usage"]["tokens_used"] == 0
    (entry,) = api.handle.ledger()
    assert (entry.status, entry.credits, entry.output_sha256) == ("error", 0, None)
    assert entry.error == final["error"]


def test_unknown_generation_is_404_and_missing_id_400(api) -> None:
    response = api.poll(f"00000000-0000-0000-0000-000000000000:{MODEL}")
    assert response.status_code == 404 and response.json()["statusCode"] == 404
    assert api.http.get("/v2/video/generations").status_code == 400


def test_running_out_of_credits_is_403_and_not_charged(make_api, tiny_uri) -> None:
    api = make_api(processing_seconds=0.3, credit_balance=2 * 315000)  # room for two 5 s holds
    first, second = (api.submit(tiny_uri, seed=seed) for seed in (1, 2))
    assert first.status_code == second.status_code == 200
    refused = api.submit(tiny_uri, seed=3)
    assert refused.status_code == 403 and refused.json()["message"] == "You've run out of credits"
    assert len(api.handle.ledger()) == 2
    for response in (first, second):  # completion charges the real duration and releases the hold
        assert api.wait(response.json()["id"])["status"] == "completed"
    assert api.submit(tiny_uri, seed=3).status_code == 200
    assert len(api.handle.ledger()) == 3

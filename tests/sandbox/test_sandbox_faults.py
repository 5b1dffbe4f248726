"""Each injected fault, where it applies, and whether the POST it hits is charged."""

from __future__ import annotations

import time

import httpx
import pytest
from pydantic import ValidationError

from prefect_aimlapi_video.sandbox import FaultConfig, FaultRule
from prefect_aimlapi_video.sandbox.faults import ALL_KINDS, GATEWAY_503_PAGE

KNOWN_STATUSES = {"queued", "generating", "completed", "error"}
ERROR_KEYS = {"message", "path", "requestId", "statusCode", "timestamp"}


def script(*rules: tuple[str, str], **settings) -> dict:
    return {"script": [{"route": route, "kind": kind} for route, kind in rules], **settings}


@pytest.mark.parametrize(
    ("kind", "status"),
    [("rate_limit", 429), ("server_error_500", 500), ("server_error_502", 502), ("server_error_503", 503)],
)
def test_rejected_submissions_are_not_charged(api, tiny_uri, kind, status) -> None:
    api.handle.set_faults(script(("submit", kind), retry_after_seconds=1.5))
    response = api.submit(tiny_uri)
    assert response.status_code == status and response.json()["statusCode"] == status
    if status == 429:
        assert response.headers["retry-after"] == "2"  # whole seconds, rounded up
    assert api.handle.ledger() == [] and api.handle.logs() == []
    assert api.submit(tiny_uri).status_code == 200  # the scripted rule is used up
    assert len(api.handle.ledger()) == 1


@pytest.mark.parametrize("log_refused", [False, True], ids=["refusals-unlisted", "refusals-listed"])
def test_provider_500_after_acceptance_is_charged_and_listed(api, tiny_uri, log_refused) -> None:
    """The provider's own JSON 500 does not prove the POST was refused: the log finds the generation."""
    api.handle.set_faults(script(("submit", "accept_then_500"), log_refused_requests=log_refused))
    response = api.submit(tiny_uri, headers={"X-Client-Request-Id": "job-8.attempt-1"})
    assert response.status_code == 500 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert body.keys() == ERROR_KEYS and body["statusCode"] == 500 and body["message"] == "Internal server error"
    assert body["requestId"] == response.headers["x-request-id"] and body["path"] == "/v2/video/generations"
    assert "id" not in body and "x-inference-id" not in response.headers  # nothing in the answer names it
    (entry,) = api.handle.ledger()
    (row,) = api.handle.logs(client_request_id="job-8.attempt-1")  # one row, never also a refused one
    assert (row["client_request_id"], row["generation_id"]) == ("job-8.attempt-1", entry.generation_id)
    assert api.wait(entry.generation_id)["status"] == "completed"
    (entry,) = api.handle.ledger()
    assert entry.status == "completed" and entry.credits > 0
    (row,) = api.handle.logs()
    assert (row["generation_id"], row["status"], row["credits"]) == (entry.generation_id, "succeeded", entry.credits)
    assert api.handle.refused() == []


@pytest.mark.parametrize("log_refused", [False, True], ids=["refusals-unlisted", "refusals-listed"])
def test_gateway_503_before_the_provider_is_not_charged(api, tiny_uri, log_refused) -> None:
    """A gateway's HTML 503 comes before acceptance: no ledger entry, at most a refused row at zero cost."""
    api.handle.set_faults(script(("submit", "gateway_503"), log_refused_requests=log_refused))
    response = api.submit(tiny_uri, headers={"X-Client-Request-Id": "job-9.attempt-1"})
    assert response.status_code == 503 and response.headers["content-type"].startswith("text/html")
    assert response.text == GATEWAY_503_PAGE and "statusCode" not in response.text  # not the provider's shape
    assert "x-inference-id" not in response.headers
    assert api.handle.ledger() == []
    rows = api.handle.logs()
    if log_refused:
        (row,) = rows
        assert row["client_request_id"] == "job-9.attempt-1" and row["status_code"] == 503
        assert (row["status"], row["credits"], row["cost"]) == ("failed", 0, 0)
        assert not {"generation_id", "inference_id"} & row.keys()  # refused: there is no generation
        assert api.handle.logs(status="failed") == rows and api.handle.logs(status="succeeded") == []
    else:
        assert rows == []
    assert api.submit(tiny_uri).status_code == 200  # the scripted rule is used up
    assert len(api.handle.ledger()) == 1


def test_the_newer_submit_kinds_come_last_and_fit_no_other_route() -> None:
    assert ALL_KINDS[-3:] == ("accept_then_500", "gateway_503", "drip_download")  # appended: older kinds keep places
    for kind in ALL_KINDS[-3:-1]:
        FaultRule(route="submit", kind=kind)
        for route in ("poll", "download", "logs"):
            with pytest.raises(ValidationError, match="does not apply"):
                FaultRule(route=route, kind=kind)


def test_rejections_on_poll_logs_and_download(api, tiny_uri) -> None:
    final, _ = api.generate(tiny_uri)
    api.handle.set_faults(
        script(("poll", "server_error_503"), ("logs", "rate_limit"), ("download", "server_error_502"))
    )
    assert api.poll(final["id"]).status_code == 503
    assert api.http.get("/v2/logs").status_code == 429
    assert httpx.get(final["video"]["url"]).status_code == 502
    assert api.poll(final["id"]).status_code == 200
    assert api.http.get("/v2/logs").status_code == 200
    assert httpx.get(final["video"]["url"]).status_code == 200


@pytest.mark.parametrize("shared", [False, True])
def test_polls_count_against_the_log_limit_only_where_configured(api, tiny_uri, shared) -> None:
    """Whether the provider's ~200 per 60 s covers status polls is not known: the sandbox can do either."""
    final, _ = api.generate(tiny_uri)
    api.handle.set_faults({"log_reads_per_minute": 3, "polls_share_log_limit": shared})
    assert api.http.get("/v2/logs").status_code == 200
    polls = [api.poll(final["id"]) for _ in range(3)]
    statuses = [response.status_code for response in polls]
    assert statuses == ([200, 200, 429] if shared else [200, 200, 200])
    if shared:
        assert int(polls[-1].headers["retry-after"]) >= 1
    assert api.http.get("/v2/logs").status_code == (429 if shared else 200)
    assert api.handle.log_reads() == (
        {"reads": 2, "rate_limited": 1, "polls": 3, "polls_rate_limited": 1} if shared
        else {"reads": 2, "rate_limited": 0, "polls": 0, "polls_rate_limited": 0})


def test_dropped_submit_response_is_charged_and_found_in_the_logs(api, tiny_uri) -> None:
    api.handle.set_faults(script(("submit", "drop_connection")))
    with pytest.raises(httpx.RemoteProtocolError):
        api.submit(tiny_uri, headers={"X-Client-Request-Id": "job-7.attempt-1"})
    (entry,) = api.handle.ledger()  # accepted before the answer was lost: the ambiguous case
    (row,) = api.handle.logs(client_request_id="job-7.attempt-1")
    assert row["generation_id"] == entry.generation_id
    assert api.wait(entry.generation_id)["status"] == "completed"
    assert api.handle.ledger()[0].credits > 0


def test_dropped_poll_response(api, tiny_uri) -> None:
    generation_id = api.submit(tiny_uri).json()["id"]
    api.handle.set_faults(script(("poll", "drop_connection")))
    with pytest.raises(httpx.RemoteProtocolError):
        api.poll(generation_id)
    assert api.wait(generation_id)["status"] == "completed"


def test_slow_submit_outlasts_the_client_timeout_but_is_charged(api, tiny_uri) -> None:
    api.handle.set_faults(script(("submit", "slow_response"), slow_seconds=10))
    with pytest.raises(httpx.ReadTimeout):
        api.http.post(
            "/v2/video/generations",
            json={"model": "krea/krea-wan-14b/video-to-video", "prompt": "p", "video_url": tiny_uri},
            timeout=0.3,
        )
    (entry,) = api.handle.ledger()
    assert api.wait(entry.generation_id)["status"] == "completed"


def test_slow_poll_answers_late(api, tiny_uri) -> None:
    generation_id = api.submit(tiny_uri).json()["id"]
    api.handle.set_faults(script(("poll", "slow_response"), slow_seconds=0.4))
    started = time.monotonic()
    assert api.poll(generation_id).status_code == 200
    assert time.monotonic() - started >= 0.4


@pytest.mark.parametrize("kind", ["truncated_download", "drop_connection"])
def test_interrupted_download_delivers_less_than_announced(api, tiny_uri, kind) -> None:
    final, content = api.generate(tiny_uri)
    api.handle.set_faults(script(("download", kind)))
    received = 0
    with httpx.stream("GET", final["video"]["url"]) as response:
        assert response.status_code == 200
        declared = int(response.headers["content-length"])
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in response.iter_raw():
                received += len(chunk)
    assert 0 < received < declared == len(content)
    assert httpx.get(final["video"]["url"]).content == content


def test_a_drip_fed_download_sends_every_byte_at_its_pace(api, tiny_uri) -> None:
    """One byte at a time, never pausing long enough for a read timeout: only a deadline stops it."""
    final, content = api.generate(tiny_uri)
    api.handle.set_faults(script(("download", "drip_download"), drip_bytes_per_second=20))
    started = time.monotonic()
    with httpx.stream("GET", final["video"]["url"], timeout=1.0) as response:
        assert int(response.headers["content-length"]) == len(content)
        chunks = response.iter_raw()
        first = [next(chunks) for _ in range(10)]
    assert [len(chunk) for chunk in first] == [1] * 10 and 0.4 < time.monotonic() - started < 3


def test_injected_generation_errors_use_both_shapes(api, tiny_uri, get_schema) -> None:
    api.handle.set_faults({"script": [{"route": "submit", "kind": "generation_error", "times": 6}]})
    finals = [api.wait(api.submit(tiny_uri, seed=seed).json()["id"]) for seed in range(6)]
    for final in finals:
        assert final["status"] == "error" and final["meta"]["usage"]["tokens_used"] == 0
        get_schema.validate(final)
    errors = [final["error"] for final in finals]
    assert any(set(error) == {"name", "message"} for error in errors)
    assert any(
        set(error) == {"detail"} and {"loc", "msg", "type", "input"} <= set(error["detail"][0]) for error in errors
    )
    assert all(entry.status == "error" and entry.credits == 0 for entry in api.handle.ledger())


@pytest.mark.parametrize("route", ["submit", "poll"])
def test_unknown_status_for_a_while_then_completion(api, tiny_uri, get_schema, route) -> None:
    api.handle.set_faults(script((route, "unknown_status"), unknown_status_seconds=0.5))
    posted = api.submit(tiny_uri).json()
    assert posted["status"] == "queued"  # POST always answers within the schema
    seen = []
    while not seen or seen[-1] not in ("completed", "error"):
        seen.append(api.poll(posted["id"]).json()["status"])
        time.sleep(0.05)
    unknown = [status for status in seen if status not in KNOWN_STATUSES]
    assert seen[0] in unknown and len(unknown) >= 3 and seen[-1] == "completed", seen
    assert not get_schema.is_valid({"id": posted["id"], "status": unknown[0]})


def test_extra_fields_in_logs(api, tiny_uri) -> None:
    api.submit(tiny_uri)
    api.handle.set_faults(script(("logs", "extra_fields")))
    body = api.http.get("/v2/logs").json()
    assert "x_sandbox_extra" in body and "x_sandbox_extra" in body["data"][0]


def test_random_faults_are_reproducible_from_the_seed(api) -> None:
    def statuses(seed: int) -> list[int]:
        api.handle.set_faults(
            {"seed": seed, "rate": 0.5, "kinds": ["rate_limit", "server_error_503", "generation_error"]}
        )
        return [api.http.get("/v2/logs").status_code for _ in range(20)]

    first = statuses(3)
    assert first == statuses(3)
    assert set(first) == {200, 429, 503}  # generation_error never applies to the logs route
    assert first != statuses(4)
    assert api.http.get(f"{api.handle.base_url}/sandbox/faults").json()["seed"] == 4


def test_fault_settings_are_validated_and_reset(api) -> None:
    for invalid in (
        {"rate": 2},
        {"script": [{"route": "submit", "kind": "truncated_download"}]},
        {"kinds": ["meteor"]},
    ):
        response = httpx.post(f"{api.handle.base_url}/sandbox/faults", json=invalid)
        assert response.status_code == 422 and response.json()["errors"], invalid
    api.handle.set_faults(FaultConfig(rate=1.0, script=[FaultRule(route="poll", kind="slow_response")]))
    api.handle.reset()
    assert FaultConfig.model_validate(httpx.get(f"{api.handle.base_url}/sandbox/faults").json()) == FaultConfig()


def test_faults_set_at_start(make_api, tiny_uri) -> None:
    api = make_api(faults=FaultConfig(script=[FaultRule(route="submit", kind="rate_limit", times=2)]))
    assert [api.submit(tiny_uri).status_code for _ in range(3)] == [429, 429, 200]

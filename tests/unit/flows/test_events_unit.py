"""prefect_aimlapi_video.flows.events: the Prefect events emitted about each generation.

The resource an automation matches on (the generation, or the flow run when nothing was
submitted), the payload (cost in credits and USD, durations, where the result is, the error), and
that what is emitted is a valid Prefect event. Prefect's `emit_event` is replaced by a recorder:
no events worker, no server.
"""

from __future__ import annotations

import json

import pytest
from prefect.events.schemas.events import Event, Resource

from prefect_aimlapi_video.api.models import Timing, VideoToVideoResult
from prefect_aimlapi_video.api.requests import DEFAULT_MODEL
from prefect_aimlapi_video.flows import events as generation_events
from prefect_aimlapi_video.flows.events import emit_generation_event, event_payload, generation_resource

GENERATION_ID = f"0b6f3f2e-5a7c-4c1e-9d52-8a1f7c2b9e10:{DEFAULT_MODEL}"  # the provider's shape: <uuid>:<model>


def completed_result(**fields) -> VideoToVideoResult:
    values = {"status": "completed", "model": DEFAULT_MODEL, "prompt": "a watercolour city", "input": "/videos/in.mp4",
              "generation_id": GENERATION_ID, "client_request_id": "v2v-" + "a" * 32 + "-a1", "credits": 1_000_000,
              "output": "/outputs/in-0b6f3f2e.mp4", "sidecar": "/outputs/in-0b6f3f2e.json",
              "timing": Timing(queued_s=1.5, generating_s=60.25, download_s=2.0, total_s=64.0), **fields}
    return VideoToVideoResult(**values)


@pytest.fixture
def emitted(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    monkeypatch.setattr(generation_events, "emit_event", lambda **kwargs: calls.append(kwargs))
    return calls


def test_a_submitted_generation_is_the_resource_named_by_its_uuid():
    resource = generation_resource(completed_result())
    assert resource["prefect.resource.id"] == f"aimlapi.generation.{GENERATION_ID}"
    assert resource["prefect.resource.name"] == "0b6f3f2e-5a7c-4c1e-9d52-8a1f7c2b9e10"
    assert resource["aimlapi.model"] == DEFAULT_MODEL
    assert resource["aimlapi.client-request-id"] == "v2v-" + "a" * 32 + "-a1"
    Resource.model_validate(resource)  # Prefect's own rules for a resource


@pytest.mark.parametrize(("flow_run_id", "suffix"), [("3f0c0b1e-run", "3f0c0b1e-run"), (None, "local")])
def test_without_a_generation_the_resource_is_the_flow_run(flow_run_id, suffix):
    result = completed_result(status="skipped", generation_id=None, client_request_id=None, credits=None,
                              output=None, sidecar=None, flow_run_id=flow_run_id)
    resource = generation_resource(result)
    assert resource["prefect.resource.id"] == f"aimlapi.generation.unsubmitted.{suffix}"
    assert resource["prefect.resource.name"] == "not submitted"
    assert resource["aimlapi.client-request-id"] == ""
    Resource.model_validate(resource)


def test_the_payload_says_what_it_cost_how_long_it_took_and_where_the_result_is():
    payload = event_payload(completed_result())
    assert payload["credits"] == 1_000_000 and payload["usd"] == pytest.approx(0.5)
    assert payload["durations"] == {"queued_s": 1.5, "generating_s": 60.25, "download_s": 2.0, "total_s": 64.0}
    assert (payload["output"], payload["sidecar"]) == ("/outputs/in-0b6f3f2e.mp4", "/outputs/in-0b6f3f2e.json")
    assert payload["status"] == "completed" and payload["resumed"] is False
    assert payload["error_name"] is None and payload["collect_command"] is None
    json.dumps(payload)  # plain JSON, as events travel


def test_the_payload_of_a_failure_carries_its_error_and_unknown_cost():
    result = completed_result(status="failed", credits=None, output=None, sidecar=None,
                              error_name="GenerationTimeoutError", error_message="Timed out after 900 s",
                              collect_command="aimlapi-video collect " + GENERATION_ID)
    payload = event_payload(result)
    assert (payload["credits"], payload["usd"]) == (None, None)
    assert payload["error_name"] == "GenerationTimeoutError"
    assert payload["error_message"] == "Timed out after 900 s"
    assert payload["collect_command"].endswith(GENERATION_ID)


@pytest.mark.parametrize("kind", ["submitted", "completed", "failed", "skipped"])
def test_each_kind_is_emitted_as_a_valid_prefect_event(emitted, kind):
    result = completed_result()
    emit_generation_event(kind, result)
    assert len(emitted) == 1
    call = emitted[0]
    assert call["event"] == f"aimlapi.generation.{kind}"
    assert call["resource"] == generation_resource(result) and call["payload"] == event_payload(result)
    event = Event(**call)  # what Prefect's emit_event builds from these arguments
    assert event.resource.id == f"aimlapi.generation.{GENERATION_ID}"


def test_an_unbounded_provider_error_is_cut_so_the_event_stays_under_prefects_size_limit():
    result = completed_result(status="failed", error_name="GenerationFailedError", error_message="x" * 100_000)
    assert len(event_payload(result)["error_message"]) == generation_events.MAX_ERROR_CHARS


def test_an_event_prefect_refuses_does_not_fail_the_run_that_emits_it(monkeypatch, caplog):
    from prefect.exceptions import EventTooLarge

    def refuse(**kwargs):
        raise EventTooLarge(size=2_000_000, maximum=1_500_000)

    monkeypatch.setattr(generation_events, "emit_event", refuse)
    emit_generation_event("failed", completed_result(status="failed"))
    assert "aimlapi.generation.failed not emitted: EventTooLarge" in caplog.text


def test_events_tell_a_paid_generation_from_a_resumed_one():
    """Summed over events, `charged_credits` counts each charge once: the run that first saw the charge
    carries it, a resumed (or adopted, or collected) one carries 0 but still says what it cost."""
    paid = completed_result().model_copy(update={"charged_credits": 1_000_000})
    resumed = completed_result().model_copy(update={"charged_credits": 0.0, "resumed": True})
    assert event_payload(paid)["charged_credits"] == 1_000_000
    assert (event_payload(resumed)["charged_credits"], event_payload(resumed)["credits"]) == (0.0, 1_000_000)
    assert "resumed: no new charge, 1,000,000 credits when first paid" in resumed.one_line()
    assert "resumed" not in paid.one_line() and "1,000,000 credits" in paid.one_line()

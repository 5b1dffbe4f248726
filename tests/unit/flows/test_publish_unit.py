"""prefect_aimlapi_video.flows.publish: a generation's result from what the three tasks returned, and
what `publish_generation` (and `video_to_video`, through the same helpers) publishes about it.

The pure pieces (the result, the collect command, the input as it may be shown) are checked as they
are; publishing is checked with the summary, link and event senders replaced by recorders: no
server, no run.
"""

from __future__ import annotations

import time

import pytest
from prefect.logging import disable_run_logger

from prefect_aimlapi_video.api.errors import (
    DeliveryFailed,
    GenerationFailedError,
    GenerationTimeoutError,
    TransientApiError,
)
from prefect_aimlapi_video.api.models import StatusChange, VideoInfo
from prefect_aimlapi_video.api.requests import GenerationParams
from prefect_aimlapi_video.flows import publish as publish_module
from prefect_aimlapi_video.flows.publish import (
    collect_command,
    new_result,
    note_outcome,
    note_stored,
    note_submitted,
    publish_generation,
    shown_input,
)
from prefect_aimlapi_video.media.video_checks import data_uri
from prefect_aimlapi_video.storage.delivery import GenerationOutcome, StoredVideo
from prefect_aimlapi_video.storage.record_store import default_location
from prefect_aimlapi_video.submission.record import StoreRef, SubmittedGeneration

GENERATION_ID = "0b6f3f2e-5a7c-4c1e-9d52-8a1f7c2b9e10:krea/krea-wan-14b/video-to-video"
REQUEST = GenerationParams(prompt="a watercolour city", seed=7, strength=0.6)
SUBMITTED = SubmittedGeneration(generation_id=GENERATION_ID, client_request_id="v2v-" + "a" * 32 + "-a1",
                                request_id="req-post", accepted_at=1_700_000_000.0, record_key="k",
                                store=StoreRef(location="/records"))
OUTCOME = GenerationOutcome(generation_id=GENERATION_ID, status="completed", credits=315_000, charged_credits=315_000,
                            timeline=[StatusChange(status="queued", at=1_700_000_000.0),
                                      StatusChange(status="completed", at=1_700_000_030.0)],
                            request_ids=["req-post", "req-poll"], polls=9, queued_s=2.0, generating_s=28.0)
STORED = StoredVideo(location="/out/clip.mp4", sha256="ab" * 32, size_bytes=1234, download_s=0.5,
                     info=VideoInfo(width=64, height=48, frames=6))


def test_the_result_is_filled_from_what_each_task_returned():
    result = new_result(REQUEST, "/in/clip.mp4", flow_run_id="run-1", estimate_credits=30_000)
    assert (result.status, result.model, result.prompt, result.seed, result.strength) == (
        "submitting", REQUEST.MODEL, "a watercolour city", 7, 0.6)
    note_submitted(result, SUBMITTED)
    assert (result.generation_id, result.request_ids) == (GENERATION_ID, ["req-post"])
    note_outcome(result, OUTCOME)
    assert result.request_ids == ["req-post", "req-poll"] and result.polls == 9 and result.credits == 315_000
    note_stored(result, OUTCOME, STORED, started=time.time() - 40)
    assert (result.status, result.output, result.sha256, result.output_info.frames) == (
        "completed", "/out/clip.mp4", "ab" * 32, 6)
    assert (result.timing.queued_s, result.timing.download_s) == (2.0, 0.5) and result.timing.total_s >= 40
    assert result.estimate_credits == 30_000 and result.flow_run_id == "run-1"


def test_the_collect_command_names_only_what_differs_from_the_defaults():
    assert collect_command(None) is None
    assert collect_command(GENERATION_ID, "aimlapi") == f"aimlapi-video collect {GENERATION_ID}"
    command = collect_command(GENERATION_ID, "my key", output="out/{stem}.mp4", submissions="s3://b/records",
                              aws_credentials="aws")
    assert command == (f"aimlapi-video collect {GENERATION_ID} --output 'out/{{stem}}.mp4' --submissions "
                       "s3://b/records --aws-credentials aws --credentials 'my key'")


async def test_the_input_is_shown_without_secrets(clip_bytes, tmp_path):
    assert (await shown_input("https://cdn.example.com/a/clip.mp4?X-Amz-Signature=secret"))[0] == \
        "https://cdn.example.com/a/clip.mp4"
    shown, info = await shown_input(data_uri(clip_bytes))
    assert shown == f"data URI ({len(clip_bytes)} bytes)" and info is None
    (tmp_path / "clip.mp4").write_bytes(clip_bytes)
    shown, info = await shown_input(str(tmp_path / "clip.mp4"))
    assert shown == str(tmp_path / "clip.mp4") and (info.width, info.height) == (64, 48)
    assert await shown_input(str(tmp_path / "gone.mp4")) == (str(tmp_path / "gone.mp4"), None)  # best effort


class Sent:
    """What would have reached the Prefect API: summaries, output links, events."""

    def __init__(self, monkeypatch) -> None:
        self.summaries: list = []
        self.links: list = []
        self.events: list = []

        async def publish_result(result, strip, location):
            self.summaries.append(result.model_copy())
            self.links.append(location)

        async def publish_summary(result, strip=None):
            self.summaries.append(result.model_copy())

        monkeypatch.setattr(publish_module, "publish_result", publish_result)
        monkeypatch.setattr(publish_module, "publish_summary", publish_summary)
        monkeypatch.setattr(publish_module, "emit_generation_event",
                            lambda kind, result: self.events.append((kind, result.model_copy())))


@pytest.fixture
def sent(monkeypatch) -> Sent:
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    with disable_run_logger():
        yield Sent(monkeypatch)


async def test_a_delivered_generation_gets_its_summary_link_and_completed_event(sent):
    result = await publish_generation(REQUEST, "https://cdn.example.com/clip.mp4?sig=1", SUBMITTED, OUTCOME, STORED,
                                      started=time.time() - 60)
    assert [kind for kind, _ in sent.events] == ["completed"] and sent.links == ["/out/clip.mp4"]
    (summary,) = sent.summaries
    assert summary == result and result.status == "completed" and result.input == "https://cdn.example.com/clip.mp4"
    assert result.charged_credits == 315_000 and result.timing.total_s >= 60


async def test_without_started_the_total_counts_from_acceptance(sent):
    result = await publish_generation(REQUEST, "clip.mp4", SUBMITTED, OUTCOME, STORED)
    assert result.timing.total_s >= time.time() - SUBMITTED.accepted_at - 1


async def test_a_failure_at_the_provider_is_reported_without_a_collect_command(sent):
    error = GenerationFailedError(GENERATION_ID, "ContentPolicy", "refused")
    result = await publish_generation(REQUEST, "clip.mp4", SUBMITTED, error=error)
    assert [kind for kind, _ in sent.events] == ["failed"] and sent.links == []
    assert (result.status, result.error_name, result.error_message) == ("failed", "ContentPolicy", "refused")
    assert result.collect_command is None and result.generation_id == GENERATION_ID


async def test_a_paid_generation_left_behind_names_its_collect_command_in_the_summary_event_and_error(sent):
    error = GenerationTimeoutError(GENERATION_ID, 900, "generating")
    submitted = SUBMITTED.model_copy(update={"store": StoreRef(location="s3://bucket/records", aws_credentials="aws")})
    result = await publish_generation(REQUEST, "clip.mp4", submitted, error=error, credentials="other",
                                      output="out/{stem}.mp4")
    expected = (f"aimlapi-video collect {GENERATION_ID} --output 'out/{{stem}}.mp4' --submissions s3://bucket/records "
                "--aws-credentials aws --credentials other")
    assert result.collect_command == expected and sent.events[0][1].collect_command == expected
    assert str(error).endswith(expected)  # what the user re-raises says it too


async def test_a_poll_failing_after_acceptance_leaves_the_id_and_command_for_a_batch_row(sent):
    """Polls that kept answering 503 until the retries ran out: the error is a plain TransientApiError
    (no generation of its own), and a batch's row, which may shorten the message, must still name what
    was paid (seen in the soak benchmark: the row had neither)."""
    from prefect_aimlapi_video.flows.batch_items import BatchItemResult, failed_row

    error = TransientApiError(f"Checking generation {GENERATION_ID}: provider error (503: maintenance)" + " x" * 200)
    await publish_generation(REQUEST, "clip.mp4", SUBMITTED, error=error)
    row = failed_row(BatchItemResult(index=0, video="clip.mp4", status="failed"), "failed", str(error), error)
    assert row.generation_id == GENERATION_ID and row.collect_command == error.collect_command
    assert row.collect_command.startswith(f"aimlapi-video collect {GENERATION_ID} ")
    assert len(row.error) == 300 and "collect" not in row.error  # the shortened message lost it; the row did not


async def test_the_default_record_store_is_not_named_and_an_error_of_ours_after_acceptance_is_a_delivery_failure(sent):
    submitted = SUBMITTED.model_copy(update={"store": StoreRef(location=default_location())})
    result = await publish_generation(REQUEST, "clip.mp4", submitted, OUTCOME, error=OSError("disk full"))
    assert result.error_name == DeliveryFailed.__name__ and "disk full" in result.error_message
    assert result.collect_command == f"aimlapi-video collect {GENERATION_ID}"


async def test_nothing_submitted_is_reported_against_the_run(sent):
    result = await publish_generation(REQUEST, "clip.mp4", error=ValueError("bad prompt"))
    assert result.generation_id is None and result.collect_command is None
    assert result.error_name == "ValueError" and [kind for kind, _ in sent.events] == ["failed"]


async def test_publishing_a_success_needs_what_the_last_two_tasks_returned(sent):
    with pytest.raises(ValueError, match="download_video returned, or error="):
        await publish_generation(REQUEST, "clip.mp4", SUBMITTED, OUTCOME)
    assert sent.events == [] and sent.summaries == []

"""prefect_aimlapi_video.tasks.steps: what the task wrappers add to the plain async code under them.

The retry policy (retry only errors flagged `retryable`, never cache a paid step), sleeping out a
429's Retry-After before Prefect's own delay, and how `submit_generation` and `download_video` map
their arguments and the run's retry count onto the code they wrap (`submit_once`, `store_result`,
replaced here by recorders). Called through `.fn`, outside any run: no Prefect server. The run
count of a retry is set the way Prefect's runtime allows (PREFECT__RUNTIME__* variables), and
`disable_run_logger` stands in for a run's logger. `wait_for_generation` needs a run's artifacts
and is covered by the integration tests.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from prefect.cache_policies import NO_CACHE
from prefect.logging import disable_run_logger
from prefect.states import Failed

from prefect_aimlapi_video.api.client import AimlApiClient
from prefect_aimlapi_video.api.errors import (
    AuthenticationError,
    DownloadError,
    GenerationFailedError,
    GenerationTimeoutError,
    InvalidInputError,
    InvalidRequestError,
    ProviderSubmitError,
    RateLimitedError,
    ReconciliationUnavailable,
    SubmissionOutcomeUnknown,
    TransientApiError,
    UnidentifiedGenerationError,
)
from prefect_aimlapi_video.api.models import VideoInfo
from prefect_aimlapi_video.api.requests import GenerationParams
from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.media.video_checks import data_uri
from prefect_aimlapi_video.storage.delivery import StoredVideo
from prefect_aimlapi_video.storage.destinations import LocalDestination
from prefect_aimlapi_video.storage.record_store import LocalRecordStore
from prefect_aimlapi_video.storage.sources import inspect_video
from prefect_aimlapi_video.submission.budget import BudgetRef
from prefect_aimlapi_video.submission.record import StoreRef, SubmittedGeneration
from prefect_aimlapi_video.tasks import steps as tasks_module
from prefect_aimlapi_video.tasks.steps import (
    _respect_retry_after,
    _retry_if_retryable,
    download_video,
    submit_generation,
    wait_for_generation,
)

CREDENTIALS = AimlApiCredentials(api_key="sk-unit-test-key")
PARAMS = GenerationParams(prompt="a watercolour city", seed=7)


@pytest.fixture(autouse=True)
def outside_any_run(monkeypatch):
    """No run context, no run id in the environment, and a run logger that logs nowhere."""
    for name in ("PREFECT__FLOW_RUN_ID", "PREFECT__RUNTIME__TASK_RUN__RUN_COUNT",
                 "PREFECT__RUNTIME__FLOW_RUN__RUN_COUNT"):
        monkeypatch.delenv(name, raising=False)
    with disable_run_logger():
        yield


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """What the tasks module asked `asyncio.sleep` for (nothing is slept)."""
    asked: list[float] = []

    async def sleep(seconds: float) -> None:
        asked.append(seconds)

    monkeypatch.setattr(tasks_module, "asyncio", SimpleNamespace(sleep=sleep))
    return asked


# ---------------------------------------------------------------- retry policy


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (RateLimitedError("429", retry_after=3), True),
        (TransientApiError("connection refused"), True),
        (SubmissionOutcomeUnknown("answer lost", client_request_id="v2v-k-a1"), True),
        (ProviderSubmitError("provider 503", client_request_id="v2v-k-a1"), True),
        (ReconciliationUnavailable("usage log down"), True),
        (DownloadError("cut transfer"), True),
        (DownloadError("not an MP4", permanent=True), False),
        (InvalidInputError("bad video"), False),
        (InvalidRequestError("422", status_code=422), False),
        (AuthenticationError("401", status_code=401), False),
        (UnidentifiedGenerationError("no id in the log row"), False),
        (GenerationFailedError("gen-1", "ContentPolicy", "refused"), False),
        (GenerationTimeoutError("gen-1", 900, "generating"), False),
        # not ours: a retry cannot be known to be safe (a raw network error may follow a paid POST)
        (httpx.ConnectError("refused"), False),
        (ValueError("boom"), False),
        (TimeoutError(), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_the_retry_condition_follows_the_retryable_flag_of_our_errors_only(error, retry):
    # Prefect's engine hands the condition Failed(data=<the exception>)
    assert _retry_if_retryable(submit_generation, None, Failed(data=error)) is retry


@pytest.mark.parametrize("task", [submit_generation, wait_for_generation, download_video], ids=lambda t: t.name)
def test_every_task_retries_by_that_condition_on_a_rising_schedule_and_never_caches(task):
    assert task.retry_condition_fn is _retry_if_retryable
    assert task.cache_policy is NO_CACHE  # a cached submit or download would skip a paid, checked step
    assert task.retries >= 1 and len(task.retry_delay_seconds) == task.retries
    assert list(task.retry_delay_seconds) == sorted(task.retry_delay_seconds)


@pytest.mark.parametrize(
    ("error", "asked"),
    [
        (RateLimitedError("429", retry_after=7.5), [7.5]),
        (RateLimitedError("429", retry_after=3600), [120.0]),  # capped: a bad hint must not stall the run
        (RateLimitedError("429", retry_after=None), []),
        (RateLimitedError("429", retry_after=0), []),
        (TransientApiError("503"), []),
    ],
)
async def test_only_a_429_with_retry_after_is_slept_out_and_at_most_two_minutes(sleeps, error, asked):
    await _respect_retry_after(error)
    assert sleeps == asked


# ---------------------------------------------------------------- submit_generation


class RecordingSubmit:
    """Stands in for `submit_once`: records its arguments, answers an accepted generation or raises."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[dict] = []

    async def __call__(self, client, store, params, video_identity, scope, video_url, **options) -> SubmittedGeneration:
        self.calls.append({"client": client, "store": store, "params": params, "identity": video_identity,
                           "scope": scope, "video_url": video_url, **options})
        if self.error is not None:
            raise self.error
        return SubmittedGeneration(generation_id="gen-1", client_request_id="v2v-k-a1", accepted_at=1_000.0,
                                   record_key="k", model=params.MODEL)


@pytest.fixture
def submit_once(monkeypatch) -> RecordingSubmit:
    recorder = RecordingSubmit()
    monkeypatch.setattr(tasks_module, "submit_once", recorder)
    return recorder


async def test_submit_maps_a_checked_source_store_and_budget_onto_submit_once(submit_once, tmp_path, clip_bytes):
    uri = data_uri(clip_bytes)
    source = await inspect_video(uri)
    budget = BudgetRef(name="nightly", cap_credits=5_000_000)
    submitted = await submit_generation.fn(PARAMS, source, CREDENTIALS, "run-42", reconcile_grace_seconds=12.5,
                                           submissions=str(tmp_path / "records"), budget=budget)
    [call] = submit_once.calls
    assert isinstance(call["client"], AimlApiClient)
    assert isinstance(call["store"], LocalRecordStore) and call["store"].location == str(tmp_path / "records")
    assert (call["params"], call["identity"], call["scope"]) == (PARAMS, source.identity, "run-42")
    assert await call["video_url"]() == uri  # the secret is produced only when the POST needs it
    assert call["reconcile_seconds"] == 12.5 and call["may_repeat"] is True
    assert (call["budget"].name, call["budget"].cap) == ("nightly", 5_000_000)
    assert call["budget"].store is call["store"]
    # what the wait step needs to reopen the same records and settle the same budget
    assert submitted.store == StoreRef(location=str(tmp_path / "records"), aws_credentials=None)
    assert submitted.budget == budget and submitted.generation_id == "gen-1"


async def test_submit_checks_a_video_given_as_text_and_defaults_to_the_configured_store(
    submit_once, monkeypatch, tmp_path, clip_bytes
):
    monkeypatch.setenv("AIMLAPI_SUBMISSIONS_DIR", str(tmp_path / "from-env"))
    submitted = await submit_generation.fn(PARAMS, data_uri(clip_bytes), CREDENTIALS, "run-1")
    [call] = submit_once.calls
    assert call["identity"] == "sha256:" + hashlib.sha256(clip_bytes).hexdigest()
    assert call["store"].location == str(tmp_path / "from-env")
    assert call["budget"] is None
    assert submitted.store == StoreRef(location=str(tmp_path / "from-env")) and submitted.budget is None


async def test_submit_refuses_a_bad_video_before_submitting_anything(submit_once, tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        await submit_generation.fn(PARAMS, str(tmp_path / "missing.mp4"), CREDENTIALS, "run-1",
                                   submissions=str(tmp_path / "records"))
    assert submit_once.calls == []


@pytest.mark.parametrize(
    ("shared_scope", "environment", "may_repeat"),
    [
        (True, {}, True),
        (False, {}, False),  # a private scope on its first run: provably the first attempt
        (False, {"PREFECT__RUNTIME__TASK_RUN__RUN_COUNT": "2"}, True),  # a task retry may follow a paid POST
        (False, {"PREFECT__RUNTIME__FLOW_RUN__RUN_COUNT": "2"}, True),  # so may a re-run of the flow run
    ],
)
async def test_submit_assumes_a_first_attempt_only_for_a_private_scope_on_its_first_run(
    submit_once, monkeypatch, tmp_path, clip_bytes, shared_scope, environment, may_repeat
):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    await submit_generation.fn(PARAMS, data_uri(clip_bytes), CREDENTIALS, "run-1",
                               submissions=str(tmp_path / "records"), shared_scope=shared_scope)
    assert submit_once.calls[0]["may_repeat"] is may_repeat


async def test_submit_sleeps_out_a_rate_limit_then_raises_it_for_prefect_to_retry(
    monkeypatch, sleeps, tmp_path, clip_bytes
):
    refusal = RateLimitedError("Too many requests", retry_after=9, status_code=429)
    monkeypatch.setattr(tasks_module, "submit_once", RecordingSubmit(error=refusal))
    with pytest.raises(RateLimitedError) as info:
        await submit_generation.fn(PARAMS, data_uri(clip_bytes), CREDENTIALS, "run-1",
                                   submissions=str(tmp_path / "records"))
    assert info.value is refusal and sleeps == [9]


# ---------------------------------------------------------------- download_video


class RecordingStore:
    """Stands in for `store_result`: records its arguments, answers a stored video."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    async def __call__(self, client, generation_id, destination, path, **options) -> StoredVideo:
        self.calls.append({"client": client, "generation_id": generation_id, "destination": destination,
                           "path": path, **options})
        return StoredVideo(location=path, sha256="0" * 64, size_bytes=1234, download_s=0.5,
                           info=VideoInfo(width=64, height=48, frames=6))


@pytest.fixture
def store_result(monkeypatch) -> RecordingStore:
    recorder = RecordingStore()
    monkeypatch.setattr(tasks_module, "store_result", recorder)
    return recorder


@pytest.mark.parametrize(("run_count", "fresh_ok"), [(None, True), ("1", True), ("2", False), ("3", False)])
async def test_download_uses_a_remembered_result_url_only_on_its_first_run(
    store_result, monkeypatch, tmp_path, run_count, fresh_ok
):
    if run_count is not None:
        monkeypatch.setenv("PREFECT__RUNTIME__TASK_RUN__RUN_COUNT", run_count)
    destination = LocalDestination(template=str(tmp_path / "{stem}-{generation}.mp4"))
    stored = await download_video.fn("gen-1", CREDENTIALS, destination, str(tmp_path / "out.mp4"))
    [call] = store_result.calls
    assert call["fresh_ok"] is fresh_ok  # a retry fetches a fresh URL: the cached one may have expired
    assert call["destination"] is destination and call["generation_id"] == "gen-1"
    assert isinstance(call["client"], AimlApiClient) and call["before"] is None
    assert stored.location == str(tmp_path / "out.mp4")


async def test_download_resolves_an_output_template_and_passes_the_input_as_a_path(store_result, tmp_path):
    await download_video.fn("gen-1", CREDENTIALS, str(tmp_path / "outs") + "/", str(tmp_path / "outs" / "a.mp4"),
                            before=str(tmp_path / "in.mp4"))
    [call] = store_result.calls
    assert isinstance(call["destination"], LocalDestination)
    assert call["destination"].template == str(tmp_path / "outs" / "{stem}-{generation}.mp4")
    assert call["before"] == Path(tmp_path / "in.mp4")

"""The core flow on a real Prefect server against the sandbox over loopback (issue: one generation)."""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

import pytest

from prefect_aimlapi_video.api.errors import (
    AuthenticationError,
    GenerationFailedError,
    GenerationTimeoutError,
    InvalidInputError,
)
from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.flows.video_to_video import video_to_video
from prefect_aimlapi_video.media.probe import probe_video
from tests.support import prefect_api

pytestmark = pytest.mark.integration


def credentials(sandbox, **overrides) -> AimlApiCredentials:
    return AimlApiCredentials(api_key=sandbox.api_key, base_url=sandbox.base_url, **overrides)


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.name.startswith(".") or p.suffix == ".part")


async def test_saved_block_flow_run_artifacts_and_ledger(prefect_server, sandbox, clips, tmp_path):
    await credentials(sandbox).asave("sandbox-it", overwrite=True)
    result = await video_to_video(
        video=str(clips["small"]), prompt="an oil painting | thick strokes", strength=0.6, seed=11,
        credentials="sandbox-it", output=str(tmp_path / "{stem}-{seed}.mp4"),
    )

    output = tmp_path / "small-11.mp4"
    assert result.output == str(output) and output.is_file()
    assert sha256(output) == result.sha256
    ledger = sandbox.ledger()
    assert len(ledger) == 1
    assert ledger[0].output_sha256 == result.sha256 and ledger[0].generation_id == result.generation_id
    assert ledger[0].client_request_id == result.client_request_id
    source, produced = probe_video(clips["small"], label="in"), probe_video(output, label="out")
    assert (produced.width, produced.height, produced.frames) == (source.width, source.height, source.frames)
    assert result.output_info and result.output_info.frames == source.frames
    assert (output.parent / "small-11.mp4.json").is_file()

    run = await prefect_api.flow_run(result.flow_run_id)
    assert run.state.is_completed()
    assert run.name == "v2v-small-seed-11"
    assert {"aimlapi", "video-to-video"} <= set(run.tags)
    artifacts = await prefect_api.artifacts(result.flow_run_id, expect=3)
    summary = next(a.data for a in artifacts if a.type == "markdown" and a.data.startswith("# Video-to-video"))
    link = next(a.data for a in artifacts if a.type == "markdown" and a.data.startswith("["))  # link artifacts
    for expected in (
        result.generation_id, result.sha256, "krea/krea-wan-14b/video-to-video", "an oil painting \\| thick strokes",
        "| Strength | 0.6 |", "| Seed | 11 |", "| Prompt expansion | on |", f"{ledger[0].credits:,}",
        "160x96", str(output), "Status timeline", "| completed |", result.client_request_id,
    ):
        assert expected in summary, expected
    assert link == f"[{output}](file://{output})"
    assert any(a.type == "progress" and a.data == 100 for a in artifacts)


async def test_wrong_key_fails_at_once_without_retries(prefect_server, sandbox, clips, tmp_path):
    creds = AimlApiCredentials(api_key="not-the-key", base_url=sandbox.base_url)
    started = time.monotonic()
    with pytest.raises(AuthenticationError, match="AimlApiCredentials block"):
        await video_to_video(video=str(clips["small"]), prompt="x", credentials=creds, output=str(tmp_path / "o.mp4"))
    assert time.monotonic() - started < 5
    assert sandbox.ledger() == []
    flow_run_id = await _latest_flow_run_id()
    assert "rejected the API key" in (await prefect_api.flow_run(flow_run_id)).state.message
    assert await prefect_api.task_runs(flow_run_id) == {}  # refused by the access check, before any task


async def test_unreachable_base_url_fails_fast_before_any_task(prefect_server, sandbox, clips):
    from tests.support.local_services import free_port

    creds = AimlApiCredentials(api_key="k", base_url=f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(InvalidInputError, match="cannot connect.*Check base_url"):
        await video_to_video(video=str(clips["small"]), prompt="x", credentials=creds)
    assert time.monotonic() - started < 10


async def _latest_flow_run_id() -> str:
    return str((await prefect_api.latest_flow_run("aimlapi-video-to-video")).id)


def _data_uri(content: bytes, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64,{base64.b64encode(content).decode()}"


BAD_INPUTS = {
    "empty prompt": dict(prompt="   "),
    "huge prompt": dict(prompt="x" * 5000),
    "strength 1.5": dict(strength=1.5),
    "strength NaN": dict(strength=float("nan")),
    "strength text": dict(strength="high"),
    "float seed": dict(seed=1.5),
    "negative seed": dict(seed=-3),
    "missing file": dict(video="/nonexistent/clip.mp4"),
    "ftp url": dict(video="ftp://example.com/clip.mp4"),
    "file url": dict(video="file:///etc/passwd"),
    "http non-loopback": dict(video="http://example.com/clip.mp4"),
    "malformed data uri": dict(video="data:video/mp4,not-base64"),
    "bad output template": dict(output="{nope}.mp4"),
    "unknown credentials block": dict(credentials="no-such-block"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
async def test_bad_input_fails_before_any_post(prefect_server, sandbox, clips, tmp_path, case):
    arguments = dict(video=str(clips["small"]), prompt="watercolor", credentials=credentials(sandbox),
                     output=str(tmp_path / "o.mp4"))
    arguments.update(BAD_INPUTS[case])
    with pytest.raises(InvalidInputError):
        await video_to_video(**arguments)
    assert sandbox.ledger() == []
    assert list(tmp_path.iterdir()) == []


async def test_non_video_file_is_refused_before_any_post(prefect_server, sandbox, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video")
    with pytest.raises(InvalidInputError, match="not a readable video"):
        await video_to_video(video=str(text), prompt="x", credentials=credentials(sandbox))
    assert sandbox.ledger() == []


async def test_generation_error_fails_the_run_with_provider_message(prefect_server, sandbox, clips, tmp_path):
    sandbox.set_faults({"seed": 1, "script": [{"route": "submit", "kind": "generation_error"}]})
    with pytest.raises(GenerationFailedError) as caught:
        await video_to_video(video=str(clips["small"]), prompt="x", credentials=credentials(sandbox),
                             output=str(tmp_path / "o.mp4"))
    error = caught.value
    ledger = sandbox.ledger()
    assert len(ledger) == 1 and ledger[0].status == "error" and ledger[0].credits == 0
    assert "Injected by the sandbox" in error.error_message
    flow_run_id = await _latest_flow_run_id()
    run = await prefect_api.flow_run(flow_run_id)
    assert run.state.is_failed()
    assert error.error_name in run.state.message and "Injected by the sandbox" in run.state.message
    artifacts = await prefect_api.artifacts(flow_run_id)
    summary = next(a.data for a in artifacts if a.type == "markdown")
    assert "**failed**" in summary and error.error_name in summary and "Injected by the sandbox" in summary
    assert list(tmp_path.iterdir()) == []


async def test_poll_timeout_names_the_generation(prefect_server, sandbox, clips, tmp_path):
    sandbox.set_faults({"unknown_status_seconds": 30, "script": [{"route": "submit", "kind": "unknown_status"}]})
    with pytest.raises(GenerationTimeoutError) as caught:
        await video_to_video(video=str(clips["small"]), prompt="x", credentials=credentials(sandbox),
                             settings={"timeout_seconds": 1.5}, output=str(tmp_path / "o.mp4"))
    (entry,) = sandbox.ledger()
    assert entry.generation_id in str(caught.value)
    assert "re-run this flow run to resume" in str(caught.value)


async def test_rate_limit_retry_after_is_honoured(prefect_server, sandbox, clips, tmp_path):
    sandbox.set_faults({"retry_after_seconds": 2, "script": [{"route": "submit", "kind": "rate_limit"}]})
    started = time.monotonic()
    result = await video_to_video(video=str(clips["small"]), prompt="x", credentials=credentials(sandbox),
                                  output=str(tmp_path / "o.mp4"))
    (entry,) = sandbox.ledger()
    assert entry.generation_id == result.generation_id
    assert entry.accepted_at - started >= 2.0  # the POST that was accepted came after Retry-After
    runs = await prefect_api.task_runs(result.flow_run_id, names=("submit-generation",))
    assert runs["submit-generation"].run_count == 2


async def test_server_errors_while_polling_are_retried(prefect_server, sandbox, clips, tmp_path):
    sandbox.set_faults({"script": [{"route": "poll", "kind": "server_error_503", "times": 2},
                                   {"route": "poll", "kind": "server_error_500"},
                                   {"route": "poll", "kind": "rate_limit"}]})
    result = await video_to_video(video=str(clips["small"]), prompt="x", credentials=credentials(sandbox),
                                  output=str(tmp_path / "o.mp4"))
    (entry,) = sandbox.ledger()
    assert result.status == "completed" and entry.output_sha256 == result.sha256
    assert entry.polls >= 5  # four faulted polls, then at least one real answer


async def test_truncated_download_is_retried_without_partial_files(prefect_server, sandbox, clips, tmp_path):
    sandbox.set_faults({"script": [{"route": "download", "kind": "truncated_download"}]})
    result = await video_to_video(video=str(clips["small"]), prompt="x", credentials=credentials(sandbox),
                                  output=str(tmp_path / "o.mp4"))
    (entry,) = sandbox.ledger()
    assert sha256(tmp_path / "o.mp4") == entry.output_sha256 == result.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mp4", "o.mp4.json", "o.mp4.strip.jpg"]
    runs = await prefect_api.task_runs(result.flow_run_id, names=("download-video",))
    assert runs["download-video"].run_count == 2


async def test_output_to_a_local_filesystem_block(prefect_server, sandbox, clips, tmp_path):
    from prefect.filesystems import LocalFileSystem

    await LocalFileSystem(basepath=str(tmp_path / "renders")).asave("renders-it", overwrite=True)
    result = await video_to_video(video=str(clips["small"]), prompt="gouache", seed=5, credentials=credentials(sandbox),
                                  settings={"output_storage": "local-file-system/renders-it"},
                                  output="{date}/{stem}-{seed}.mp4")

    (entry,) = sandbox.ledger()
    (stored,) = (tmp_path / "renders").rglob("small-5.mp4")
    assert result.output == f"local-file-system/renders-it:{stored.relative_to(tmp_path / 'renders')}"
    assert sha256(stored) == entry.output_sha256 == result.sha256
    assert (stored.parent / "small-5.mp4.json").is_file()
    assert leftovers(tmp_path) == []


async def test_settings_sent_as_json_by_a_deployment_are_coerced(prefect_server, sandbox, clips, tmp_path):
    """A deployment, the UI or a trigger template sends a poll policy as an object or JSON text and
    numbers as text: the flow runs with them (parameter validation is off, so the flow coerces)."""
    from prefect_aimlapi_video.flows.settings import RunSettings

    result = await video_to_video(
        video=str(clips["small"]), prompt="sumi-e", credentials=credentials(sandbox), output=str(tmp_path / "a.mp4"),
        settings={"poll_policy": {"initial_seconds": 0.2, "fast_phase_seconds": 30}, "timeout_seconds": "120",
                  "presign_expiry_seconds": "3600"},
    )
    assert result.status == "completed" and result.polls >= 1
    assert len(sandbox.ledger()) == 1
    text = RunSettings.parse({"poll_policy": '{"initial_seconds": 0.5, "max_seconds": 4}'})
    assert (text.poll_policy.initial_seconds, text.poll_policy.max_seconds) == (0.5, 4)
    whole = RunSettings.parse('{"poll_policy": {"initial_seconds": 0.5, "max_seconds": 4}, "timeout_seconds": "120"}')
    assert (whole.poll_policy.initial_seconds, whole.poll_policy.max_seconds, whole.timeout_seconds) == (0.5, 4, 120.0)

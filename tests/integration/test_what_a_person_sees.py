"""What a person sees and automates on: the before/after strip, keyed artifacts, events that fire
automations, and a paid generation collected by id after its run stopped waiting.

Real Prefect server (its events and automations services included), the sandbox over HTTP, and
the command line as a user runs it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from prefect_aimlapi_video.api.errors import GenerationFailedError, GenerationTimeoutError
from prefect_aimlapi_video.flows.video_to_video import video_to_video
from prefect_aimlapi_video.storage.record_store import LocalRecordStore, default_location
from prefect_aimlapi_video.submission.record import DURATIONS_KEY
from tests.support import prefect_api
from tests.support.reliability import (
    cli_command,
    fast_credentials,
    fast_polls,
    last_line,
    read_all_events,
    sha256_file,
    subprocess_env,
)

pytestmark = pytest.mark.integration
JPEG = b"\xff\xd8\xff"


async def _events(since: datetime, prefix: str, until=bool, timeout: float = 30.0) -> list:
    """Events named `prefix...` since `since`, once `until(events)` holds (they arrive asynchronously)."""
    async def read() -> list:
        found = await read_all_events(since, datetime.now(timezone.utc) + timedelta(minutes=1))
        return [e for e in found if e.event.startswith(prefix)]

    return await prefect_api.eventually(read, until, timeout=timeout)


async def test_summary_shows_a_strip_keyed_artifacts_and_events(prefect_server, sandbox, clips, tmp_path):
    since = datetime.now(timezone.utc) - timedelta(seconds=5)
    result = await video_to_video(video=str(clips["small"]), prompt="ink wash", seed=4,
                                  credentials=fast_credentials(sandbox), output=str(tmp_path / "out.mp4"),
                                  settings={"poll_policy": fast_polls()})
    (entry,) = sandbox.ledger()

    # the strip: next to the output and the sidecar, and inline in the summary
    strip = tmp_path / "out.mp4.strip.jpg"
    assert result.strip == str(strip) and strip.read_bytes().startswith(JPEG)
    assert json.loads((tmp_path / "out.mp4.json").read_text())["strip"] == str(strip)
    artifacts = await prefect_api.artifacts(result.flow_run_id, expect=3)
    summary = next(a for a in artifacts if a.type == "markdown" and a.data.startswith("# Video-to-video"))
    inline = re.search(r"!\[before / after\]\(data:image/jpeg;base64,([A-Za-z0-9+/=]+)\)", summary.data)
    assert inline and base64.b64decode(inline.group(1)) == strip.read_bytes()
    assert "input (top) and output (bottom)" in summary.data

    # keys (lowercase, dashes) per flow, so the Artifacts page keeps a history
    keys = {a.key for a in artifacts if a.key}
    assert {"aimlapi-video-to-video-summary", "aimlapi-video-to-video-output"} <= keys

    # events about the generation, related to the run
    resource = f"aimlapi.generation.{entry.generation_id}"
    events = await _events(since, "aimlapi.generation.",
                           until=lambda found: {e.event for e in found if e.resource.id == resource} >= {
                               "aimlapi.generation.submitted", "aimlapi.generation.completed"})
    ours = [e for e in events if e.resource.id == f"aimlapi.generation.{entry.generation_id}"]
    assert {e.event for e in ours} >= {"aimlapi.generation.submitted", "aimlapi.generation.completed"}
    completed = next(e for e in ours if e.event == "aimlapi.generation.completed")
    assert f"prefect.flow-run.{result.flow_run_id}" in {r.id for r in completed.related}
    assert completed.payload["credits"] == entry.credits and completed.payload["usd"] == entry.credits / 2_000_000
    assert completed.payload["output"] == str(tmp_path / "out.mp4") and completed.payload["durations"]["total_s"] > 0
    assert "Signature" not in json.dumps(completed.payload) and "http" not in json.dumps(completed.payload)


async def test_a_failed_generation_event_fires_an_automation(prefect_server, sandbox, clips, tmp_path):
    """The README's automation, on a real server: a trigger on `aimlapi.generation.failed` fires."""
    from prefect.automations import Automation
    from prefect.events.actions import DoNothing
    from prefect.events.schemas.automations import EventTrigger, Posture

    name = f"notify-on-failed-generation-{uuid.uuid4().hex[:6]}"
    automation = await Automation(
        name=name,
        trigger=EventTrigger(expect={"aimlapi.generation.failed"}, match={"prefect.resource.id": "aimlapi.generation.*"},
                             posture=Posture.Reactive, threshold=1),
        actions=[DoNothing()],
    ).acreate()
    try:
        await asyncio.sleep(2)  # the triggers service picks up new automations
        since = datetime.now(timezone.utc) - timedelta(seconds=5)
        sandbox.set_faults({"seed": 1, "script": [{"route": "submit", "kind": "generation_error"}]})
        with pytest.raises(GenerationFailedError):
            await video_to_video(video=str(clips["small"]), prompt="ink", credentials=fast_credentials(sandbox),
                                 output=str(tmp_path / "out.mp4"), settings={"poll_policy": fast_polls()})
        (entry,) = sandbox.ledger()
        failed = await _events(since, "aimlapi.generation.failed")
        assert failed[0].resource.id == f"aimlapi.generation.{entry.generation_id}"
        assert failed[0].payload["error_name"] and failed[0].payload["collect_command"] is None  # not charged
        def ours(event) -> bool:
            return f"prefect.automation.{automation.id}" in {event.resource.id, *(r.id for r in event.related)}

        fired = await _events(since, "prefect.automation.", until=lambda found: any(map(ours, found)))
        assert any(f"prefect.automation.{automation.id}" in {e.resource.id, *(r.id for r in e.related)}
                   for e in fired), [e.event for e in fired]
    finally:
        await automation.adelete()


async def test_a_run_that_stopped_waiting_names_the_command_that_collects_it(prefect_server, clips, tmp_path):
    """The run times out while the paid generation is still running; its summary names the exact
    `aimlapi-video collect` command, which then downloads it with no new charge."""
    from prefect_aimlapi_video.sandbox import SandboxConfig, run_sandbox

    with run_sandbox(SandboxConfig(processing_seconds=4)) as slow:
        output = tmp_path / "late.mp4"
        with pytest.raises(GenerationTimeoutError):
            await video_to_video(video=str(clips["small"]), prompt="ink", credentials=fast_credentials(slow),
                                 output=str(output), settings={"timeout_seconds": 1, "poll_policy": fast_polls()})
        (entry,) = slow.ledger()
        run = await prefect_api.latest_flow_run("aimlapi-video-to-video")
        summary = next(a.data for a in await prefect_api.artifacts(run.id) if a.type == "markdown")
        command = f"aimlapi-video collect {entry.generation_id} --output {output}"
        assert command in summary and "can still be collected" in summary

        env = subprocess_env(AIMLAPI_API_KEY=slow.api_key)
        argv = [*cli_command(), *command.split()[1:], "--base-url", slow.base_url]
        done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        assert last_line(done.stdout).startswith(f"completed: {output}")
        assert len(slow.ledger()) == 1 and sha256_file(output) == slow.ledger()[0].output_sha256
        assert (tmp_path / "late.mp4.json").is_file() and (tmp_path / "late.mp4.strip.jpg").is_file()
        collected = await prefect_api.latest_flow_run("aimlapi-collect-generation")
        assert collected.state.is_completed()
        assert any(a.key == "aimlapi-collect-generation-summary" for a in await prefect_api.artifacts(collected.id))


async def test_completed_generations_teach_the_poll_schedule(prefect_server, sandbox, clips, tmp_path):
    """Each completed generation adds its duration beside the records, where the next wait learns from."""
    store = LocalRecordStore(default_location())
    before = await store.read(DURATIONS_KEY)
    count = len(json.loads(before[0])) if before else 0
    await video_to_video(video=str(clips["small"]), prompt="ink", seed=91, credentials=fast_credentials(sandbox),
                         output=str(tmp_path / "out.mp4"), settings={"poll_policy": fast_polls()})
    durations = json.loads((await store.read(DURATIONS_KEY))[0])
    assert len(durations) == min(count + 1, 200) and 0 < durations[-1] < 60


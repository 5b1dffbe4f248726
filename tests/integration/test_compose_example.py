"""docs/examples/compose_tasks.py, the documented way to compose the three tasks in one's own flow.

Its flow is imported from the file (as a reader copies it) and run on the session's Prefect server
against the sandbox over loopback: one charge, the output the sandbox made, and what
`publish_generation` adds to the user's flow run: the summary and link artifacts (keyed by the
user's flow) and the `aimlapi.generation.completed` event, or on failure the `.failed` one. Then the
file is run as a script, as its docstring says.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType

import pytest

from prefect_aimlapi_video.api.errors import GenerationFailedError
from tests.support import prefect_api
from tests.support.reliability import fast_credentials, last_line, read_all_events, sha256_file, subprocess_env

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "compose_tasks.py"


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compose_tasks_example", EXAMPLE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def events_of(generation_id: str, since: datetime, expected: set[str]) -> dict[str, object]:
    """The `aimlapi.generation.*` events about one generation, once `expected` have arrived."""
    resource = f"aimlapi.generation.{generation_id}"

    async def read() -> dict[str, object]:
        found = await read_all_events(since, datetime.now(timezone.utc) + timedelta(minutes=1))
        return {e.event: e for e in found if e.resource.id == resource}

    return await prefect_api.eventually(read, lambda found: set(found) >= expected, timeout=30)


async def test_the_example_flow_delivers_once_with_its_summary_link_and_completed_event(
    prefect_server, sandbox, clips, tmp_path
):
    since = datetime.now(timezone.utc) - timedelta(seconds=5)
    result = await example().my_restyle(video=str(clips["small"]), prompt="ink wash", seed=5,
                                        output=str(tmp_path / "{stem}-{seed}-{generation}.mp4"),
                                        credentials=fast_credentials(sandbox))

    (entry,) = sandbox.ledger()  # one charge
    assert entry.status == "completed" and entry.generation_id == result.generation_id
    output = Path(result.output)
    assert output.parent == tmp_path and output.name.startswith("small-5-") and output.is_file()
    assert sha256_file(output) == entry.output_sha256 == result.sha256
    assert result.credits == entry.credits and result.charged_credits == entry.credits

    run = await prefect_api.flow_run(result.flow_run_id)
    assert run.state.is_completed()
    artifacts = await prefect_api.artifacts(result.flow_run_id, expect=3)  # summary, link, progress
    keys = {a.key for a in artifacts if a.key}
    assert {"aimlapi-my-restyle-summary", "aimlapi-my-restyle-output"} <= keys
    summary = next(a.data for a in artifacts if a.key == "aimlapi-my-restyle-summary")
    for expected in ("# Video-to-video generation", "**completed**", result.generation_id, result.sha256,
                     "| Seed | 5 |", "160x96", str(output), "Status timeline", "input (top) and output (bottom)"):
        assert expected in summary, expected
    link = next(a.data for a in artifacts if a.key == "aimlapi-my-restyle-output")
    assert link == f"[{output}](file://{output})"

    found = await events_of(entry.generation_id, since, {"aimlapi.generation.completed"})
    completed = found["aimlapi.generation.completed"]
    assert f"prefect.flow-run.{result.flow_run_id}" in {r.id for r in completed.related}
    assert completed.payload["status"] == "completed" and completed.payload["output"] == str(output)
    assert completed.payload["charged_credits"] == entry.credits and completed.payload["durations"]["total_s"] > 0
    assert "aimlapi.generation.failed" not in found


async def test_a_failed_generation_in_the_example_publishes_why_and_the_failed_event(
    prefect_server, sandbox, clips, tmp_path
):
    since = datetime.now(timezone.utc) - timedelta(seconds=5)
    sandbox.set_faults({"seed": 1, "script": [{"route": "submit", "kind": "generation_error"}]})
    with pytest.raises(GenerationFailedError):
        await example().my_restyle(video=str(clips["small"]), prompt="ink wash", output=str(tmp_path / "o.mp4"),
                                   credentials=fast_credentials(sandbox))
    (entry,) = sandbox.ledger()
    assert not list(tmp_path.iterdir())

    found = await events_of(entry.generation_id, since, {"aimlapi.generation.failed"})
    failed = found["aimlapi.generation.failed"]
    assert failed.payload["status"] == "failed" and failed.payload["error_name"]
    assert failed.payload["collect_command"] is None  # failed at the provider: not charged, nothing to collect
    (run_id,) = [r.id.removeprefix("prefect.flow-run.") for r in failed.related if r.id.startswith("prefect.flow-run.")]
    artifacts = await prefect_api.artifacts(run_id, expect=2)
    summary = next(a.data for a in artifacts if a.key == "aimlapi-my-restyle-summary")
    assert "**failed**" in summary and entry.generation_id in summary and "| Error |" in summary


def test_the_example_runs_as_a_script_with_the_key_and_base_url_it_documents(prefect_server, sandbox, clips, tmp_path):
    answer = subprocess.run(
        [sys.executable, str(EXAMPLE), str(clips["small"]), "a linocut print", sandbox.base_url],
        cwd=tmp_path, env=subprocess_env(AIMLAPI_API_KEY=sandbox.api_key), capture_output=True, text=True,
        timeout=180,
    )
    assert answer.returncode == 0, answer.stderr[-3000:]
    (entry,) = sandbox.ledger()
    (output,) = (tmp_path / "restyled").glob("small-*.mp4")  # the example's default output template
    assert sha256_file(output) == entry.output_sha256
    assert last_line(answer.stdout).startswith(f"completed: {output}")

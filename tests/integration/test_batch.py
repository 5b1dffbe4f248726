"""The batch flow on a real Prefect server and the sandbox: child runs, failures, caps, artifacts."""

from __future__ import annotations

import json
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

from prefect_aimlapi_video.api.errors import AuthenticationError, BatchFailedError, InvalidInputError
from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.flows.batch import video_to_video_batch
from prefect_aimlapi_video.storage.record_store import LocalRecordStore
from prefect_aimlapi_video.submission import log_visibility
from tests.support import prefect_api

pytestmark = pytest.mark.integration


def credentials(sandbox) -> AimlApiCredentials:
    return AimlApiCredentials(api_key=sandbox.api_key, base_url=sandbox.base_url)


async def _children(parent_id: str) -> list:
    async with get_client() as client:
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id]))
        )


async def _latest_batch_run() -> object:
    return await prefect_api.latest_flow_run("aimlapi-video-to-video-batch")


async def test_batch_of_ten_with_two_failures(prefect_server, sandbox, clips, tmp_path):
    sandbox.set_faults({"script": [{"route": "submit", "kind": "generation_error", "times": 2}]})
    items = [{"video": str(clips["small"]), "seed": i, "output": str(tmp_path / f"out-{i}.mp4")} for i in range(10)]
    records = tmp_path / "records"
    for _ in range(log_visibility.WANTED_SIGHTINGS):  # the account's log is learned: no reads to watch it
        await log_visibility.add_sighting(LocalRecordStore(records),
                                          log_visibility.Sighting(seen_s=0.1, phase="acceptance", at=time.time()))

    with pytest.raises(BatchFailedError, match="2 of 10 generations failed"):
        await video_to_video_batch(items=items, prompt="charcoal drawing", credentials=credentials(sandbox),
                                   concurrency_limit=None, max_concurrency=10, settings={"submissions": str(records)})

    ledger = sandbox.ledger()
    assert len(ledger) == 10
    assert sorted(e.status for e in ledger) == ["completed"] * 8 + ["error"] * 2
    # The batch's first run made each child's key for it alone: no usage-log scan before any POST.
    assert sandbox.log_reads()["reads"] == 0
    parent = await _latest_batch_run()
    assert parent.state.is_failed() and "2 of 10 generations failed" in parent.state.message
    children = await _children(str(parent.id))
    assert len(children) == 10
    assert sorted(c.state.type.value for c in children) == ["COMPLETED"] * 8 + ["FAILED"] * 2

    artifacts = await prefect_api.artifacts(parent.id, expect=2)
    table = next(a for a in artifacts if a.type == "table")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert len(rows) == 10
    by_generation = {e.generation_id: e for e in ledger}
    for row in rows:
        entry = by_generation.get(row["generation_id"])
        if row["status"] == "completed":
            assert entry is not None and entry.status == "completed"
            assert row["output"] == str(tmp_path / f"out-{row['index']}.mp4") and row["credits"] == entry.credits
            assert row["flow_run_url"].endswith(next(str(c.id) for c in children if c.name == f"v2v-small-seed-{row['index']}"))
        else:
            assert row["error"] and "Injected by the sandbox" in row["error"]
    assert sum(r["status"] == "completed" for r in rows) == 8
    progress = next(a for a in artifacts if a.type == "progress")
    assert progress.data == 100
    # A child keeps its summary; its progress and output link would repeat the batch's own.
    child = next(c for c in children if c.state.is_completed())
    assert [(a.type, a.key) for a in await prefect_api.artifacts(child.id)] == [
        ("markdown", "aimlapi-video-to-video-summary")]


async def test_global_concurrency_limit_holds(prefect_server, sandbox, clips, tmp_path):
    async with get_client() as client:
        await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="v2v-it-cap", limit=3))
    items = [{"video": str(clips["small"]), "seed": i} for i in range(8)]

    rows = await video_to_video_batch(items=items, prompt="x", credentials=credentials(sandbox),
                                      output=str(tmp_path / "{seed}.mp4"), concurrency_limit="v2v-it-cap",
                                      max_concurrency=8)

    assert [r.status for r in rows] == ["completed"] * 8
    assert len(sandbox.ledger()) == 8
    assert 1 <= sandbox.max_in_flight() <= 3


async def test_local_cap_applies_when_the_global_limit_is_missing(prefect_server, sandbox, clips, tmp_path):
    items = [{"video": str(clips["small"]), "seed": i} for i in range(6)]
    rows = await video_to_video_batch(items=items, prompt="x", credentials=credentials(sandbox),
                                      output=str(tmp_path / "{seed}.mp4"), concurrency_limit="no-such-limit",
                                      max_concurrency=2)
    assert len(rows) == 6 and sandbox.max_in_flight() <= 2
    parent = await _latest_batch_run()
    assert await prefect_api.logs(parent.id, containing="prefect gcl create no-such-limit")


async def test_manifest_csv_and_bad_manifest(prefect_server, sandbox, clips, tmp_path):
    manifest = tmp_path / "jobs.csv"
    manifest.write_text(f"video,prompt,seed,strength\n{clips['small']},ink wash,5,0.4\n{clips['odd']},ukiyo-e,6,\n")
    rows = await video_to_video_batch(manifest=str(manifest), credentials=credentials(sandbox),
                                      output=str(tmp_path / "{stem}-{seed}.mp4"), concurrency_limit=None,
                                      input_root=str(clips["small"].parent))  # the clips are not beside it
    assert [r.status for r in rows] == ["completed", "completed"]
    assert {e.prompt for e in sandbox.ledger()} == {"ink wash", "ukiyo-e"}
    assert {e.strength for e in sandbox.ledger()} == {0.4, 0.85}
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"video": "a.mp4"}\n{not json\n')
    with pytest.raises(InvalidInputError, match="line 2"):
        await video_to_video_batch(manifest=str(broken), prompt="x", credentials=credentials(sandbox))
    assert len(sandbox.ledger()) == 2


async def _heartbeats(flow_run_ids: list[str]) -> dict[str, int]:
    """How many `prefect.flow-run.heartbeat` events the server holds for each of these runs."""
    from datetime import datetime, timedelta, timezone

    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    now = datetime.now(timezone.utc)
    event_filter = EventFilter(
        occurred=EventOccurredFilter(since=now - timedelta(hours=1), until=now + timedelta(hours=1)),
        event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{i}" for i in flow_run_ids]),
    )
    async with get_client() as client:
        events = (await client.read_events(filter=event_filter, limit=50)).events
    return {i: sum(e.resource.id == f"prefect.flow-run.{i}" for e in events) for i in flow_run_ids}


async def test_children_have_no_heartbeat_threads(prefect_server, sandbox, clips, tmp_path):
    """One heartbeat for the batch's process, none per waiting generation.

    Prefect's heartbeat thread emits its first event as it starts, so a child without heartbeat
    events had no heartbeat thread.
    """
    items = [{"video": str(clips["small"]), "seed": i} for i in range(4)]

    await video_to_video_batch(items=items, prompt="x", credentials=credentials(sandbox),
                               output=str(tmp_path / "{seed}.mp4"), concurrency_limit=None, max_concurrency=4)

    parent = await _latest_batch_run()
    children = [str(c.id) for c in await _children(str(parent.id))]
    assert len(children) == 4
    beats = await prefect_api.eventually(lambda: _heartbeats([str(parent.id), *children]),
                                         lambda found: found[str(parent.id)] >= 1)
    assert beats[str(parent.id)] >= 1, "the control: the parent's heartbeat is recorded"
    assert all(beats[c] == 0 for c in children), beats


async def test_wrong_key_fails_the_batch_before_any_child(prefect_server, sandbox, clips):
    items = [{"video": str(clips["small"]), "seed": i} for i in range(5)]
    wrong = AimlApiCredentials(api_key="not-the-key", base_url=sandbox.base_url)

    with pytest.raises(AuthenticationError, match="AimlApiCredentials block"):
        await video_to_video_batch(items=items, prompt="x", credentials=wrong, concurrency_limit=None)

    parent = await _latest_batch_run()
    assert parent.state.is_failed()
    assert await _children(str(parent.id)) == []
    assert sandbox.ledger() == []


async def test_a_sweep_of_a_manifest_reads_the_log_before_its_first_posts(prefect_server, sandbox, clips, tmp_path):
    """A sweep's keys (`folder:item-<n>`) are the same in every sweep, so unlike a batch's they are no
    one run's own: a first attempt asks the usage log before it pays (see `flows.batch_context`)."""
    from prefect_aimlapi_video.flows.folder import video_to_video_folder

    manifest = tmp_path / "manifest.csv"
    manifest.write_text("video,seed\n" + "".join(f"{clips['small']},{seed}\n" for seed in (1, 2)))
    rows = await video_to_video_folder(
        source=str(manifest), output_prefix=f"{tmp_path / 'out'}/", output_name="{stem}-{seed}.mp4", prompt="ink",
        credentials=credentials(sandbox), concurrency_limit=None, input_root=str(clips["small"].parent),
    )
    assert [r.status for r in rows] == ["completed", "completed"] and len(sandbox.ledger()) == 2
    assert sandbox.log_reads()["reads"] >= 1

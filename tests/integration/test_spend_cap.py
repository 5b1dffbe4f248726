"""The spend cap on real runs: a batch that may pay for 5 of its 10 items, and two batches under one cap.

Each item reserves its own estimate (the clip's 0.5 s at the sandbox's 63,000 credits/s: 31,500) and
the sandbox charges by the output's length at completion (the same). Its generations take long
enough that every item asks for the budget before the first completes, so the cap admits exactly
the items whose estimates fit.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from prefect_aimlapi_video.api.errors import BatchFailedError
from prefect_aimlapi_video.flows.batch import video_to_video_batch
from prefect_aimlapi_video.sandbox import SandboxConfig, run_sandbox
from prefect_aimlapi_video.storage.record_store import LocalRecordStore, default_location
from prefect_aimlapi_video.submission.budget import Budget
from tests.support import prefect_api
from tests.support.reliability import fast_credentials, fast_polls

pytestmark = pytest.mark.integration
ESTIMATE = 0.5 * 63_000  # each item's: the test clip's seconds at the sandbox's (and the provider's sample) rate


@pytest.fixture
def slow_sandbox():
    with run_sandbox(SandboxConfig(processing_seconds=6, workers=20)) as handle:
        yield handle


def items(clips, tmp_path, count: int, tag: str) -> list[dict]:
    return [{"video": str(clips["small"]), "seed": i, "output": str(tmp_path / f"{tag}-{i}.mp4")} for i in range(count)]


async def test_a_cap_that_admits_five_of_ten(prefect_server, slow_sandbox, clips, tmp_path):
    cap_usd = 5.5 * ESTIMATE / 2_000_000  # $0.0866: five estimates fit, six do not
    arguments = dict(items=items(clips, tmp_path, 10, "a"), prompt="gouache",
                     credentials=fast_credentials(slow_sandbox), concurrency_limit=None, max_concurrency=10,
                     settings={"poll_policy": fast_polls(), "max_usd": cap_usd})
    with pytest.raises(BatchFailedError, match="0 of 10 generations failed and 5 were skipped \\(budget\\)"):
        await video_to_video_batch(**arguments)
    assert len(slow_sandbox.ledger()) == 5 and all(e.status == "completed" for e in slow_sandbox.ledger())

    parent = await prefect_api.latest_flow_run("aimlapi-video-to-video-batch")
    (table,) = [a for a in await prefect_api.artifacts(parent.id) if a.type == "table"]
    data = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert table.key == "aimlapi-video-to-video-batch-table"
    assert sorted(row["status"] for row in data) == ["completed"] * 5 + ["skipped (budget)"] * 5
    assert list(data[0])[:5] == ["status", "error", "collect_command", "output", "credits"]  # what a person scans first
    assert "5 skipped (budget)" in table.description and "cap 173,250 credits ($0.09)" in table.description
    skipped = [row for row in data if row["status"] == "skipped (budget)"]
    assert all("could pass its cap" in row["error"] for row in skipped)

    rows = await video_to_video_batch(**{**arguments, "tolerate_failures": True,
                                         "items": items(clips, tmp_path, 10, "b")})
    assert sorted(r.status for r in rows) == ["completed"] * 5 + ["skipped (budget)"] * 5  # told to tolerate it
    assert len(slow_sandbox.ledger()) == 10


async def test_two_concurrent_batches_under_one_cap_never_pass_it_together(prefect_server, slow_sandbox, clips,
                                                                            tmp_path):
    name = f"shared-{uuid.uuid4().hex[:8]}"
    cap_credits = 4.5 * ESTIMATE

    async def batch(tag: str):
        return await video_to_video_batch(
            items=items(clips, tmp_path, 4, tag), prompt="ink", credentials=fast_credentials(slow_sandbox),
            concurrency_limit=None, max_concurrency=4, tolerate_failures=True,
            settings={"poll_policy": fast_polls(), "max_credits": cap_credits, "budget": name})

    first, second = await asyncio.gather(batch("x"), batch("y"))
    completed = [r for r in first + second if r.status == "completed"]
    assert len(completed) == 4 and len(slow_sandbox.ledger()) == 4  # together, never more than the cap admits
    state = await Budget(LocalRecordStore(default_location()), name, cap_credits).state()
    assert state.reserved == {} and 0 < state.spent <= cap_credits
    assert state.spent == sum(e.credits for e in slow_sandbox.ledger())

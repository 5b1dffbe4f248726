"""tasks.progress.ProgressArtifact: at most one request per interval, finals and exits sent at once."""

from __future__ import annotations

import asyncio
import time

import prefect.artifacts
import pytest

from prefect_aimlapi_video.tasks.progress import ProgressArtifact


@pytest.fixture
def sent(monkeypatch) -> list[tuple[float, float, str]]:
    """Stand-ins for the two Prefect calls, recording (monotonic time, progress, description)."""
    calls: list[tuple[float, float, str]] = []

    async def create(progress: float, description: str) -> str:
        calls.append((time.monotonic(), progress, description))
        return "artifact-id"

    async def update(artifact_id: str, progress: float, description: str) -> None:
        assert artifact_id == "artifact-id"
        calls.append((time.monotonic(), progress, description))

    monkeypatch.setattr(prefect.artifacts, "acreate_progress_artifact", create)
    monkeypatch.setattr(prefect.artifacts, "aupdate_progress_artifact", update)
    return calls


async def test_updates_are_throttled_to_one_per_interval(sent):
    async with ProgressArtifact(min_interval=0.3) as progress:
        started = time.monotonic()
        for percent in range(1, 31):  # one update every 20 ms for 0.6 s
            progress.update(percent, f"{percent}%")
            await asyncio.sleep(0.02)
    # the first at once, then one per 0.3 s, then what was pending at exit: not 30 requests
    assert 2 <= len(sent) <= 4, sent
    assert sent[0][0] - started < 0.05 and sent[0][1] == 1
    gaps = [b[0] - a[0] for a, b in zip(sent, sent[1:-1])]
    assert all(gap >= 0.29 for gap in gaps), gaps
    assert sent[-1][1] == 30, "the latest value is the one sent, overtaken ones are skipped"


async def test_a_final_value_is_sent_without_waiting_out_the_interval(sent):
    async with ProgressArtifact(min_interval=5.0) as progress:
        progress.update(5, "queued")
        await asyncio.sleep(0.05)
        progress.update(40, "generating")
        await asyncio.sleep(0.05)
        started = time.monotonic()
        progress.update(100, "completed")
        await asyncio.sleep(0.1)
        assert [s[1] for s in sent] == [5, 100] and sent[-1][0] - started < 0.05


async def test_exit_sends_the_pending_value_at_once(sent):
    started = time.monotonic()
    async with ProgressArtifact(min_interval=5.0) as progress:
        progress.update(5, "queued")
        await asyncio.sleep(0.05)
        progress.update(60, "generating")
    assert [s[1] for s in sent] == [5, 60]
    assert time.monotonic() - started < 1.0, "leaving the block does not wait out the 5 s interval"


async def test_a_failed_update_never_raises(monkeypatch):
    async def broken(**_: object) -> None:
        raise RuntimeError("server down")

    monkeypatch.setattr(prefect.artifacts, "acreate_progress_artifact", broken)
    async with ProgressArtifact(min_interval=0.01) as progress:
        progress.update(50, "half")

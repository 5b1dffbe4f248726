"""How the work-pool fan-out reads each child's outcome from its generation events."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from uuid import uuid4

from prefect.client.schemas.objects import FlowRun
from prefect.events.schemas.events import Event
from prefect.states import Completed, Crashed, Failed

from prefect_aimlapi_video.flows.batch_items import ItemBase
from prefect_aimlapi_video.flows.fanout import _Child, _read_outcomes

T0 = datetime(2026, 11, 30, 3, 0, tzinfo=timezone.utc)


def _event(run_id, kind: str, generation: str, seconds: float, **payload) -> Event:
    return Event(occurred=T0 + timedelta(seconds=seconds), event=f"aimlapi.generation.{kind}",
                 resource={"prefect.resource.id": f"aimlapi.generation.{generation}"},
                 related=[{"prefect.resource.id": f"prefect.flow-run.{run_id}", "prefect.resource.role": "flow-run"}],
                 payload=payload)


class _Events:
    """A client whose `read_events` answers one page holding the given events."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events

    async def read_events(self, filter, limit):  # noqa: A002 - Prefect's keyword
        return SimpleNamespace(events=self.events, next_page=None)


def _child(index: int, state) -> _Child:
    run = FlowRun(flow_id=uuid4(), name=f"child-{index}", state=state)
    return _Child(index, ItemBase(video=f"/in/{index}.mp4"), run)


def test_a_completed_child_ignores_the_failed_event_of_its_stopped_attempt():
    child = _child(0, Completed())
    events = [
        _event(child.run.id, "completed", "gen-1", 10, output="/out/0.mp4", credits=120),
        # The first attempt's process was killed; its failure event arrives after the success.
        _event(child.run.id, "failed", "gen-1", 12, status="failed", error_message="worker gone"),
    ]
    asyncio.run(_read_outcomes(_Events(events), [child], T0))
    assert child.row is not None
    assert (child.row.status, child.row.output, child.row.credits, child.row.error) == ("completed", "/out/0.mp4",
                                                                                         120, None)


def test_a_failed_child_ignores_a_completed_event_and_keeps_the_last_failure():
    child = _child(1, Failed(message="budget"))
    events = [
        _event(child.run.id, "failed", "gen-2", 5, status="failed", error_message="first"),
        _event(child.run.id, "completed", "gen-2", 6, output="/out/1.mp4"),
        _event(child.run.id, "failed", "gen-2", 7, status="rejected", error_message="second"),
    ]
    asyncio.run(_read_outcomes(_Events(events), [child], T0))
    assert child.row is not None
    assert (child.row.status, child.row.error, child.row.output) == ("rejected", "second", None)


def test_a_child_with_no_agreeing_event_keeps_no_row_and_events_of_other_runs_do_not_count():
    crashed, other = _child(2, Crashed()), _child(3, Completed())
    events = [_event(crashed.run.id, "completed", "gen-3", 1, output="/x.mp4"),
              _event(other.run.id, "submitted", "gen-4", 2)]
    asyncio.run(_read_outcomes(_Events(events), [crashed, other], T0))
    assert crashed.row is None and other.row is None

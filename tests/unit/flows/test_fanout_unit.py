"""The work-pool fan-out: how it reads each child's outcome from its generation events, refuses children
that would keep their records on their own disks, and tells a dead child from a long one."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.events.schemas.events import Event
from prefect.logging import disable_run_logger, get_logger
from prefect.states import Completed, Crashed, Failed, Pending, Running, Submitting

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.flows import fanout
from prefect_aimlapi_video.flows.batch_items import ItemBase
from prefect_aimlapi_video.flows.fanout import _Child, _read_outcomes, _revive, _stale, check_children

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


# -- before any child runs: where their records live, whether silence tells a dead one ---------------


@pytest.mark.parametrize("env, submissions", [
    ({}, None),  # each worker's $PREFECT_HOME
    ({"AIMLAPI_SUBMISSIONS_DIR": "/srv/records"}, None),
    ({"AIMLAPI_SUBMISSIONS_DIR": "s3://b/p"}, "/local/records"),  # the flow's own parameter wins
    ({"_submissions_parameter": "/deployment/default"}, None),
])
def test_a_fan_out_whose_children_keep_records_on_their_own_disk_is_refused(env, submissions):
    with pytest.raises(InvalidInputError, match="workers_share_disk=True") as refused:
        check_children(env, submissions, workers_share_disk=False)
    assert "s3://bucket/prefix" in str(refused.value)
    check_children(env, submissions, workers_share_disk=True)  # the user says they share one disk


def test_a_shared_s3_store_is_accepted_and_heartbeats_are_read_from_the_env():
    assert check_children({"AIMLAPI_SUBMISSIONS_DIR": "s3://b/p", "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"},
                          None, workers_share_disk=False) is True
    assert check_children({}, "s3://b/p", workers_share_disk=False) is False


class _Heartbeats:
    """A client whose `read_events` answers the heartbeats of the given runs."""

    def __init__(self, alive: list) -> None:
        self.alive = alive

    async def read_events(self, filter, limit):  # noqa: A002 - Prefect's keyword
        events = [SimpleNamespace(resource=SimpleNamespace(id=f"prefect.flow-run.{run_id}")) for run_id in self.alive]
        return SimpleNamespace(events=events, next_page=None)


def _running_since(index: int, seconds: float, first_started: float | None = None) -> _Child:
    """A child Running for `seconds` (its current Running state), first started `first_started` ago."""
    now = datetime.now(timezone.utc)
    child = _child(index, Running(timestamp=now - timedelta(seconds=seconds)))
    child.run.start_time = now - timedelta(seconds=first_started or seconds)
    return child


def test_a_child_is_taken_for_dead_only_where_its_heartbeats_are_known():
    old = _running_since(0, 300)
    assert asyncio.run(_stale(_Heartbeats([]), [old], 90, heartbeats=False)) == set()  # age alone proves nothing
    assert asyncio.run(_stale(_Heartbeats([]), [old], 90, heartbeats=True)) == {old.run.id}

    seen_then_silent = _running_since(1, 300)
    assert asyncio.run(_stale(_Heartbeats([seen_then_silent.run.id]), [seen_then_silent], 90, heartbeats=False)) == set()
    assert seen_then_silent.heartbeat_seen
    assert asyncio.run(_stale(_Heartbeats([]), [seen_then_silent], 90, heartbeats=False)) == {seen_then_silent.run.id}
    young = _running_since(2, 10)
    assert asyncio.run(_stale(_Heartbeats([]), [young], 90, heartbeats=True)) == set()
    # run again 10 s ago after a first start 300 s ago: no heartbeat yet is no proof of death (it was
    # marked dead within a second of running again, using up its retries, in the SIGTERM test)
    again = _running_since(3, 10, first_started=300)
    assert asyncio.run(_stale(_Heartbeats([]), [again], 90, heartbeats=True)) == set()


class _States(_Heartbeats):
    """Also records the states the batch sets."""

    def __init__(self) -> None:
        super().__init__([])
        self.set: list[tuple[str, str]] = []

    async def set_flow_run_state(self, run_id, state, force):
        self.set.append((run_id, state.name))


def test_a_child_a_worker_took_and_never_started_runs_again(monkeypatch):
    """A worker stopped with SIGTERM kills its flow runs' processes without a word to the server: one still
    starting stays Pending ("Submitting") for ever, and the batch waited for it for ever."""
    monkeypatch.setattr(fanout, "PENDING_SECONDS", 60.0)
    now = datetime.now(timezone.utc)
    stuck = _child(0, Submitting(timestamp=now - timedelta(seconds=61)))
    starting = _child(1, Pending(timestamp=now - timedelta(seconds=30)))
    running = {child.run.id: child for child in (stuck, starting)}
    client = _States()
    with disable_run_logger():
        asyncio.run(_revive(client, running, 2, 90, True, get_logger("test")))
    assert client.set == [(stuck.run.id, "Crashed"), (stuck.run.id, "Scheduled")]
    assert stuck.retries == 1 and stuck.run.state.is_scheduled() and starting.run.state.is_pending()

"""A batch fanned out over a work pool: each item a flow run of a deployment, run by any of its workers.

The parent creates the children with `run_deployment(..., as_subflow=True)` and a per-item
idempotency key (`<parent run>:item-<n>`), so a retried parent finds its children instead of
creating them again; each child keeps its own generation key, so a child run again resumes its
generation instead of paying for it again. At most `max_concurrency` children are unfinished at
once. The parent then waits with one loop for all of them (one read of their states per tick, not
a poll or a thread per child) and learns how each went from the events its generation emitted
(`aimlapi.generation.*`, related to the child run: status, id, output, credits, durations).

A child that crashed, that stopped sending heartbeats while Running (its worker was killed), or
that a worker took and never started (Pending past `PENDING_SECONDS`: a worker stopped with SIGTERM
kills its flow runs' processes without reporting them, and one still starting stays Pending for
ever), is marked Crashed and scheduled again, up to `retries` times, to be picked up by any worker.
Silence while Running means death only where heartbeats are on: the deployment's (or its pool's)
job variables set `PREFECT_FLOWS_HEARTBEAT_FREQUENCY`, or the child has been seen sending them. A
child that sends none is never revived for its age alone: it may simply be a long generation, still
alive. Its silence counts from when it last became Running, not from its first start: a child run
again is not dead for the age of its first attempt.

Before any child runs, `check_children` refuses a fan-out whose children would keep their
exactly-once records on each worker's own disk (no `s3://` store in `submissions` or in the
deployment's `AIMLAPI_SUBMISSIONS_DIR`): a child run again on another host would then find no
record, and only a usage log that lists requests at acceptance would keep it from paying again.
`workers_share_disk=True` says that every worker sees the same directory (one host, or a shared
volume with working locks).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventRelatedFilter,
    EventResourceFilter,
)
from prefect.logging import get_run_logger
from prefect.states import Crashed, Scheduled

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.api.redact import redact
from prefect_aimlapi_video.flows.batch_items import BatchItemResult, ItemBase, child_arguments, shown_video
from prefect_aimlapi_video.storage.record_store import SUBMISSIONS_ENV

TICK_SECONDS = 2.0
# A Running child without a heartbeat for this long is taken for dead (its worker was killed). The
# deployment's job variables turn heartbeats on: PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 (Prefect's
# minimum), so a live child sends three in this time.
STALE_SECONDS = 90.0
# A child a worker took (Pending, "Submitting") but has not started within this long is taken for
# lost. Generous: starting a flow run's process takes seconds, a Kubernetes pod or an ECS task may
# take minutes (an image pull); a child revived too early only starts twice, and its record lets
# one of the two pay.
PENDING_SECONDS = 600.0
RETRIES = 2
_CHUNK = 200
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"


async def children_env(deployment: str) -> dict[str, str]:
    """The environment the deployment's flow runs get: its pool's default `env`, then its own."""
    async with get_client() as client:
        found = await client.read_deployment_by_name(deployment)
        pool = await client.read_work_pool(found.work_pool_name) if found.work_pool_name else None
    template = (pool.base_job_template if pool else None) or {}
    defaults = template.get("variables", {}).get("properties", {}).get("env", {}).get("default") or {}
    env = {**defaults, **((found.job_variables or {}).get("env") or {})}
    if (found.parameters or {}).get("submissions"):
        env.setdefault("_submissions_parameter", str(found.parameters["submissions"]))
    return {str(k): str(v) for k, v in env.items() if v is not None}


def check_children(env: dict[str, str], submissions: str | None, workers_share_disk: bool) -> bool:
    """Refuse children that would keep their records on each worker's own disk (see the module's
    docstring); True when their heartbeats are on, so that silence tells a dead child."""
    location = submissions or env.get("_submissions_parameter") or env.get(SUBMISSIONS_ENV)
    if not (location or "").startswith("s3://") and not workers_share_disk:
        where = f"the directory {location!r}" if location else "each worker's $PREFECT_HOME (the default)"
        raise InvalidInputError(
            f"With `deployment=`, the children may run on several hosts, but their exactly-once records would live "
            f"in {where}: a child run again on another host could pay a second time. Set `submissions` (or "
            f"{SUBMISSIONS_ENV} in the deployment's job variables) to s3://bucket/prefix, or pass "
            "workers_share_disk=True if every worker sees the same directory."
        )
    return bool(env.get(HEARTBEAT_ENV, "").strip() not in ("", "0", "None", "none"))


def _json_ready(arguments: dict[str, Any]) -> dict[str, Any]:
    """Child parameters travel through the Prefect API: plain JSON only (a block by its name)."""
    ready = {}
    for name, value in arguments.items():
        if hasattr(value, "model_dump"):
            if name == "credentials":
                raise InvalidInputError("With `deployment=`, pass `credentials` as a block name: the children run "
                                        "on other workers and load the block themselves.")
            value = value.model_dump(mode="json")
        ready[name] = value
    return ready


class _Child:
    def __init__(self, index: int, item: ItemBase, run: FlowRun) -> None:
        self.index, self.item, self.run = index, item, run
        self.retries = 0
        self.heartbeat_seen = False
        self.finished_at: float | None = None
        self.row: BatchItemResult | None = None


async def run_on_work_pool(
    items: list[ItemBase], defaults: dict[str, Any], *, scope: str, deployment: str, max_concurrency: int,
    on_done: Callable[[BatchItemResult], None], heartbeats: bool, retries: int | None = None,
    stale_seconds: float | None = None,
) -> list[BatchItemResult]:
    """Run each item as a flow run of `deployment`; rows in item order. `heartbeats`: the deployment
    turns flow-run heartbeats on (`check_children`)."""
    from prefect.runtime import flow_run

    retries = RETRIES if retries is None else retries
    stale_seconds = STALE_SECONDS if stale_seconds is None else stale_seconds

    logger = get_run_logger()
    parent = str(flow_run.id) if flow_run.id else scope
    started = datetime.now(timezone.utc) - timedelta(seconds=5)
    waiting = list(enumerate(items))
    running: dict[UUID, _Child] = {}
    finished: list[_Child] = []
    while waiting or running:
        while waiting and len(running) < max_concurrency:
            index, item = waiting.pop(0)
            arguments = child_arguments(defaults, item)
            arguments.setdefault("idempotency_key", f"{scope}:item-{index}")
            run = await run_deployment(deployment, parameters=_json_ready(arguments), timeout=0, as_subflow=True,
                                       idempotency_key=f"{parent}:item-{index}")
            running[run.id] = _Child(index, item, run)
        await asyncio.sleep(TICK_SECONDS)
        async with get_client() as client:
            for chunk in _chunks(list(running), _CHUNK):
                for run in await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk))):
                    running[run.id].run = run
            await _revive(client, running, retries, stale_seconds, heartbeats, logger)
            done = [child for child in running.values() if child.run.state and child.run.state.is_final()]
            await _read_outcomes(client, done, started)
        for child in done:
            if child.row is not None or (time.monotonic() - (child.finished_at or time.monotonic())) > 15:
                running.pop(child.run.id)
                child.row = child.row or _row_from_state(child)
                finished.append(child)
                on_done(child.row)
            elif child.finished_at is None:
                child.finished_at = time.monotonic()  # its events may lag its state: a few more ticks
    logger.info("All %d child runs of %s are final.", len(items), deployment)
    return [child.row for child in sorted(finished, key=lambda c: c.index) if child.row is not None]


async def _revive(client: Any, running: dict[UUID, _Child], retries: int, stale_seconds: float, heartbeats: bool,
                  logger: Any) -> None:
    """Crashed children, Running ones whose heartbeats stopped and Pending ones never started run again
    (by any worker)."""
    stale = await _stale(client, [c for c in running.values() if c.run.state and c.run.state.is_running()],
                         stale_seconds, heartbeats)
    never_started = {c.run.id for c in running.values() if _in_state_for(c.run, "PENDING") > PENDING_SECONDS}
    for child in running.values():
        state = child.run.state
        if child.run.id in stale | never_started:
            why = ("No heartbeat: its worker is gone." if child.run.id in stale
                   else f"Pending for over {PENDING_SECONDS:.0f} s: the worker that took it never started it.")
            logger.warning("Child %s (item %d): %s Marking it Crashed.", child.run.name, child.index, why)
            await client.set_flow_run_state(child.run.id, Crashed(message=why), force=True)
            state = Crashed()
        if state is not None and state.is_crashed() and child.retries < retries:
            child.retries += 1
            logger.warning("Child %s (item %d) crashed; scheduling it again (%d of %d): it resumes its generation.",
                           child.run.name, child.index, child.retries, retries)
            await client.set_flow_run_state(child.run.id, Scheduled(), force=True)
            child.run.state = Scheduled()


async def _stale(client: Any, candidates: list[_Child], stale_seconds: float, heartbeats: bool) -> set[UUID]:
    """Running children with no heartbeat (nor start) in the last `stale_seconds`, among those whose
    staleness is known: heartbeats are on for the deployment, or this child was seen sending them."""
    if not candidates:
        return set()
    now = datetime.now(timezone.utc)
    since = now - timedelta(seconds=stale_seconds)
    old = [c for c in candidates if _in_state_for(c.run, "RUNNING") > stale_seconds]
    if not old:
        return set()
    alive: set[str] = set()
    page = await client.read_events(filter=EventFilter(
        occurred=EventOccurredFilter(since=since, until=now + timedelta(seconds=5)),
        event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{c.run.id}" for c in old]),
    ), limit=50)
    events = list(page.events)
    while page.next_page:
        page = await client.read_events_page(str(page.next_page))
        events += page.events
    for event in events:
        alive.add(event.resource.id)
    for child in old:
        child.heartbeat_seen = child.heartbeat_seen or f"prefect.flow-run.{child.run.id}" in alive
    return {c.run.id for c in old if f"prefect.flow-run.{c.run.id}" not in alive and (heartbeats or c.heartbeat_seen)}


async def _read_outcomes(client: Any, done: list[_Child], since: datetime) -> None:
    """Rows from the events each finished child's generation emitted.

    A child that ran more than once (its worker died, it was scheduled again) may hold events from
    each attempt, in any order: a stopped attempt's `failed` can come after the attempt that
    completed. So an event counts only if it agrees with the child's final state (`completed` for
    a Completed child, any other outcome for the rest), and the last such event wins.
    """
    pending = [child for child in done if child.row is None]
    if not pending:
        return
    by_run = {f"prefect.flow-run.{child.run.id}": child for child in pending}
    page = await client.read_events(filter=EventFilter(
        occurred=EventOccurredFilter(since=since, until=datetime.now(timezone.utc) + timedelta(minutes=1)),
        event=EventNameFilter(prefix=["aimlapi.generation."]),
        related=EventRelatedFilter(id=list(by_run)),
    ), limit=50)
    events = list(page.events)
    while page.next_page:
        page = await client.read_events_page(str(page.next_page))
        events += page.events
    for event in sorted(events, key=lambda e: e.occurred):
        kind = event.event.rsplit(".", 1)[-1]
        if kind == "submitted":
            continue
        child = next((by_run[r.id] for r in event.related if r.id in by_run), None)
        if child is None or (kind == "completed") != bool(child.run.state and child.run.state.is_completed()):
            continue
        payload = event.payload
        generation = event.resource.id.removeprefix("aimlapi.generation.")
        child.row = BatchItemResult(
            index=child.index, video=shown_video(child.item.video), flow_run_id=str(child.run.id),
            status="completed" if kind == "completed" else payload.get("status") or kind,
            generation_id=None if generation.startswith("unsubmitted.") else generation,
            output=payload.get("output"), credits=payload.get("credits"),
            error=payload.get("error_message") if kind != "completed" else None,
            collect_command=payload.get("collect_command") if kind != "completed" else None,
            **{k: v for k, v in (payload.get("durations") or {}).items() if k in BatchItemResult.model_fields},
        )


def _in_state_for(run: FlowRun, state_type: str) -> float:
    """Seconds since `run` entered its current state, if that state is of `state_type`; else 0."""
    state = run.state
    if state is None or state.type.value != state_type or state.timestamp is None:
        return 0.0
    return (datetime.now(timezone.utc) - state.timestamp).total_seconds()


def _row_from_state(child: _Child) -> BatchItemResult:
    state = child.run.state
    completed = state is not None and state.is_completed()
    return BatchItemResult(index=child.index, video=shown_video(child.item.video), flow_run_id=str(child.run.id),
                           status="completed" if completed else (state.name.lower() if state else "failed"),
                           error=None if completed else redact((state.message if state else None) or "no state")[:300])


def _chunks(values: list[Any], size: int) -> list[list[Any]]:
    return [values[i:i + size] for i in range(0, len(values), size)]

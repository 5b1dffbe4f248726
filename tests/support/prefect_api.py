"""Read back, through the Prefect API, what flow runs left behind: states, task runs, artifacts, logs.

Task runs and logs reach the server asynchronously (events, batched log shipping), so the readers
poll until the expected record shows up or a deadline passes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)

T = TypeVar("T")


async def eventually(read: Callable[[], Awaitable[T]], accept: Callable[[T], bool], timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if accept(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.25)


async def flow_run(flow_run_id: str | UUID) -> Any:
    async with get_client() as client:
        return await client.read_flow_run(UUID(str(flow_run_id)))


async def artifacts(flow_run_id: str | UUID, *, expect: int = 1) -> list[Any]:
    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(str(flow_run_id))]))
            )

    return await eventually(read, lambda found: len(found) >= expect)


async def task_runs(flow_run_id: str | UUID, *, names: tuple[str, ...] = (), final: bool = True) -> dict[str, Any]:
    """Task runs of a flow run by task name prefix (e.g. 'submit-generation'), once they are final."""

    async def read() -> dict[str, Any]:
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(str(flow_run_id))]))
            )
        return {run.name.rsplit("-", 1)[0]: run for run in runs}

    def done(found: dict[str, Any]) -> bool:
        return all(n in found and (not final or found[n].state.is_final()) for n in names)

    return await eventually(read, done)


async def logs(flow_run_id: str | UUID, *, containing: str | None = None) -> list[Any]:
    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(str(flow_run_id))]))
            )

    return await eventually(read, lambda found: containing is None or any(containing in r.message for r in found))


async def everything_recorded(flow_run_id: str | UUID, *, expect_artifacts: int = 1) -> str:
    """All text the server holds about a flow run: parameters, states, task runs, logs, artifacts
    (waiting until `expect_artifacts` of them are there)."""
    import json

    run = await flow_run(flow_run_id)
    parts = [json.dumps(run.parameters, default=str), run.name, run.state.message or "", str(run.state.data)]
    for task in (await task_runs(flow_run_id)).values():
        parts += [task.name, task.state.message or "", str(task.state.data)]
    parts += [record.message for record in await logs(flow_run_id)]
    parts += [json.dumps(a.data, default=str) + (a.description or "")
              for a in await artifacts(flow_run_id, expect=expect_artifacts)]
    return "\n".join(parts)


async def latest_flow_run(flow_name: str) -> Any:
    """The most recently started run of a flow (scheduled, not-yet-started runs are ignored)."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilterStartTime
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        (run,) = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(is_null_=False)),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
    return run


async def remove_bundled_deployments() -> tuple[Any, Any, list[Any]]:
    """The two bundled deployments (`on-s3-upload`, `nightly-sweep`) and the trigger's automations as
    `prefect deploy --all` made them, then deleted, so no schedule or trigger is left for later tests."""
    async with get_client() as client:
        upload = await client.read_deployment_by_name("aimlapi-video-to-video/on-s3-upload")
        sweep = await client.read_deployment_by_name("aimlapi-video-to-video-folder/nightly-sweep")
        automations = await client.read_automations_by_name("on-s3-upload__automation_1")
        for deployment in (upload, sweep):
            await client.delete_deployment(deployment.id)
        for automation in automations:
            await client.delete_automation(automation.id)
    return upload, sweep, automations

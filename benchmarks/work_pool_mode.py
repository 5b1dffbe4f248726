"""`bench_batch.py --deployment`: the batch fanned out over a process work pool with two real workers.

Two `prefect worker start` processes (each its own PREFECT_HOME and working directory, at most
`--pool-limit` flow runs each) serve one process work pool. In the same run, on the same workers:

(c) Prefect's floor for this shape: a parent flow that runs N flow runs of `floor_flows.floor_child`
    (three no-op tasks, the middle one waiting D s) with `run_deployment(..., as_subflow=True,
    poll_interval=1)`, nothing of ours;
(b) ours: `video_to_video_batch(..., deployment=...)` with N items, each a flow run of our
    `video_to_video` deployment, against the sandbox (D s per generation).

Printed: wall time of each, ours / floor, child launch latency (a child's start minus its creation:
the time a worker took to notice it and start its process), charges in the sandbox's ledger. The
last line is one JSON object with every figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.stats import rnd, summary

BENCHMARKS = Path(__file__).resolve().parent
FLOOR_FLOW = "bench-floor-child"
OUR_FLOW = "aimlapi-video-to-video"


@contextlib.contextmanager
def process_workers(pool: str, root: Path, count: int, limit: int) -> Iterator[list[subprocess.Popen]]:
    """`count` process workers on `pool`, each in its own directory with its own PREFECT_HOME."""
    subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", pool, "--type", "process"],
                   check=True, capture_output=True)
    workers = []
    try:
        for index in range(count):
            home = root / f"worker-{index}"
            home.mkdir(parents=True)
            env = {**os.environ, "PREFECT_HOME": str(home / "prefect-home"), "PREFECT_WORKER_QUERY_SECONDS": "1",
                   "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
            with open(home / "worker.log", "wb") as log:
                workers.append(subprocess.Popen(
                    [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--name", f"bench-{index}",
                     "--limit", str(limit)],
                    cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                ))
        yield workers
    finally:
        for process in workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in workers:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


async def create_deployments(pool: str, records: Path) -> tuple[str, str]:
    """Our `video_to_video` (module entrypoint, shared records, heartbeats) and the floor's child flow."""
    from prefect.client.orchestration import get_client

    env = {"AIMLAPI_SUBMISSIONS_DIR": str(records), "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
    async with get_client() as client:
        ours = await client.create_flow_from_name(OUR_FLOW)
        await client.create_deployment(
            flow_id=ours, name="bench", entrypoint="prefect_aimlapi_video.flows.video_to_video:video_to_video",
            work_pool_name=pool, pull_steps=[], enforce_parameter_schema=False, job_variables={"env": env},
        )
        floor = await client.create_flow_from_name(FLOOR_FLOW)
        await client.create_deployment(
            flow_id=floor, name="bench", entrypoint="floor_flows.py:floor_child", work_pool_name=pool,
            pull_steps=[], enforce_parameter_schema=False,
            job_variables={"working_dir": str(BENCHMARKS), "env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}},
        )
    return f"{OUR_FLOW}/bench", f"{FLOOR_FLOW}/bench"


async def run_floor(deployment: str, count: int, seconds: float, concurrency: int | None = None) -> float:
    """Wall time of N floor children run through the work pool by a parent flow in this process
    (at most `concurrency` created and not yet ended at once, default all, as our batch's cap)."""
    from prefect import flow
    from prefect.deployments import run_deployment

    slots = asyncio.Semaphore(concurrency or count)

    async def one(index: int) -> Any:
        async with slots:
            return await run_deployment(deployment, parameters={"index": index, "seconds": seconds}, timeout=None,
                                        poll_interval=1, idempotency_key=f"floor-{uuid.uuid4().hex}")

    @flow(name="bench-floor-pool-batch")
    async def parent() -> list[Any]:
        return await asyncio.gather(*(one(i) for i in range(count)))

    started = time.perf_counter()
    runs = await parent()
    wall = time.perf_counter() - started
    failed = [run.name for run in runs if not run.state or not run.state.is_completed()]
    if failed:
        raise RuntimeError(f"the floor's children did not all complete: {failed[:5]}")
    return wall


async def run_ours(deployment: str, block: str, clip: Path, count: int, out: Path, d: float) -> dict[str, Any]:
    from prefect_aimlapi_video.flows.batch import video_to_video_batch

    items = [{"video": str(clip), "seed": i} for i in range(count)]
    started = time.perf_counter()
    rows = await video_to_video_batch(
        items=items, prompt="woodcut", credentials=block, concurrency_limit=None, max_concurrency=count,
        output=str(out / "{seed}.mp4"), tolerate_failures=True, deployment=deployment,
        workers_share_disk=True,  # both workers run on this machine and share its records directory
    )
    return {"wall_s": time.perf_counter() - started, "rows": rows}


async def launch_latencies(deployment: str) -> list[float]:
    """Each child's start minus its creation, seconds (its last start, if it ran more than once)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    runs: list[Any] = []
    async with get_client() as client:
        target = await client.read_deployment_by_name(deployment)
        only = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[target.id]))
        while page := await client.read_flow_runs(flow_run_filter=only, limit=200, offset=len(runs)):
            runs += page
    return [(run.start_time - run.created).total_seconds() for run in runs if run.start_time and run.created]


def main(args: Any, work: Path, sandbox: Any, api_key: str, clip: Path) -> None:
    n, d = args.n, args.processing_seconds
    pool = f"bench-pool-{uuid.uuid4().hex[:6]}"
    records = work / "pool-records"

    async def measure() -> dict[str, Any]:
        from prefect_aimlapi_video.blocks import AimlApiCredentials

        await AimlApiCredentials(api_key=api_key, base_url=sandbox.base_url).asave("bench-pool", overwrite=True)
        ours_deployment, floor_deployment = await create_deployments(pool, records)
        if args.warmup:
            print(f"warm-up: {args.warmup} item(s) through each deployment (not measured) ...", flush=True)
            await run_floor(floor_deployment, args.warmup, 0)
            await run_ours(ours_deployment, "bench-pool", clip, args.warmup, work / "pool-warmup", d)
        floor_before = len(await launch_latencies(floor_deployment))
        ours_before = len(await launch_latencies(ours_deployment))
        print(f"(c) Prefect's floor over the pool: {n} flow runs of three no-op tasks, the middle one waiting "
              f"{d:g} s ...", flush=True)
        floor = await run_floor(floor_deployment, n, d)
        print(f"(b) video_to_video_batch(deployment=...): {n} items ...", flush=True)
        ours = await run_ours(ours_deployment, "bench-pool", clip, n, work / "pool-ours", d)
        return {
            "floor_wall_s": floor, "ours": ours,
            "floor_launch": sorted(await launch_latencies(floor_deployment))[floor_before:],
            "ours_launch": sorted(await launch_latencies(ours_deployment))[ours_before:],
        }

    with process_workers(pool, work / "workers", 2, args.pool_limit) as workers:
        figures = asyncio.run(measure())
        alive = sum(process.poll() is None for process in workers)
    rows = figures["ours"]["rows"]
    ledger = sandbox.ledger()
    charged_ours = len(ledger) - args.warmup
    wall, floor = figures["ours"]["wall_s"], figures["floor_wall_s"]
    ours_launch, floor_launch = summary(figures["ours_launch"]), summary(figures["floor_launch"])
    completed = sum(row.status == "completed" for row in rows)
    print()
    print(f"work pool: 2 process workers, at most {args.pool_limit} flow runs each ({alive} alive at the end)")
    print(f"Prefect's floor (c): {floor:.1f} s; ours (b): {wall:.1f} s; ours / floor = {wall / floor:.2f}")
    print(f"child launch (start - creation), s: ours p50 {ours_launch['p50']} / p95 {ours_launch['p95']}; "
          f"floor p50 {floor_launch['p50']} / p95 {floor_launch['p95']}")
    print(f"completed {completed} of {n}; charges in the sandbox's ledger for (b): {charged_ours}")
    print(json.dumps({
        "mode": "work-pool", "n": n, "processing_seconds": d, "workers": 2, "pool_limit": args.pool_limit,
        "cores": os.cpu_count(), "database": args.database, "warmup": args.warmup,
        "batch_wall_s": rnd(wall, 2), "prefect_floor_wall_s": rnd(floor, 2), "ratio_to_floor": rnd(wall / floor, 3),
        "child_launch_s": ours_launch, "floor_child_launch_s": floor_launch,
        "completed": completed, "failed": n - completed, "charges": charged_ours,
    }))

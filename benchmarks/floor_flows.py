"""Prefect's floor for the work-pool mode: a child flow with nothing of ours, run by the same workers.

`bench_batch.py --deployment` deploys `floor_child` to the same process work pool as our
`video_to_video` and runs N of them with `run_deployment`, so ours / floor is what our work adds
to Prefect's own cost of a flow run per item on a worker (process start, imports, bookkeeping).
This module is loaded by the workers' flow-run processes from its file path: keep it free of
imports beyond Prefect's.
"""

from __future__ import annotations

import asyncio

from prefect import flow, task
from prefect.cache_policies import NO_CACHE


@task(cache_policy=NO_CACHE)
async def step(index: int, wait: float) -> int:
    await asyncio.sleep(wait)
    return index


@flow(name="bench-floor-child", flow_run_name="floor-{index}")
async def floor_child(index: int, seconds: float) -> int:
    """Three tasks like ours (submit, wait, download); the middle one waits the provider's processing."""
    await step(index, 0)
    await step(index, seconds)
    return await step(index, 0)

"""A batch fanned out over a process work pool with two real workers, one of them stopped mid-batch: SIGKILLed,
or sent SIGTERM as Kubernetes and `docker stop` send it.

The deployment is made as a user would: the module entrypoint, no pull steps, job variables that
share the exactly-once records between the workers and turn flow-run heartbeats on. Each worker has
its own PREFECT_HOME and working directory. The parent (this test's process) waits with one loop
for all children and reads each child's outcome from its generation's events.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.flows import fanout
from prefect_aimlapi_video.flows.batch import video_to_video_batch
from prefect_aimlapi_video.sandbox import SandboxConfig, run_sandbox
from tests.support.reliability import sha256_file, subprocess_env

pytestmark = pytest.mark.integration
ITEMS = 12
# How long a stopped worker may take to exit: the issue's bound, and `docker stop`'s default grace period
# before its SIGKILL. Alone on an idle machine Prefect's worker exits in 1-2 s; in 8 of 12 loaded suite
# runs it kept running, its 8 flow runs too, for more than 10 s (once with all of them begun, so waiting for that does
# not avoid it). Such a worker is SIGKILLed as the platform would, and the test reports an expected
# failure once the money is checked.
GRACE_SECONDS = 10.0


async def _deployment(pool: str, name: str, records: Path) -> str:
    async with get_client() as client:
        flow_id = await client.create_flow_from_name("aimlapi-video-to-video")
        await client.create_deployment(
            flow_id=flow_id, name=name, entrypoint="prefect_aimlapi_video.flows.video_to_video:video_to_video",
            work_pool_name=pool, pull_steps=[], enforce_parameter_schema=False,
            job_variables={"env": {"AIMLAPI_SUBMISSIONS_DIR": str(records), "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
                                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}},
        )
    return f"aimlapi-video-to-video/{name}"


def _worker(pool: str, name: str, root: Path) -> tuple[subprocess.Popen, Path]:
    home = root / name
    home.mkdir(parents=True)
    log = home / "worker.log"
    env = subprocess_env(PREFECT_HOME=str(home / "prefect-home"), PREFECT_WORKER_QUERY_SECONDS="1",
                         PREFECT_WORKER_PREFETCH_SECONDS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--name", name, "--limit", "8"],
        cwd=home, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    return process, log


async def _children(deployment_name: str) -> list:
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(deployment_name)
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id])))


@pytest.fixture
def pool(prefect_server):
    name = f"aimlapi-pool-{uuid.uuid4().hex[:6]}"
    subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", name, "--type", "process"],
                   env=subprocess_env(), check=True, capture_output=True)
    yield name


STOPS = {  # how worker a is stopped
    "sigkill-group": lambda worker: os.killpg(worker.pid, signal.SIGKILL),  # the worker's process group
    "sigterm-worker": lambda worker: worker.send_signal(signal.SIGTERM),  # the worker process only: PID 1 of a pod
}


@pytest.mark.parametrize("stop", list(STOPS))
async def test_a_batch_over_two_workers_one_stopped_mid_batch(stop, prefect_server, pool, clips, tmp_path, monkeypatch):
    monkeypatch.setattr(fanout, "STALE_SECONDS", 70.0)  # heartbeats every 30 s (Prefect's minimum)
    monkeypatch.setattr(fanout, "PENDING_SECONDS", 60.0)  # a process starts in seconds (here, under load, ~10)
    records = tmp_path / "records"
    workers: list[tuple[subprocess.Popen, Path]] = []
    with run_sandbox(SandboxConfig(processing_seconds=6, workers=ITEMS)) as sandbox:
        block = f"pool-{uuid.uuid4().hex[:6]}"
        await AimlApiCredentials(api_key=sandbox.api_key, base_url=sandbox.base_url, timeout_seconds=10).asave(block)
        deployment = await _deployment(pool, f"restyle-{uuid.uuid4().hex[:6]}", records)
        workers = [_worker(pool, f"worker-{letter}", tmp_path) for letter in "ab"]
        try:
            batch = asyncio.ensure_future(video_to_video_batch(
                items=[{"video": str(clips["small"]), "seed": i, "output": str(tmp_path / "out" / f"{i}.mp4")}
                       for i in range(ITEMS)],
                prompt="woodcut", credentials=block, deployment=deployment, max_concurrency=ITEMS,
                tolerate_failures=True, settings={"poll_policy": {"initial_seconds": 0.5, "fast_phase_seconds": 60},
                                                  "submissions": str(records)},
                workers_share_disk=True,  # both workers run on this host
            ))
            # Worker a is stopped once every flow run it took has begun and one has a generation processing
            # (whether Prefect's worker then stalls does not depend on that; see GRACE_SECONDS). Its flow runs
            # (Prefect 3.9) have sessions of their own: SIGKILL to its group leaves them orphans that crash at
            # their next log line (stdout gone); on SIGTERM the worker either SIGKILLs them as it stops and
            # reports nothing, so they stay Running until the batch sees no heartbeat, and one still starting
            # stays Pending until the batch gives up on it (PENDING_SECONDS), or lets them finish (what
            # Prefect's signal handler means it to do) until its own SIGKILL (GRACE_SECONDS). Either way the
            # batch runs the ones that did not finish again.
            victim, victim_log = workers[0]
            deadline = time.monotonic() + 180  # (the batch runs on this event loop: wait without blocking it)
            while not _holds_generations(victim_log):
                assert time.monotonic() < deadline and not batch.done(), "worker a never ran a child"
                await asyncio.sleep(0.5)
            STOPS[stop](victim)
            signalled = time.monotonic()
            exited = await asyncio.to_thread(_exits_within, victim, GRACE_SECONDS)
            stopped_after = time.monotonic() - signalled
            if not exited:  # what the platform does next: `docker stop` SIGKILLs after its grace period
                os.killpg(victim.pid, signal.SIGKILL)
            rows = await asyncio.wait_for(batch, 400)
        finally:
            for process, _ in workers:
                _stop(process)
        ledger = sandbox.ledger()

    assert [r.status for r in rows] == ["completed"] * ITEMS, [(r.index, r.status, r.error) for r in rows]
    assert len(ledger) == ITEMS and all(e.status == "completed" for e in ledger)  # 12 charges, never a 13th
    by_generation = {e.generation_id: e for e in ledger}
    for row in rows:
        assert sha256_file(row.output) == by_generation[row.generation_id].output_sha256
    children = await _children(deployment)
    assert len(children) == ITEMS  # one flow run per item: re-run on the other worker, never duplicated
    if not exited:  # the money held all the same (above); the stop itself is Prefect's worker's
        assert stop == "sigterm-worker"
        pytest.xfail(f"Prefect's process worker was still running {stopped_after:.0f} s after SIGTERM: SIGKILLed"
                     " as `docker stop` does, and the money held; see docs/faults.md")
    ran = {name: _begun(log.read_text(errors="replace")) for name, (_, log) in zip("ab", workers)}
    assert ran["a"] and ran["b"], ran  # each worker ran at least one
    assert any(child.run_count > 1 for child in children)  # the killed worker's children ran again
    assert ran["a"] & ran["b"]  # ...on the other worker


def _begun(text: str) -> set[str]:
    """The flow runs that began in a worker's processes, from its log (each prints its URL as it begins)."""
    return set(re.findall(r"/runs/flow-run/([0-9a-f-]{36})", text))


def _holds_generations(log: Path) -> bool:
    """Every flow run the worker took (and the server did not abort) has begun, and one was accepted."""
    text = log.read_text(errors="replace")
    taken = set(re.findall(r"submitting flow run '([0-9a-f-]{36})'", text))
    taken -= set(re.findall(r"Aborted submission of flow run '([0-9a-f-]{36})'", text))
    return bool(taken) and taken <= _begun(text) and "Accepted: generation" in text


def _exits_within(worker: subprocess.Popen, seconds: float) -> bool:
    try:
        worker.wait(seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def _stop(worker: subprocess.Popen) -> None:
    """Teardown: SIGTERM to the worker's group; SIGKILL if a loaded machine keeps it past 30 s."""
    if worker.poll() is not None:
        return
    os.killpg(worker.pid, signal.SIGTERM)
    if not _exits_within(worker, 30):
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(30)


async def test_a_retried_parent_creates_no_new_children_and_pays_nothing_more(prefect_server, pool, clips, tmp_path,
                                                                              monkeypatch):
    """The parent fails after its children completed and is retried (same flow run): the children are
    found by their idempotency keys, so no new child run is created and nothing is paid again."""
    from prefect_aimlapi_video.flows import batch as batch_module

    records = tmp_path / "records"
    calls = {"report": 0}
    real_report = batch_module.report

    async def failing_once(*args, **kwargs):
        calls["report"] += 1
        if calls["report"] == 1:
            raise RuntimeError("the parent's process hiccups after its children ran")
        return await real_report(*args, **kwargs)

    monkeypatch.setattr(batch_module, "report", failing_once)
    with run_sandbox(SandboxConfig(processing_seconds=1, workers=8)) as sandbox:
        block = f"pool-{uuid.uuid4().hex[:6]}"
        await AimlApiCredentials(api_key=sandbox.api_key, base_url=sandbox.base_url).asave(block)
        deployment = await _deployment(pool, f"retry-{uuid.uuid4().hex[:6]}", records)
        worker, log = _worker(pool, "worker-r", tmp_path)
        try:
            flow = video_to_video_batch.with_options(retries=1, retry_delay_seconds=0)
            rows = await flow(items=[{"video": str(clips["small"]), "seed": i, "output": str(tmp_path / f"{i}.mp4")}
                                     for i in range(4)],
                              prompt="ink", credentials=block, deployment=deployment,
                              settings={"submissions": str(records)}, workers_share_disk=True)
        finally:
            _stop(worker)
        ledger = sandbox.ledger()
    assert calls["report"] == 2 and [r.status for r in rows] == ["completed"] * 4
    assert len(await _children(deployment)) == 4 and len(ledger) == 4


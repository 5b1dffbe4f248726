"""Exactly-once submission: every resume path reads the sandbox ledger and finds one charge.

Paths (issue: "Exactly-once submission" and "Resume"): a task retry (of the wait, and of the submit
after a POST timeout), a flow retry, a worker killed with SIGKILL then the same flow run re-run, a
duplicate trigger (sequential and concurrent), and an accepted POST whose answer was dropped,
reconciled through GET /v2/logs. Plus the edges of reconciliation: an empty log (resend only after
the grace period, same client request id), an unreadable log (fail, naming the risk), and a single
transient error while reading the log (to be survived, like any other transient fault).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import prefect_aimlapi_video.flows.video_to_video as v2v_module
from prefect_aimlapi_video.api.errors import ReconciliationUnavailable
from prefect_aimlapi_video.api.requests import GenerationParams
from prefect_aimlapi_video.flows.settings import RunSettings
from prefect_aimlapi_video.flows.video_to_video import video_to_video
from prefect_aimlapi_video.storage.record_store import LocalRecordStore, default_location
from prefect_aimlapi_video.storage.sources import sha256_file as input_sha256
from prefect_aimlapi_video.submission.protocol import SubmissionRecord, record_key
from tests.support import prefect_api
from tests.support.reliability import (
    fast_credentials,
    fast_polls,
    logical_request,
    sha256_file,
    submission_records,
    subprocess_env,
    temp_leftovers,
    wait_until,
)

pytestmark = pytest.mark.integration


def run_args(clips, tmp_path, sandbox, **overrides):
    """The flow's arguments; an override that is a setting (`RunSettings`) goes into `settings`."""
    settings = dict(poll_policy=fast_polls(), reconcile_grace_seconds=1)
    settings.update({name: overrides.pop(name) for name in list(overrides) if name in RunSettings.model_fields})
    arguments = dict(
        video=str(clips["small"]), prompt="gouache landscape", strength=0.7, seed=5,
        credentials=fast_credentials(sandbox), output=str(tmp_path / "out.mp4"), settings=settings,
    )
    arguments.update(overrides)
    return arguments


def one_charge(sandbox, result=None):
    """The ledger holds exactly one row, charged, and (if given) it is the result's generation."""
    ledger = sandbox.ledger()
    assert len(ledger) == 1, [(e.generation_id, e.client_request_id, e.status) for e in ledger]
    (entry,) = ledger
    assert entry.status == "completed" and entry.credits > 0
    logical_request(entry.client_request_id)  # well-formed, deterministic id was sent
    if result is not None:
        assert result.status == "completed"
        assert result.generation_id == entry.generation_id
        assert result.client_request_id == entry.client_request_id
        assert result.sha256 == entry.output_sha256 == sha256_file(result.output)
    return entry


async def test_task_retry_of_wait_keeps_the_one_generation(prefect_server, sandbox, clips, tmp_path):
    """Ten consecutive poll errors exhaust wait_for_generation's in-loop tolerance: the task retries."""
    sandbox.set_faults({"script": [{"route": "poll", "kind": "server_error_503", "times": 10}]})
    result = await video_to_video(**run_args(clips, tmp_path, sandbox))

    one_charge(sandbox, result)
    runs = await prefect_api.task_runs(result.flow_run_id, names=("submit-generation", "wait-for-generation"))
    assert runs["wait-for-generation"].run_count == 2
    assert runs["submit-generation"].run_count == 1
    assert result.resumed is False


async def test_task_retry_of_submit_after_post_timeout_adopts_from_usage_log(prefect_server, sandbox, clips, tmp_path):
    """The POST is accepted but its answer comes after the client's timeout: the retry reconciles."""
    sandbox.set_faults({"slow_seconds": 3, "script": [{"route": "submit", "kind": "slow_response"}]})
    result = await video_to_video(**run_args(clips, tmp_path, sandbox))

    entry = one_charge(sandbox, result)
    assert result.resumed is True
    runs = await prefect_api.task_runs(result.flow_run_id, names=("submit-generation",))
    assert runs["submit-generation"].run_count == 2
    assert await prefect_api.logs(result.flow_run_id, containing=f"Adopted generation {entry.generation_id}")


async def test_dropped_post_answer_is_reconciled_through_usage_log(prefect_server, sandbox, clips, tmp_path):
    """The sandbox accepts and charges, then drops the answer: the flow adopts that very generation."""
    sandbox.set_faults({"script": [{"route": "submit", "kind": "drop_connection"}]})
    result = await video_to_video(**run_args(clips, tmp_path, sandbox))

    entry = one_charge(sandbox, result)
    assert result.resumed is True
    assert [row["generation_id"] for row in sandbox.logs(client_request_id=entry.client_request_id)] == [
        entry.generation_id
    ]
    logs = await prefect_api.logs(result.flow_run_id, containing=f"Adopted generation {entry.generation_id}")
    text = "\n".join(r.message for r in logs)
    assert "no answer came back" in text and entry.client_request_id in text  # the ambiguity was named
    (record,) = [r for r in submission_records() if r["generation_id"] == entry.generation_id]
    assert record["state"] == "accepted"
    assert temp_leftovers(tmp_path) == []


async def test_flow_retry_resumes_from_the_record(prefect_server, sandbox, clips, tmp_path, monkeypatch):
    """Four truncated downloads outlast download_video's 3 retries: the flow fails after acceptance
    and its retry resumes the recorded generation instead of posting again."""
    # Only the pause between download attempts is shortened (the default is 2, 10, 30 s); the retry
    # count and condition are the product's.
    quick = v2v_module.download_video.with_options(retry_delay_seconds=0)
    monkeypatch.setattr(v2v_module, "download_video", quick)
    sandbox.set_faults({"script": [{"route": "download", "kind": "truncated_download", "times": 4}]})
    flow = video_to_video.with_options(retries=1, retry_delay_seconds=0)

    result = await flow(**run_args(clips, tmp_path, sandbox))

    one_charge(sandbox, result)
    run = await prefect_api.flow_run(result.flow_run_id)
    assert run.run_count == 2 and run.state.is_completed()
    assert result.resumed is True
    assert await prefect_api.logs(result.flow_run_id, containing=f"Resuming generation {result.generation_id}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "out.mp4.json", "out.mp4.strip.jpg"]


async def test_duplicate_trigger_sequential_resumes(prefect_server, sandbox, clips, tmp_path):
    key = f"dup-seq-{uuid.uuid4().hex}"
    first = await video_to_video(**run_args(clips, tmp_path, sandbox, idempotency_key=key,
                                            output=str(tmp_path / "first.mp4")))
    second = await video_to_video(**run_args(clips, tmp_path, sandbox, idempotency_key=key,
                                             output=str(tmp_path / "second.mp4")))

    entry = one_charge(sandbox, first)
    assert first.flow_run_id != second.flow_run_id
    assert (first.resumed, second.resumed) == (False, True)
    assert second.generation_id == entry.generation_id and second.sha256 == entry.output_sha256
    assert sha256_file(tmp_path / "second.mp4") == entry.output_sha256
    for run_id in (first.flow_run_id, second.flow_run_id):
        assert (await prefect_api.flow_run(run_id)).state.is_completed()
    assert await prefect_api.logs(second.flow_run_id, containing=f"Resuming generation {entry.generation_id}")


async def test_duplicate_trigger_concurrent_posts_once(prefect_server, sandbox, clips, tmp_path):
    key = f"dup-par-{uuid.uuid4().hex}"
    results = await asyncio.gather(*(
        video_to_video(**run_args(clips, tmp_path, sandbox, idempotency_key=key, output=str(tmp_path / f"{n}.mp4")))
        for n in ("a", "b", "c")
    ))

    entry = one_charge(sandbox)
    assert len({r.flow_run_id for r in results}) == 3
    assert {r.generation_id for r in results} == {entry.generation_id}
    assert sorted(r.resumed for r in results) == [False, True, True]
    for r in results:
        assert r.status == "completed" and sha256_file(r.output) == entry.output_sha256
        assert (await prefect_api.flow_run(r.flow_run_id)).state.is_completed()


def _fingerprint(clips, **params) -> str:
    return GenerationParams(**params).fingerprint(f"sha256:{input_sha256(Path(clips['small']))}")


async def test_pending_record_with_empty_log_resends_only_after_grace(prefect_server, sandbox, clips, tmp_path):
    """A crash mid-POST (record pending, nothing reached the provider), its lease long run out: the next
    run takes the claim over, checks the log, waits out the grace period, then posts once, as the next
    attempt (its own client request id)."""
    scope = f"crashed-{uuid.uuid4().hex}"
    fingerprint = _fingerprint(clips, prompt="gouache landscape", strength=0.7, seed=5)
    crashed = time.time() - 150  # its 60 s lease ran out 90 s ago, beyond any clock skew between hosts
    pending = SubmissionRecord(key=record_key(fingerprint, scope), fingerprint=fingerprint, scope=scope,
                               outcome="in_flight", owner="a-crashed-host", lease_seconds=60, created_at=crashed,
                               updated_at=crashed)
    assert await LocalRecordStore(default_location()).create(pending.key, pending.model_dump_json().encode())

    started = time.time()
    result = await video_to_video(**run_args(clips, tmp_path, sandbox, idempotency_key=scope,
                                             reconcile_grace_seconds=2))

    entry = one_charge(sandbox, result)
    assert entry.client_request_id == f"{pending.logical_prefix}2"  # deterministic, the next attempt
    assert entry.accepted_at - started >= 1.5  # not before the grace period had run out
    assert await prefect_api.logs(result.flow_run_id, containing="was not refreshed by its holder")
    assert await prefect_api.logs(result.flow_run_id, containing="usage log shows no request")


async def test_unreadable_usage_log_fails_naming_the_risk(prefect_server, sandbox, clips, tmp_path, monkeypatch):
    """Accepted, answer dropped, and the log cannot be read: fail without a second POST, and say so."""
    quick = v2v_module.submit_generation.with_options(retry_delay_seconds=0)  # the same retries, no pauses
    monkeypatch.setattr(v2v_module, "submit_generation", quick)
    sandbox.set_faults({"script": [{"route": "submit", "kind": "drop_connection"},
                                   {"route": "logs", "kind": "server_error_503", "times": 50}]})
    with pytest.raises(ReconciliationUnavailable) as caught:
        await video_to_video(**run_args(clips, tmp_path, sandbox))

    ledger = sandbox.ledger()
    assert len(ledger) == 1  # the accepted POST, never a second one
    message = str(caught.value)
    assert ledger[0].client_request_id in message
    assert "charge twice" in message and "GET /v2/logs" in message
    assert not (tmp_path / "out.mp4").exists()


async def test_transient_usage_log_error_is_survived(prefect_server, sandbox, clips, tmp_path):
    """One 503 from GET /v2/logs is a transient fault like any other: reconciliation should try again
    rather than fail the generation (issue: everything the sandbox injects is survived if transient)."""
    sandbox.set_faults({"script": [{"route": "submit", "kind": "drop_connection"},
                                   {"route": "logs", "kind": "server_error_503"}]})
    result = await video_to_video(**run_args(clips, tmp_path, sandbox))
    one_charge(sandbox, result)


SERVE_SCRIPT = textwrap.dedent(
    """
    import sys

    from prefect_aimlapi_video.flows.video_to_video import video_to_video

    if __name__ == "__main__":  # the runner starts each flow run in a spawned child that imports this file
        video_to_video.serve(name=sys.argv[1], print_starting_message=True)
    """
)


def _start_worker(script: Path, name: str, log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as output:
        return subprocess.Popen(
            [sys.executable, str(script), name], cwd=script.parent, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: SIGKILL reaches the flow run's process too
        )


def _kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


async def _state(flow_run_id):
    return (await prefect_api.flow_run(flow_run_id)).state


async def _wait_state(flow_run_id, accept, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        state = await _state(flow_run_id)
        if accept(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"flow run {flow_run_id} not {what} after {timeout:.0f} s: {state.type}")
        await asyncio.sleep(0.3)


async def test_sigkill_while_waiting_then_rerun_resumes(prefect_server, clips, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Scheduled

    from prefect_aimlapi_video.sandbox import SandboxConfig, run_sandbox

    name = f"sigkill-{uuid.uuid4().hex[:8]}"
    script = tmp_path / "serve_worker.py"
    script.write_text(SERVE_SCRIPT)
    log = tmp_path / "worker.log"
    env = subprocess_env(PREFECT_API_URL=prefect_server, PREFECT_RUNNER_POLL_FREQUENCY="1")
    output = tmp_path / "resumed.mp4"
    workers: list[subprocess.Popen] = []
    deployment = f"aimlapi-video-to-video/{name}"
    with run_sandbox(SandboxConfig(processing_seconds=8, workers=2)) as remote:
        await fast_credentials(remote, timeout_seconds=10).asave(name, overwrite=True)
        try:
            workers.append(_start_worker(script, name, log, env))

            async def deployed() -> bool:
                async with get_client() as client:
                    try:
                        await client.read_deployment_by_name(deployment)
                        return True
                    except Exception:
                        return False

            deadline = time.monotonic() + 60
            while not await deployed():
                assert workers[0].poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the worker did not register its deployment"
                await asyncio.sleep(0.3)

            run = await run_deployment(
                deployment, timeout=0,
                parameters=dict(video=str(clips["small"]), prompt="woodcut print", seed=21, credentials=name,
                                output=str(output)),
            )
            # Wait until the POST was accepted AND recorded, while the generation is still processing.
            entry = wait_until(lambda: next(iter(remote.ledger()), None), 60, what="the POST")
            wait_until(
                lambda: any(r.get("generation_id") == entry.generation_id and r["state"] == "accepted"
                            for r in submission_records()),
                20, what="the accepted submission record",
            )
            assert (await _state(run.id)).is_running()
            assert remote.ledger()[0].status != "completed"  # killed while waiting, not after

            _kill_group(workers[0])
            await asyncio.sleep(1)
            assert (await _state(run.id)).is_running()  # nobody told the server: the run looks alive

            async with get_client() as client:
                await client.set_flow_run_state(run.id, Scheduled(), force=True)
            workers.append(_start_worker(script, name, log, env))
            final = await _wait_state(run.id, lambda s: s.is_final(), 120, "final")
            assert final.is_completed(), f"{final.type}: {final.message}\n{log.read_text()[-3000:]}"
        finally:
            for worker in workers:
                if worker.poll() is None:
                    _kill_group(worker)
            async with get_client() as client:  # leave no deployment behind
                with contextlib.suppress(Exception):
                    await client.delete_deployment((await client.read_deployment_by_name(deployment)).id)

        ledger = remote.ledger()
        assert len(ledger) == 1, [(e.generation_id, e.client_request_id) for e in ledger]
        assert ledger[0].generation_id == entry.generation_id and ledger[0].status == "completed"
        assert sha256_file(output) == ledger[0].output_sha256
        assert (await prefect_api.flow_run(run.id)).run_count == 2
        assert await prefect_api.logs(run.id, containing=f"Resuming generation {entry.generation_id}")
        summary = "\n".join(str(a.data) for a in await prefect_api.artifacts(run.id, expect=2))
        assert entry.generation_id in summary and "yes: no new request was sent" in summary

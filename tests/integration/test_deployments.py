"""Deployments end to end: S3 upload -> SQS -> bridge -> Prefect event -> trigger -> served flow run.

Everything real: a Prefect server, moto's server (S3 notifications to SQS), the sandbox, the
deployments of deployments/prefect.yaml served by `python -m prefect_aimlapi_video.deployments.serve` in a subprocess,
and the bridge. The tests never call the flow directly: runs start through the trigger.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter

from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.flows.folder import video_to_video_folder
from tests.support import prefect_api

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def credentials(sandbox) -> AimlApiCredentials:
    return AimlApiCredentials(api_key=sandbox.api_key, base_url=sandbox.base_url)


def _subprocess_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH and (below) no cwd in the repository: the installed package is what runs."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "PREFECT_RUNNER_POLL_FREQUENCY": "1", **extra}


@pytest.fixture
def watched_bucket(s3):
    """A bucket whose ObjectCreated notifications go to an SQS queue (moto delivers them)."""
    import boto3

    sqs = boto3.client("sqs")
    queue_url = sqs.create_queue(QueueName=f"uploads-{time.monotonic_ns()}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.create_bucket(Bucket="watched")
    s3.put_bucket_notification_configuration(
        Bucket="watched",
        NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
    )
    yield queue_url
    sqs.delete_queue(QueueUrl=queue_url)


def _start(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], cwd=log.parent, env=_subprocess_env(**env), stdout=open(log, "wb"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )


def _stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


async def _runs_of(deployment_name: str) -> list:
    async with get_client() as client:
        deployments = await client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name]))
        )
        if not deployments:
            return []
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(deployment_id={"any_": [deployments[0].id]})
        )


async def _wait_for_runs(name: str, count: int, *, final: bool, timeout: float = 90) -> list:
    return await prefect_api.eventually(
        lambda: _runs_of(name),
        lambda runs: len(runs) >= count and (not final or all(r.state and r.state.is_final() for r in runs)),
        timeout=timeout,
    )


async def test_upload_starts_one_flow_run_through_the_trigger(prefect_server, sandbox, s3, watched_bucket, clips,
                                                              tmp_path):
    await credentials(sandbox).asave("aimlapi", overwrite=True)
    serve = _start(["-m", "prefect_aimlapi_video.deployments.serve", "--only", "on-s3-upload"], tmp_path / "serve.log",
                   AIMLAPI_BUCKET="watched")
    bridge = _start(["-m", "prefect_aimlapi_video.deployments.bridge", "--queue-url", watched_bucket, "--prefix", "incoming/",
                     "--exclude-prefix", "outputs/", "--state-file", str(tmp_path / "seen.sqlite")],
                    tmp_path / "bridge.log")
    try:
        await prefect_api.eventually(lambda: _runs_of("on-s3-upload"), lambda _: True, timeout=1)
        await _deployment_ready("on-s3-upload")
        s3.upload_file(str(clips["small"]), "watched", "incoming/clip one.mp4",
                       ExtraArgs={"Metadata": {"aimlapi-prompt": "stained glass", "aimlapi-seed": "21"}})
        (run,) = await _wait_for_runs("on-s3-upload", 1, final=True)
        assert run.state.is_completed(), run.state.message
        assert run.parameters["video"] == "s3://watched/incoming/clip one.mp4"

        (entry,) = sandbox.ledger()
        assert (entry.prompt, entry.seed) == ("stained glass", 21)  # per-object overrides from metadata
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="watched", Prefix="outputs/")["Contents"])
        assert len(keys) == 3 and keys[0].endswith(".mp4") and keys[1:] == [keys[0] + ".json", keys[0] + ".strip.jpg"]
        video = s3.get_object(Bucket="watched", Key=keys[0])
        assert video["Metadata"]["sha256"] == entry.output_sha256
        sidecar = json.loads(s3.get_object(Bucket="watched", Key=keys[1])["Body"].read())
        assert sidecar["generation_id"] == entry.generation_id
        artifacts = await prefect_api.artifacts(run.id, expect=3)
        assert any(a.type == "markdown" and f"s3://watched/{keys[0]}" in a.data for a in artifacts)

        # Same bytes again, and a multipart upload (moto sends two events for it): one new run only.
        s3.upload_file(str(clips["small"]), "watched", "incoming/clip one.mp4")
        from boto3.s3.transfer import TransferConfig

        s3.upload_file(str(clips["odd"]), "watched", "incoming/multipart.mp4",
                       Config=TransferConfig(multipart_threshold=1, multipart_chunksize=5 * 1024 * 1024))
        runs = await _wait_for_runs("on-s3-upload", 2, final=True)
        await asyncio.sleep(5)  # time for any duplicate (or an output's event) to start a run
        runs = await _runs_of("on-s3-upload")
        assert sorted(r.parameters["video"] for r in runs) == [
            "s3://watched/incoming/clip one.mp4", "s3://watched/incoming/multipart.mp4"]
        assert all(r.state.is_completed() for r in runs)
        assert len(sandbox.ledger()) == 2
    finally:
        assert _stop(bridge) == 0, (tmp_path / "bridge.log").read_text()[-2000:]
        _stop(serve)


async def test_upload_trigger_then_sweep_charge_each_object_once(prefect_server, sandbox, s3, watched_bucket, clips,
                                                                tmp_path, monkeypatch):
    """The trigger and the nightly sweep of deployments/prefect.yaml agree on output names, metadata
    overrides and the object+etag key: objects the trigger handled are skipped by the sweep, and one
    whose output went missing is resumed from its record, not paid again."""
    from prefect_aimlapi_video.deployments.serve import load_deployments

    await credentials(sandbox).asave("aimlapi", overwrite=True)
    serve = _start(["-m", "prefect_aimlapi_video.deployments.serve", "--only", "on-s3-upload"], tmp_path / "serve.log",
                   AIMLAPI_BUCKET="watched")
    bridge = _start(["-m", "prefect_aimlapi_video.deployments.bridge", "--queue-url", watched_bucket, "--prefix",
                     "incoming/", "--exclude-prefix", "outputs/", "--state-file", str(tmp_path / "seen.sqlite")],
                    tmp_path / "bridge.log")
    try:
        await _deployment_ready("on-s3-upload")
        s3.upload_file(str(clips["small"]), "watched", "incoming/own prompt.mp4",
                       ExtraArgs={"Metadata": {"aimlapi-prompt": "stained glass", "aimlapi-strength": "0.5"}})
        s3.upload_file(str(clips["odd"]), "watched", "incoming/plain.mp4")
        ours = {"s3://watched/incoming/own prompt.mp4", "s3://watched/incoming/plain.mp4"}

        def mine(runs: list) -> list:  # the deployment may hold runs of earlier tests
            return [r for r in runs if r.parameters.get("video") in ours]

        runs = mine(await prefect_api.eventually(
            lambda: _runs_of("on-s3-upload"),
            lambda found: len(mine(found)) == 2 and all(r.state and r.state.is_final() for r in mine(found)),
            timeout=120))
        assert len(runs) == 2 and all(r.state.is_completed() for r in runs), [r.state for r in runs]
    finally:
        assert _stop(bridge) == 0, (tmp_path / "bridge.log").read_text()[-2000:]
        _stop(serve)
    assert sorted((e.prompt, e.strength) for e in sandbox.ledger()) == [
        ("a watercolor painting, soft pastel palette", 0.85), ("stained glass", 0.5)]
    triggered = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="watched", Prefix="outputs/")["Contents"])

    monkeypatch.setenv("AIMLAPI_BUCKET", "watched")
    (sweep,) = await asyncio.to_thread(load_deployments, names=["nightly-sweep"])  # sync API
    arguments = {**sweep.parameters, "credentials": credentials(sandbox), "concurrency_limit": None}
    swept = await video_to_video_folder(**arguments)
    assert sorted(r.status for r in swept) == ["skipped", "skipped"]
    assert sorted(r.output.removeprefix("s3://watched/") for r in swept) == [k for k in triggered if k.endswith(".mp4")]
    assert len(sandbox.ledger()) == 2

    lost = next(r.output for r in swept if "own-prompt" in r.output or "own prompt" in r.output)
    s3.delete_object(Bucket="watched", Key=lost.removeprefix("s3://watched/"))
    again = await video_to_video_folder(**arguments)
    assert sorted(r.status for r in again) == ["completed", "skipped"]
    assert len(sandbox.ledger()) == 2  # resumed from the trigger's record: no second charge
    redone = next(r for r in again if r.status == "completed")
    assert redone.output == lost and redone.generation_id in {e.generation_id for e in sandbox.ledger()}


async def _deployment_ready(name: str, timeout: float = 60) -> None:
    """Wait until serve created the deployment and its trigger's automation. An event the server
    receives before the automation is loaded starts nothing (the nightly sweep would catch it later),
    so the test uploads only once the automation that runs this deployment exists."""
    async def read() -> list:
        async with get_client() as client:
            return await client.read_deployments(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])))

    found = await prefect_api.eventually(read, bool, timeout=timeout)
    assert found, f"deployment {name} was not created by serve"
    deployment_id = found[0].id

    async def automations() -> list:
        async with get_client() as client:
            return [a for a in await client.read_automations()
                    if any(getattr(action, "deployment_id", None) == deployment_id for action in a.actions)]

    assert await prefect_api.eventually(automations, bool, timeout=timeout), f"serve made no trigger for {name}"
    await asyncio.sleep(3)  # the server's trigger service loads a new automation on a NOTIFY, soon after


async def test_scheduled_sweep_does_no_paid_work_twice(prefect_server, sandbox, s3, clips):
    s3.create_bucket(Bucket="library")
    for name in ("a.mp4", "b.mp4", "nested/c.mov"):
        s3.upload_file(str(clips["small"]), "library", f"incoming/{name}")
    s3.put_object(Bucket="library", Key="incoming/notes.json", Body=b"{}")
    arguments = dict(source="s3://library/", output_prefix="s3://library/outputs/", prompt="linocut",
                     credentials=credentials(sandbox), concurrency_limit=None)

    first = await video_to_video_folder(**arguments)
    assert sorted(r.status for r in first) == ["completed"] * 3
    assert len(sandbox.ledger()) == 3
    outputs = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="library", Prefix="outputs/")["Contents"])
    assert outputs == [f"outputs/{name}{suffix}" for name in ("a.mp4", "b.mp4", "c.mp4")
                       for suffix in ("", ".json", ".strip.jpg")]

    second = await video_to_video_folder(**arguments)  # the outputs now sit inside the swept bucket
    assert sorted(r.status for r in second) == ["skipped"] * 3
    assert len(sandbox.ledger()) == 3
    parent = await prefect_api.latest_flow_run("aimlapi-video-to-video-folder")
    table = next(a for a in await prefect_api.artifacts(parent.id) if a.type == "table")
    assert table.description == "0 completed, 0 failed, 3 skipped (output exists)"


async def test_prefect_deploy_all_creates_both_deployments(prefect_server, tmp_path):
    env = _subprocess_env(AIMLAPI_BUCKET="media-bucket")
    subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", "aimlapi", "--type", "process",
                    "--overwrite"], cwd=tmp_path, env=env, check=True, capture_output=True)
    deploy = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
         "--prefect-file", str(ROOT / "deployments" / "prefect.yaml")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    upload, sweep, automations = await prefect_api.remove_bundled_deployments()
    assert upload.work_pool_name == "aimlapi" and upload.parameters["output"].startswith("s3://media-bucket/outputs/")
    # module-path entrypoints and no pull steps: a worker needs the package, not our source tree
    assert upload.entrypoint == "prefect_aimlapi_video.flows.video_to_video:video_to_video"
    assert sweep.entrypoint == "prefect_aimlapi_video.flows.folder:video_to_video_folder"
    assert upload.pull_steps == [] and sweep.pull_steps == []
    for deployment in (upload, sweep):  # every worker shares the exactly-once records
        assert deployment.job_variables["env"]["AIMLAPI_SUBMISSIONS_DIR"] == "s3://media-bucket/aimlapi-submissions"
        assert deployment.job_variables["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
    assert sweep.schedules and sweep.schedules[0].schedule.cron == "0 2 * * *"
    assert automations and automations[0].trigger.match.model_dump()["prefect.resource.id"] == "s3://media-bucket/incoming/*"
    assert automations[0].trigger.for_each == {"prefect.resource.id"}  # a bucket per object

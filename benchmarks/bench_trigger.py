"""Upload-to-flow-start latency of the event-triggered deployment (S3 -> SQS -> bridge -> trigger -> run).

Starts PostgreSQL + a Prefect server, moto's server (S3 notifications to SQS), the sandbox, the
`on-s3-upload` deployment served by `python -m prefect_aimlapi_video.deployments.serve`, and the bridge; then uploads
`--uploads` videos one at a time and measures, for each, the time from the end of `put_object`
to the flow run's start time as recorded by the Prefect server. Prints every figure and, last,
one JSON line.

    python benchmarks/bench_trigger.py --uploads 10

Tuning (printed with the result): the bridge long-polls SQS with WaitTimeSeconds=1 (SQS returns
as soon as a message arrives); the server persists events every 0.5 s
(PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL, set by local_services); `serve` polls
for scheduled runs every PREFECT_RUNNER_POLL_FREQUENCY seconds (default 10; set to 1 here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import local_services  # noqa: E402

POLL_FREQUENCY = "1"


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


async def _runs(deployment_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    async with get_client() as client:
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(deployment_id={"any_": [deployment_id]}))


async def _deployment_id(name: str, timeout: float = 120):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with get_client() as client:
                return (await client.read_deployment_by_name(f"aimlapi-video-to-video/{name}")).id
        except Exception:
            await asyncio.sleep(0.5)
    raise RuntimeError("the served deployment did not appear")


async def measure(s3, clip: Path, uploads: int, deployment_id) -> list[float]:
    latencies = []
    for i in range(uploads):
        before = len(await _runs(deployment_id))
        s3.upload_file(str(clip), "bench", f"incoming/clip-{i}.mp4")
        uploaded = time.time()
        while True:
            runs = [r for r in await _runs(deployment_id) if r.start_time]
            if len(runs) > before:
                start = max(r.start_time for r in runs).timestamp()
                latencies.append(start - uploaded)
                print(f"upload {i + 1:2d}: flow run started {latencies[-1]:.2f} s after the upload", flush=True)
                break
            if time.time() - uploaded > 60:
                raise RuntimeError(f"upload {i} started no flow run within 60 s")
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-trigger-"))
    with local_services.postgres_server() as database, \
            local_services.prefect_server(work / "prefect", database) as api_url, \
            local_services.moto_server(work / "moto.log") as endpoint:
        os.environ.update(local_services.AWS_TEST_ENV, AWS_ENDPOINT_URL=endpoint, PREFECT_API_URL=api_url,
                          AIMLAPI_SUBMISSIONS_DIR=str(work / "submissions"), PREFECT_HOME=str(work / "home"))
        import boto3
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from prefect_aimlapi_video.blocks import AimlApiCredentials
        from prefect_aimlapi_video.sandbox import SandboxConfig, make_test_clip, run_sandbox

        s3, sqs = boto3.client("s3"), boto3.client("sqs")
        queue_url = sqs.create_queue(QueueName="bench-uploads")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        s3.create_bucket(Bucket="bench")
        s3.put_bucket_notification_configuration(Bucket="bench", NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
        clip = make_test_clip(work / "clip.mp4", width=160, height=96, seconds=0.5, fps=12)
        env = {**os.environ, "AIMLAPI_BUCKET": "bench", "PREFECT_RUNNER_POLL_FREQUENCY": POLL_FREQUENCY}
        with temporary_settings({PREFECT_API_URL: api_url}), run_sandbox(SandboxConfig(processing_seconds=1)) as sb:
            AimlApiCredentials(api_key=sb.api_key, base_url=sb.base_url).save("aimlapi", overwrite=True)
            serve = _start(["-m", "prefect_aimlapi_video.deployments.serve", "--only", "on-s3-upload"], work / "serve.log", env)
            bridge = _start(["-m", "prefect_aimlapi_video.deployments.bridge", "--queue-url", queue_url, "--prefix", "incoming/",
                             "--exclude-prefix", "outputs/", "--state-file", str(work / "seen.sqlite")],
                            work / "bridge.log", env)
            try:
                deployment_id = asyncio.run(_deployment_id("on-s3-upload"))
                time.sleep(3)  # the trigger's automation is created just after the deployment
                latencies = asyncio.run(measure(s3, clip, args.uploads, deployment_id))
            finally:
                _stop(bridge)
                _stop(serve)
    figures = {
        "uploads": len(latencies),
        "median_s": round(statistics.median(latencies), 3),
        "p90_s": round(sorted(latencies)[max(0, int(len(latencies) * 0.9) - 1)], 3),
        "min_s": round(min(latencies), 3),
        "max_s": round(max(latencies), 3),
        "target_median_s": 3.0,
        "target_met": statistics.median(latencies) < 3.0,
        "settings": {"bridge_wait_seconds": 1, "event_persister_flush_interval_s": 0.5,
                     "runner_poll_frequency_s": float(POLL_FREQUENCY), "database": "postgresql"},
    }
    print(f"\nupload -> flow run start: median {figures['median_s']} s, p90 {figures['p90_s']} s, "
          f"min {figures['min_s']} s, max {figures['max_s']} s over {len(latencies)} uploads")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

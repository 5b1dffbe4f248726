"""Around and after the POST: an accepted answer is never lost, and nothing is paid twice.

Real parts throughout: the Prefect server (PostgreSQL when installed), the sandbox over HTTP, an
s3:// record store on moto's server, reached through a fault-injecting proxy
(`tests/support/s3_proxy.py`) that fails writes or strips conditional headers on command. Each
test names the fault, and asserts the ledger (what was charged) and the output (what was delivered).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from prefect_aws import AwsCredentials
from prefect_aws.credentials import AwsClientParameters

from prefect_aimlapi_video.api.errors import GenerationNotRecorded, InvalidInputError
from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.flows.video_to_video import video_to_video
from prefect_aimlapi_video.sandbox import SandboxConfig, run_sandbox
from prefect_aimlapi_video.storage.record_store import open_store
from prefect_aimlapi_video.submission import sending as sending_module
from tests.support import prefect_api
from tests.support.reliability import (
    assert_no_double_charge,
    cli_command,
    fast_credentials,
    fast_polls,
    sha256_file,
    subprocess_env,
    wait_until,
)
from tests.support.s3_proxy import S3FaultProxy

pytestmark = pytest.mark.integration
BUCKET = "aimlapi-after-post"


@pytest.fixture
def proxy(moto_server, s3):
    s3.create_bucket(Bucket=BUCKET)
    with S3FaultProxy(moto_server) as running:
        yield running


@pytest.fixture
async def proxied_aws(proxy) -> str:
    """An AwsCredentials block whose S3 client goes through the proxy (the record store uses it), with
    botocore's own retries off, so an injected failure reaches our code at once, as one that outlasted
    them would."""
    name = f"proxied-{uuid.uuid4().hex[:6]}"
    parameters = AwsClientParameters(endpoint_url=proxy.url, config={"retries": {"total_max_attempts": 1}})
    await AwsCredentials(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1",
                         aws_client_parameters=parameters).asave(name)
    return name


def records(tag: str) -> str:
    return f"s3://{BUCKET}/{tag}-{uuid.uuid4().hex[:6]}"


async def when_accepted(sandbox, then, timeout: float = 60) -> None:
    """Call `then()` the moment the sandbox has accepted a POST (without blocking the flow's loop)."""
    deadline = time.monotonic() + timeout
    while not sandbox.ledger():
        assert time.monotonic() < deadline, "nothing was accepted"
        await asyncio.sleep(0.05)
    then()


async def test_the_heartbeat_failing_during_the_post_costs_one_charge_and_delivers(
    prefect_server, sandbox, clips, tmp_path, proxy, proxied_aws
):
    """The POST takes 7 s to answer (the heartbeat writes every 5 s), the store fails every write from
    acceptance for 12 s, and the usage log lists requests only at completion: the accepted answer is
    recorded once the store is back, nothing is sent again, the output is delivered."""
    store = records("heartbeat")
    sandbox.set_faults({"log_visibility": "at_completion", "slow_seconds": 7,
                        "script": [{"route": "submit", "kind": "slow_response"}]})
    run = asyncio.ensure_future(video_to_video(
        video=str(clips["small"]), prompt="etching", seed=1, credentials=fast_credentials(sandbox, timeout_seconds=15),
        output=str(tmp_path / "out.mp4"), settings={"poll_policy": fast_polls(), "submissions": store,
                                                    "aws_credentials": proxied_aws, "reconcile_grace_seconds": 5}))
    await when_accepted(sandbox, lambda: proxy.fail(methods=("PUT",), seconds=12))
    result = await asyncio.wait_for(run, 240)

    (entry,) = sandbox.ledger()
    assert result.status == "completed" and result.generation_id == entry.generation_id and not result.resumed
    assert sha256_file(result.output) == entry.output_sha256
    assert proxy.stats().injected["PUT"] >= 2  # the heartbeat's writes during the POST, then the record's
    assert await prefect_api.logs(result.flow_run_id, containing=f"Accepted: generation {entry.generation_id}")


async def test_the_record_failing_for_30_s_after_acceptance_costs_one_charge_and_delivers(
    prefect_server, sandbox, clips, tmp_path, proxy, proxied_aws
):
    # The answer comes 2 s after acceptance, so the store is already failing when it is to be recorded.
    sandbox.set_faults({"log_visibility": "at_completion", "slow_seconds": 2,
                        "script": [{"route": "submit", "kind": "slow_response"}]})
    started = time.monotonic()
    run = asyncio.ensure_future(video_to_video(
        video=str(clips["small"]), prompt="etching", seed=2, credentials=fast_credentials(sandbox, timeout_seconds=10),
        output=str(tmp_path / "out.mp4"), settings={"poll_policy": fast_polls(), "submissions": records("thirty"),
                                                    "aws_credentials": proxied_aws, "reconcile_grace_seconds": 5}))
    await when_accepted(sandbox, lambda: proxy.fail(methods=("PUT",), seconds=30))
    result = await asyncio.wait_for(run, 240)

    (entry,) = sandbox.ledger()
    assert time.monotonic() - started >= 30  # it waited the store out
    assert result.status == "completed" and result.generation_id == entry.generation_id
    assert sha256_file(result.output) == entry.output_sha256
    assert await prefect_api.logs(result.flow_run_id, containing="Could not record generation")


async def test_a_record_that_never_gets_written_fails_naming_the_command_that_collects_it(
    prefect_server, sandbox, clips, tmp_path, proxy, proxied_aws, monkeypatch
):
    """The store stays down past the deadline: the run fails naming the generation and the exact collect
    command; once the store is back, that very command delivers it, at no new charge."""
    monkeypatch.setattr(sending_module, "RECORD_DEADLINE_SECONDS", 5.0)
    block = f"after-post-{uuid.uuid4().hex[:6]}"
    await AimlApiCredentials(api_key=sandbox.api_key, base_url=sandbox.base_url).asave(block)
    output = str(tmp_path / "out.mp4")
    sandbox.set_faults({"slow_seconds": 2, "script": [{"route": "submit", "kind": "slow_response"}]})
    run = asyncio.ensure_future(video_to_video(
        video=str(clips["small"]), prompt="etching", seed=3, credentials=block, output=output,
        settings={"poll_policy": fast_polls(), "submissions": records("never"), "aws_credentials": proxied_aws}))
    await when_accepted(sandbox, lambda: proxy.fail(methods=("PUT",)))
    with pytest.raises(GenerationNotRecorded) as caught:
        await asyncio.wait_for(run, 120)
    (entry,) = sandbox.ledger()
    message = str(caught.value)
    assert entry.generation_id in message and entry.client_request_id in message
    command = message.split("Collect it without a new charge: ", 1)[1]
    assert command.startswith(f"aimlapi-video collect {entry.generation_id} --output {output}")
    assert f"--credentials {block}" in command and caught.value.collect_command == command

    proxy.heal()
    done = subprocess.run([*cli_command(), *shlex.split(command)[1:]], capture_output=True, text=True, timeout=240,
                          env=subprocess_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(sandbox.ledger()) == 1 and sha256_file(output) == entry.output_sha256


async def test_twenty_generations_reserve_and_settle_one_budget_at_once(prefect_server, sandbox, clips, tmp_path, s3):
    """Twenty children of one batch share one budget on an s3:// store: contention backs off, none
    fails, every charge is counted once, nothing stays in flight, the cap holds."""
    from prefect_aimlapi_video.flows.batch import video_to_video_batch
    from prefect_aimlapi_video.submission.budget import Budget

    s3.create_bucket(Bucket=BUCKET)
    # Each item reserves its estimate (0.5 s at 63,000 credits/s): a cap that admits all twenty, barely.
    store, name, cap = records("budget"), f"twenty-{uuid.uuid4().hex[:6]}", 20.5 * 0.5 * 63_000
    rows = await video_to_video_batch(
        items=[{"video": str(clips["small"]), "seed": i, "output": str(tmp_path / f"{i}.mp4")} for i in range(20)],
        prompt="mosaic", credentials=fast_credentials(sandbox), concurrency_limit=None, max_concurrency=20,
        settings={"poll_policy": fast_polls(), "submissions": store, "budget": name, "max_credits": cap})

    ledger = sandbox.ledger()
    assert [r.status for r in rows] == ["completed"] * 20 and len(ledger) == 20
    state = await Budget(await open_store(store), name, cap).state()
    assert state.spent == sum(e.credits for e in ledger) <= cap and state.reserved == {}


@pytest.mark.parametrize("ignored", ["If-None-Match", "If-Match"])
async def test_a_store_that_ignores_conditional_writes_is_refused_before_any_post(
    prefect_server, sandbox, clips, tmp_path, proxy, proxied_aws, ignored
):
    proxy.drop_request_headers = {ignored}
    with pytest.raises(InvalidInputError, match=f"does not compare and swap.*{ignored}"):
        await video_to_video(video=str(clips["small"]), prompt="etching", credentials=fast_credentials(sandbox),
                             output=str(tmp_path / "out.mp4"),
                             settings={"submissions": records("pretends"), "aws_credentials": proxied_aws})
    assert sandbox.ledger() == [] and not (tmp_path / "out.mp4").exists()


async def test_a_provider_500_after_acceptance_with_rows_at_completion_is_paid_once(
    prefect_server, sandbox, clips, tmp_path
):
    """Accepted, then the provider's own JSON 500; the log lists the request 8 s after it completes.
    The next attempt waits for the row (it used to resend after a 5 s pause: two charges)."""
    sandbox.set_faults({"log_visibility": "at_completion", "log_delay_seconds": 8,
                        "script": [{"route": "submit", "kind": "accept_then_500"}]})
    result = await video_to_video(
        video=str(clips["small"]), prompt="etching", seed=4, credentials=fast_credentials(sandbox),
        output=str(tmp_path / "out.mp4"),
        settings={"poll_policy": fast_polls(), "submissions": str(tmp_path / "records"), "reconcile_grace_seconds": 60})
    (entry,) = sandbox.ledger()
    assert result.generation_id == entry.generation_id and result.resumed
    assert sha256_file(result.output) == entry.output_sha256


async def test_a_gateway_503_the_log_lists_as_failed_is_resent_within_seconds(prefect_server, sandbox, clips, tmp_path):
    """A gateway's HTML 503 says nothing, but the usage log lists the request as failed (cost 0): it is
    sent again at once, although this store knows nothing of the account and the default wait is 20 min."""
    sandbox.set_faults({"log_refused_requests": True, "script": [{"route": "submit", "kind": "gateway_503"}]})
    started = time.monotonic()
    result = await video_to_video(
        video=str(clips["small"]), prompt="etching", seed=5, credentials=fast_credentials(sandbox),
        output=str(tmp_path / "out.mp4"),
        settings={"poll_policy": fast_polls(), "submissions": str(tmp_path / "records")})
    (entry,) = sandbox.ledger()
    assert time.monotonic() - started < 30
    assert result.generation_id == entry.generation_id and entry.client_request_id.endswith("-a2")
    assert [row["client_request_id"] for row in sandbox.refused()] == [entry.client_request_id[:-1] + "1"]


async def test_an_unknown_outcome_on_an_account_listing_at_acceptance_resolves_in_under_a_minute(
    prefect_server, clips, tmp_path
):
    """Three generations teach the store that this account lists requests as soon as it accepts them;
    then a POST answered by a 502 (never accepted, never listed) is sent again after the learned wait,
    not the default 20 minutes."""
    store = str(tmp_path / "records")
    with run_sandbox(SandboxConfig(processing_seconds=3, workers=4)) as sandbox:
        for seed in range(3):
            await video_to_video(video=str(clips["small"]), prompt="etching", seed=seed,
                                 credentials=fast_credentials(sandbox), output=str(tmp_path / f"{seed}.mp4"),
                                 settings={"poll_policy": fast_polls(), "submissions": store})
        sandbox.set_faults({"script": [{"route": "submit", "kind": "server_error_502"}]})
        started = time.monotonic()
        result = await video_to_video(video=str(clips["small"]), prompt="etching", seed=9,
                                      credentials=fast_credentials(sandbox), output=str(tmp_path / "9.mp4"),
                                      settings={"poll_policy": fast_polls(), "submissions": store})
        took = time.monotonic() - started
        ledger = sandbox.ledger()
    assert took < 60 and len(ledger) == 4 and result.client_request_id.endswith("-a2")
    assert await prefect_api.logs(result.flow_run_id, containing="listed at acceptance")


HOST_A = textwrap.dedent(
    """
    # Host A: claims the record, then stages its input (slowly) before the POST.
    import asyncio, json, sys, time
    from pathlib import Path
    from prefect_aimlapi_video.api.client import AimlApiClient
    from prefect_aimlapi_video.storage.record_store import open_store
    from prefect_aimlapi_video.api.requests import GenerationParams
    from prefect_aimlapi_video.storage.sources import data_uri, sha256_file
    from prefect_aimlapi_video.submission.protocol import submit_once

    config = json.loads(sys.argv[1])
    clip, marker = Path(config["clip"]), Path(config["marker"])

    async def video_url() -> str:
        marker.write_text("claimed")  # the test stops this process here, between the claim and the POST
        await asyncio.sleep(1.0)
        return data_uri(clip.read_bytes())

    async def main() -> None:
        async with AimlApiClient(config["api_key"], config["base_url"], timeout_seconds=5,
                                 connect_timeout_seconds=2) as client:
            submitted = await submit_once(
                client, await open_store(config["store"]), GenerationParams(prompt="etching", seed=7),
                f"sha256:{sha256_file(clip)}", config["key"], video_url, reconcile_seconds=5)
        print("RESULT " + submitted.model_dump_json(), flush=True)

    asyncio.run(main())
    """
)


async def test_a_host_paused_between_its_claim_and_its_post_sends_nothing(prefect_server, sandbox, clips, tmp_path, s3):
    """Host A is stopped (SIGSTOP) right after claiming the record, for longer than its lease; host B
    takes the claim over and completes the generation; A, resumed, fails to renew its claim and sends
    nothing: it resumes B's generation. One charge."""
    s3.create_bucket(Bucket=BUCKET)
    store, key = records("paused"), f"paused-{uuid.uuid4().hex[:6]}"
    script, marker = tmp_path / "host_a.py", tmp_path / "claimed"
    script.write_text(HOST_A)
    config = {"clip": str(clips["small"]), "marker": str(marker), "store": store, "key": key,
              "api_key": sandbox.api_key, "base_url": sandbox.base_url}
    host_a = subprocess.Popen([sys.executable, str(script), json.dumps(config)], cwd=tmp_path, text=True,
                              env=subprocess_env(PREFECT_HOME=str(tmp_path / "home-a")), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(marker.exists, 60, what="host A's claim")
        os.killpg(host_a.pid, signal.SIGSTOP)
        started = time.monotonic()
        result = await video_to_video(  # host B: this process, its own flow run
            video=str(clips["small"]), prompt="etching", seed=7, idempotency_key=key,
            credentials=fast_credentials(sandbox, timeout_seconds=5), output=str(tmp_path / "b.mp4"),
            settings={"poll_policy": fast_polls(), "submissions": store, "reconcile_grace_seconds": 5})
        waited = time.monotonic() - started
        assert sandbox.ledger()[0].client_request_id.endswith("-a2")  # B's own attempt, after the takeover
    finally:
        os.killpg(host_a.pid, signal.SIGCONT)
    output, _ = host_a.communicate(timeout=120)
    assert host_a.returncode == 0, output[-3000:]
    a_result = json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])

    (entry,) = sandbox.ledger()
    assert waited >= 30  # A's lease (its floor: 2 x its 12 s POST deadline < 30 s) ran out on B's own clock first
    assert result.generation_id == a_result["generation_id"] == entry.generation_id and a_result["resumed"]
    assert sha256_file(result.output) == entry.output_sha256
    assert_no_double_charge(sandbox.ledger())

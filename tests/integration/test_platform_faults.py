"""When the platform under a batch fails (issue 24): the record store unreachable for a minute, the
output volume full when the results arrive. Each with generations in flight, on real parts: the
session's Prefect server, a sandbox of the test's own over HTTP, moto's S3 behind a proxy that cuts
it off, a tmpfs volume. Each asserts the ledger (what was charged) against the outputs (what was
delivered): 0 double charges, and every paid generation delivered or named by its failure with the
command that collects it; then the same batch run again delivers the rest without a new charge.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from prefect_aws import AwsCredentials
from prefect_aws.credentials import AwsClientParameters

from prefect_aimlapi_video.flows.batch import video_to_video_batch
from prefect_aimlapi_video.sandbox import SandboxConfig, run_sandbox
from tests.support.reliability import (
    assert_no_double_charge,
    fast_credentials,
    fast_polls,
    sha256_file,
    temp_leftovers,
)
from tests.support.s3_proxy import S3FaultProxy

pytestmark = pytest.mark.integration
ITEMS = 6
BUCKET = "aimlapi-platform-faults"


def _items(clip: Path, out: Path, scope: str) -> list[dict]:
    return [{"video": str(clip), "seed": 500 + i, "idempotency_key": f"{scope}#item-{i}",
             "output": str(out / f"gen-{i}.mp4")} for i in range(ITEMS)]


async def _run(sandbox, items: list[dict], settings: dict) -> list:
    return await video_to_video_batch(items=items, prompt="fresco", credentials=fast_credentials(sandbox, timeout_seconds=5, download_timeout_seconds=5),
                                      concurrency_limit=None, max_concurrency=ITEMS, tolerate_failures=True,
                                      settings={"poll_policy": fast_polls(), "reconcile_grace_seconds": 5, **settings})


def _check_paid_work_is_delivered_or_named(rows: list, ledger: list) -> None:
    """Every charged generation is a completed row's (its bytes) or a failed row names it and the
    command that collects it; a failed row's output does not exist."""
    assert_no_double_charge(ledger)
    by_generation = {e.generation_id: e for e in ledger}
    for row in rows:
        if row.status == "completed":
            assert sha256_file(row.output) == by_generation[row.generation_id].output_sha256
        else:
            assert row.error and not Path(row.output or "/nonexistent").exists(), row
    accounted = {r.generation_id for r in rows if r.status == "completed"}
    accounted |= {e.generation_id for e in ledger for r in rows
                  if r.status != "completed" and e.generation_id in (r.error or "") and r.collect_command
                  and e.generation_id in r.collect_command}
    unaccounted = [e.generation_id for e in ledger if e.status == "completed" and e.generation_id not in accounted]
    assert unaccounted == [], f"paid, neither delivered nor named with its collect command: {unaccounted}\n{rows}"


def _check_the_rerun_delivered_each_item_paid_once(again: list, ledger: list) -> None:
    """The same batch run again: every item completed, with the bytes the sandbox served, and each
    item paid for once over both runs."""
    assert [r.status for r in again] == ["completed"] * ITEMS, [r.error for r in again]
    assert_no_double_charge(ledger)
    assert len(ledger) == ITEMS, ledger
    by_generation = {e.generation_id: e for e in ledger}
    for row in again:
        assert sha256_file(row.output) == by_generation[row.generation_id].output_sha256


async def _when_accepted(sandbox, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(sandbox.ledger()) < count:
        assert time.monotonic() < deadline, f"only {len(sandbox.ledger())} of {count} POSTs accepted"
        await asyncio.sleep(0.05)


async def test_the_record_store_unreachable_for_a_minute_during_a_batch(prefect_server, moto_server, s3, clips,
                                                                        tmp_path):
    """The s3:// record store resets every connection for 60 s, from the moment half the batch was
    accepted: an accepted answer waits for the store (the record's 120 s deadline) or was recorded
    already, and its generation is delivered (bookkeeping after delivery only warns); an item not yet
    sent retries its claim (the task's retries, about 40 s) and fails before paying if the store is
    still gone. Nothing is paid twice, the batch's table names each failure, and the same batch run
    again once the store is back ends with every item delivered, each paid once."""
    s3.create_bucket(Bucket=BUCKET)
    scope = f"s3://{BUCKET}/unreachable-{uuid.uuid4().hex[:6]}"
    with S3FaultProxy(moto_server) as proxy, run_sandbox(SandboxConfig(processing_seconds=8, workers=ITEMS)) as sandbox:
        aws = f"proxied-{uuid.uuid4().hex[:6]}"
        parameters = AwsClientParameters(endpoint_url=proxy.url, config={"retries": {"total_max_attempts": 1}})
        await AwsCredentials(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1",
                             aws_client_parameters=parameters).asave(aws)
        items = _items(clips["small"], tmp_path / "out", scope)
        settings = {"submissions": scope, "aws_credentials": aws, "timeout_seconds": 300}
        batch = asyncio.ensure_future(_run(sandbox, items, settings))
        await _when_accepted(sandbox, ITEMS // 2)
        outage, began = proxy.unreachable(seconds=60), time.monotonic()
        rows = await asyncio.wait_for(batch, 420)
        first_s = time.monotonic() - began
        assert proxy.stats().resets > 0  # the batch met the outage
        ledger = sandbox.ledger()
        _check_paid_work_is_delivered_or_named(rows, ledger)
        assert len(rows) == ITEMS
        assert temp_leftovers(tmp_path / "out") == []

        while outage.active:  # the first run ends inside the outage when every answer was recorded before it
            await asyncio.sleep(0.2)
        again = await _run(sandbox, items, settings)
        final = sandbox.ledger()
        _check_the_rerun_delivered_each_item_paid_once(again, final)
        print(f"\nrecord store unreachable 60 s: first run {sum(r.status == 'completed' for r in rows)}/{ITEMS} "
              f"completed, {len(ledger)} charged during it, ending {first_s:.0f} s into the outage; "
              f"after the re-run {ITEMS}/{ITEMS} delivered, {len(final)} charges")


@pytest.fixture
def small_volume(tmp_path: Path):
    """A 4 MiB tmpfs: room for the batch's outputs until the test fills it."""
    mount = tmp_path / "volume"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_the_output_volume_full_when_the_results_arrive(prefect_server, clips, tmp_path, small_volume):
    """The outputs' volume fills up after every item was checked and accepted: each paid generation
    fails naming itself and its collect command, no partial file is left, the records stay on their
    own disk; once there is room, the same batch delivers every one of them without a new charge."""
    with run_sandbox(SandboxConfig(processing_seconds=4, workers=ITEMS)) as sandbox:
        out = small_volume / "out"
        items = _items(clips["small"], out, f"volume-{uuid.uuid4().hex[:6]}")
        settings = {"submissions": str(tmp_path / "records")}
        batch = asyncio.ensure_future(_run(sandbox, items, settings))
        await _when_accepted(sandbox, ITEMS)
        filler = small_volume / "filler"
        with filler.open("wb") as fill:  # everything that is left
            try:
                while True:
                    fill.write(b"\0" * 65536)
                    fill.flush()
            except OSError:
                pass
        rows = await asyncio.wait_for(batch, 240)
        ledger = sandbox.ledger()
        _check_paid_work_is_delivered_or_named(rows, ledger)
        failed = [r for r in rows if r.status != "completed"]
        assert failed, "the volume was full, yet every output was written"
        assert all("No space left on device" in r.error for r in failed), [r.error for r in failed]
        assert temp_leftovers(out) == []

        filler.unlink()
        again = await _run(sandbox, items, settings)
        # no new charge: the failed ones were resumed from their records
        _check_the_rerun_delivered_each_item_paid_once(again, sandbox.ledger())
        print(f"\noutput volume full: {len(failed)}/{ITEMS} failed naming their collect command, "
              f"then delivered by the re-run; {len(sandbox.ledger())} charges")


@pytest.fixture(scope="module")
def own_platform(tmp_path_factory):
    """A Prefect server on a PostgreSQL cluster of this module's own, so the tests can kill and restart
    them without touching the session's server."""
    from tests.support.local_services import PostgresCluster, PrefectServerProcess, postgres_binaries

    if postgres_binaries() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql): .ci/run installs it")
    cluster = PostgresCluster()
    server = PrefectServerProcess(tmp_path_factory.mktemp("own-prefect"), cluster.url)
    try:
        server.start()
        yield cluster, server
    finally:
        server.stop()
        cluster.remove()


FIRST_RUN = textwrap.dedent(
    """
    import asyncio, json, sys
    from prefect_aimlapi_video import AimlApiCredentials, video_to_video_batch

    config = json.loads(sys.argv[1])
    credentials = AimlApiCredentials(api_key=config["api_key"], base_url=config["base_url"], timeout_seconds=5,
                                     connect_timeout_seconds=2, download_timeout_seconds=5)
    try:
        rows = asyncio.run(video_to_video_batch(
            items=config["items"], prompt="fresco", credentials=credentials, concurrency_limit=None,
            max_concurrency=len(config["items"]), tolerate_failures=True, settings=config["settings"]))
    except Exception as exc:  # Prefect itself may not survive the outage: the test says so
        print("ENDED " + json.dumps(f"{type(exc).__name__}: {exc}"), flush=True)
    else:
        print("ROWS " + json.dumps([row.model_dump(mode="json") for row in rows]), flush=True)
    """
)


async def _batch_through_an_outage(own_platform, clips, tmp_path, outage,
                                   env: dict[str, str] | None = None) -> tuple[list | str, list]:
    """A batch on the module's own server, run by a process of its own (a worker's environment: `env`);
    once half of it was accepted, `outage()`; then the same batch again, here. Returns the first
    run's rows (or how it ended) and the ledger after it, having checked the re-run."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_aimlapi_video.flows.batch_items import BatchItemResult
    from tests.support.reliability import subprocess_env

    _, server = own_platform
    with run_sandbox(SandboxConfig(processing_seconds=8, workers=ITEMS)) as sandbox:
        items = _items(clips["small"], tmp_path / "out", f"platform-{uuid.uuid4().hex[:6]}")
        settings = {"submissions": str(tmp_path / "records"), "timeout_seconds": 300, "reconcile_grace_seconds": 5,
                    "poll_policy": {"initial_seconds": 0.25, "fast_phase_seconds": 30}}
        config = {"api_key": sandbox.api_key, "base_url": sandbox.base_url, "items": items, "settings": settings}
        host = subprocess.Popen(
            [sys.executable, "-c", FIRST_RUN, json.dumps(config)], cwd=tmp_path, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=subprocess_env(PREFECT_API_URL=server.url, PREFECT_HOME=str(tmp_path / "host-home"), **(env or {})))
        try:
            await _when_accepted(sandbox, ITEMS // 2)
            await asyncio.to_thread(outage)
            output, _ = await asyncio.to_thread(host.communicate, timeout=400)
        finally:
            if host.poll() is None:
                host.kill()
        lines = [line for line in output.splitlines() if line.startswith(("ROWS ", "ENDED "))]
        assert lines, output[-4000:]
        kind, _, payload = lines[-1].partition(" ")
        first: list | str = ([BatchItemResult.model_validate(row) for row in json.loads(payload)]
                             if kind == "ROWS" else json.loads(payload))
        ledger = sandbox.ledger()
        assert_no_double_charge(ledger)
        if isinstance(first, list):
            _check_paid_work_is_delivered_or_named(first, ledger)
        with temporary_settings({PREFECT_API_URL: server.url}):
            again = await _run(sandbox, items, {**settings, "poll_policy": fast_polls()})
        final = sandbox.ledger()
    _check_the_rerun_delivered_each_item_paid_once(again, final)
    return first, ledger


def _outcome(first: list | str) -> str:
    if isinstance(first, str):
        return f"the batch ended with {first[:200]}"
    return f"{sum(r.status == 'completed' for r in first)}/{ITEMS} completed in the first run"


@pytest.mark.parametrize("down_seconds", [30, 150], ids=["30s-down", "150s-down"])
async def test_the_prefect_server_killed_and_restarted(own_platform, clips, tmp_path, down_seconds):
    """30 s: within what Prefect's client retries (about a minute), the batch goes on. 150 s: past it,
    Prefect itself cannot carry the flow runs; what was paid is named or resumed, and the same items
    run again deliver every one with no new charge."""
    _, server = own_platform

    def outage() -> None:
        server.kill()
        time.sleep(down_seconds)
        server.start()

    first, ledger = await _batch_through_an_outage(own_platform, clips, tmp_path, outage)
    if down_seconds <= 30:
        assert isinstance(first, list) and [r.status for r in first] == ["completed"] * ITEMS, _outcome(first)
    print(f"\nPrefect server killed for {down_seconds} s: {_outcome(first)}; {len(ledger)} charged during it; "
          f"after the re-run {ITEMS}/{ITEMS} delivered, {ITEMS} charges")


@pytest.mark.parametrize("retry_500", [False, True], ids=["prefect-defaults", "client-retries-500"])
async def test_postgresql_restarted_with_20_s_down(own_platform, clips, tmp_path, retry_500):
    """While its database is down, Prefect's server answers 500, which its client does not retry by
    default: flow runs may fail (a download's concurrency slot, a state change), each paid generation
    named with its collect command, and the re-run delivers them. With PREFECT_CLIENT_RETRY_EXTRA_CODES
    including 500 (what docs/faults.md advises for workers), the client waits the restart out and the
    batch completes in its first run."""
    cluster, _ = own_platform

    def outage() -> None:
        cluster.stop()
        time.sleep(20)
        cluster.start()

    env = {"PREFECT_CLIENT_RETRY_EXTRA_CODES": "500"} if retry_500 else {}
    first, ledger = await _batch_through_an_outage(own_platform, clips, tmp_path, outage, env)
    if retry_500:
        assert isinstance(first, list) and [r.status for r in first] == ["completed"] * ITEMS, _outcome(first)
    print(f"\nPostgreSQL down for 20 s ({'500 retried' if retry_500 else 'Prefect defaults'}): {_outcome(first)}; "
          f"{len(ledger)} charged during it; after the re-run {ITEMS}/{ITEMS} delivered, {ITEMS} charges")

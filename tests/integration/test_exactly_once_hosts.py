"""Never paying twice across hosts, gateways and a usage log we cannot see inside.

"Hosts" are processes with their own PREFECT_HOME and working directory, sharing only what real
hosts share: the Prefect server, the sandbox over HTTP, and (when configured) an s3:// record
store on moto's server. A host is killed with SIGKILL while it waits on a paid generation, and the
same logical generation is then started on the other host. The provider's undocumented behaviours
are each taught to the sandbox: gateway answers after acceptance, usage-log rows that appear only
when a generation completes, rows whose generation id we cannot recognise.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from prefect_aimlapi_video.api.client import AimlApiClient
from prefect_aimlapi_video.api.errors import UnidentifiedGenerationError
from prefect_aimlapi_video.api.requests import GenerationParams
from prefect_aimlapi_video.flows.collect import collect_generation
from prefect_aimlapi_video.flows.settings import RunSettings
from prefect_aimlapi_video.flows.video_to_video import video_to_video
from prefect_aimlapi_video.sandbox import SandboxConfig, run_sandbox
from prefect_aimlapi_video.storage.record_store import open_store
from prefect_aimlapi_video.storage.sources import sha256_file as input_sha256
from prefect_aimlapi_video.submission.protocol import SubmissionRecord, record_key, submit_once
from tests.support import prefect_api
from tests.support.reliability import (
    assert_no_double_charge,
    fast_credentials,
    fast_polls,
    read_all_events,
    sha256_file,
    subprocess_env,
    wait_until,
)

pytestmark = pytest.mark.integration

HOST_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from prefect_aimlapi_video import AimlApiCredentials, PollPolicy, video_to_video

    config = json.loads(sys.argv[1])
    credentials = AimlApiCredentials(api_key=config.pop("api_key"), base_url=config.pop("base_url"),
                                     timeout_seconds=5, connect_timeout_seconds=2)
    result = asyncio.run(video_to_video(**config, credentials=credentials,
                                        settings={"poll_policy": PollPolicy(initial_seconds=0.25,
                                                                            fast_phase_seconds=60)}))
    print("RESULT " + result.model_dump_json())
    """
)


class Host:
    """A process with its own PREFECT_HOME, working directory and (unless shared) record store."""

    def __init__(self, root: Path, name: str, submissions: str | None = None) -> None:
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.script = self.dir / "host.py"
        self.script.write_text(HOST_SCRIPT)
        self.env = subprocess_env(PREFECT_HOME=str(self.dir / "prefect-home"),
                                  AIMLAPI_SUBMISSIONS_DIR=submissions or str(self.dir / "submissions"))

    def start(self, sandbox, **parameters) -> subprocess.Popen:
        config = {"api_key": sandbox.api_key, "base_url": sandbox.base_url, **parameters}
        return subprocess.Popen([sys.executable, str(self.script), json.dumps(config)], cwd=self.dir, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)


def kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)


def finish(process: subprocess.Popen, timeout: float = 240) -> dict:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]
    (line,) = [line for line in output.splitlines() if line.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


@pytest.fixture
def slow_sandbox():
    """Its own sandbox: generations take long enough to kill a host while it waits."""
    with run_sandbox(SandboxConfig(processing_seconds=8, workers=4)) as handle:
        yield handle


@pytest.fixture
def record_bucket(s3) -> str:
    s3.create_bucket(Bucket="aimlapi-records")
    return "s3://aimlapi-records/submissions"


def _first_host_killed_while_waiting(sandbox, host: Host, clip: Path, key: str, **extra) -> object:
    process = host.start(sandbox, video=str(clip), prompt="charcoal sketch", seed=17, idempotency_key=key,
                         output=str(host.dir / "out.mp4"), **extra)
    try:
        entry = wait_until(lambda: next(iter(sandbox.ledger()), None), 90, what="the first host's POST")
        time.sleep(1.5)  # its record is written, it is polling; the generation is still processing
        assert process.poll() is None and sandbox.ledger()[0].status != "completed"
    finally:
        kill(process)
    return entry


async def test_two_hosts_sharing_an_s3_store_pay_once(prefect_server, slow_sandbox, record_bucket, clips, tmp_path):
    key = f"shared-{uuid.uuid4().hex[:8]}"
    first, second = Host(tmp_path, "host-a", record_bucket), Host(tmp_path, "host-b", record_bucket)
    entry = _first_host_killed_while_waiting(slow_sandbox, first, clips["small"], key)

    result = finish(second.start(slow_sandbox, video=str(clips["small"]), prompt="charcoal sketch", seed=17,
                                 idempotency_key=key, output=str(second.dir / "out.mp4")))

    ledger = slow_sandbox.ledger()
    assert len(ledger) == 1 and ledger[0].status == "completed"
    assert result["generation_id"] == entry.generation_id and result["resumed"] is True
    assert sha256_file(second.dir / "out.mp4") == ledger[0].output_sha256
    store = await open_store(record_bucket)
    assert store.shared
    record = SubmissionRecord.model_validate_json(
        (await store.read(record_key(_fingerprint(clips, "charcoal sketch", 17), key)))[0])
    assert record.state == "accepted" and record.generation_id == entry.generation_id


async def test_two_hosts_without_a_shared_store_pay_once_when_the_log_lists_at_acceptance(
    prefect_server, slow_sandbox, clips, tmp_path
):
    """No shared store: the second host's record directory is empty, so its pre-POST usage-log read
    is all that stands between it and a second charge."""
    key = f"unshared-{uuid.uuid4().hex[:8]}"
    first, second = Host(tmp_path, "host-a"), Host(tmp_path, "host-b")
    entry = _first_host_killed_while_waiting(slow_sandbox, first, clips["small"], key)
    assert list((second.dir / "submissions").glob("*.json")) == []

    result = finish(second.start(slow_sandbox, video=str(clips["small"]), prompt="charcoal sketch", seed=17,
                                 idempotency_key=key, output=str(second.dir / "out.mp4")))

    assert len(slow_sandbox.ledger()) == 1
    assert result["generation_id"] == entry.generation_id and result["resumed"] is True
    assert sha256_file(second.dir / "out.mp4") == slow_sandbox.ledger()[0].output_sha256


def _fingerprint(clips, prompt: str, seed: int, strength: float = 0.85) -> str:
    params = GenerationParams(prompt=prompt, seed=seed, strength=strength)
    return params.fingerprint(f"sha256:{input_sha256(Path(clips['small']))}")


def run_args(clips, tmp_path, sandbox, **overrides):
    """The flow's arguments; an override that is a setting (`RunSettings`) goes into `settings`."""
    settings = dict(poll_policy=fast_polls(), reconcile_grace_seconds=60)
    settings.update({name: overrides.pop(name) for name in list(overrides) if name in RunSettings.model_fields})
    arguments = dict(video=str(clips["small"]), prompt="gouache landscape", strength=0.7, seed=5,
                     credentials=fast_credentials(sandbox), output=str(tmp_path / "out.mp4"), settings=settings)
    arguments.update(overrides)
    return arguments


@pytest.mark.parametrize("fault", ["accept_then_502", "drop_connection"])
async def test_unclear_answer_with_rows_listed_only_at_completion_is_paid_once(
    prefect_server, sandbox, clips, tmp_path, fault
):
    """Accepted, then a gateway's HTML 502 (or no answer at all), and the usage log lists the request
    only when its generation completes: the retry waits for the row instead of posting again."""
    sandbox.set_faults({"log_visibility": "at_completion", "log_delay_seconds": 4,
                        "script": [{"route": "submit", "kind": fault}]})
    result = await video_to_video(**run_args(clips, tmp_path, sandbox))

    (entry,) = sandbox.ledger()
    assert result.status == "completed" and result.generation_id == entry.generation_id and result.resumed
    assert sha256_file(result.output) == entry.output_sha256
    runs = await prefect_api.task_runs(result.flow_run_id, names=("submit-generation",))
    assert runs["submit-generation"].run_count == 2
    assert await prefect_api.logs(result.flow_run_id, containing=f"Adopted generation {entry.generation_id}")


async def test_a_row_with_an_unrecognisable_generation_id_fails_closed(prefect_server, sandbox, clips, tmp_path):
    sandbox.set_faults({"log_row_shape": "unidentifiable", "script": [{"route": "submit", "kind": "accept_then_502"}]})
    key = f"unidentified-{uuid.uuid4().hex[:8]}"
    with pytest.raises(UnidentifiedGenerationError) as caught:
        await video_to_video(**run_args(clips, tmp_path, sandbox, idempotency_key=key, reconcile_grace_seconds=1))
    (entry,) = sandbox.ledger()
    assert entry.client_request_id in str(caught.value) and "will not be sent again" in str(caught.value)
    await asyncio.sleep(1.5)  # past the wait: still nothing is resent, on this run or the next
    with pytest.raises(UnidentifiedGenerationError):
        await video_to_video(**run_args(clips, tmp_path, sandbox, idempotency_key=key, reconcile_grace_seconds=1))
    assert len(sandbox.ledger()) == 1
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("store_kind", ["local", "s3"])
async def test_two_attempts_released_together_on_a_stale_record_never_both_post(
    prefect_server, sandbox, clips, tmp_path, store_kind, request
):
    """A pending record whose sender died: two attempts, each a thread with its own event loop, client
    and store instance, race to resend it, over HTTP to the sandbox. 20 rounds, one POST each."""
    location = request.getfixturevalue("record_bucket") + "/race" if store_kind == "s3" else str(tmp_path / "race")
    params = GenerationParams(prompt="race", seed=1)
    identity = f"sha256:{input_sha256(Path(clips['small']))}"
    video_url = _data_uri(clips["small"])

    for round_number in range(20):
        scope = f"stale-{store_kind}-{round_number}-{uuid.uuid4().hex[:6]}"
        key = record_key(params.fingerprint(identity), scope)
        stale = SubmissionRecord(key=key, fingerprint=params.fingerprint(identity), scope=scope, outcome="unknown",
                                 created_at=time.time() - 120, updated_at=time.time() - 120)
        assert await (await open_store(location)).create(key, stale.model_dump_json().encode())
        barrier, results, errors = threading.Barrier(2), [], []

        def attempt() -> None:
            async def run():
                async with AimlApiClient(sandbox.api_key, sandbox.base_url) as client:
                    store = await open_store(location)
                    barrier.wait()
                    return await submit_once(client, store, params, identity, scope, lambda: _value(video_url),
                                             reconcile_seconds=60)
            try:
                results.append(asyncio.run(run()))
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=attempt) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors == []
        posts = [e for e in sandbox.ledger() if e.client_request_id.startswith(stale.logical_prefix)]
        assert len(posts) == 1, f"round {round_number}: {len(posts)} POSTs"
        assert {r.generation_id for r in results} == {posts[0].generation_id}
    assert_no_double_charge(sandbox.ledger())


async def _value(value: str) -> str:
    return value


def _data_uri(path: Path) -> str:
    from prefect_aimlapi_video.storage.sources import data_uri

    return data_uri(Path(path).read_bytes())


async def test_log_reads_of_a_batch_are_shared_and_stay_under_the_rate_limit(prefect_server, sandbox, clips, tmp_path):
    """Every item of a batch has its own idempotency key, so each reads the usage log before its POST:
    the reads are coalesced and spaced, and the provider's limit (here 60 per minute) is never hit."""
    from prefect_aimlapi_video import video_to_video_batch

    sandbox.set_faults({"log_reads_per_minute": 60})
    items = [{"video": str(clips["small"]), "seed": i, "idempotency_key": f"log-share-{uuid.uuid4().hex[:6]}-{i}",
              "output": str(tmp_path / f"{i}.mp4")} for i in range(24)]
    rows = await video_to_video_batch(items=items, prompt="ink wash", credentials=fast_credentials(sandbox),
                                      concurrency_limit=None, max_concurrency=24,
                                      settings={"poll_policy": fast_polls()})
    assert [r.status for r in rows] == ["completed"] * 24 and len(sandbox.ledger()) == 24
    reads = sandbox.log_reads()
    assert reads["rate_limited"] == 0
    assert 1 <= reads["reads"] < 24  # shared: fewer scans than items


async def test_charged_credits_summed_over_a_resumed_generations_events_equal_the_ledger(
    prefect_server, slow_sandbox, record_bucket, clips, tmp_path
):
    """Host A posts and is killed while waiting; host B resumes the generation; then it is collected
    once more by id. Each run emits its events; summed over all of them, `charged_credits` is what the
    ledger charged: the charge is reported by the first run to see it, every other run reports 0."""
    since = datetime.now(timezone.utc) - timedelta(seconds=5)
    key = f"charged-{uuid.uuid4().hex[:8]}"
    first, second = Host(tmp_path, "host-a", record_bucket), Host(tmp_path, "host-b", record_bucket)
    entry = _first_host_killed_while_waiting(slow_sandbox, first, clips["small"], key)
    resumed = finish(second.start(slow_sandbox, video=str(clips["small"]), prompt="charcoal sketch", seed=17,
                                  idempotency_key=key, output=str(second.dir / "out.mp4")))
    collected = await collect_generation(entry.generation_id, credentials=fast_credentials(slow_sandbox),
                                         output=str(tmp_path / "again.mp4"),
                                         settings={"submissions": record_bucket, "poll_policy": fast_polls()})
    (charged,) = slow_sandbox.ledger()
    assert resumed["resumed"] and collected.charged_credits == 0 and "resumed: no new charge" in collected.one_line()

    def ours(events):
        return [e for e in events if e.resource.id == f"aimlapi.generation.{entry.generation_id}"]

    events = await prefect_api.eventually(
        lambda: read_all_events(since, datetime.now(timezone.utc) + timedelta(seconds=5)),
        lambda found: len([e for e in ours(found) if e.event.endswith(".completed")]) == 2, timeout=30)
    mine = ours(events)
    assert sorted(e.event.rsplit(".", 1)[1] for e in mine) == ["completed", "completed", "submitted", "submitted"]
    assert sum(e.payload.get("charged_credits") or 0 for e in mine) == charged.credits > 0

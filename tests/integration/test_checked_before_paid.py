"""Checked before it is paid, and what still fails after paying is one line that says how to collect it.

Real parts: the Prefect server, the sandbox over HTTP, the CLI as a subprocess, loopback HTTP servers
that redirect where no fetch may go. Every in-process fetch runs under `loopback_only`, which records
each connection and refuses any off loopback: the product must refuse before connecting at all.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import prefect_aimlapi_video.flows.video_to_video as v2v_module
from prefect_aimlapi_video.api.client import AimlApiClient
from prefect_aimlapi_video.api.errors import DownloadError
from prefect_aimlapi_video.flows.collect import collect_generation
from prefect_aimlapi_video.flows.video_to_video import video_to_video
from prefect_aimlapi_video.sandbox import SandboxConfig, run_sandbox
from tests.integration.test_bad_input import REDIRECTS, redirector
from tests.support import prefect_api
from tests.support.loopback_only import loopback_only
from tests.support.reliability import (
    cli_command,
    dump,
    fast_credentials,
    fast_polls,
    last_line,
    read_all_events,
    sha256_file,
    subprocess_env,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("path", list(REDIRECTS))
async def test_a_result_url_redirecting_inward_is_refused_before_any_connection(sandbox, tmp_path, path):
    """A result URL on a loopback server (the sandbox's own place) redirecting to the metadata address,
    a private address or public plain http: refused at that hop, nothing connected off loopback."""
    with redirector() as server, loopback_only() as connections:
        async with AimlApiClient(sandbox.api_key, sandbox.base_url) as client:
            with pytest.raises(DownloadError, match="refusing to fetch") as caught:
                await client.download(f"{server}{path}", tmp_path / "out.mp4")
    assert caught.value.retryable is False and list(tmp_path.iterdir()) == []
    assert connections.off_loopback == [] and len(connections.attempts) >= 1  # the loopback hop was real


async def test_a_drip_fed_download_fails_at_its_deadline_with_the_collect_command_and_is_collected_later(
    prefect_server, sandbox, clips, tmp_path, monkeypatch
):
    monkeypatch.setattr(v2v_module, "download_video", v2v_module.download_video.with_options(retry_delay_seconds=0))
    sandbox.set_faults({"drip_bytes_per_second": 2, "script": [{"route": "download", "kind": "drip_download",
                                                                "times": 4}]})
    output = str(tmp_path / "out.mp4")
    started = time.monotonic()
    with pytest.raises(DownloadError, match="did not finish within its 3 s deadline") as caught:
        await video_to_video(video=str(clips["small"]), prompt="ink", credentials=fast_credentials(
            sandbox, download_deadline_seconds=3), output=output, settings={"poll_policy": fast_polls()})
    (entry,) = sandbox.ledger()
    assert time.monotonic() - started < 40  # four attempts of 3 s, not a drip of a byte a second
    assert f"Collect it without a new charge: aimlapi-video collect {entry.generation_id} --output {output}" in str(
        caught.value)

    sandbox.set_faults({})
    collected = await collect_generation(entry.generation_id, credentials=fast_credentials(sandbox), output=output,
                                         settings={"poll_policy": fast_polls()})
    assert len(sandbox.ledger()) == 1 and sha256_file(collected.output) == entry.output_sha256


def _run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_an_output_gone_after_the_check_fails_with_one_line_and_its_collect_command_or_a_new_output_delivers(
    prefect_server, clips, tmp_path
):
    """The output directory is replaced by a file while the generation runs: the CLI ends with one
    `error:` line naming the generation and the collect command. That command delivers it once the
    directory is back; the same `run` with another `--output` delivers it there: one charge in all."""
    with run_sandbox(SandboxConfig(processing_seconds=4, workers=2)) as sandbox:
        env = subprocess_env(AIMLAPI_API_KEY=sandbox.api_key, AIMLAPI_SUBMISSIONS_DIR=str(tmp_path / "records"),
                             PREFECT_HOME=str(tmp_path / "home"))
        out = tmp_path / "out"
        argv = [*cli_command(), "run", str(clips["small"]), "--prompt", "ink", "--seed", "3",
                "--base-url", sandbox.base_url, "--output", f"{out}/"]
        running = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        entry = wait_until(lambda: next(iter(sandbox.ledger()), None), 120, what="the POST")
        shutil.rmtree(out)
        out.write_text("not a directory any more")
        stdout, stderr = running.communicate(timeout=240)
        assert running.returncode == 1, stderr[-3000:]
        reason = last_line(stderr)
        assert reason.startswith(f"error: Generation {entry.generation_id} is paid for, but delivering it failed")
        assert "Traceback" not in stdout + stderr
        command = reason.split("Collect it without a new charge: ", 1)[1]
        assert command == f"aimlapi-video collect {entry.generation_id} --output {out}/"

        out.unlink()
        collected = _run([*cli_command(), *command.split()[1:], "--base-url", sandbox.base_url], env, tmp_path)
        assert collected.returncode == 0, collected.stderr[-3000:]
        elsewhere = _run([*argv[:-1], f"{tmp_path / 'elsewhere'}/"], env, tmp_path)
        assert elsewhere.returncode == 0, elsewhere.stderr[-3000:]
        assert "resumed" in elsewhere.stdout and entry.generation_id in elsewhere.stdout
        assert len(sandbox.ledger()) == 1
        delivered = [*out.glob("*.mp4"), *(tmp_path / "elsewhere").glob("*.mp4")]
        assert len(delivered) == 2 and {sha256_file(p) for p in delivered} == {sandbox.ledger()[0].output_sha256}


def test_the_cli_prints_the_estimate_before_paying_within_ten_percent_of_the_charge(prefect_server, clips, tmp_path):
    with run_sandbox(SandboxConfig(processing_seconds=0.3)) as sandbox:
        env = subprocess_env(AIMLAPI_API_KEY=sandbox.api_key, AIMLAPI_SUBMISSIONS_DIR=str(tmp_path / "records"))
        done = _run([*cli_command(), "run", str(clips["small"]), "--prompt", "ink", "--base-url", sandbox.base_url,
                     "--output", f"{tmp_path}/"], env, tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        (entry,) = sandbox.ledger()
    text = done.stderr + done.stdout
    estimate = re.search(r"Estimate before paying: about ([\d,]+) credits \(\$[\d.]+\) for [\d.]+ s", text)
    assert estimate, text[-3000:]
    assert text.index("Estimate before paying") < text.index(f"Accepted: generation {entry.generation_id}")
    assert abs(int(estimate.group(1).replace(",", "")) - entry.credits) <= 0.1 * entry.credits


async def test_a_provider_echoing_the_key_in_a_401_never_shows_it(prefect_server, sandbox, clips, tmp_path):
    """The key is refused and quoted back, bare, in the 401's body: it is absent from the terminal,
    the flow run's logs, its states and its events."""
    sandbox.set_faults({"echo_key_in_errors": True})
    since = datetime.now(timezone.utc) - timedelta(seconds=5)
    key = f"sk-echoed-{uuid.uuid4().hex}"
    done = _run([*cli_command(), "run", str(clips["small"]), "--prompt", "ink", "--base-url", sandbox.base_url,
                 "--output", f"{tmp_path}/"], subprocess_env(AIMLAPI_API_KEY=key), tmp_path)
    assert done.returncode != 0 and "rejected the API key" in last_line(done.stderr)
    assert key not in done.stdout + done.stderr
    assert "<redacted>" in last_line(done.stderr)  # it was there, and was scrubbed
    run = await prefect_api.latest_flow_run("aimlapi-video-to-video")
    recorded = await prefect_api.everything_recorded(run.id, expect_artifacts=0)  # refused before any summary
    assert "rejected the API key" in recorded and key not in recorded
    events = await prefect_api.eventually(
        lambda: read_all_events(since, datetime.now(timezone.utc) + timedelta(seconds=5)),
        lambda found: any(e.event == "prefect.flow-run.Failed" and e.resource.id == f"prefect.flow-run.{run.id}"
                          for e in found), timeout=30)  # its state, message included, as an event
    text = "\n".join(dump(e) for e in events)
    assert key not in text and "rejected the API key" in text
    assert sandbox.ledger() == []

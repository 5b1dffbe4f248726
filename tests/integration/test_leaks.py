"""Secrets: the API key and presigned signatures never reach logs (ours or Prefect's, at DEBUG too),
artifacts, events, flow-run parameters, state messages, persisted results, or the terminal.

Flows run in a subprocess with Prefect at DEBUG and results persisted to a directory we scan, with a
recognisable key, S3 inputs presigned inside the flow, a local-file input, a run that fails, faults
that exercise the error paths (a dropped POST answer reconciled through the usage log, a poll error,
a truncated download of a signed result URL), and one run through the CLI with the key in the
environment. Everything is then read back through the Prefect API.

So that a clean scan means something, a canary (a unique word in the input names, hence in run names,
parameters, logs, artifacts, events, results and the terminal) must be found in every channel.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import subprocess
import sys
import textwrap
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.support import prefect_api
from tests.support.reliability import (
    cli_command,
    dump,
    read_all_events,
    state_history,
    submission_records,
    subprocess_env,
)

pytestmark = pytest.mark.integration

KEY = "sk-LEAKCHECK-0123456789abcdef"
SECRET_PATTERNS = {
    "API key": re.compile(re.escape(KEY)),
    "API key (without prefix)": re.compile(r"LEAKCHECK-0123456789abcdef"),
    "bearer token": re.compile(r"(?i)bearer\s+(?!<redacted>)[A-Za-z0-9._-]{6,}"),
    "signature (S3 or CDN)": re.compile(r"Signature=(?!<redacted>)"),
    "S3 presign credential": re.compile(r"X-Amz-Credential=(?!<redacted>)"),
    "S3 presign signature": re.compile(r"X-Amz-Signature(?!=<redacted>)"),
    "S3 query auth": re.compile(r"AWSAccessKeyId=(?!<redacted>)"),
}

FLOWS_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys

    import httpx

    from prefect_aimlapi_video.blocks import AimlApiCredentials
    from prefect_aimlapi_video.flows.video_to_video import video_to_video

    cfg = json.loads(sys.argv[1])


    def faults(body):
        httpx.post(cfg["base_url"] + "/sandbox/faults", json=body, timeout=10).raise_for_status()


    async def run(label, **arguments):
        try:
            result = await video_to_video(prompt="ink and wash", **arguments)
            print(f"RESULT {label}: {result.status} {result.generation_id} {result.output}", flush=True)
        except Exception as exc:
            print(f"FAILED {label}: {type(exc).__name__}: {exc}", flush=True)


    async def main():
        creds = AimlApiCredentials(api_key=cfg["key"], base_url=cfg["base_url"], timeout_seconds=5)
        await creds.asave(cfg["block"], overwrite=True)
        s3_input = f"s3://{cfg['bucket']}/{cfg['canary']}-s3.mp4"
        faults({"script": [{"route": "submit", "kind": "drop_connection"},
                           {"route": "poll", "kind": "server_error_503"},
                           {"route": "download", "kind": "truncated_download"}]})
        await run("s3-input saved-block", video=s3_input, seed=1, credentials=cfg["block"],
                  output=cfg["out"] + "/{stem}-{seed}.mp4")
        faults({})
        await run("local-input s3-output", video=cfg["local"], seed=2, credentials=creds,
                  output=f"s3://{cfg['bucket']}/results/{{stem}}-{{seed}}.mp4")
        faults({"script": [{"route": "submit", "kind": "generation_error"}]})
        await run("failing", video=s3_input, seed=3, credentials=creds, output=cfg["out"] + "/{stem}-{seed}.mp4")
        faults({})


    asyncio.run(main())
    """
)


def _result_text(path: Path) -> str:
    """A persisted result file, with its (base64, pickled) payload decoded so strings inside are visible."""
    raw = path.read_bytes()
    try:  # a result record: {"metadata": ..., "result": "<base64>"}
        encoded = json.loads(raw)["result"]
    except (ValueError, KeyError, TypeError):
        encoded = raw  # a bare base64 payload
    try:
        payload = base64.b64decode(encoded or b"")
    except (ValueError, binascii.Error):
        payload = b""
    return raw.decode("latin-1") + "\n" + payload.decode("latin-1")


def _scan(text: str) -> list[str]:
    return [name for name, pattern in SECRET_PATTERNS.items() if pattern.search(text)]


def test_the_scan_would_catch_a_leak():
    """The patterns find the key and real presigned/signed URLs, and tolerate their redacted forms."""
    presigned = ("https://b.s3.amazonaws.com/k.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=testing%2F2024"
                 "&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=abc123")
    assert set(_scan(presigned)) >= {"S3 presign credential", "S3 presign signature", "signature (S3 or CDN)"}
    assert _scan("GET http://127.0.0.1/files/t.mp4?Expires=1700000000&Signature=abcdef") == ["signature (S3 or CDN)"]
    assert set(_scan(f"Authorization: Bearer {KEY}")) >= {"API key", "bearer token"}
    assert _scan("http://127.0.0.1/files/t.mp4?<redacted> Signature=<redacted> Bearer <redacted>") == []


async def _flow_runs_named(canary: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    async with get_client() as client:
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=canary)))


async def _events_for(run_ids: list[str], since: datetime) -> list:
    """All events in the window, once every run's final state event has been persisted."""
    wanted = {f"prefect.flow-run.{run_id}" for run_id in run_ids}
    for _ in range(80):
        events = await read_all_events(since, datetime.now(timezone.utc) + timedelta(minutes=1))
        final = {e.resource.id for e in events
                 if e.resource.id in wanted and e.event.rsplit(".", 1)[-1] in ("Completed", "Failed", "Crashed")}
        if final == wanted:
            return events
        await asyncio.sleep(0.5)
    raise AssertionError(f"final-state events missing for {wanted - final}")


async def test_no_key_or_signature_anywhere(prefect_server, moto_server, s3, clips, tmp_path):
    from prefect_aimlapi_video.sandbox import SandboxConfig, run_sandbox

    canary = f"leakcanary{uuid.uuid4().hex[:8]}"
    bucket = f"leak-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for name in (f"{canary}-s3.mp4", f"{canary}-cli.mp4"):
        s3.upload_file(str(clips["small"]), bucket, name, ExtraArgs={"ContentType": "video/mp4"})
    local = tmp_path / f"{canary}-local.mp4"
    local.write_bytes(Path(clips["small"]).read_bytes())
    results_dir, out_dir = tmp_path / "persisted-results", tmp_path / "out"
    script = tmp_path / "leak_flows.py"
    script.write_text(FLOWS_SCRIPT)
    env = subprocess_env(
        PREFECT_API_URL=prefect_server, PREFECT_LOGGING_LEVEL="DEBUG", PREFECT_RESULTS_PERSIST_BY_DEFAULT="true",
        PREFECT_LOCAL_STORAGE_PATH=str(results_dir),
    )
    since = datetime.now(timezone.utc) - timedelta(seconds=5)

    with run_sandbox(SandboxConfig(api_key=KEY, processing_seconds=0.3)) as remote:
        cfg = dict(key=KEY, base_url=remote.base_url, bucket=bucket, canary=canary, local=str(local),
                   out=str(out_dir), block=f"leak-{uuid.uuid4().hex[:8]}")
        flows_run = subprocess.run([sys.executable, str(script), json.dumps(cfg)], env=env, cwd=tmp_path,
                                   capture_output=True, text=True, timeout=240)
        cli_run = subprocess.run(
            [*cli_command(), "run", f"s3://{bucket}/{canary}-cli.mp4", "--prompt", "ink and wash", "--seed", "4",
             "--base-url", remote.base_url, "--output", str(out_dir / "{stem}-{seed}.mp4")],
            env={**env, "AIMLAPI_API_KEY": KEY}, cwd=tmp_path, capture_output=True, text=True, timeout=240,
        )
        ledger = remote.ledger()

    terminal = "\n".join([flows_run.stdout, flows_run.stderr, cli_run.stdout, cli_run.stderr])
    # The runs happened as designed: authenticated generations, one failing, the CLI succeeding.
    assert flows_run.returncode == 0, terminal[-3000:]
    assert cli_run.returncode == 0, terminal[-3000:]
    assert sorted(e.status for e in ledger) == ["completed", "completed", "completed", "error"], terminal[-3000:]
    assert "RESULT s3-input saved-block: completed" in terminal and "FAILED failing: GenerationFailedError" in terminal
    assert "RESULT local-input s3-output: completed" in terminal
    assert " | DEBUG   | " in terminal  # Prefect really logged at DEBUG

    runs = await _flow_runs_named(canary)
    assert len(runs) == 4, [r.name for r in runs]
    run_ids = [str(r.id) for r in runs]
    channels: dict[str, list[str]] = {
        "terminal": [terminal], "parameters": [], "state messages": [], "logs": [], "artifacts": [], "events": [],
        "persisted results": [], "sidecars and records": [],
    }
    for run in runs:
        channels["parameters"].append(json.dumps(run.parameters, default=str) + run.name)
        for state in await state_history(run.id):
            channels["state messages"].append(f"{state.name}: {state.message or ''} {dump(state.state_details)}")
        logs = await prefect_api.logs(run.id, containing="Finished in state")
        assert logs, f"no logs read back for {run.name}"
        channels["logs"] += [f"{r.level} {r.name} {r.message}" for r in logs]
        channels["artifacts"] += [
            f"{a.key} {a.type} {a.description} {json.dumps(a.data, default=str)}"
            for a in await prefect_api.artifacts(run.id, expect=1)
        ]
    channels["events"] = [e.model_dump_json() for e in await _events_for(run_ids, since)]
    persisted = [p for p in results_dir.rglob("*") if p.is_file()]
    assert persisted, "no persisted results to scan"
    channels["persisted results"] = [_result_text(p) for p in persisted]
    records = list(out_dir.rglob("*.json"))
    channels["sidecars and records"] = [p.read_text() for p in records] + [
        json.dumps(r) for r in submission_records()
    ]

    leaks = {
        channel: sorted({name for text in texts for name in _scan(text)}) for channel, texts in channels.items()
    }
    assert {c: found for c, found in leaks.items() if found} == {}
    # Every channel was really read: the canary (in input names, run names, logs, ...) shows up in each.
    for channel in channels.keys() - {"state messages"}:
        assert any(canary in text for text in channels[channel]), f"the scan saw nothing of the runs in {channel}"
    assert any("Injected by the sandbox" in text for text in channels["state messages"])
    assert any("no answer came back" in text or "Adopted generation" in text for text in channels["logs"])
    # The signed result URL's error path ran (a download failed and was retried, naming the URL).
    assert any("/files/" in text and "Download" in text for text in channels["logs"])

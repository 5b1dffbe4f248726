"""Faults: 100 generations with 20% of all requests faulted across every kind the sandbox can inject,
plus the download guarantees (size cap, atomic writes, two runs on one output path).

Issue: "everything the sandbox can inject is survived (transient) or reported clearly (permanent),
with no partial output files left behind and no output whose sha256 differs from what the server
served", and "the ledger shows no logical request charged twice".
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client

import prefect_aimlapi_video.flows.video_to_video as v2v_module
from prefect_aimlapi_video.api.errors import DownloadError
from prefect_aimlapi_video.flows.batch import video_to_video_batch
from prefect_aimlapi_video.flows.video_to_video import video_to_video
from prefect_aimlapi_video.sandbox.faults import ALL_KINDS, ROUTE_KINDS
from tests.support.reliability import (
    assert_no_double_charge,
    charges_per_logical_request,
    fast_credentials,
    fast_polls,
    sha256_file,
    subprocess_env,
    temp_leftovers,
)

pytestmark = pytest.mark.integration

GENERATIONS = 100
FAULT_RATE = 0.2
# What a failed generation's reason must name (one of these), so a user knows what happened.
SPECIFIC_REASONS = {
    "generation error (provider)": r"Injected by the sandbox|GenerationError|ValidationError",
    "download": r"Download(ing)? .* (answered \d{3}|failed|truncated)|not an MP4|download limit|no result to download"
                r"|not a playable video|did not finish within its .* deadline",
    "timed out": r"[Tt]imed out|Timeout",
    "usage log unreadable": r"Cannot tell whether an earlier POST",
    "provider error": r"provider error \(5\d\d|rate limited \(429",
    "network": r"no answer came back|network error|could not connect|cannot read",
}
GENERIC = {"", "failed", "crashed", "flow run encountered an exception", "none"}


def classify(reason: str) -> str | None:
    return next((name for name, pattern in SPECIFIC_REASONS.items() if re.search(pattern, reason)), None)


def test_every_fault_kind_is_injectable_somewhere():
    """The suite below draws from all kinds; each of them applies to at least one route."""
    assert set(ALL_KINDS) == set().union(*ROUTE_KINDS.values())


# The usage log's undocumented behaviours, each a run of the suite: rows listed when a request is
# accepted, or only once its generation has ended (after a delay); refused POSTs listed too.
LOG_BEHAVIOURS = {
    "rows-at-acceptance": {"log_visibility": "at_acceptance"},
    "rows-at-completion": {"log_visibility": "at_completion", "log_delay_seconds": 0.5, "log_refused_requests": True},
}
# Long enough for the sandbox's generations (0.3 s) to complete and be listed; short enough for a
# request that was never accepted (a 502 before acceptance) to be resent within the test.
RECONCILE_SECONDS = 5


# Rows listed only at completion (the harder case for money) are the two-host run's, below.
@pytest.mark.parametrize("log_behaviour", ["rows-at-acceptance"])
async def test_hundred_generations_under_twenty_percent_faults(prefect_server, sandbox, clips, tmp_path,
                                                               log_behaviour):
    sandbox.set_faults({
        "seed": 20240611, "rate": FAULT_RATE, "kinds": list(ALL_KINDS),
        "slow_seconds": 3, "retry_after_seconds": 1, "unknown_status_seconds": 1, **LOG_BEHAVIOURS[log_behaviour],
        # The seeded draws depend on the order of every request, usage-log reads included; the first two
        # POSTs are accepted then answered 502 whatever that order, so that fault is always exercised.
        "script": [{"route": "submit", "kind": "accept_then_502", "times": 2}],
    })
    out = tmp_path / "out"
    items = [{"video": str(clips["small"]), "seed": 1000 + i, "output": str(out / f"gen-{i:03d}.mp4")}
             for i in range(GENERATIONS)]

    rows = await video_to_video_batch(
        items=items, prompt="stained glass", credentials=fast_credentials(sandbox), concurrency_limit=None,
        max_concurrency=20, tolerate_failures=True,
        settings={"timeout_seconds": 180, "poll_policy": fast_polls(), "reconcile_grace_seconds": RECONCILE_SECONDS},
    )
    injected = sandbox.faults_injected()
    sandbox.set_faults({})  # stop injecting before reading back

    ledger = sandbox.ledger()
    by_generation = {e.generation_id: e for e in ledger}
    assert len(rows) == GENERATIONS
    completed = [r for r in rows if r.status == "completed"]
    failed = [r for r in rows if r.status != "completed"]

    for row in completed:  # a verified output, byte-identical to what the sandbox served
        entry = by_generation[row.generation_id]
        assert entry.status == "completed"
        path = Path(row.output)
        assert path == out / f"gen-{row.index:03d}.mp4" and path.is_file()
        assert sha256_file(path) == entry.output_sha256, row.index
    reasons: Counter[str] = Counter()
    for row in failed:  # a specific reason, and no output
        reason = (row.error or "").strip()
        assert reason.lower().rstrip(".") not in GENERIC, f"item {row.index}: unspecific reason {reason!r}"
        category = classify(reason)
        assert category, f"item {row.index}: reason does not name a cause: {reason!r}"
        reasons[category] += 1
        assert not (out / f"gen-{row.index:03d}.mp4").exists()

    # The server agrees: each item is its own flow run, Completed or Failed (never left Running/Crashed).
    async with get_client() as client:
        states = [(await client.read_flow_run(UUID(r.flow_run_id))).state for r in rows]
    assert sorted(s.type.value for s in states) == sorted(
        ["COMPLETED"] * len(completed) + ["FAILED"] * len(failed)
    )

    assert_no_double_charge(ledger)
    charged = charges_per_logical_request(ledger)
    assert len(charged) >= len(completed)  # every delivered output was paid for once
    assert temp_leftovers(out) == [], "partial or staging files left behind"
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".mp4") == sorted(
        f"gen-{r.index:03d}.mp4" for r in completed
    )
    delivered = {r.generation_id for r in completed}
    paid = [e for e in ledger if e.status == "completed"]
    print(  # the figures of this run, for the record (-s shows them)
        f"\nfault suite ({log_behaviour}): {len(completed)} completed, {len(failed)} failed {dict(reasons)}; "
        f"ledger {len(ledger)} rows, {len(paid)} charged, {sum(e.status == 'error' for e in ledger)} generation errors, "
        f"{sum(e.generation_id not in delivered for e in paid)} charged without a delivered output; "
        f"faults injected {dict(sorted(injected.items()))}"
    )
    assert injected.get("submit:accept_then_502", 0) > 0  # the new faults were drawn too
    assert len(completed) >= GENERATIONS * 0.85  # transient faults are survived, not merely reported


async def test_two_runs_writing_one_output_path_do_not_corrupt_it(prefect_server, sandbox, clips, tmp_path):
    target = tmp_path / "shared" / "result.mp4"
    results = await asyncio.gather(*(
        video_to_video(video=str(clips["small"]), prompt="linocut", seed=seed, credentials=fast_credentials(sandbox),
                       output=str(target), settings={"poll_policy": fast_polls()})
        for seed in (301, 302)
    ))

    ledger = sandbox.ledger()
    served = {e.output_sha256 for e in ledger}
    assert len(ledger) == 2 and len(served) == 2 and all(e.status == "completed" for e in ledger)
    assert {r.sha256 for r in results} == served
    assert sha256_file(target) in served  # one complete output, never a mix
    sidecar = json.loads(target.with_name("result.mp4.json").read_text())
    assert sidecar["sha256"] in served
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.mp4", "result.mp4.json", "result.mp4.strip.jpg"]


async def test_result_above_the_download_cap_is_refused_without_partial_files(
    prefect_server, sandbox, clips, tmp_path, monkeypatch
):
    quick = v2v_module.download_video.with_options(retry_delay_seconds=0)  # same retries, no pauses
    monkeypatch.setattr(v2v_module, "download_video", quick)
    capped = fast_credentials(sandbox, max_download_bytes=1000)
    with pytest.raises(DownloadError, match="above the 1000-byte download limit|exceeded the 1000-byte"):
        await video_to_video(video=str(clips["small"]), prompt="x", credentials=capped,
                             output=str(tmp_path / "big.mp4"), settings={"poll_policy": fast_polls()})
    (entry,) = sandbox.ledger()
    assert entry.status == "completed" and entry.output_bytes > 1000
    assert list(tmp_path.iterdir()) == []


async def test_truncated_and_dropped_downloads_never_leave_a_file(
    prefect_server, sandbox, clips, tmp_path, monkeypatch
):
    """Every download attempt fails: the run fails naming the truncation, nothing is left on disk."""
    quick = v2v_module.download_video.with_options(retry_delay_seconds=0)
    monkeypatch.setattr(v2v_module, "download_video", quick)
    sandbox.set_faults({"script": [{"route": "download", "kind": "truncated_download", "times": 2},
                                   {"route": "download", "kind": "drop_connection", "times": 2}]})
    with pytest.raises(DownloadError) as caught:
        await video_to_video(video=str(clips["small"]), prompt="x", credentials=fast_credentials(sandbox),
                             output=str(tmp_path / "o.mp4"), settings={"poll_policy": fast_polls()})
    assert "truncated" in str(caught.value) or "RemoteProtocolError" in str(caught.value)
    assert "Signature=" not in str(caught.value) and "Expires=" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []
    (entry,) = sandbox.ledger()
    assert entry.status == "completed"  # charged: re-running this flow run resumes it without a new charge


HOST_BATCH = textwrap.dedent(
    """
    import asyncio, json, sys
    from prefect_aimlapi_video import AimlApiCredentials, PollPolicy, video_to_video_batch

    config = json.loads(sys.argv[1])
    credentials = AimlApiCredentials(api_key=config["api_key"], base_url=config["base_url"], timeout_seconds=2,
                                     connect_timeout_seconds=2, download_timeout_seconds=2,
                                     download_deadline_seconds=10)
    rows = asyncio.run(video_to_video_batch(
        items=config["items"], prompt="stained glass", credentials=credentials, concurrency_limit=None,
        max_concurrency=20, tolerate_failures=True,
        settings={"timeout_seconds": 180, "submissions": config["store"], "reconcile_grace_seconds": 5,
                  "poll_policy": PollPolicy(initial_seconds=0.25, fast_phase_seconds=30)}))
    print("ROWS " + json.dumps([row.model_dump(mode="json") for row in rows]), flush=True)
    """
)


async def test_hundred_generations_on_two_hosts_sharing_an_s3_store_under_twenty_percent_faults(
    prefect_server, sandbox, clips, tmp_path, s3
):
    """Two hosts (processes with their own PREFECT_HOME and folder) run the same 100 items at once, with
    the same per-item keys, sharing an s3:// record store; 20 % of all requests are faulted. Every paid
    generation is delivered by a host or named by a collect command, and none is paid twice."""
    s3.create_bucket(Bucket="fault-suite-records")
    store = f"s3://fault-suite-records/{uuid.uuid4().hex[:6]}"
    sandbox.set_faults({
        "seed": 20261203, "rate": FAULT_RATE, "kinds": list(ALL_KINDS), "slow_seconds": 3, "retry_after_seconds": 1,
        "unknown_status_seconds": 1, **LOG_BEHAVIOURS["rows-at-completion"],
        "script": [{"route": "submit", "kind": "accept_then_502", "times": 2}],
    })
    hosts = {}
    for name in ("host-a", "host-b"):
        home = tmp_path / name
        home.mkdir()
        (home / "host.py").write_text(HOST_BATCH)
        items = [{"video": str(clips["small"]), "seed": 1000 + i, "idempotency_key": f"{store}#item-{i}",
                  "output": str(home / "out" / f"gen-{i:03d}.mp4")} for i in range(GENERATIONS)]
        config = {"api_key": sandbox.api_key, "base_url": sandbox.base_url, "store": store, "items": items}
        hosts[name] = subprocess.Popen(
            [sys.executable, str(home / "host.py"), json.dumps(config)], cwd=home, text=True,
            env=subprocess_env(PREFECT_HOME=str(home / "prefect-home")), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
    rows = []
    for name, process in hosts.items():
        output, _ = process.communicate(timeout=900)
        assert process.returncode == 0, output[-4000:]
        rows += [{**row, "host": name} for row in json.loads(next(
            line for line in output.splitlines() if line.startswith("ROWS "))[5:])]
    injected = sandbox.faults_injected()
    sandbox.set_faults({})
    ledger = sandbox.ledger()

    assert_no_double_charge(ledger)
    served = {e.generation_id: e.output_sha256 for e in ledger}
    delivered = {r["generation_id"] for r in rows
                 if r["status"] == "completed" and sha256_file(r["output"]) == served[r["generation_id"]]}
    named = {r["generation_id"] for r in rows if r["status"] != "completed" and r["generation_id"]
             and f"aimlapi-video collect {r['generation_id']}" in (r.get("collect_command") or "")}
    paid = [e for e in ledger if e.status == "completed"]
    lost = [e.generation_id for e in paid if e.generation_id not in delivered | named]
    by_host = {name: sum(r["status"] == "completed" for r in rows if r["host"] == name) for name in hosts}
    print(f"\ntwo-host fault suite: {len(ledger)} ledger rows, {len(paid)} charged, "
          f"{sum(e.generation_id in delivered for e in paid)} delivered, {sum(e.generation_id in named for e in paid)} "
          f"named for collect only, completed per host {by_host}; faults injected {dict(sorted(injected.items()))}")
    assert lost == [], f"paid generations neither delivered nor named by a collect command: {lost}"
    assert len(delivered) >= GENERATIONS * 0.85

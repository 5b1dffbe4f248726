"""Helpers for the reliability and security suites: charge accounting from the sandbox ledger, file
checks, fast client settings, subprocess runs, and reading back everything a flow run left on the
Prefect server (state histories, events) for secret scans.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

REPO = Path(__file__).resolve().parents[2]

# `v2v-<32 hex>-a<N>`: one logical generation, N-th posting attempt (see submission.protocol).
CLIENT_REQUEST_ID = re.compile(r"^(?P<logical>v2v-[0-9a-f]{32})-a(?P<attempt>[1-9][0-9]*)$")
# Files a download or an atomic move may leave behind if it does not clean up.
TEMP_NAME = re.compile(r"(\.part$|\.download\.mp4$|\.tmp$|^\.)")


def logical_request(client_request_id: str | None) -> str:
    """The logical request a ledger row belongs to: its client request id without `-aN`."""
    match = CLIENT_REQUEST_ID.fullmatch(client_request_id or "")
    assert match, f"ledger row without a well-formed client request id: {client_request_id!r}"
    return match.group("logical")


def charges_per_logical_request(ledger: Iterable[Any]) -> Counter[str]:
    """How many charged (status completed) ledger rows each logical request has."""
    return Counter(logical_request(e.client_request_id) for e in ledger if e.status == "completed")


def assert_no_double_charge(ledger: Sequence[Any]) -> None:
    charged = charges_per_logical_request(ledger)
    twice = {logical: n for logical, n in charged.items() if n > 1}
    assert not twice, f"logical requests charged more than once: {twice}"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def temp_leftovers(directory: Path) -> list[str]:
    """Names under `directory` that look like partial or staging files."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if TEMP_NAME.search(p.name))


def fast_credentials(sandbox: Any, **overrides: Any) -> Any:
    """Credentials with short timeouts, so an injected `slow_response` (3 s) becomes a client timeout."""
    from prefect_aimlapi_video.blocks import AimlApiCredentials

    settings = dict(timeout_seconds=2, connect_timeout_seconds=2, download_timeout_seconds=2,
                    download_deadline_seconds=10)  # a drip-fed download (1 byte a second) gives up in 10 s
    settings.update(overrides)
    return AimlApiCredentials(api_key=sandbox.api_key, base_url=sandbox.base_url, **settings)


def fast_polls() -> Any:
    from prefect_aimlapi_video.submission.polling import PollPolicy

    return PollPolicy(initial_seconds=0.25, fast_phase_seconds=30, jitter=0.1)


def subprocess_env(**extra: str) -> dict[str, str]:
    """This process's environment (Prefect server URL, submissions dir, AWS test env) plus `extra`.

    No PYTHONPATH to the repository: children import the installed `prefect_aimlapi_video`, as a
    user's processes do.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST") and k != "PYTHONPATH"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def cli_command() -> list[str]:
    """The `aimlapi-video` console script of this environment."""
    script = Path(sys.executable).with_name("aimlapi-video")
    return [str(script)] if script.exists() else [sys.executable, "-m", "prefect_aimlapi_video.deployments.cli"]


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def wait_until(predicate: Any, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def submission_records(directory: str | Path | None = None) -> list[dict[str, Any]]:
    """The durable submission records (submission.protocol), as dicts."""
    from prefect_aimlapi_video.storage.record_store import LocalRecordStore

    store = LocalRecordStore(directory or os.environ["AIMLAPI_SUBMISSIONS_DIR"])
    records = []
    for path in store.directory.glob("*.json"):
        found = store.read_now(path.stem)
        if found is not None and isinstance(record := json.loads(found[0]), dict) and "fingerprint" in record:
            records.append(record)  # not the budgets or the durations kept beside the records
    return records


# -- reading back from the Prefect API -------------------------------------------------------------


async def flow_runs_with_tag(tag: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    async with get_client() as client:
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))


async def state_history(flow_run_id: str | UUID) -> list[Any]:
    """Every state the flow run and each of its task runs went through (retries included)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    run_id = UUID(str(flow_run_id))
    async with get_client() as client:
        states = list(await client.read_flow_run_states(run_id))
        tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        for task in tasks:
            states += await client.read_task_run_states(task.id)
    return states


async def read_all_events(since: datetime, until: datetime) -> list[Any]:
    """Every event the server persisted in [since, until], all pages."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventOccurredFilter

    events: list[Any] = []
    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(occurred=EventOccurredFilter(since=since, until=until)), limit=50
        )
        events += page.events
        while page.next_page:
            page = await client.read_events_page(str(page.next_page))
            events += page.events
    return events


def dump(value: Any) -> str:
    """A JSON-ish rendering of a pydantic object (or anything) for text scans."""
    if hasattr(value, "model_dump_json"):
        return value.model_dump_json()
    return json.dumps(value, default=str)

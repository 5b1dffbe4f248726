"""Many generations at once: the batch flow against the provider sample's one-at-a-time loop.

Both run in the same invocation against the local sandbox (``--processing-seconds D`` per
generation, ``--workers`` GPU slots, default one per item), which runs in a separate process, as
does the Prefect server (on a throwaway PostgreSQL: Prefect's SQLite answers "database is
locked" under concurrent flow runs). This process is the "worker": it runs only the flows, so
its RSS and CPU are the worker's.

(a) baseline: a port of the provider's Python sample (docs: krea-wan-14b/video-to-video): POST,
    then GET every ``--baseline-poll`` seconds (15 in the sample) while the status is queued or
    generating, then download ``video.url``; one generation at a time, ``--baseline-n`` of them
    (default N; with fewer, the wall time for N is extrapolated linearly and said so).
(b) ours: ``video_to_video_batch`` with N items (one child ``video_to_video`` flow run each,
    ``max_concurrency=N``, no global concurrency limit), output to local files.

(c) Prefect's floor, on the same server: the same shape with nothing of ours (N child flow runs
    of three no-op tasks, the middle one waiting D s; see ``run_floor``). Its wall time is what
    Prefect's own bookkeeping costs for the structure the issue asks for on this machine;
    ours / floor is what our work adds. ``--skip-floor`` skips it.

(b) and (c) run in ``--rounds`` pairs (3 by default), the first of each pair alternating (floor
then ours, ours then floor, ...), each phase only once the Prefect server and PostgreSQL are idle
again (``CpuWatch.settle``): the server records a batch's task runs and events for seconds after
the batch returns, and whichever side ran straight after the other paid for that backlog. The
pair-to-pair spread on this 2-core machine is wide (the floor alone moved 22-28 s at N=100), so
``ratio_to_floor`` is the median of the rounds' ratios, printed with their min and max; the round
with the median ratio is the one detailed below the table. Detection and polls are judged on the
worst round.

Per generation, with the sandbox's ledger (accepted_at / started_at / completed_at, GETs counted):

* detection latency: when our flow saw ``completed`` (the result's status timeline, read from the
  JSON sidecar written next to each output) minus the sandbox's completed_at;
* polls: the sandbox's count of GETs for the generation id;
* orchestration overhead: the child's total_s minus (completed_at - accepted_at), i.e. all that
  is not the provider's own processing (checks, Prefect bookkeeping, detection, download,
  artifacts, sidecar);
* phases from the Prefect API: child launch (start_time - batch start), before the POST (accepted_at
  - child start_time) and after detection (child end_time - detection).

Worker figures for (b): peak RSS (ru_maxrss over the process's life, and VmRSS sampled every 50 ms
during (b)), CPU seconds (getrusage), event-loop lag (a 50 ms ticker), and, for context, CPU of
the Prefect server, PostgreSQL, the sandbox and the whole machine over the same interval. CPU used
by none of these ("unaccounted": other programs) is printed too, with a warning when it exceeds
0.1 core on average: runs on a busy machine are not comparable. ``--dump FILE`` writes the
per-generation times (JSON) for a closer look.

Targets (from the issue; measured and reported, never asserted), for N=100, D=10 on 2 cores:
batch wall <= 1.5 x D + 10 s; detection p50 < 1 s and p95 < 2.5 s; <= 12 polls per generation;
worker peak RSS < 600 MB. The ratio to the baseline is meant for N=20 with the unscaled 15 s poll.
The last line printed is one JSON object with every figure.

    python benchmarks/bench_batch.py --n 100 200 --processing-seconds 10 --skip-baseline   # both sizes, 3 rounds each
    python benchmarks/bench_batch.py --n 20 --processing-seconds 10            # ratio, 15 s poll
    python benchmarks/bench_batch.py --deployment --n 40 --processing-seconds 10   # the work-pool mode

``--deployment`` measures the work-pool mode instead (two process workers, ours / Prefect's floor for
that shape, child launch latency): see ``work_pool_mode.py``.

Prefect's own console logging of the flow runs goes to stderr (redirect it to keep the table
readable: ``2>batch.log``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

# The repository root, for the test services (`tests.support`); the package is the installed one, as
# nothing at the root shadows it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.stats import pct, rnd, summary  # noqa: E402
from prefect_aimlapi_video.media.strip_helper import MARKER as STRIP_HELPER_MARKER  # noqa: E402

MB = 1024 * 1024
PROMPT = "Add a small fairy as a rider on the raccoon's back, in a dark emerald butterfly cloak."
STRENGTH = 0.55  # the provider sample's value, used by both sides
SAMPLE_POLL_SECONDS = 15.0
SAMPLE_TIMEOUT_SECONDS = 600.0
TARGET_DETECTION_P50_S = 1.0
TARGET_DETECTION_P95_S = 2.5
TARGET_POLLS = 12
TARGET_RSS_MB = 600.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- processes: the sandbox child, CPU of process trees ---------------------------------------------


def _serve_sandbox(conn: Any, processing_seconds: float, workers: int, api_key: str, spread: float) -> None:
    """Child process: the sandbox on a free port until the parent says stop."""
    from prefect_aimlapi_video.sandbox import SandboxConfig, run_sandbox

    config = SandboxConfig(api_key=api_key, processing_seconds=processing_seconds, workers=workers,
                           processing_spread=spread)
    with run_sandbox(config) as handle:
        conn.send(handle.base_url)
        conn.recv()


@contextlib.contextmanager
def sandbox_process(processing_seconds: float, workers: int, api_key: str, spread: float = 0.0
                    ) -> Iterator[tuple[Any, int]]:
    """The sandbox in its own process (so its CPU and memory are not the worker's); yields (handle, pid)."""
    from prefect_aimlapi_video.sandbox import SandboxHandle

    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(
        target=_serve_sandbox, args=(child, processing_seconds, workers, api_key, spread), name="bench-sandbox", daemon=True
    )
    process.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the sandbox process did not start")
        yield SandboxHandle(base_url=parent.recv(), api_key=api_key), process.pid
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        process.join(timeout=30)
        if process.is_alive():
            process.terminate()
            process.join(timeout=10)


def _proc_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (ppid, cmdline, cpu seconds incl. reaped children) for every process we can read."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        # utime + stime + cutime + cstime: a PostgreSQL backend that exits is added to the postmaster's cutime
        table[int(entry)] = (int(fields[1]), cmdline, sum(int(v) for v in fields[11:15]) / CLK_TCK)
    return table


def process_tree(table: dict[int, tuple[int, str, float]], roots: set[int]) -> set[int]:
    """`roots` and all their live descendants."""
    members = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _, _) in table.items():
            if ppid in members and pid not in members:
                members.add(pid)
                grew = True
    return members


def tree_cpu(table: dict[int, tuple[int, str, float]], roots: set[int]) -> float:
    """CPU seconds of `roots` and all their live descendants."""
    return sum(table[pid][2] for pid in process_tree(table, roots) if pid in table)


def strip_helpers(table: dict[int, tuple[int, str, float]]) -> set[int]:
    """The worker's strip helper (flows/strip_helper.py): its CPU and memory are the worker's too."""
    return {pid for pid, (ppid, cmd, _) in table.items() if ppid == os.getpid() and STRIP_HELPER_MARKER in cmd}


def strip_helper_peak_rss_mb() -> float:
    """Peak RSS (VmHWM) of the worker's strip helper since it started; 0 if there is none."""
    peak = 0.0
    for pid in strip_helpers(_proc_table()):
        with open(f"/proc/{pid}/status") as handle:
            peak += next((int(line.split()[1]) / 1024 for line in handle if line.startswith("VmHWM:")), 0.0)
    return peak


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine (all cores) since boot."""
    with open("/proc/stat") as handle:
        parts = [int(v) for v in handle.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return (sum(parts[:8]) - idle) / CLK_TCK


class CpuWatch:
    """CPU seconds of the server, PostgreSQL, the sandbox and the machine between start() and stop()."""

    def __init__(self, server_port: int, postgres_port: int | None, sandbox_pid: int) -> None:
        self.server_port = server_port
        self.postgres_port = postgres_port
        self.sandbox_pid = sandbox_pid

    def _read(self) -> dict[str, float]:
        table = _proc_table()
        server = {p for p, (_, cmd, _) in table.items() if "prefect" in cmd and f"--port {self.server_port}" in cmd}
        postgres = {p for p, (_, cmd, _) in table.items()
                    if self.postgres_port and "pgdata" in cmd and f"-p {self.postgres_port} " in cmd}
        return {
            "prefect_server": tree_cpu(table, server),
            "postgresql": tree_cpu(table, postgres),
            "sandbox": tree_cpu(table, {self.sandbox_pid}),
            "strip_helper": tree_cpu(table, strip_helpers(table)),
            "machine": machine_cpu_seconds(),
        }

    def start(self) -> None:
        self._start = self._read()

    async def settle(self, *, quiet_cores: float = 0.15, window: float = 1.0, limit: float = 90.0) -> float:
        """Wait until the Prefect server and PostgreSQL are idle; returns the seconds waited.

        The server records a batch's task runs and events for seconds after the batch returns (its
        task-run recorder and event persister work through a backlog). Measured without this wait,
        whichever side ran second paid for the first one's backlog: the floor always ran first, so
        ours started each time on a server still busy with the floor's thousands of events.
        """
        waited = 0.0
        while waited < limit:
            before = self._read()
            await asyncio.sleep(window)
            waited += window
            after = self._read()
            busy = sum(after[name] - before[name] for name in ("prefect_server", "postgresql"))
            if busy < quiet_cores * window:
                break
        return waited

    def stop(self, worker_cpu: float) -> dict[str, float]:
        """Deltas; `unaccounted` is machine CPU used by none of the benchmark's processes (other load)."""
        end = self._read()
        deltas = {name: round(end[name] - self._start[name], 2) for name in end}
        ours = worker_cpu + sum(deltas[name] for name in ("prefect_server", "postgresql", "sandbox", "strip_helper"))
        deltas["unaccounted"] = round(max(0.0, deltas["machine"] - ours), 2)
        return deltas


def private_workdir(workdir: str | None, prefix: str) -> Path:
    """The run's directory (a temp dir unless given), and, before anything imports Prefect, a private
    PREFECT_HOME and submission store in it, with no user profile's API URL or key."""
    work = Path(workdir or tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_HOME"] = str(work / "prefect-home")
    os.environ["AIMLAPI_SUBMISSIONS_DIR"] = str(work / "submissions")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.pop("PREFECT_API_KEY", None)
    os.environ.pop("PREFECT_API_URL", None)
    return work


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def vmrss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class RssSampler:
    """Max VmRSS of this process, sampled every `interval` seconds in a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, vmrss_mb())
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, vmrss_mb())


class LoopLag:
    """How late a 50 ms asyncio ticker wakes up: a measure of how busy the worker's event loop is."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.lags.append(max(0.0, loop.time() - due))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> dict[str, float | None]:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return {"p50_ms": rnd(1000 * (pct(self.lags, 50) or 0), 1), "p99_ms": rnd(1000 * (pct(self.lags, 99) or 0), 1),
                "max_ms": rnd(1000 * max(self.lags, default=0), 1)}


# --- (a) the provider sample's strategy -------------------------------------------------------------


def provider_sample_one(base_url: str, api_key: str, video_url: str, poll: float, out: Path) -> dict[str, Any]:
    """The provider's Python sample, step for step (httpx instead of requests, one connection per call)."""
    url = f"{base_url}/v2/video/generations"
    body = {"model": "krea/krea-wan-14b/video-to-video", "video_url": video_url, "prompt": PROMPT, "strength": STRENGTH}
    response = httpx.post(url, json=body, headers={"Authorization": f"Bearer {api_key}"}, timeout=60)
    if response.status_code >= 400:
        return {"status": f"http {response.status_code}", "generation_id": None}
    gen_id = response.json().get("id")
    start_time = time.time()
    while time.time() - start_time < SAMPLE_TIMEOUT_SECONDS:
        data = httpx.get(
            url, params={"generation_id": gen_id},
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}, timeout=60,
        ).json()
        status = data.get("status")
        if status in ["queued", "generating"]:
            time.sleep(poll)
            continue
        seen = time.time()
        if status == "completed":  # the sample stops at the URL; we also fetch the file, as a user would
            out.write_bytes(httpx.get(data["video"]["url"], timeout=120).content)
        return {"status": status, "generation_id": gen_id, "seen_completed_at": seen}
    return {"status": "timeout", "generation_id": gen_id}


def run_baseline(base_url: str, api_key: str, clip: Path, count: int, poll: float, out: Path) -> dict[str, Any]:
    video_url = f"data:video/mp4;base64,{base64.b64encode(clip.read_bytes()).decode()}"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = [provider_sample_one(base_url, api_key, video_url, poll, out / f"{i}.mp4") for i in range(count)]
    return {"wall_s": time.perf_counter() - started, "results": results}


# --- (b) ours ----------------------------------------------------------------------------------------


async def run_ours(base_url: str, api_key: str, clip: Path, count: int, out: Path, measure: bool) -> dict[str, Any]:
    from prefect_aimlapi_video.blocks import AimlApiCredentials
    from prefect_aimlapi_video.flows.batch import video_to_video_batch

    credentials = AimlApiCredentials(api_key=api_key, base_url=base_url)
    items = [{"video": str(clip), "seed": i} for i in range(count)]
    lag = LoopLag()
    if measure:
        lag.start()
    started_unix, started = time.time(), time.perf_counter()
    rows = await video_to_video_batch(
        items=items, prompt=PROMPT, strength=STRENGTH, credentials=credentials, concurrency_limit=None,
        max_concurrency=count, output=str(out / "{seed}.mp4"), tolerate_failures=True,
    )
    wall = time.perf_counter() - started
    loop_lag = await lag.stop() if measure else None
    return {"wall_s": wall, "started_at": started_unix, "rows": rows, "loop_lag": loop_lag}


# --- (c) Prefect's own floor ---------------------------------------------------------------------------


async def run_floor(count: int, seconds: float, concurrency: int | None = None) -> float:
    """Wall time of a Prefect-only batch of the same shape as ours, on the same server.

    A parent gathering `count` child flow runs (at most `concurrency` at once, default all) (named at start, tagged, no heartbeat thread, like
    ours), each running three tasks, the middle one waiting `seconds` (the provider's processing).
    Nothing else: no API client, no checks, files, artifacts or logs of ours. So ours / floor is
    what our work costs on top of Prefect's own bookkeeping for the structure the issue asks for
    (a child flow run per generation, submit / wait / download as tasks).
    """
    from prefect import flow, tags, task
    from prefect.cache_policies import NO_CACHE
    from prefect.settings import temporary_settings

    @task(cache_policy=NO_CACHE)
    async def step(index: int, wait: float) -> int:
        await asyncio.sleep(wait)
        return index

    @flow(name="bench-floor-child", flow_run_name="floor-{index}")
    async def child(index: int) -> int:
        await step(index, 0)
        await step(index, seconds)
        return await step(index, 0)

    slots = asyncio.Semaphore(concurrency or count)

    async def limited(index: int) -> int:
        async with slots:
            return await child(index)

    @flow(name="bench-floor-batch")
    async def parent() -> list[int]:
        with temporary_settings(updates={"flows.heartbeat_frequency": None}), tags("aimlapi", "video-to-video"):
            return await asyncio.gather(*(limited(i) for i in range(count)))

    started = time.perf_counter()
    await parent()
    return time.perf_counter() - started


async def child_runs(flow_run_ids: list[str]) -> dict[str, Any]:
    """The child flow runs as the Prefect server recorded them (start/end times)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    found: dict[str, Any] = {}
    async with get_client() as client:
        for offset in range(0, len(flow_run_ids), 200):
            chunk = [UUID(i) for i in flow_run_ids[offset:offset + 200]]
            for run in await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)),
                                                   limit=200):
                found[str(run.id)] = run
    return found


async def flush_to_server() -> None:
    """Ship queued logs and events while the server is still up (it stops before interpreter exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    with contextlib.suppress(Exception):
        await APILogHandler.aflush()
    with contextlib.suppress(Exception):
        drained = EventsWorker.drain_all()
        if drained is not None and hasattr(drained, "__await__"):
            await drained


def analyse_ours(run: dict[str, Any], ledger: dict[str, Any], children: dict[str, Any]) -> dict[str, Any]:
    detection, polls, overhead, processing, queued = [], [], [], [], []
    launch, before_post, after_detect, total = [], [], [], []
    failed = 0
    records = []
    for row in run["rows"]:
        entry = ledger.get(row.generation_id or "")
        if row.status != "completed" or entry is None or entry.completed_at is None:
            failed += 1
            continue
        sidecar = json.loads(Path(f"{row.output}.json").read_text())
        seen = next(c["at"] for c in sidecar["timeline"] if c["status"] == "completed")
        detection.append(seen - entry.completed_at)
        polls.append(entry.polls)
        provider = entry.completed_at - entry.accepted_at
        processing.append(provider)
        queued.append((entry.started_at or entry.accepted_at) - entry.accepted_at)
        overhead.append(row.total_s - provider)
        total.append(row.total_s)
        child = children.get(row.flow_run_id or "")
        if child is not None and child.start_time and child.end_time:
            launch.append(child.start_time.timestamp() - run["started_at"])
            before_post.append(entry.accepted_at - child.start_time.timestamp())
            after_detect.append(child.end_time.timestamp() - seen)
        records.append({
            "index": row.index, "generation_id": row.generation_id, "polls": entry.polls,
            "accepted_at": entry.accepted_at, "started_at": entry.started_at, "completed_at": entry.completed_at,
            "seen_completed_at": seen, "total_s": row.total_s, "download_s": row.download_s,
            "child_start": child.start_time.timestamp() if child is not None and child.start_time else None,
            "child_end": child.end_time.timestamp() if child is not None and child.end_time else None,
        })
    accepted = [ledger[r.generation_id].accepted_at for r in run["rows"] if r.generation_id in ledger]
    ends = [r["child_end"] for r in records if r["child_end"] is not None]
    return {
        # the batch's own end: its last summaries, its table and progress artifacts, its final state
        "tail_after_last_child_s": rnd(run["started_at"] + run["wall_s"] - max(ends)) if ends else None,
        "completed": len(detection), "failed": failed,
        "detection": summary(detection), "polls": summary(polls), "overhead": summary(overhead),
        "provider_processing": summary(processing), "provider_queued": summary(queued), "child_total": summary(total),
        "child_launch": summary(launch), "before_post": summary(before_post), "after_detect": summary(after_detect),
        "records": records,
        "posts_spread_s": rnd(max(accepted) - min(accepted)) if accepted else None,
        "first_post_after_s": rnd(min(accepted) - run["started_at"]) if accepted else None,
    }


def analyse_baseline(run: dict[str, Any], ledger: dict[str, Any]) -> dict[str, Any]:
    detection, polls, failed = [], [], 0
    for result in run["results"]:
        entry = ledger.get(result.get("generation_id") or "")
        if result["status"] != "completed" or entry is None or entry.completed_at is None:
            failed += 1
            continue
        detection.append(result["seen_completed_at"] - entry.completed_at)
        polls.append(entry.polls)
    return {"completed": len(detection), "failed": failed, "detection": summary(detection), "polls": summary(polls)}


# --- the run -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100],
                        help="generations in the batch; several sizes are measured one after another in one run")
    parser.add_argument("--processing-seconds", type=float, default=10.0, help="sandbox time per generation (D)")
    parser.add_argument("--baseline-poll", type=float, default=SAMPLE_POLL_SECONDS,
                        help="the sample's poll interval (15 s); scale it down to shorten the baseline")
    parser.add_argument("--baseline-n", type=int, default=None,
                        help="generations for the baseline (default N; fewer: its wall time is extrapolated to N)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-floor", action="store_true",
                        help="skip (c), the Prefect-only batch of the same shape (its wall time is our floor)")
    parser.add_argument("--workers", type=int, default=None, help="sandbox GPU slots (default N)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="pairs of (floor, ours) per size, alternating which runs first; the ratio is their median")
    parser.add_argument("--warmup", type=int, default=1,
                        help="items of an unmeasured batch run first (server start-up, flow registration)")
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql",
                        help="the Prefect server's database (SQLite only for comparison)")
    parser.add_argument("--workdir", default=None, help="default: a temp dir, removed at the end")
    parser.add_argument("--dump", default=None, help="also write per-generation times (JSON) to this file")
    parser.add_argument("--deployment", action="store_true",
                        help="measure the work-pool mode instead: 2 process workers (see work_pool_mode.py)")
    parser.add_argument("--pool-limit", type=int, default=10, help="with --deployment: flow runs per worker at once")
    args = parser.parse_args()
    sizes, d = args.n, args.processing_seconds
    n = sizes[0]
    workers = args.workers or max(sizes)
    baseline_n = 0 if args.skip_baseline or args.deployment else (args.baseline_n or n)

    work = private_workdir(args.workdir, "bench-batch-")

    from prefect_aimlapi_video.sandbox import make_test_clip
    from tests.support.local_services import postgres_server, prefect_server

    api_key = "bench-batch-key"
    try:
        with contextlib.ExitStack() as stack:
            database_url = stack.enter_context(postgres_server()) if args.database == "postgresql" else None
            api_url = stack.enter_context(prefect_server(work / "server", database_url))
            os.environ["PREFECT_API_URL"] = api_url  # for the worker processes of --deployment
            from prefect.settings import PREFECT_API_URL, temporary_settings

            # Prefect is imported by now (our package imports its block eagerly) and read its settings then.
            stack.enter_context(temporary_settings({PREFECT_API_URL: api_url}))
            sandbox, sandbox_pid = stack.enter_context(sandbox_process(d, workers, api_key))
            clip = make_test_clip(work / "clip.mp4", width=160, height=96, seconds=0.5, fps=12)
            print(f"Prefect server {api_url} on {args.database}; sandbox {sandbox.base_url} "
                  f"(D={d:g} s, {workers} GPU slots) in pid {sandbox_pid}; clip {clip.stat().st_size} bytes",
                  flush=True)

            baseline = None
            if baseline_n:
                print(f"(a) provider sample: {baseline_n} generations one at a time, poll every "
                      f"{args.baseline_poll:g} s ...", flush=True)
                baseline = run_baseline(sandbox.base_url, api_key, clip, baseline_n, args.baseline_poll,
                                        work / "baseline")

            if args.deployment:
                from benchmarks import work_pool_mode

                for size in sizes:
                    args.n = size
                    work_pool_mode.main(args, work, sandbox, api_key, clip)
                return

            postgres_port = int(database_url.rsplit(":", 1)[1].split("/")[0]) if database_url else None
            cpu = CpuWatch(int(api_url.rsplit(":", 1)[1].split("/")[0]), postgres_port, sandbox_pid)

            async def floor_once(n: int) -> tuple[float, dict[str, float]]:
                cpu.start()
                cpu_before = self_cpu_seconds()
                wall = await run_floor(n, d)
                worker = self_cpu_seconds() - cpu_before
                spent = cpu.stop(worker)
                return wall, {"worker": round(worker + spent.pop("strip_helper"), 2), **spent}

            async def ours_once(n: int, round_: int) -> tuple[dict[str, Any], dict[str, Any]]:
                rss_before = vmrss_mb()
                cpu.start()
                cpu_before = self_cpu_seconds()
                with RssSampler() as rss:
                    run = await run_ours(sandbox.base_url, api_key, clip, n, work / f"ours-{n}-{round_}", True)
                worker = self_cpu_seconds() - cpu_before
                run["others_cpu"] = cpu.stop(worker)
                run["strip_helper_cpu_s"] = run["others_cpu"].pop("strip_helper")
                run["cpu_s"] = worker + run["strip_helper_cpu_s"]  # the helper is the worker's own process
                run["rss"] = {"before_mb": rss_before, "sampled_peak_mb": rss.peak, "ru_maxrss_mb": ru_maxrss_mb(),
                              "strip_helper_mb": strip_helper_peak_rss_mb()}
                children = await child_runs([r.flow_run_id for r in run["rows"] if r.flow_run_id])
                await flush_to_server()
                return run, children

            async def measure(n: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
                """`--rounds` pairs of (floor, ours) on a settled server, the first of each pair alternating."""
                rounds = []
                for round_ in range(args.rounds):
                    order = ["floor", "ours"] if round_ % 2 == 0 else ["ours", "floor"]
                    if args.skip_floor:
                        order.remove("floor")
                    floor, floor_cpu, settled = None, None, {}
                    for phase in order:
                        settled[phase] = await cpu.settle()
                        if phase == "floor":
                            print(f"(c) Prefect's floor, round {round_ + 1}: {n} child flow runs of three no-op "
                                  f"tasks, the middle one waiting {d:g} s ...", flush=True)
                            floor, floor_cpu = await floor_once(n)
                        else:
                            print(f"(b) video_to_video_batch, round {round_ + 1}: {n} items ...", flush=True)
                            run, children = await ours_once(n, round_)
                    run["floor_wall_s"], run["floor_cpu_s"] = floor, floor_cpu
                    run["order"], run["settle_s"] = order, settled
                    rounds.append((run, children))
                return rounds

            async def every_size() -> tuple[dict[str, Any] | None, list[list[tuple[dict[str, Any], dict[str, Any]]]]]:
                warm = None
                if args.warmup:
                    print(f"warm-up: a batch of {args.warmup} (not measured) ...", flush=True)
                    warm = await run_ours(sandbox.base_url, api_key, clip, args.warmup, work / "warmup", False)
                return warm, [await measure(size) for size in sizes]

            try:
                warm, runs = asyncio.run(every_size())
            except Exception as exc:  # the batch flow itself failed: say so in the JSON line too
                error = f"{type(exc).__name__}: {exc}"[:500]
                print(f"the batch flow raised {error}")
                print(json.dumps({"n": sizes, "processing_seconds": d, "database": args.database, "error": error}))
                raise SystemExit(1) from None
            ledger = {e.generation_id: e for e in sandbox.ledger()}
            for size, rounds in zip(sizes, runs):
                first = size == n
                report(args, size, d, workers, baseline_n if first else 0, baseline if first else None, warm, rounds,
                       ledger)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def median_round(rounds: list[dict[str, Any]]) -> int:
    """Index of the round whose ratio (or, without a floor, wall time) is the median: the one detailed."""
    key = "ratio" if all(r["ratio"] is not None for r in rounds) else "ours_wall_s"
    ordered = sorted(range(len(rounds)), key=lambda i: rounds[i][key])
    return ordered[(len(ordered) - 1) // 2]


def report(args: argparse.Namespace, n: int, d: float, workers: int, baseline_n: int, baseline: dict[str, Any] | None,
           warm: dict[str, Any] | None, measured: list[tuple[dict[str, Any], dict[str, Any]]],
           ledger: dict[str, Any]) -> None:
    analysed = [analyse_ours(run, ledger, children) for run, children in measured]
    rounds = [{
        "order": run["order"], "settle_s": run["settle_s"], "floor_wall_s": rnd(run["floor_wall_s"], 2),
        "ours_wall_s": rnd(run["wall_s"], 2),
        "ratio": rnd(run["wall_s"] / run["floor_wall_s"], 3) if run["floor_wall_s"] else None,
        "detection_p50_s": a["detection"]["p50"], "polls_max": a["polls"]["max"], "failed": a["failed"],
    } for (run, _), a in zip(measured, analysed)]
    chosen = median_round(rounds)
    run, ours = measured[chosen][0], analysed[chosen]
    if args.dump:
        Path(args.dump.replace(".json", f"-{n}.json")).write_text(json.dumps({"batch_started_at": run["started_at"], "batch_wall_s": run["wall_s"],
                                               "generations": ours["records"]}, indent=1))
    base = analyse_baseline(baseline, ledger) if baseline else None
    batch_wall = run["wall_s"]
    baseline_wall = baseline["wall_s"] if baseline else None
    baseline_wall_n = baseline_wall * n / baseline_n if baseline else None
    ratio = baseline_wall_n / batch_wall if baseline_wall_n else None
    peak_rss = max(run["rss"]["sampled_peak_mb"], run["rss"]["ru_maxrss_mb"]) + run["rss"]["strip_helper_mb"]
    wall_target = 1.5 * d + 10
    cores = os.cpu_count() or 1
    others = run["others_cpu"]

    print()
    print(f"{'':34}{'baseline (sample)':>20}{'ours (batch flow)':>26}")
    print(f"{'generations':34}{baseline_n or '-':>20}{n:>26}")
    print(f"{'poll':34}{(f'every {args.baseline_poll:g} s') if baseline else '-':>20}{'~1 s, then x1.3 to 10 s':>26}")
    shown = "-"
    if baseline_wall is not None:
        shown = f"{baseline_wall:.1f}" + (f" ({baseline_wall_n:.0f} for {n})" if baseline_n != n else "")
    print(f"{'wall time, s':34}{shown:>20}{batch_wall:>26.1f}")
    for label, key in (("detection latency p50, s", "p50"), ("detection latency p95, s", "p95")):
        b = base["detection"][key] if base else None
        print(f"{label:34}{'-' if b is None else f'{b:.2f}':>20}{ours['detection'][key]:>26.2f}")
    for label, key in (("polls per generation mean", "mean"), ("polls per generation max", "max")):
        b = base["polls"][key] if base else None
        print(f"{label:34}{'-' if b is None else f'{b:.1f}':>20}{ours['polls'][key]:>26.1f}")
    done_base = f"{base['completed']} / {base['failed']}" if base else "-"
    done_ours = f"{ours['completed']} / {ours['failed']}"
    print(f"{'completed / failed':34}{done_base:>20}{done_ours:>26}")
    print()
    if ratio:
        extrapolated = " (baseline extrapolated linearly from " + str(baseline_n) + ")" if baseline_n != n else ""
        print(f"ratio baseline / ours = {ratio:.1f}x{extrapolated}, baseline poll {args.baseline_poll:g} s")
    ratios = [r["ratio"] for r in rounds if r["ratio"] is not None]
    for number, r in enumerate(rounds, 1):
        print(f"round {number} ({' then '.join(r['order'])}, each after the server settled "
              f"{'/'.join(f'{v:g}' for v in r['settle_s'].values())} s): floor {r['floor_wall_s']} s, ours "
              f"{r['ours_wall_s']} s, ratio {r['ratio']}, detection p50 {r['detection_p50_s']} s, polls max "
              f"{r['polls_max']}" + (" <- detailed below" if number - 1 == chosen else ""))
    floor = run.get("floor_wall_s")
    if floor:
        print(f"Prefect's floor (c): {floor:.1f} s for {n} child flow runs of three no-op tasks waiting {d:g} s; "
              f"ours / floor = {batch_wall / floor:.2f}; median over {len(ratios)} rounds "
              f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
        spent = run["floor_cpu_s"]
        print(f"CPU s during (c): worker {spent['worker']}, Prefect server {spent['prefect_server']}, PostgreSQL "
              f"{spent['postgresql']} (during (b): {run['cpu_s']:.2f}, {others['prefect_server']}, {others['postgresql']})")
    o = ours["overhead"]
    print(f"orchestration overhead per generation: mean {o['mean']:.2f} s, p95 {o['p95']:.2f} s "
          f"(child total_s minus the sandbox's accepted->completed; provider processing mean "
          f"{ours['provider_processing']['mean']:.2f} s)")
    print(f"phases: child launch p50 {ours['child_launch']['p50']} s / p95 {ours['child_launch']['p95']} s after the "
          f"batch call; POSTs from +{ours['first_post_after_s']} s, spread over {ours['posts_spread_s']} s; "
          f"start->POST p50 {ours['before_post']['p50']} s / p95 {ours['before_post']['p95']} s; "
          f"detection->child end p50 {ours['after_detect']['p50']} s / p95 {ours['after_detect']['p95']} s; "
          f"last child end->batch end {ours['tail_after_last_child_s']} s")
    rss = run["rss"]
    print(f"worker: peak RSS {peak_rss:.0f} MB with its strip helper's {rss['strip_helper_mb']:.0f} (ru_maxrss "
          f"{rss['ru_maxrss_mb']:.0f}, sampled during (b) {rss['sampled_peak_mb']:.0f}, before (b) "
          f"{rss['before_mb']:.0f}); CPU {run['cpu_s']:.1f} s in (b) (its strip helper's "
          f"{run['strip_helper_cpu_s']:.1f}) "
          f"= {run['cpu_s'] / batch_wall:.2f} cores avg, {1000 * run['cpu_s'] / n:.0f} ms per generation; "
          f"event-loop lag p50 {run['loop_lag']['p50_ms']} ms, p99 {run['loop_lag']['p99_ms']} ms, "
          f"max {run['loop_lag']['max_ms']} ms")
    print(f"others during (b), CPU s: Prefect server {others['prefect_server']}, PostgreSQL {others['postgresql']}, "
          f"sandbox {others['sandbox']}; machine busy {others['machine']} of {cores * batch_wall:.0f} core-seconds, "
          f"of which {others['unaccounted']} by other processes")
    if others["unaccounted"] > 0.1 * batch_wall:
        print(f"WARNING: other processes used {others['unaccounted'] / batch_wall:.2f} cores on average during (b); "
              "figures from a busy machine are not comparable run to run.")
    for row in [r for r in run["rows"] if r.status != "completed"][:3]:
        print(f"failed item {row.index}: {row.error}")
    if warm:
        print(f"warm-up batch of {args.warmup}: {warm['wall_s']:.1f} s (not measured)")
    worst_p50 = max((r["detection_p50_s"] for r in rounds if r["detection_p50_s"] is not None), default=None)
    worst_polls = max((r["polls_max"] for r in rounds if r["polls_max"] is not None), default=None)
    targets = {
        "batch_wall": batch_wall <= wall_target,
        "detection_p50": worst_p50 is not None and worst_p50 < TARGET_DETECTION_P50_S,
        "detection_p95": ours["detection"]["p95"] is not None and ours["detection"]["p95"] < TARGET_DETECTION_P95_S,
        "polls": worst_polls is not None and worst_polls <= TARGET_POLLS,
        "peak_rss": peak_rss < TARGET_RSS_MB,
    }
    print(f"targets (batch wall <= {wall_target:g} s, detection p50 < {TARGET_DETECTION_P50_S:g} s, "
          f"p95 < {TARGET_DETECTION_P95_S:g} s, <= {TARGET_POLLS} polls, RSS < {TARGET_RSS_MB:g} MB): "
          + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    figures = {
        "n": n, "processing_seconds": d, "sandbox_workers": workers, "cores": cores, "database": args.database,
        "warmup": args.warmup,
        "baseline_poll": args.baseline_poll if baseline else None, "baseline_n": baseline_n,
        "baseline_wall_s": rnd(baseline_wall, 2), "baseline_wall_for_n_s": rnd(baseline_wall_n, 2),
        "baseline_extrapolated": bool(baseline) and baseline_n != n,
        "baseline_detection_p50_s": base["detection"]["p50"] if base else None,
        "baseline_detection_p95_s": base["detection"]["p95"] if base else None,
        "baseline_polls_per_generation_mean": base["polls"]["mean"] if base else None,
        "batch_wall_s": rnd(batch_wall, 2), "ratio": rnd(ratio, 2),
        "prefect_floor_wall_s": rnd(floor, 2), "prefect_floor_cpu_s": run.get("floor_cpu_s"),
        "ratio_to_floor": rnd(statistics.median(ratios), 3) if ratios else None,
        "ratio_to_floor_min": rnd(min(ratios), 3) if ratios else None,
        "ratio_to_floor_max": rnd(max(ratios), 3) if ratios else None, "rounds": rounds, "detailed_round": chosen + 1,
        "detection_p50_worst_round_s": worst_p50, "polls_max_all_rounds": worst_polls,
        "completed": ours["completed"], "failed": ours["failed"],
        "detection_p50_s": ours["detection"]["p50"], "detection_p95_s": ours["detection"]["p95"],
        "detection_max_s": ours["detection"]["max"],
        "polls_per_generation_mean": ours["polls"]["mean"], "polls_per_generation_max": ours["polls"]["max"],
        "overhead_mean_s": ours["overhead"]["mean"], "overhead_p95_s": ours["overhead"]["p95"],
        "child_launch_p50_s": ours["child_launch"]["p50"], "child_launch_p95_s": ours["child_launch"]["p95"],
        "before_post_p50_s": ours["before_post"]["p50"], "before_post_p95_s": ours["before_post"]["p95"],
        "after_detect_p50_s": ours["after_detect"]["p50"], "after_detect_p95_s": ours["after_detect"]["p95"],
        "posts_spread_s": ours["posts_spread_s"], "first_post_after_s": ours["first_post_after_s"],
        "tail_after_last_child_s": ours["tail_after_last_child_s"],
        "provider_processing_mean_s": ours["provider_processing"]["mean"],
        "peak_rss_mb": rnd(peak_rss, 1), "ru_maxrss_mb": rnd(rss["ru_maxrss_mb"], 1),
        "rss_sampled_peak_b_mb": rnd(rss["sampled_peak_mb"], 1), "rss_before_b_mb": rnd(rss["before_mb"], 1),
        "strip_helper_rss_mb": rnd(rss["strip_helper_mb"], 1),
        "cpu_s": rnd(run["cpu_s"], 2), "strip_helper_cpu_s": rnd(run["strip_helper_cpu_s"], 2),
        "cpu_ms_per_generation": rnd(1000 * run["cpu_s"] / n, 1),
        "cpu_cores_avg": rnd(run["cpu_s"] / batch_wall, 3), "loop_lag": run["loop_lag"],
        "others_cpu_s": others, "warmup_wall_s": rnd(warm["wall_s"], 2) if warm else None,
        "targets": {"batch_wall_max_s": wall_target, "detection_p50_s": TARGET_DETECTION_P50_S,
                    "detection_p95_s": TARGET_DETECTION_P95_S, "polls_max": TARGET_POLLS, "peak_rss_mb": TARGET_RSS_MB},
        "targets_met": targets,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

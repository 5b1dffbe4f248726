"""A long batch under provider faults: 500 generations of 30 s, in-process or over a work pool of two workers.

What a user who runs batches for hours needs to know (issue 24): does the money stay right, does
memory stay flat, how much CPU does a generation cost, and does the batch stay under the provider's
rate limits? One invocation measures one mode against Prefect's floor of the same shape, on the same
server, with a sandbox in its own process:

* ``--mode in-process``: ``video_to_video_batch`` in this process (the worker), its children in
  it too; the floor is ``bench_batch.run_floor`` (N child flow runs of three no-op tasks, the middle
  one waiting D s), both at most ``--concurrency`` at once.
* ``--mode pool``: two ``prefect worker start`` process workers (each its own PREFECT_HOME and
  directory, ``--pool-limit`` flow runs each); ours is ``video_to_video_batch(deployment=...)``, the
  floor ``work_pool_mode.run_floor``, both at most ``--concurrency`` children at once.

The sandbox: ``--processing-seconds`` per generation (10 % spread), one GPU slot per concurrent
child, ``--fault-rate`` of every request faulted with a kind drawn from all the sandbox can inject
(seeded), usage-log rows listed only when a generation ends (``--log-visibility``), and the
provider's log limit enforced (``--log-limit`` reads per 60 s, 429 above it). The credentials are the
block's defaults except ``download_deadline_seconds`` (60 s: a drip-fed download, 1 byte a second,
gives up after a minute instead of 15), as a user would set it.

Printed, and in the last line's JSON object:

* wall time of ours and of the floor, and their ratio (one pair, the floor first, each on a settled
  server: a 500-item pair takes most of an hour on 2 cores);
* peak RSS: in-process, this process's (sampled and ru_maxrss) with its strip helper; over the pool,
  the largest sum over both workers' process trees (a worker and its flow-run processes) and the
  largest single flow-run process;
* CPU per generation: this process and its strip helper (in-process), or both worker trees, their
  flow-run processes included, plus this process (pool);
* polls and usage-log reads per minute: the sandbox's counters sampled every 5 s, as the mean over
  the batch and the largest count in any 60 s window; 429s from the log limit;
* money, from the sandbox's ledger: charges, double charges (a logical request charged twice),
  outputs whose bytes equal what the sandbox served, paid generations without an output and whether
  each such failure names its generation id and collect command. A paid generation the batch could
  not deliver is then collected (``collect_generation``, the flow behind the collect command its row
  names, as a user would run it) and the figures are given again: collecting must deliver it with no
  new charge. Unpaid failures are counted by reason, not retried (a new run of the same items would
  be new requests: a batch's keys are made from its own flow run). ``ledger_equals_outputs`` is true
  when every charge is one delivered output, byte for byte, and no request was charged twice.

    python benchmarks/soak.py --mode in-process 2>soak-in-process.log
    python benchmarks/soak.py --mode pool 2>soak-pool.log
    python benchmarks/soak.py --mode in-process --n 20 --processing-seconds 3   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_batch, work_pool_mode  # noqa: E402
from benchmarks.stats import rnd  # noqa: E402

PROMPT = "A woodcut print, bold black lines on cream paper."
WINDOW_S = 60.0


# --- the sandbox's counters over time ----------------------------------------------------------------


class RateSampler:
    """Polls and usage-log reads seen by the sandbox, sampled every `interval` s in a thread.

    The sandbox counts each generation's GETs in its ledger and every `GET /v2/logs` (and its 429s);
    differences between samples give the rates. Pool mode also samples the workers' process trees' RSS.
    """

    def __init__(self, sandbox: Any, workers: list[int] | None = None, interval: float = 5.0) -> None:
        self.sandbox, self.workers, self.interval = sandbox, workers or [], interval
        self.samples: list[tuple[float, int, int, int, int]] = []  # (t, polls, log reads, log 429s, poll 429s)
        self.rss_sum_peak_mb = 0.0
        self.rss_process_peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rate-sampler", daemon=True)

    def _sample(self) -> None:
        polls = sum(entry.polls for entry in self.sandbox.ledger())
        reads = self.sandbox.log_reads()
        self.samples.append((time.monotonic(), polls, reads["reads"], reads["rate_limited"],
                             reads.get("polls_rate_limited", 0)))

    def _sample_rss(self) -> None:
        if not self.workers:
            return
        members = bench_batch.process_tree(bench_batch._proc_table(), set(self.workers))
        sizes = [rss_mb(pid) for pid in members]
        self.rss_sum_peak_mb = max(self.rss_sum_peak_mb, sum(sizes))
        self.rss_process_peak_mb = max(self.rss_process_peak_mb,
                                       max((s for p, s in zip(members, sizes) if p not in self.workers), default=0))

    def _run(self) -> None:
        next_rates = 0.0
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a sample missed is a gap, not a failed soak
                if time.monotonic() >= next_rates:
                    self._sample()
                    next_rates = time.monotonic() + self.interval
                self._sample_rss()
            self._stop.wait(1.0)

    def __enter__(self) -> RateSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def rates(self) -> dict[str, Any]:
        """Per minute over the whole run, and the most in any 60 s window (between two samples)."""
        first, last = self.samples[0], self.samples[-1]
        minutes = max(1e-9, (last[0] - first[0]) / 60)
        peak = [0, 0, 0]
        for i, (t, *counts) in enumerate(self.samples):
            # the latest sample at least 60 s before this one: a window of 60 s plus at most one interval
            before = next((s for s in reversed(self.samples[:i]) if t - s[0] >= WINDOW_S), None)
            if before is None:
                before = self.samples[0]
            for k in range(3):
                peak[k] = max(peak[k], counts[k] - before[k + 1])
        return {
            "polls": last[1] - first[1], "log_reads": last[2] - first[2], "log_reads_429": last[3] - first[3],
            "polls_429": last[4] - first[4],
            "polls_per_minute_mean": rnd((last[1] - first[1]) / minutes, 1),
            "polls_per_minute_peak": peak[0],
            "log_reads_per_minute_mean": rnd((last[2] - first[2]) / minutes, 2),
            "log_reads_per_minute_peak": peak[1],
        }


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            return next((int(line.split()[1]) / 1024 for line in handle if line.startswith("VmRSS:")), 0.0)
    except OSError:
        return 0.0


# --- money: the ledger against the outputs --------------------------------------------------------------


def money(rows: list[Any], ledger: list[Any], delivered_before: dict[str, str] | None = None) -> dict[str, Any]:
    """What the sandbox charged against what is on disk, from `rows` (and an earlier run's deliveries)."""
    from tests.support.reliability import charges_per_logical_request, sha256_file

    by_generation = {entry.generation_id: entry for entry in ledger}
    delivered = dict(delivered_before or {})  # generation id -> output path
    wrong_bytes = []
    for row in rows:
        if row.status != "completed":
            continue
        entry = by_generation.get(row.generation_id)
        if entry is not None and Path(row.output).is_file() and sha256_file(row.output) == entry.output_sha256:
            delivered[row.generation_id] = row.output
        else:
            wrong_bytes.append(row.index)
    charged = {entry.generation_id for entry in ledger if entry.status == "completed"}
    per_request = charges_per_logical_request(ledger)
    paid_failed = [row for row in rows if row.status != "completed" and row.generation_id in charged]
    return {
        "delivered": delivered, "charged": charged,
        "figures": {
            "ledger_rows": len(ledger), "charges": len(charged),
            "generation_errors": sum(entry.status == "error" for entry in ledger),
            "double_charges": sum(n - 1 for n in per_request.values() if n > 1),
            "outputs_verified": len(delivered), "outputs_wrong_bytes": len(wrong_bytes),
            "paid_without_output": len(charged - set(delivered)),
            "paid_failures_with_collect_command": sum(bool(row.collect_command) for row in paid_failed),
            "paid_failures": len(paid_failed),
            "ledger_equals_outputs": charged == set(delivered) and not wrong_bytes
            and all(n == 1 for n in per_request.values()),
        },
    }


def failure_kind(error: str) -> str:
    """The exception's name in a failed row's error ("Flow run encountered an exception: Name: ..."), else
    its start."""
    found = re.search(r"exception: (\w+)", error) or re.match(r"(\w+Error|\w+Failed)\b", error)
    return found.group(1) if found else error[:60]


def outcome(rows: list[Any]) -> dict[str, Any]:
    statuses = Counter(row.status for row in rows)
    reasons = Counter(failure_kind(row.error or "") for row in rows if row.status != "completed")
    return {"statuses": dict(statuses), "failure_reasons": dict(reasons.most_common(8))}


# --- one mode ------------------------------------------------------------------------------------------


def items(count: int, clip: Path, out: Path, first_seed: int = 0) -> list[dict[str, Any]]:
    """`count` distinct generations (a seed each: the seed is part of what makes a request the same)."""
    return [{"video": str(clip), "seed": first_seed + index, "output": str(out / f"{index:04d}.mp4")}
            for index in range(count)]


def fault_config(args: argparse.Namespace) -> dict[str, Any]:
    from prefect_aimlapi_video.sandbox.faults import ALL_KINDS

    return {
        "seed": args.seed, "rate": args.fault_rate, "kinds": args.kinds or list(ALL_KINDS),
        # past the block's 30 s request timeout, so a slow answer is a client timeout (on a POST: an
        # unknown outcome, settled from the usage log)
        "slow_seconds": 35, "retry_after_seconds": 1, "unknown_status_seconds": 2,
        "log_visibility": args.log_visibility, "log_delay_seconds": 1.0, "log_refused_requests": True,
        "log_reads_per_minute": args.log_limit, "polls_share_log_limit": args.polls_share_limit,
    }


def credentials(sandbox: Any) -> Any:
    from prefect_aimlapi_video.blocks import AimlApiCredentials

    return AimlApiCredentials(api_key=sandbox.api_key, base_url=sandbox.base_url, download_deadline_seconds=60)


async def batch(args: argparse.Namespace, work_items: list[dict[str, Any]], creds: Any, deployment: str | None
                ) -> list[Any]:
    from prefect_aimlapi_video.flows.batch import video_to_video_batch

    return await video_to_video_batch(
        items=work_items, prompt=PROMPT, credentials=creds, concurrency_limit=None,
        max_concurrency=args.concurrency, tolerate_failures=True, deployment=deployment,
        workers_share_disk=deployment is not None,  # both workers run on this machine, one records folder
    )


async def collect(row: Any, creds: Any, output: str) -> Any:
    """`aimlapi-video collect <id> --output ...` as a flow in this process; the row it would have made."""
    from prefect_aimlapi_video.flows.collect import collect_generation

    state = await collect_generation(generation_id=row.generation_id, credentials=creds, output=output,
                                     return_state=True)
    if state.is_completed():
        return row.model_copy(update={"status": "completed", "output": (await state.aresult()).output, "error": None})
    return row.model_copy(update={"error": f"collect failed: {state.message}"})


def run_mode(args: argparse.Namespace, work: Path, sandbox: Any, sandbox_pid: int, api_url: str,
             postgres_port: int | None) -> dict[str, Any]:
    from prefect_aimlapi_video.sandbox import make_test_clip

    clip = make_test_clip(work / "clip.mp4", width=160, height=96, seconds=0.5, fps=12)
    cpu = bench_batch.CpuWatch(int(api_url.rsplit(":", 1)[1].split("/")[0]), postgres_port, sandbox_pid)
    n, d, pool = args.n, args.processing_seconds, args.mode == "pool"
    work_items = items(n, clip, work / "out")
    result: dict[str, Any] = {}

    async def measure(workers: list[int]) -> None:
        creds: Any = credentials(sandbox)
        deployment = floor_deployment = None
        if pool:
            await creds.asave("soak", overwrite=True)
            creds = "soak"
            deployment, floor_deployment = await work_pool_mode.create_deployments(
                f"soak-{args.run_id}", work / "pool-records")
        if args.warmup:
            print(f"warm-up: {args.warmup} generation(s), no faults (not measured) ...", flush=True)
            await batch(args, items(args.warmup, clip, work / "warmup", first_seed=10**6), creds, deployment)
            if floor_deployment:
                await work_pool_mode.run_floor(floor_deployment, args.warmup, 0)
        warm_ids = {entry.generation_id for entry in sandbox.ledger()}

        def ledger() -> list[Any]:
            return [entry for entry in sandbox.ledger() if entry.generation_id not in warm_ids]

        await cpu.settle()
        print(f"(c) Prefect's floor: {n} children of three no-op tasks, the middle one waiting {d:g} s, "
              f"{args.concurrency} at once ...", flush=True)
        started = time.perf_counter()
        if floor_deployment:
            await work_pool_mode.run_floor(floor_deployment, n, d, args.concurrency)
        else:
            await bench_batch.run_floor(n, d, args.concurrency)
        result["floor_wall_s"] = time.perf_counter() - started
        await cpu.settle()

        sandbox.set_faults(fault_config(args))
        print(f"(b) ours: {n} generations, {args.fault_rate:.0%} of requests faulted, usage-log rows "
              f"{args.log_visibility}, {args.concurrency} at once ...", flush=True)
        table = bench_batch._proc_table()
        cpu_before = bench_batch.self_cpu_seconds() + bench_batch.tree_cpu(table, set(workers))
        cpu.start()
        with bench_batch.RssSampler() as rss, RateSampler(sandbox, workers) as rates:
            started = time.perf_counter()
            rows = await batch(args, work_items, creds, deployment)
            result["wall_s"] = time.perf_counter() - started
        table = bench_batch._proc_table()
        result["cpu_s"] = (bench_batch.self_cpu_seconds() + bench_batch.tree_cpu(table, set(workers))
                           - cpu_before)
        result["others_cpu_s"] = cpu.stop(result["cpu_s"])
        result["cpu_s"] += result["others_cpu_s"].pop("strip_helper")
        result["rates"] = rates.rates()
        result["rss"] = {"this_process_mb": max(rss.peak, bench_batch.ru_maxrss_mb()),
                         "strip_helper_mb": bench_batch.strip_helper_peak_rss_mb(),
                         "workers_sum_mb": rates.rss_sum_peak_mb, "flow_run_process_mb": rates.rss_process_peak_mb}
        result["faults_injected"] = sum(sandbox.faults_injected().values())
        sandbox.set_faults({})
        result["first_run"] = outcome(rows)
        first = money(rows, ledger())
        result["money_first_run"] = first["figures"]
        result["collected"] = None
        if paid := [row for row in rows if row.status != "completed" and row.generation_id in first["charged"]]:
            # what the batch's table tells a user to do with a paid generation it could not deliver
            print(f"collect: {len(paid)} paid generation(s) not delivered; collecting each ...", flush=True)
            charges_before = first["figures"]["charges"]
            collected = [await collect(row, creds, work_items[row.index]["output"]) for row in paid]
            after = money(collected, ledger(), first["delivered"])
            result["collected"] = {**outcome(collected), "new_charges": after["figures"]["charges"] - charges_before}
            result["money_final"] = after["figures"]
        else:
            result["money_final"] = first["figures"]
        await bench_batch.flush_to_server()

    if pool:
        name = f"soak-{args.run_id}"
        with work_pool_mode.process_workers(name, work / "workers", 2, args.pool_limit) as workers:
            asyncio.run(measure([process.pid for process in workers]))
            result["workers_alive_at_end"] = sum(process.poll() is None for process in workers)
    else:
        asyncio.run(measure([]))
    return result


def report(args: argparse.Namespace, result: dict[str, Any]) -> None:
    n, wall, floor = args.n, result["wall_s"], result["floor_wall_s"]
    rates, rss, final = result["rates"], result["rss"], result["money_final"]
    peak_rss = (rss["workers_sum_mb"] if args.mode == "pool"
                else rss["this_process_mb"] + rss["strip_helper_mb"])
    print()
    print(f"mode {args.mode}: {n} generations of {args.processing_seconds:g} s, {args.concurrency} at once, "
          f"{args.fault_rate:.0%} faults ({result['faults_injected']} injected), rows {args.log_visibility}")
    print(f"wall: ours {wall:.1f} s, Prefect's floor {floor:.1f} s, ours / floor {wall / floor:.3f}")
    print(f"peak RSS {peak_rss:.0f} MB" + (f" (both worker trees; the largest flow-run process "
                                             f"{rss['flow_run_process_mb']:.0f} MB)" if args.mode == "pool" else
                                             f" (this process {rss['this_process_mb']:.0f}, strip helper "
                                             f"{rss['strip_helper_mb']:.0f})"))
    print(f"CPU {result['cpu_s']:.0f} s = {1000 * result['cpu_s'] / n:.0f} ms per generation; others: "
          f"{result['others_cpu_s']}")
    print(f"polls per minute: mean {rates['polls_per_minute_mean']}, peak in 60 s {rates['polls_per_minute_peak']}; "
          f"usage-log reads per minute: mean {rates['log_reads_per_minute_mean']}, peak in 60 s "
          f"{rates['log_reads_per_minute_peak']} (limit {args.log_limit}), 429s {rates['log_reads_429']}; polls "
          f"{'share' if args.polls_share_limit else 'do not share'} the limit, polls refused {rates['polls_429']}")
    print(f"first run: {result['first_run']}; money {result['money_first_run']}")
    if result["collected"]:
        print(f"collected afterwards: {result['collected']}")
    print(f"money at the end: {final}")
    print(json.dumps({
        "benchmark": "soak", "mode": args.mode, "n": n, "processing_seconds": args.processing_seconds,
        "concurrency": args.concurrency, "pool_limit": args.pool_limit if args.mode == "pool" else None,
        "fault_rate": args.fault_rate, "faults_injected": result["faults_injected"],
        "log_visibility": args.log_visibility, "cores": os.cpu_count(),
        "batch_wall_s": rnd(wall, 1), "prefect_floor_wall_s": rnd(floor, 1), "ratio_to_floor": rnd(wall / floor, 3),
        "peak_rss_mb": rnd(peak_rss, 0), "rss": {k: rnd(v, 0) for k, v in rss.items()},
        "cpu_s": rnd(result["cpu_s"], 1), "cpu_ms_per_generation": rnd(1000 * result["cpu_s"] / n, 0),
        "others_cpu_s": result["others_cpu_s"], **rates, "log_limit_per_minute": args.log_limit,
        "polls_share_log_limit": args.polls_share_limit,
        "first_run": result["first_run"], "money_first_run": result["money_first_run"],
        "collected": result["collected"], "money_final": final,
        "workers_alive_at_end": result.get("workers_alive_at_end"),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("in-process", "pool"), required=True)
    parser.add_argument("--n", type=int, default=500, help="generations in the batch")
    parser.add_argument("--processing-seconds", type=float, default=30.0, help="sandbox time per generation")
    parser.add_argument("--concurrency", type=int, default=25, help="children at once (ours and the floor)")
    parser.add_argument("--pool-limit", type=int, default=13, help="pool mode: flow runs per worker at once")
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--kinds", type=lambda text: text.split(","), default=None,
                        help="comma-separated fault kinds to draw from (default: every kind the sandbox has)")
    parser.add_argument("--log-visibility", choices=("at_acceptance", "at_completion"), default="at_completion")
    parser.add_argument("--log-limit", type=int, default=200, help="usage-log reads per 60 s the sandbox allows")
    parser.add_argument("--polls-share-limit", action="store_true",
                        help="the sandbox counts status polls against the same limit (whether the provider does "
                        "is not known)")
    parser.add_argument("--seed", type=int, default=20261203, help="the sandbox's fault draws")
    parser.add_argument("--warmup", type=int, default=3, help="generations run first, unmeasured")
    parser.add_argument("--workdir", default=None,
                        help="default: a temp dir, removed at the end unless the ledger does not equal the outputs")
    args = parser.parse_args()
    args.run_id = uuid.uuid4().hex[:6]

    work = bench_batch.private_workdir(args.workdir, "soak-")

    from tests.support.local_services import postgres_server, prefect_server

    money_right = False  # until the run says otherwise: a run that fails keeps its directory too
    try:
        with contextlib.ExitStack() as stack:
            database_url = stack.enter_context(postgres_server())
            api_url = stack.enter_context(prefect_server(work / "server", database_url))
            os.environ["PREFECT_API_URL"] = api_url  # for the worker processes
            from prefect.settings import PREFECT_API_URL, temporary_settings

            stack.enter_context(temporary_settings({PREFECT_API_URL: api_url}))
            sandbox, sandbox_pid = stack.enter_context(bench_batch.sandbox_process(
                args.processing_seconds, args.concurrency, "soak-key", spread=0.1))
            print(f"Prefect server {api_url} on PostgreSQL; sandbox {sandbox.base_url} in pid {sandbox_pid}",
                  flush=True)
            postgres_port = int(database_url.rsplit(":", 1)[1].split("/")[0])
            result = run_mode(args, work, sandbox, sandbox_pid, api_url, postgres_port)
            report(args, result)
            money_right = result["money_final"]["ledger_equals_outputs"]
    finally:
        # a run whose money is wrong keeps its directory: the workers' logs say which path paid twice
        if not args.workdir and money_right:
            shutil.rmtree(work, ignore_errors=True)
        elif not money_right:
            print(f"the run failed or its ledger does not equal its outputs: kept {work} (workers' logs, records, "
                  "outputs)", flush=True)


if __name__ == "__main__":
    main()

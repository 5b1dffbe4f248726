"""Polling: today's schedule (`PollPolicy()`) against the learned one (`LearnedPollPolicy`), same run.

Both poll real generations of the local sandbox over HTTP with the plain async client
(`AimlApiClient.submit` / `get_generation`), the way `wait_for_generation` does: poll, then sleep
``next_delay(elapsed)``, ``elapsed`` counted from the POST's answer. The sandbox runs in this
process (a background thread, ``run_sandbox``) with ``processing_seconds`` = 150 s (the
provider's ~2.5 min) x ``--time-scale`` and ``processing_spread=0.1`` (each generation's time is
drawn from N(mean, 0.1 x mean), seeded by ``--seed``), and one GPU slot per generation, so no
generation queues and the two policies meet the same distribution. Both policies run on the
same clock: every time parameter of theirs is multiplied by ``--time-scale`` (`scale_policy`),
so the figures in provider seconds are the bench's figures divided by the time scale.

1. Warm-up: ``--warmup`` generations, waited for with today's schedule; their durations
   (ledger ``completed_at - accepted_at``) are what the learned policy learns from.
2. Measured batch, interleaved: 2 x ``--n`` generations submitted together, even ones polled on
   today's schedule and odd ones on the learned schedule, so both see the same sandbox load at
   the same moments (running one policy after the other would let machine noise between the
   two halves count as a difference between the policies).

Per generation: detection delay = when our poll's answer said ``completed`` (``time.time()``
on arrival) - the sandbox ledger's ``completed_at`` (the same clock: same process); polls = our
GETs for it (checked against the ledger's count), and the mean GET round trip. Reported for
each policy: detection p50/p95 (bench seconds and provider seconds), mean polls per generation,
and ``ratio_p50`` = learned p50 / today's p50 (a p50 of 40 generations is itself uncertain by
~15 %, so the mean is reported too). Target (reported, never asserted): ratio_p50 <= 1/3 with no
more polls per generation on average. The last line printed is one JSON object with every figure.

Caveat of the time scale: the HTTP round trip (a few ms on loopback, more while 2n clips are
being posted and transformed) is not scaled, and the schedules count it in ``elapsed``; at 0.1 a
10 ms round trip is 0.1 provider seconds, which shortens today's 1.2 s fast phase (fewer polls
than its ~33 on a virtual clock). ``--time-scale 1`` runs at the provider's own pace (~6 min).

    python benchmarks/bench_polling.py [--n 40] [--warmup 20] [--time-scale 0.1] [--seed 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect_aimlapi_video.api.client import AimlApiClient
from prefect_aimlapi_video.api.errors import TransientApiError
from prefect_aimlapi_video.api.requests import GenerationParams
from prefect_aimlapi_video.sandbox import SandboxConfig, make_test_clip, run_sandbox
from prefect_aimlapi_video.sandbox.ledger import LedgerEntry
from prefect_aimlapi_video.storage.sources import data_uri
from prefect_aimlapi_video.submission.learned_polling import LearnedPollPolicy, quantile, scale_policy
from prefect_aimlapi_video.submission.polling import DEFAULT_TIMEOUT_SECONDS, PollPolicy

PROVIDER_SECONDS = 150.0  # the provider's docs quote ~2.5 min per generation
SPREAD = 0.1
TARGET_RATIO = 1 / 3
PROMPT = "a watercolour fox"


async def wait_one(
    client: AimlApiClient, video_url: str, index: int, policy: PollPolicy | LearnedPollPolicy, seed: int, timeout: float
) -> dict[str, Any]:
    """Submit one generation and poll it on `policy`'s schedule until it completes."""
    payload = GenerationParams(prompt=PROMPT, seed=seed * 100_000 + index).payload(video_url)
    answer = await client.submit(payload, client_request_id=f"bench-polling-{seed}-{index}")
    started = time.monotonic()
    generation_id = answer.generation.id
    schedule = policy.schedule(random.Random(seed * 100_000 + index))
    polls = errors = 0
    latency = 0.0
    while True:
        asked = time.monotonic()
        try:
            generation = (await client.get_generation(generation_id)).generation
        except TransientApiError:
            errors += 1
        else:
            polls += 1
            latency += time.monotonic() - asked
            if generation.status == "completed":
                return {
                    "id": generation_id, "seen_at": time.time(), "polls": polls, "errors": errors, "latency": latency
                }
            if generation.status == "error":
                raise RuntimeError(f"{generation_id} failed in the sandbox: {generation.error}")
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            raise TimeoutError(f"{generation_id} not completed after {elapsed:.1f} s")
        await asyncio.sleep(schedule.next_delay(elapsed))


def processing_time(entry: LedgerEntry) -> float:
    """What a learned policy learns: seconds from acceptance to completion (queueing included)."""
    assert entry.completed_at is not None, entry
    return entry.completed_at - entry.accepted_at


def summarise(results: list[dict[str, Any]], ledger: dict[str, LedgerEntry], scale: float) -> dict[str, Any]:
    delays = sorted(r["seen_at"] - ledger[r["id"]].completed_at for r in results)  # type: ignore[operator]
    polls = [r["polls"] for r in results]
    p50, p95 = quantile(delays, 0.5), quantile(delays, 0.95)
    return {
        "generations": len(results),
        "detection_p50_s": round(p50, 4),
        "detection_p95_s": round(p95, 4),
        "detection_mean_s": round(statistics.mean(delays), 4),
        "detection_max_s": round(delays[-1], 4),
        "detection_min_s": round(delays[0], 4),
        "detection_p50_provider_s": round(p50 / scale, 2),
        "detection_p95_provider_s": round(p95 / scale, 2),
        "mean_polls": round(statistics.mean(polls), 2),
        "max_polls": max(polls),
        "ledger_polls_match": all(ledger[r["id"]].polls == r["polls"] for r in results),
        "poll_errors": sum(r["errors"] for r in results),
        "mean_poll_latency_ms": round(1000 * sum(r["latency"] for r in results) / sum(polls), 2),
    }


async def run(args: argparse.Namespace, base_url: str, api_key: str, ledger_of: Any, video_url: str) -> dict[str, Any]:
    scale = args.time_scale
    today = scale_policy(PollPolicy(), scale)
    timeout = DEFAULT_TIMEOUT_SECONDS * scale
    async with AimlApiClient(api_key, base_url) as client:
        # 1. warm-up: what the learned policy learns from
        warm = await asyncio.gather(
            *(wait_one(client, video_url, i, today, args.seed, timeout) for i in range(args.warmup))
        )
        entries = {e.generation_id: e for e in ledger_of()}
        durations = [processing_time(entries[r["id"]]) for r in warm]
        learned = scale_policy(LearnedPollPolicy(), scale).learn(durations)
        # 2. measured batch: 2n together, alternating policies
        policies = {"today": today, "learned": learned}
        names = ["today" if i % 2 == 0 else "learned" for i in range(2 * args.n)]
        first = args.warmup
        batch_started = time.monotonic()
        results = await asyncio.gather(
            *(
                wait_one(client, video_url, first + i, policies[name], args.seed, timeout)
                for i, name in enumerate(names)
            )
        )
        batch_wall = time.monotonic() - batch_started
    entries = {e.generation_id: e for e in ledger_of()}
    figures = {
        name: summarise([r for r, n in zip(results, names) if n == name], entries, scale) for name in policies
    }
    return {
        "durations": durations,
        "learned": learned,
        "figures": figures,
        "batch_wall_s": batch_wall,
        "measured_durations": [processing_time(entries[r["id"]]) for r in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="measured generations per policy")
    parser.add_argument("--warmup", type=int, default=20, help="generations the learned policy learns from")
    parser.add_argument("--time-scale", type=float, default=0.1, help="bench seconds per provider second")
    parser.add_argument("--seed", type=int, default=0, help="seeds the sandbox's processing times and the jitter")
    args = parser.parse_args()
    if args.n < 2 or args.warmup < 1 or not args.time_scale > 0:
        parser.error("need --n >= 2, --warmup >= 1 and --time-scale > 0")
    scale = args.time_scale
    processing = PROVIDER_SECONDS * scale
    config = SandboxConfig(
        processing_seconds=processing,
        processing_spread=SPREAD,
        processing_seed=args.seed,
        workers=max(args.warmup, 2 * args.n) + 1,  # one GPU slot each: no queueing in the durations
    )
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_test_clip(Path(tmp) / "clip.mp4", width=64, height=48, seconds=0.25, fps=24)
        video_url = data_uri(clip.read_bytes())
    bench_started = time.monotonic()
    with run_sandbox(config) as handle:
        out = asyncio.run(run(args, handle.base_url, handle.api_key, handle.ledger, video_url))
    wall = time.monotonic() - bench_started
    figures, learned, durations = out["figures"], out["learned"], out["durations"]
    today, ours = figures["today"], figures["learned"]
    ratio = ours["detection_p50_s"] / today["detection_p50_s"] if today["detection_p50_s"] > 0 else None
    polls_ratio = ours["mean_polls"] / today["mean_polls"]
    meets = ratio is not None and ratio <= TARGET_RATIO and ours["mean_polls"] <= today["mean_polls"]
    measured = sorted(out["measured_durations"])
    result = {
        "benchmark": "polling",
        "time_scale": scale,
        "n_per_policy": args.n,
        "warmup": args.warmup,
        "seed": args.seed,
        "order": "interleaved (2n submitted together; even -> today, odd -> learned)",
        "sandbox": {"processing_seconds": processing, "processing_spread": SPREAD, "workers": config.workers},
        "warmup_durations_s": {
            "mean": round(statistics.mean(durations), 3),
            "sd": round(statistics.stdev(durations), 3) if len(durations) > 1 else 0.0,
            "min": round(min(durations), 3),
            "max": round(max(durations), 3),
        },
        "measured_durations_s": {"mean": round(statistics.mean(measured), 3), "min": round(measured[0], 3),
                                 "max": round(measured[-1], 3)},
        "learned_window_s": [round(learned.window_start, 3), round(learned.window_end, 3)] if learned.learned else None,
        "learned_policy": {
            "dense_seconds": learned.dense_seconds,
            "dense_step": learned.dense_step,
            "sparse_seconds": learned.sparse_seconds,
            "quantiles": [learned.low_quantile, learned.high_quantile],
            "margin_fraction": learned.margin_fraction,
        },
        "today": today,
        "learned": ours,
        "ratio_p50": None if ratio is None else round(ratio, 3),
        "polls_ratio": round(polls_ratio, 3),
        "target": {"ratio_p50_max": round(TARGET_RATIO, 3), "polls_ratio_max": 1.0},
        "meets_target": meets,
        "bench_wall_s": round(wall, 1),
    }
    print(f"sandbox: {processing:.1f} s +/- {SPREAD:.0%} per generation (150 s x time scale {scale}), "
          f"{config.workers} GPU slots, seed {args.seed}")
    print(f"warm-up: {args.warmup} generations, durations {result['warmup_durations_s']}")
    if learned.learned:
        print(f"learned window: {learned.window_start:.3f} .. {learned.window_end:.3f} s "
              f"(dense every {learned.dense_step:.3f} s inside, sparse every {learned.sparse_seconds:.3f} s before)")
    print(f"measured: {args.n} generations per policy, interleaved, batch wall {out['batch_wall_s']:.1f} s")
    header = f"{'policy':8} {'det p50 s':>10} {'det p95 s':>10} {'(provider p50/p95 s)':>22}"
    print(f"{header} {'mean polls':>11} {'max':>5}")
    for name, f in (("today", today), ("learned", ours)):
        shown = f"{f['detection_p50_provider_s']} / {f['detection_p95_provider_s']}"
        print(f"{name:8} {f['detection_p50_s']:>10.4f} {f['detection_p95_s']:>10.4f} {shown:>22} "
              f"{f['mean_polls']:>11.2f} {f['max_polls']:>5}")
    print(f"learned p50 / today p50 = {result['ratio_p50']} (target <= {TARGET_RATIO:.3f}); "
          f"polls learned / today = {result['polls_ratio']} (target <= 1); meets target: {meets}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

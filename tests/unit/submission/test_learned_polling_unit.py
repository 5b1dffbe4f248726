"""prefect_aimlapi_video.submission.learned_polling: the learned schedule against today's, on a virtual clock.

A generation that takes `duration` seconds is simulated the way `wait_for_generation` waits: poll,
and if the result is not there, sleep `next_delay(elapsed)` and poll again; nothing sleeps for
real. Detection delay = time of the first poll at or after completion - completion.
"""

from __future__ import annotations

import math
import random
import statistics

import pytest
from pydantic import ValidationError

from prefect_aimlapi_video.submission.learned_polling import (
    LearnedPollPolicy,
    LearnedPollSchedule,
    quantile,
    scale_policy,
)
from prefect_aimlapi_video.submission.polling import PollPolicy, PollSchedule

MEAN, SD = 150.0, 15.0  # the provider's ~2.5 min, with a 10 % spread


def detect(policy: PollPolicy | LearnedPollPolicy, duration: float, seed: int) -> tuple[float, int]:
    """(detection delay, polls) for one generation that completes `duration` s after acceptance."""
    schedule = policy.schedule(random.Random(seed))
    elapsed, polls = 0.0, 0
    while True:
        polls += 1
        if elapsed >= duration:
            return elapsed - duration, polls
        elapsed += schedule.next_delay(elapsed)


def figures(policy: PollPolicy | LearnedPollPolicy, durations: list[float]) -> dict[str, float]:
    results = [detect(policy, d, seed) for seed, d in enumerate(durations)]
    delays = [delay for delay, _ in results]
    return {
        "p50": statistics.median(delays),
        "p95": statistics.quantiles(delays, n=20)[-1],
        "max": max(delays),
        "mean_polls": statistics.mean(polls for _, polls in results),
    }


def normal_durations(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(MEAN, SD) for _ in range(n)]


def delays_along(schedule, elapsed_points: list[float]) -> list[float]:
    return [schedule.next_delay(t) for t in elapsed_points]


@pytest.fixture(scope="module")
def learned() -> LearnedPollPolicy:
    return LearnedPollPolicy.from_durations(normal_durations(20, seed=11))


def test_learned_detects_sooner_with_no_more_polls(learned) -> None:
    durations = normal_durations(300, seed=12)  # not the history: the future it is judged on
    today, ours = figures(PollPolicy(), durations), figures(learned, durations)
    assert ours["p50"] < today["p50"] / 3, (ours, today)  # the benchmark's target holds on the clock too
    assert ours["mean_polls"] <= today["mean_polls"], (ours, today)
    assert ours["p95"] < today["p95"], (ours, today)


@pytest.mark.parametrize("history_seed", range(8))
def test_learned_is_better_whatever_the_history_sample(history_seed) -> None:
    """Another 20 past durations give another window; the advantage must not hang on one draw."""
    policy = LearnedPollPolicy.from_durations(normal_durations(20, seed=100 + history_seed))
    durations = normal_durations(200, seed=200 + history_seed)
    today, ours = figures(PollPolicy(), durations), figures(policy, durations)
    assert ours["p50"] < today["p50"], (ours, today)
    assert ours["mean_polls"] <= today["mean_polls"], (ours, today)


def test_window_is_quantiles_widened_by_the_margin() -> None:
    durations = [float(d) for d in range(100, 201)]  # 100..200: p5 = 105, p50 = 150, p95 = 195
    policy = LearnedPollPolicy.from_durations(durations)
    assert policy.learned and policy.samples == 101
    margin = 0.25 * (195 - 105)
    assert policy.window_start == pytest.approx(105 - margin)
    assert policy.window_end == pytest.approx(195 + margin)


def test_all_equal_history_still_gets_a_window() -> None:
    policy = LearnedPollPolicy.from_durations([150.0] * 10)
    assert policy.window_start == pytest.approx(150 - 7.5) and policy.window_end == pytest.approx(150 + 7.5)
    assert detect(policy, 150.0, seed=1)[0] <= 2.0 * 1.1


def test_quantile_matches_the_standard_library() -> None:
    values = sorted(normal_durations(37, seed=5))
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    for index, cut in enumerate(cuts, start=1):
        assert quantile(values, index / 20) == pytest.approx(cut)
    assert quantile(values, 0) == values[0] and quantile(values, 1) == values[-1]
    assert quantile([3.0], 0.5) == 3.0
    with pytest.raises(ValueError):
        quantile([], 0.5)


@pytest.mark.parametrize("count", [0, 1, 4])
def test_short_history_is_exactly_todays_schedule(count) -> None:
    policy = LearnedPollPolicy.from_durations(normal_durations(count, seed=3))
    assert not policy.learned and policy.samples == count
    elapsed_points = [0, 0.5, 3, 11.9, 12, 13, 20, 40, 80, 150, 300, 1000]
    for seed in (0, 1, 42):
        schedule = policy.schedule(random.Random(seed))
        assert isinstance(schedule, PollSchedule)
        today = PollPolicy().schedule(random.Random(seed))
        assert delays_along(schedule, elapsed_points) == delays_along(today, elapsed_points)
    # the whole simulated wait too, poll for poll
    for duration in (5.0, 150.0, 400.0):
        assert detect(policy, duration, seed=9) == detect(PollPolicy(), duration, seed=9)


def test_short_history_uses_the_given_fallback() -> None:
    fallback = PollPolicy(initial_seconds=2.0, max_seconds=20.0, jitter=0.0)
    policy = LearnedPollPolicy.from_durations([150.0, 151.0], fallback=fallback)
    assert policy.fallback == fallback
    points = [0, 5, 12, 30, 60]
    assert delays_along(policy.schedule(random.Random(1)), points) == delays_along(
        fallback.schedule(random.Random(1)), points
    )


def test_unusable_durations_are_ignored_and_only_the_newest_kept() -> None:
    junk = [float("nan"), float("inf"), -3.0, 0.0, None, "x"]
    policy = LearnedPollPolicy.from_durations([150.0, 151.0, 149.0, 152.0, *junk])  # type: ignore[list-item]
    assert not policy.learned and policy.samples == 4  # junk does not make up the five
    old_then_new = [60.0] * 50 + normal_durations(30, seed=4)
    recent = LearnedPollPolicy.from_durations(old_then_new, max_history=30)
    assert recent.samples == 30 and recent.window_start > 100  # the old 60 s era is forgotten


def test_phases_before_inside_and_after_the_window(learned) -> None:
    schedule = learned.schedule(random.Random(5))
    assert isinstance(schedule, LearnedPollSchedule)
    start, end = learned.window_start, learned.window_end
    assert 80 < start < MEAN < end < 230
    # before: sparse (30 s +/- 10 %), clipped so that no sleep crosses the window start
    for t in [0.0, 10.0, start - 31, start - 20, start - 1, start - 0.01]:
        delay = schedule.next_delay(t)
        assert 0 < delay <= 30 * 1.1 and t + delay <= start + 1e-9, (t, delay)
    assert schedule.next_delay(0.0) >= 30 * 0.9
    # inside: dense
    inside = [schedule.next_delay(t) for t in (start, start + 1, MEAN, end - 0.001)]
    assert all(2 * 0.9 <= d <= 2 * 1.1 for d in inside), inside
    # after: back off from 2 s by 1.3 per poll up to 10 s
    after = [schedule.next_delay(end + i) for i in range(20)]
    assert after[0] == pytest.approx(2.6, rel=0.11)
    assert max(after) <= 10 * 1.1 and min(after[-5:]) >= 10 * 0.9


def test_never_sleeps_past_the_window_start(learned) -> None:
    rng = random.Random(8)
    for seed in range(50):
        schedule, elapsed = learned.schedule(random.Random(seed)), rng.uniform(0, 5)
        while elapsed < learned.window_start:
            elapsed += schedule.next_delay(elapsed)
            assert elapsed <= learned.window_start + 1e-9
        assert elapsed == pytest.approx(learned.window_start)  # the first dense poll is right on time


def test_retry_after_is_a_floor_in_every_phase(learned) -> None:
    start, end = learned.window_start, learned.window_end
    for t in (0.0, start - 5, start, MEAN, end, end + 100):
        schedule = learned.schedule(random.Random(2))
        assert schedule.next_delay(t, retry_after=45.0) == 45.0
        small = learned.schedule(random.Random(2)).next_delay(t, retry_after=0.01)
        assert small == learned.schedule(random.Random(2)).next_delay(t)  # a small hint changes nothing
    assert LearnedPollPolicy().schedule(random.Random(1)).next_delay(0, retry_after=30.0) == 30.0  # fallback too


def test_delays_are_always_positive_and_finite() -> None:
    rng = random.Random(21)
    histories = [
        normal_durations(20, seed=1),
        [150.0] * 6,
        [0.05, 0.06, 0.07, 0.05, 0.06],  # a sandbox's tiny durations
        [1e-6] * 5,
        [1.0, 1000.0, 5.0, 300.0, 2.0],
        [],
    ]
    for history in histories:
        for jitter in (0.0, 0.1, 0.99):
            policy = LearnedPollPolicy.from_durations(history, jitter=jitter)
            schedule = policy.schedule(random.Random(3))
            edges = [policy.window_start or 0.0, policy.window_end or 0.0]
            points = [-5.0, 0.0, *edges, *(math.nextafter(e, -math.inf) for e in edges), 1e9]
            points += [rng.uniform(0, 400) for _ in range(300)]
            for t in points:
                delay = schedule.next_delay(t)
                assert delay > 0 and math.isfinite(delay), (history, jitter, t, delay)


def test_slow_outlier_is_detected_within_the_fallbacks_max_interval(learned) -> None:
    bound = learned.fallback.max_seconds * (1 + learned.fallback.jitter)
    for offset in (0.5, 7.0, 30.0, 200.0, 900.0):
        duration = learned.window_end + offset
        for seed in range(20):
            delay, _ = detect(learned, duration, seed)
            assert delay <= bound, (offset, seed, delay)


def test_early_finish_is_detected_within_the_sparse_interval(learned) -> None:
    for duration in (0.5, 20.0, 61.0, learned.window_start - 1):
        for seed in range(20):
            assert detect(learned, duration, seed)[0] <= 30 * 1.1


def test_scaled_policy_is_the_same_schedule_on_a_faster_clock(learned) -> None:
    factor = 0.1
    fast = scale_policy(learned, factor)
    assert fast.window_start == pytest.approx(learned.window_start * factor)
    assert fast.dense_seconds == pytest.approx(0.2) and fast.fallback.max_seconds == pytest.approx(1.0)
    points = [0, 30, 100, learned.window_start, MEAN, learned.window_end + 1, 400]
    slow_delays = delays_along(learned.schedule(random.Random(4)), points)
    fast_delays = delays_along(fast.schedule(random.Random(4)), [t * factor for t in points])
    assert fast_delays == pytest.approx([d * factor for d in slow_delays])
    today_fast = scale_policy(PollPolicy(), factor)
    assert (today_fast.initial_seconds, today_fast.fast_phase_seconds, today_fast.max_seconds) == pytest.approx(
        (0.1, 1.2, 1.0)
    )
    with pytest.raises(ValueError):
        scale_policy(learned, 0)


def test_policy_survives_a_json_round_trip(learned) -> None:
    restored = LearnedPollPolicy.model_validate_json(learned.model_dump_json())
    assert restored == learned
    points = [0, 100, MEAN, 300]
    assert delays_along(restored.schedule(random.Random(6)), points) == delays_along(
        learned.schedule(random.Random(6)), points
    )


def test_policy_validation() -> None:
    with pytest.raises(ValidationError):
        LearnedPollPolicy(low_quantile=0.9, high_quantile=0.5)
    with pytest.raises(ValidationError):
        LearnedPollPolicy(window_start=100.0)  # without window_end
    with pytest.raises(ValidationError):
        LearnedPollPolicy(window_start=100.0, window_end=50.0)
    with pytest.raises(ValidationError):
        LearnedPollPolicy(dense_seconds=0)
    with pytest.raises(ValidationError):
        LearnedPollPolicy(jitter=1.0)
    with pytest.raises(ValidationError):
        LearnedPollPolicy(min_history=10, max_history=5)
    with pytest.raises(ValidationError):
        LearnedPollPolicy(dense_second=1.0)  # a misspelt field is refused, not ignored
    with pytest.raises(ValueError):
        LearnedPollSchedule(LearnedPollPolicy(), random.Random())


def test_a_narrow_window_is_crossed_in_a_few_short_steps() -> None:
    """10 s generations within a few tenths of a second: a 2 s step would see completion ~1 s late."""
    rng = random.Random(5)
    history = [10.0 + rng.uniform(0.0, 0.6) for _ in range(50)]
    policy = LearnedPollPolicy.from_durations(history)
    assert policy.dense_step == pytest.approx(policy.min_dense_seconds)
    future = [10.0 + rng.uniform(0.0, 0.6) for _ in range(300)]
    narrow = figures(policy, future)
    coarse = figures(policy.model_copy(update={"min_dense_seconds": 2.0}), future)  # the plain 2 s step
    assert narrow["p50"] < 0.2 < 0.5 < coarse["p50"]
    assert narrow["mean_polls"] <= 8


def test_the_step_stays_two_seconds_for_the_providers_durations(learned) -> None:
    assert learned.dense_step == pytest.approx(learned.dense_seconds)


def test_a_wide_window_keeps_the_step_at_most_dense_seconds() -> None:
    policy = LearnedPollPolicy.from_durations([10.0 + 20.0 * i / 49 for i in range(50)])
    assert policy.dense_step == pytest.approx(policy.dense_seconds)
    assert figures(policy, [10.0 + 20.0 * i / 299 for i in range(300)])["mean_polls"] <= 14


def test_scaling_scales_the_learned_step() -> None:
    policy = LearnedPollPolicy.from_durations([10.0, 10.1, 10.2, 10.3, 10.4])
    fast = scale_policy(policy, 0.1)
    assert fast.dense_step == pytest.approx(policy.dense_step * 0.1)
    assert fast.min_dense_seconds == pytest.approx(policy.min_dense_seconds * 0.1)

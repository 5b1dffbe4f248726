"""prefect_aimlapi_video.submission.polling: the adaptive poll schedule, simulated on a virtual clock."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from prefect_aimlapi_video.submission.polling import PollPolicy


def simulate(policy: PollPolicy, wait_seconds: float, seed: int = 1) -> tuple[int, list[float]]:
    """Polls made in `wait_seconds` the way wait_for_generation does it: poll, then sleep next_delay."""
    schedule = policy.schedule(random.Random(seed))
    elapsed, polls, delays = 0.0, 0, []
    while elapsed <= wait_seconds:
        polls += 1
        delay = schedule.next_delay(elapsed)
        delays.append(delay)
        elapsed += delay
    return polls, delays


def test_fast_phase_delays_are_one_second_within_jitter():
    policy = PollPolicy()
    schedule = policy.schedule(random.Random(7))
    delays = [schedule.next_delay(t) for t in (0, 1, 2, 3, 5, 8, 11.9)]
    assert all(0.9 <= d <= 1.1 for d in delays), delays
    assert len(set(delays)) > 1  # jitter really varies


def test_jitter_zero_is_exact_and_growth_after_fast_phase():
    policy = PollPolicy(jitter=0.0)
    schedule = policy.schedule(random.Random(0))
    assert schedule.next_delay(0) == 1.0
    assert schedule.next_delay(11.99) == 1.0
    grown = [schedule.next_delay(12 + i) for i in range(12)]
    assert grown[0] == pytest.approx(1.3)
    assert grown[1] == pytest.approx(1.69)
    assert grown[2] == pytest.approx(2.197)
    assert all(b >= a for a, b in zip(grown, grown[1:]))
    assert grown[-1] == 10.0 and max(grown) == 10.0


def test_delays_capped_at_max_with_jitter():
    policy = PollPolicy()
    schedule = policy.schedule(random.Random(3))
    delays = [schedule.next_delay(12 + 10 * i) for i in range(40)]
    assert max(delays) <= 10.0 * 1.1
    assert min(delays[-10:]) >= 10.0 * 0.9


def test_seeded_schedule_is_reproducible():
    policy = PollPolicy()
    first = [policy.schedule(random.Random(42)).next_delay(t) for t in (0, 20, 40)]
    second = [policy.schedule(random.Random(42)).next_delay(t) for t in (0, 20, 40)]
    assert first == second


def test_retry_after_raises_the_delay():
    schedule = PollPolicy().schedule(random.Random(1))
    assert schedule.next_delay(0, retry_after=30.0) == 30.0
    assert schedule.next_delay(0, retry_after=0.2) < 1.2  # a small hint never shortens below the schedule
    assert schedule.next_delay(0, retry_after=0.2) >= 0.9


def test_polls_in_a_10_second_wait():
    polls, delays = simulate(PollPolicy(), 10.0)
    assert 9 <= polls <= 12
    assert all(0.9 <= d <= 1.1 for d in delays)


def test_polls_in_a_150_second_wait():
    polls, delays = simulate(PollPolicy(), 150.0)
    # ~12 fast polls, a short ramp (1.3, 1.7, ... 10), then one poll per ~10 s
    assert 25 <= polls <= 40, polls
    assert max(delays) <= 11.0
    # far fewer polls than one per second, and no more than one per 10 s at the end
    assert polls < 150 / 3


def test_policy_validation():
    with pytest.raises(ValidationError):
        PollPolicy(initial_seconds=0)
    with pytest.raises(ValidationError):
        PollPolicy(growth=0.5)
    with pytest.raises(ValidationError):
        PollPolicy(jitter=1.0)

"""processing_spread: generation times vary like a real provider's, reproducibly from processing_seed."""

from __future__ import annotations

import random
import statistics
import time

import pytest
from pydantic import ValidationError

from prefect_aimlapi_video.sandbox import SandboxConfig

TOLERANCE = 0.3  # scheduling noise of a loaded test machine; the draws themselves differ by far more


def expected_draws(config: SandboxConfig, count: int) -> list[float]:
    """What the engine draws for the first `count` generations after a start or a reset."""
    rng = random.Random(config.processing_seed)
    mean = config.processing_seconds
    return [max(0.1 * mean, rng.gauss(mean, config.processing_spread * mean)) for _ in range(count)]


def run_wave(api, video_url: str, count: int, timeout: float = 30) -> list[float]:
    """Submit `count` generations one after another, wait for all; completed_at - started_at each."""
    ids = []
    for index in range(count):
        response = api.submit(video_url, seed=index)
        assert response.status_code == 200, response.text
        ids.append(response.json()["id"])
    deadline = time.monotonic() + timeout
    while True:
        entries = {entry.generation_id: entry for entry in api.handle.ledger()}
        if all(entries[i].finished for i in ids):
            break
        assert time.monotonic() < deadline, "generations did not finish"
        time.sleep(0.05)
    assert all(entries[i].status == "completed" for i in ids)
    return [entries[i].completed_at - entries[i].started_at for i in ids]  # in acceptance order


def test_spread_gives_varied_reproducible_times(make_api, tiny_uri) -> None:
    fields = {"processing_seconds": 1.0, "processing_spread": 0.3, "processing_seed": 5, "workers": 8}
    config = SandboxConfig(**fields)
    api = make_api(**fields)
    times = run_wave(api, tiny_uri, 6)
    assert len({round(t, 1) for t in times}) >= 4, times  # they differ, not one fixed value
    assert statistics.stdev(times) > 0.1, times
    assert all(0.1 - 0.01 <= t <= 1.0 + 5 * 0.3 + TOLERANCE for t in times), times  # clipped below, sane above
    expected = expected_draws(config, 6)
    assert times == pytest.approx(expected, abs=TOLERANCE), (times, expected)  # the seeded draws, in order
    api.handle.reset()  # a reset starts the sequence again
    again = run_wave(api, tiny_uri, 3)
    assert again == pytest.approx(expected[:3], abs=TOLERANCE), (again, expected)


def test_another_seed_gives_other_times() -> None:
    first = expected_draws(SandboxConfig(processing_spread=0.2, processing_seed=1), 5)
    second = expected_draws(SandboxConfig(processing_spread=0.2, processing_seed=2), 5)
    assert first != second


def test_draws_are_clipped_at_a_tenth_of_the_mean() -> None:
    draws = expected_draws(SandboxConfig(processing_seconds=2.0, processing_spread=3.0, processing_seed=0), 200)
    assert min(draws) == pytest.approx(0.2)  # a spread this wide hits the clip
    assert max(draws) > 2.0


def test_no_spread_takes_processing_seconds_exactly(make_api, tiny_uri) -> None:
    api = make_api(processing_seconds=1.0, workers=4)
    times = run_wave(api, tiny_uri, 4)
    assert all(abs(t - 1.0) <= TOLERANCE for t in times), times
    assert all(t >= 1.0 - 0.01 for t in times), times  # never shorter than the configured time


def test_spread_must_not_be_negative() -> None:
    assert SandboxConfig().processing_spread == 0.0 and SandboxConfig().processing_seed == 0
    with pytest.raises(ValidationError):
        SandboxConfig(processing_spread=-0.1)

"""Small statistics the benchmarks print: percentiles with interpolation, rounded summaries."""

from __future__ import annotations

import statistics


def pct(values: list[float], q: float) -> float | None:
    """Percentile with linear interpolation between closest ranks (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def rnd(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def summary(values: list[float]) -> dict[str, float | None]:
    return {
        "mean": rnd(mean(values)), "p50": rnd(pct(values, 50)), "p95": rnd(pct(values, 95)),
        "max": rnd(max(values) if values else None),
    }

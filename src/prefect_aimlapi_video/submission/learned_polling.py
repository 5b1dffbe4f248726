"""When to ask again, learned: a poll schedule shaped by how long past generations took.

Why: today's `PollPolicy` knows nothing about this model's durations, so by the time a typical
generation finishes (~150 s; the provider quotes ~2.5 min) it polls only every ~10 s and notices
completion ~5 s late on average, after ~30 polls. Generation times of one model cluster tightly,
so most of those polls are spent at moments when the result cannot be ready yet, and too few
near the moment it most likely is.

`LearnedPollPolicy` spends the same kind of budget where it pays. From past durations (seconds
from the POST's acceptance to ``completed``) it estimates a window ``[low - margin, high +
margin]`` where ``low``/``high`` are quantiles (p5/p95 by default) and the margin widens it
against estimation error (a small history says little about its own tails). Then, at
``elapsed`` seconds into the wait:

* before the window: sparse polls, every ``sparse_seconds`` (30 s) but never sleeping past the
  window start (an early failure or an early finish is still seen, at most ~30 s late);
* inside the window: every ``dense_seconds`` (2 s), so completion is seen ~1 s late on average;
  a narrow window (short or very regular generations) is crossed in ``dense_polls`` (8) polls
  instead, at least ``min_dense_seconds`` (0.25 s) apart: for 10 s generations a 2 s step would
  be a fifth of the whole wait and see completion ~1 s late, where 0.25 s sees it ~0.1 s late for
  about the same number of polls;
* after the window (a slow outlier, or a provider that got slower): back off from
  that step by the fallback's ``growth`` per poll up to its ``max_seconds`` (10 s), the
  same bound on lateness as today's schedule;
* every delay gets +/- ``jitter`` so a batch of waiters does not poll in lockstep, and a
  server's Retry-After is a floor, as in `PollSchedule`.

With fewer than ``min_history`` usable durations there is nothing to learn from, and the policy
is exactly its fallback (`PollPolicy()` by default): ``schedule(rng)`` then returns the
fallback's own `PollSchedule`, delay for delay.

Why 2 s and not 1 s inside the window: the window opens ~2.5 standard deviations of the
durations before their mean, and at 1 s its polls alone cost about as many as today's whole
schedule (~33 for 150 s). On a virtual clock with durations from N(150 s, 15 s) and 20 of them
learned, 2 s gives a detection delay p50 of ~1.0 s (today: ~5.0 s) and p95 ~2.4 s (today ~9.7 s)
with ~23 polls per generation (today ~33); see ``tests/unit/test_learned_polling_unit.py`` and
``benchmarks/bench_polling.py`` (the same against the sandbox over HTTP).

What it assumes: durations are measured the way the wait measures ``elapsed`` (from acceptance),
and the durations it learns from were made under similar load (queueing time is part of them).
Feed it durations of *completed* generations only: failures end at other times. Pure Python and
pydantic: no Prefect, no I/O; where the durations come from is the caller's business.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Protocol, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from prefect_aimlapi_video.submission.polling import PollPolicy, PollSchedule

__all__ = [
    "DelaySchedule",
    "LearnedPollPolicy",
    "LearnedPollSchedule",
    "quantile",
    "scale_policy",
]

P = TypeVar("P", PollPolicy, "LearnedPollPolicy")


class DelaySchedule(Protocol):
    """What a wait loop needs from a schedule: `PollSchedule` and `LearnedPollSchedule` both fit."""

    def next_delay(self, elapsed: float, retry_after: float | None = None) -> float: ...


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile of already sorted values, linearly interpolated (numpy's default, type 7).

    Interpolation rather than nearest rank so that a small history gives a window that moves
    smoothly as durations are added, not in jumps from one sample to the next.
    """
    if not sorted_values:
        raise ValueError("quantile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be within [0, 1], got {q}")
    position = q * (len(sorted_values) - 1)
    below = math.floor(position)
    above = min(below + 1, len(sorted_values) - 1)
    return sorted_values[below] + (sorted_values[above] - sorted_values[below]) * (position - below)


def _as_seconds(value: object) -> float | None:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


class LearnedPollPolicy(BaseModel):
    """A poll schedule dense around the expected finish learned from past durations.

    Build it with `from_durations` (or `learn` on a configured policy); constructing it directly
    with ``window_start``/``window_end`` is for tests and for restoring a saved policy. All times
    are seconds after the POST was accepted. Without a window it is its ``fallback``.
    """

    model_config = ConfigDict(extra="forbid")  # a misspelt field from a deployment is refused, not ignored

    fallback: PollPolicy = Field(
        default_factory=PollPolicy,
        description="used as is without enough history; its growth and max_seconds also shape the back-off "
        "after the window",
    )
    # How the window is estimated.
    min_history: int = Field(5, ge=2, description="fewer usable durations than this -> behave as the fallback")
    max_history: int = Field(
        200, ge=2, description="learn from the newest this many durations only, so a provider that changes is tracked"
    )
    low_quantile: float = Field(0.05, ge=0, lt=1, description="the window opens at this quantile minus the margin")
    high_quantile: float = Field(0.95, gt=0, le=1, description="the window closes at this quantile plus the margin")
    margin_fraction: float = Field(
        0.25, ge=0, description="widen each side by this fraction of (high - low) quantile: estimation error"
    )
    min_margin_fraction: float = Field(
        0.05, ge=0, description="...but by at least this fraction of the median duration (all-equal history)"
    )
    # How the schedule polls.
    sparse_seconds: float = Field(30.0, gt=0, description="pause before the window (never past its start)")
    dense_seconds: float = Field(2.0, gt=0, description="pause inside the window")
    dense_polls: int = Field(8, ge=1, description="a window narrower than dense_polls x dense_seconds is crossed "
                             "in this many polls")
    min_dense_seconds: float = Field(0.25, gt=0, description="...but never at less than this pause")
    jitter: float = Field(0.1, ge=0, lt=1, description="+/- fraction applied to each delay")
    # What was learned: both None = nothing learned yet (fallback).
    window_start: float | None = Field(None, ge=0, description="learned: dense polling starts here")
    window_end: float | None = Field(None, ge=0, description="learned: after this, back off like the fallback")
    samples: int = Field(0, ge=0, description="learned: how many durations the window was estimated from")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.low_quantile >= self.high_quantile:
            raise ValueError("low_quantile must be below high_quantile")
        if self.max_history < self.min_history:
            raise ValueError("max_history must be at least min_history")
        if (self.window_start is None) != (self.window_end is None):
            raise ValueError("window_start and window_end are set together or not at all")
        if self.window_start is not None and self.window_end is not None and self.window_start > self.window_end:
            raise ValueError("window_start must not be after window_end")
        return self

    @classmethod
    def from_durations(
        cls, durations: Sequence[float], fallback: PollPolicy | None = None, **parameters: object
    ) -> LearnedPollPolicy:
        """The policy learned from past durations (oldest first); ``parameters`` are its other fields."""
        base = cls(fallback=fallback or PollPolicy(), **parameters)  # type: ignore[arg-type]
        return base.learn(durations)

    @property
    def learned(self) -> bool:
        return self.window_start is not None

    @property
    def dense_step(self) -> float:
        """The pause inside the window: `dense_seconds`, or less for a window it would cross in
        fewer than `dense_polls` polls (never under `min_dense_seconds`)."""
        if self.window_start is None or self.window_end is None:
            return self.dense_seconds
        width = self.window_end - self.window_start
        return min(self.dense_seconds, max(self.min_dense_seconds, width / self.dense_polls))

    def learn(self, durations: Sequence[float]) -> LearnedPollPolicy:
        """A copy whose window is estimated from ``durations`` (oldest first), or cleared if too few.

        Durations that are not finite and positive are ignored (a clock step, a missing timestamp),
        as are all but the newest ``max_history``.
        """
        usable = [d for d in map(_as_seconds, durations) if d is not None][-self.max_history :]
        if len(usable) < self.min_history:
            return self.model_copy(update={"window_start": None, "window_end": None, "samples": len(usable)})
        ordered = sorted(usable)
        low, high = quantile(ordered, self.low_quantile), quantile(ordered, self.high_quantile)
        margin = max(self.margin_fraction * (high - low), self.min_margin_fraction * quantile(ordered, 0.5))
        return self.model_copy(
            update={"window_start": max(0.0, low - margin), "window_end": high + margin, "samples": len(usable)}
        )

    def schedule(self, rng: random.Random | None = None) -> PollSchedule | LearnedPollSchedule:
        """A fresh schedule for one generation's wait; the fallback's own when nothing is learned."""
        rng = rng or random.Random()
        if not self.learned:
            return self.fallback.schedule(rng)
        return LearnedPollSchedule(self, rng)


class LearnedPollSchedule:
    """Stateful iterator of delays for one generation's wait under a learned window."""

    def __init__(self, policy: LearnedPollPolicy, rng: random.Random) -> None:
        if policy.window_start is None or policy.window_end is None:
            raise ValueError("a LearnedPollSchedule needs a learned window; use policy.schedule()")
        self.policy = policy
        self.window_start = policy.window_start
        self.window_end = policy.window_end
        self._rng = rng
        self.step = policy.dense_step
        self._backoff = self.step  # grows only after the window

    def _jittered(self, seconds: float) -> float:
        j = self.policy.jitter
        return seconds * self._rng.uniform(1 - j, 1 + j)

    def next_delay(self, elapsed: float, retry_after: float | None = None) -> float:
        """The pause before the next poll, `elapsed` seconds into the wait (always > 0).

        ``retry_after`` (a server's Retry-After) is a floor and wins over everything, even the
        rule of not sleeping past the window start: the server asked us to wait.
        """
        p = self.policy
        elapsed = max(0.0, elapsed)
        if elapsed < self.window_start:
            # Clipped to the window start (> 0 here), so the first dense poll is never late.
            delay = min(self._jittered(p.sparse_seconds), self.window_start - elapsed)
        elif elapsed < self.window_end:
            delay = self._jittered(self.step)
        else:
            self._backoff = min(max(p.fallback.max_seconds, self.step), self._backoff * p.fallback.growth)
            delay = self._jittered(self._backoff)
        return max(delay, retry_after or 0.0)


def scale_policy(policy: P, factor: float) -> P:
    """The same policy with every time parameter (and a learned window) multiplied by ``factor``.

    For benchmarks and demos that run the provider's minutes as seconds (a sandbox with
    ``processing_seconds`` scaled down): the schedule's shape is unchanged, only its clock.
    """
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    if isinstance(policy, PollPolicy):
        return policy.model_copy(
            update={
                "initial_seconds": policy.initial_seconds * factor,
                "fast_phase_seconds": policy.fast_phase_seconds * factor,
                "max_seconds": policy.max_seconds * factor,
            }
        )
    update: dict[str, object] = {
        "fallback": scale_policy(policy.fallback, factor),
        "sparse_seconds": policy.sparse_seconds * factor,
        "dense_seconds": policy.dense_seconds * factor,
        "min_dense_seconds": policy.min_dense_seconds * factor,
    }
    if policy.window_start is not None and policy.window_end is not None:
        update.update(window_start=policy.window_start * factor, window_end=policy.window_end * factor)
    return policy.model_copy(update=update)

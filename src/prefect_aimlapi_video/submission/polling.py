"""When to ask again: the polling schedule of `wait_for_generation`.

Polling is free but not instant, so the schedule is a trade: every second while a result could
plausibly be ready soon (the provider's sample took 11.4 s), then backing off by `growth` per
poll to `max_seconds` (its docs quote ~2.5 min for this model). Jitter keeps a batch of waiters
from polling in lockstep.
"""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field

# How long a flow waits for a generation by default (the provider quotes ~2.5 min of processing;
# queueing comes on top).
DEFAULT_TIMEOUT_SECONDS = 20 * 60.0
# How long a POST with an unclear outcome must stay absent from the usage log (and its record
# unrefreshed by a live sender) before it is sent again (see `submission.protocol`). The provider
# records charges for video when a generation completes and may list the request only then; this
# is how long the flow waits for a generation by default, so one that would finish in that time
# shows up first.
DEFAULT_RECONCILE_SECONDS = DEFAULT_TIMEOUT_SECONDS


class PollPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field from a deployment is refused, not ignored

    initial_seconds: float = Field(default=1.0, gt=0)
    fast_phase_seconds: float = Field(default=12.0, ge=0, description="poll at initial_seconds this long")
    growth: float = Field(default=1.3, ge=1.0)
    max_seconds: float = Field(default=10.0, gt=0)
    jitter: float = Field(default=0.1, ge=0, lt=1, description="+/- fraction applied to each delay")

    def schedule(self, rng: random.Random | None = None) -> PollSchedule:
        return PollSchedule(self, rng or random.Random())


class PollSchedule:
    """Stateful iterator of delays for one generation's wait."""

    def __init__(self, policy: PollPolicy, rng: random.Random) -> None:
        self.policy = policy
        self._rng = rng
        self._base = policy.initial_seconds

    def next_delay(self, elapsed: float, retry_after: float | None = None) -> float:
        """The pause before the next poll, `elapsed` seconds into the wait."""
        p = self.policy
        if elapsed >= p.fast_phase_seconds:
            self._base = min(p.max_seconds, self._base * p.growth)
        delay = self._base * self._rng.uniform(1 - p.jitter, 1 + p.jitter)
        return max(delay, retry_after or 0.0)

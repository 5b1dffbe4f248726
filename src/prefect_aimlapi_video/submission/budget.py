"""A spend cap that holds across runs, batches and workers: a budget kept beside the submission records.

A budget is one record (`budget-<name>`) in the record store, so it is as shared as the records
are (every worker, with an `s3://` store). It holds what its generations were charged (`spent`) and
what each one in flight may still cost (`reserved`). Before a POST, a reservation is added by
compare-and-swap only if spent + reserved + this generation's estimate stays within the cap;
otherwise the generation is not sent (`BudgetExceeded`). The estimate is this input's own
(`submission.estimate`: its seconds times the rate this account was charged); without one, the largest
quote (a POST's `credits_used`) this budget has seen, or the provider's sample quote of 315,000
credits (a 5 s clip) before any. A POST's quote is a hold, not this input's price, so it does not
change a reservation. A reservation becomes the charge when the generation completes, and is
released if it fails (failed generations are not charged) or was never sent. An unclear outcome
keeps its reservation: it may be charged. The risk: an estimate below what the provider then
charges lets the generations in flight together pass the cap by the difference (the learned rate
closes it after the first completions).

One budget is shared by a whole batch or work pool, so its record is contended: a lost
compare-and-swap backs off with jitter and tries again until `CONTENTION_DEADLINE_SECONDS`.
Contention never fails a paid generation: after the POST, the callers log a budget update that
could not be made and carry on (the reservation then stays, so the cap errs on the safe side).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable

from pydantic import BaseModel, Field

from prefect_aimlapi_video.api.errors import BudgetExceeded, TransientApiError
from prefect_aimlapi_video.api.models import CREDITS_PER_USD
from prefect_aimlapi_video.storage.record_store import RecordStore

DEFAULT_ESTIMATE_CREDITS = 315_000  # the provider's sample quote (~$0.16 for a 5 s clip)
CONTENTION_DEADLINE_SECONDS = 120.0
_FIRST_PAUSE_SECONDS, _MAX_PAUSE_SECONDS = 0.02, 2.0


class BudgetState(BaseModel):
    """What a budget holds; credits throughout (2,000,000 credits = $1)."""

    spent: float = 0.0
    reserved: dict[str, float] = Field(default_factory=dict)  # record key -> what it may still cost
    largest_quote: float | None = None

    @property
    def committed(self) -> float:
        return self.spent + sum(self.reserved.values())

    def estimate(self) -> float:
        return self.largest_quote or DEFAULT_ESTIMATE_CREDITS


def credits_cap(max_usd: float | None, max_credits: float | None) -> float | None:
    """The tighter of the two caps, in credits; None when neither is set."""
    caps = [c for c in (max_credits, None if max_usd is None else max_usd * CREDITS_PER_USD) if c is not None]
    return min(caps) if caps else None


class BudgetRef(BaseModel):
    """A budget as plain values a task can take: its name and its cap (credits; None: only count)."""

    name: str
    cap_credits: float | None = None

    def open(self, store: RecordStore) -> Budget:
        return Budget(store, self.name, self.cap_credits)


class Budget:
    """One named budget in a record store, updated only by compare-and-swap."""

    def __init__(self, store: RecordStore, name: str, cap_credits: float | None) -> None:
        self.store, self.name, self.cap = store, name, cap_credits
        self.key = f"budget-{name}"

    async def state(self) -> BudgetState:
        found = await self.store.read(self.key)
        return BudgetState() if found is None else BudgetState.model_validate_json(found[0])

    async def _change(self, change) -> BudgetState:  # change(state) -> new state (may raise)
        deadline = time.monotonic() + CONTENTION_DEADLINE_SECONDS
        pause = _FIRST_PAUSE_SECONDS
        while True:
            found = await self.store.read(self.key)
            current = BudgetState() if found is None else BudgetState.model_validate_json(found[0])
            wanted = change(current.model_copy(deep=True))
            data = wanted.model_dump_json().encode()
            written = await (self.store.create(self.key, data) if found is None
                             else self.store.replace(self.key, data, found[1]))
            if written is not None:
                return wanted
            if time.monotonic() + pause > deadline:
                raise TransientApiError(
                    f"Budget {self.name!r}: still contended after {CONTENTION_DEADLINE_SECONDS:.0f} s of retries."
                )
            await asyncio.sleep(random.uniform(0, pause))  # full jitter: contenders spread out
            pause = min(pause * 2, _MAX_PAUSE_SECONDS)

    async def reserve(self, record_key: str, expected: float | None = None) -> float:
        """Reserve this generation's cost (`expected`: its own estimate, else the largest quote seen), or
        raise `BudgetExceeded` (then nothing may be sent)."""
        estimate = 0.0

        def add(state: BudgetState) -> BudgetState:
            nonlocal estimate
            estimate = expected if expected is not None else state.estimate()
            state.reserved.pop(record_key, None)
            if self.cap is not None and state.committed + estimate > self.cap:
                raise BudgetExceeded(
                    f"Not sent: budget {self.name!r} has {state.spent:,.0f} credits spent and "
                    f"{sum(state.reserved.values()):,.0f} in flight; this generation (about {estimate:,.0f}) could "
                    f"pass its cap of {self.cap:,.0f} credits (${self.cap / CREDITS_PER_USD:.2f}). Nothing was charged.",
                    spent=state.spent, reserved=sum(state.reserved.values()), estimate=estimate, cap=self.cap,
                )
            state.reserved[record_key] = estimate
            return state

        await self._change(add)
        return estimate

    async def quoted(self, credits: float | None) -> None:
        """The provider quoted a generation (its POST answer): the estimate for one without its own."""
        if credits is None or credits <= ((await self.state()).largest_quote or 0.0):
            return  # nothing new: no write to contend for

        def quote(state: BudgetState) -> BudgetState:
            state.largest_quote = max(state.largest_quote or 0.0, credits)
            return state

        await self._change(quote)

    async def quietly(self, update: Awaitable[None], logger: logging.Logger | logging.LoggerAdapter, what: str) -> None:
        """Run a budget update after a POST was accepted: whatever goes wrong is logged, never raised (a
        paid generation never fails for its budget; a reservation left standing only makes the cap stricter)."""
        try:
            await update
        except Exception as exc:
            logger.warning("Budget %r could not %s (%s).", self.name, what, exc)

    async def settle(self, record_key: str, credits: float | None) -> None:
        """The generation completed and was charged `credits` (its reservation, when the answer says none).

        Only a generation this budget reserved is counted, and once: the reservation goes as the
        charge comes, so a second run resuming the same generation adds nothing.
        """
        def charge(state: BudgetState) -> BudgetState:
            held = state.reserved.pop(record_key, None)
            if held is not None:
                state.spent += credits if credits is not None else held
            return state

        await self._change(charge)

    async def release(self, record_key: str) -> None:
        """Nothing was sent, or the generation failed (not charged): give its reservation back."""
        def give_back(state: BudgetState) -> BudgetState:
            state.reserved.pop(record_key, None)
            return state

        await self._change(give_back)


def budget_summary(state: BudgetState, cap: float | None) -> str:
    cap_text = "no cap" if cap is None else f"cap {cap:,.0f} credits (${cap / CREDITS_PER_USD:.2f})"
    return (f"spent {state.spent:,.0f} credits (${state.spent / CREDITS_PER_USD:.2f}), "
            f"{sum(state.reserved.values()):,.0f} in flight, {cap_text}")


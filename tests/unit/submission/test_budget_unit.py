"""submission.budget: a spend cap kept by compare-and-swap beside the records, never passed by racing reservers."""

from __future__ import annotations

import asyncio
import threading

import pytest

from prefect_aimlapi_video.api.errors import BudgetExceeded
from prefect_aimlapi_video.storage.record_store import LocalRecordStore
from prefect_aimlapi_video.submission.budget import (
    DEFAULT_ESTIMATE_CREDITS,
    Budget,
    budget_summary,
    credits_cap,
)


def test_the_tighter_cap_wins_in_credits():
    assert credits_cap(None, None) is None
    assert credits_cap(1.0, None) == 2_000_000
    assert credits_cap(1.0, 500_000) == 500_000 and credits_cap(0.1, 500_000) == 200_000


async def test_reserve_quote_settle_release(tmp_path):
    budget = Budget(LocalRecordStore(tmp_path), "b", cap_credits=2.5 * DEFAULT_ESTIMATE_CREDITS)
    assert await budget.reserve("g1") == DEFAULT_ESTIMATE_CREDITS
    assert await budget.reserve("g2") == DEFAULT_ESTIMATE_CREDITS
    with pytest.raises(BudgetExceeded) as refused:
        await budget.reserve("g3")
    assert "Nothing was charged" in str(refused.value) and refused.value.cap == 2.5 * DEFAULT_ESTIMATE_CREDITS
    assert set((await budget.state()).reserved) == {"g1", "g2"}  # the refusal wrote nothing

    await budget.quoted(400_000)  # a POST's quote is a hold: it teaches the estimate, changes no reservation
    state = await budget.state()
    assert state.reserved["g1"] == DEFAULT_ESTIMATE_CREDITS and state.largest_quote == 400_000
    await budget.settle("g1", 40_000)  # charged at completion
    await budget.settle("g1", 40_000)  # a second run resuming the same generation adds nothing
    await budget.release("g2")  # failed at the provider: not charged
    state = await budget.state()
    assert (state.spent, state.reserved) == (40_000, {})
    assert await budget.reserve("g3") == 400_000  # without its own estimate: the largest quote seen
    assert await budget.reserve("g4", 20_000) == 20_000  # with one (this input's), that
    assert "spent 40,000 credits ($0.02), 420,000 in flight" in budget_summary(await budget.state(), budget.cap)


async def test_racing_reservations_never_pass_the_cap(tmp_path):
    """Ten reservers, each a thread with its own event loop and store instance (as workers are);
    the cap admits three."""
    cap = 3.5 * DEFAULT_ESTIMATE_CREDITS
    start, outcomes = threading.Barrier(10), []

    def reserve(index: int) -> None:
        async def run() -> str:
            start.wait()
            try:
                await Budget(LocalRecordStore(tmp_path), "shared", cap).reserve(f"g{index}")
                return "reserved"
            except BudgetExceeded:
                return "refused"
        outcomes.append(asyncio.run(run()))

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["refused"] * 7 + ["reserved"] * 3
    state = await Budget(LocalRecordStore(tmp_path), "shared", cap).state()
    assert len(state.reserved) == 3 and state.committed <= cap


def test_twenty_generations_reserving_and_settling_one_budget_at_once_all_succeed(tmp_path):
    """Twenty workers (threads, each with its own event loop and store instance) reserve, take the
    quote and settle one budget at the same moment: contention backs off and retries, so none fails,
    and the budget ends with every charge counted once and nothing left in flight."""
    start, outcomes = threading.Barrier(20), []

    def generation(index: int) -> None:
        async def run() -> str:
            budget = Budget(LocalRecordStore(tmp_path), "shared", 25 * DEFAULT_ESTIMATE_CREDITS)
            start.wait()
            await budget.reserve(f"g{index}")
            await budget.quoted(300_000 + index)
            await budget.settle(f"g{index}", 1000 + index)
            return "settled"
        try:
            outcomes.append(asyncio.run(run()))
        except Exception as exc:  # surfaced below
            outcomes.append(repr(exc))

    threads = [threading.Thread(target=generation, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert outcomes == ["settled"] * 20
    state = asyncio.run(Budget(LocalRecordStore(tmp_path), "shared", None).state())
    assert state.spent == sum(1000 + i for i in range(20)) and state.reserved == {}


async def test_contention_past_the_deadline_is_a_retryable_error_not_a_crash(tmp_path, monkeypatch):
    from prefect_aimlapi_video.api.errors import TransientApiError
    from prefect_aimlapi_video.submission import budget as budget_module

    monkeypatch.setattr(budget_module, "CONTENTION_DEADLINE_SECONDS", 0.3)
    store = LocalRecordStore(tmp_path)
    budget = Budget(store, "b", None)
    await budget.reserve("g0")

    async def always_loses(key, data, version):
        return None

    monkeypatch.setattr(store, "replace", always_loses)
    with pytest.raises(TransientApiError, match="still contended") as caught:
        await budget.reserve("g1")
    assert caught.value.retryable

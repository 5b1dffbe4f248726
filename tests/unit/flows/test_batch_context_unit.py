"""prefect_aimlapi_video.flows.batch_context, and the batch's use of it: which keys a child owns.

A key the batch made for one child in its first run needs no usage-log read before its first POST
(no other run can hold it); an item's own key, or any key of a retried batch, may be shared and is
read for. The batch's children are replaced by a recorder of what each saw (one function under
test: `_run_here`); the run count comes from Prefect's own runtime override.
"""

from __future__ import annotations

import asyncio

import pytest
from prefect.states import Completed

from prefect_aimlapi_video.api.models import VideoToVideoResult
from prefect_aimlapi_video.api.requests import DEFAULT_MODEL
from prefect_aimlapi_video.flows import batch as batch_module
from prefect_aimlapi_video.flows.batch_context import (
    batch_children,
    defer,
    finish_deferred,
    in_batch,
    owned_key,
    owns_key,
)
from prefect_aimlapi_video.flows.batch_items import ItemBase


def test_a_key_is_owned_only_inside_its_claim_and_only_that_key():
    assert not owns_key("batch:x:item-0")
    with owned_key("batch:x:item-0"):
        assert owns_key("batch:x:item-0") and not owns_key("batch:x:item-1")
    assert not owns_key("batch:x:item-0")


def test_claims_of_concurrent_children_do_not_leak_into_each_other():
    async def child(key: str, other: str) -> tuple[bool, bool]:
        with owned_key(key):
            await asyncio.sleep(0.01)  # the other child claims its key meanwhile
            return owns_key(key), owns_key(other)

    async def both() -> list[tuple[bool, bool]]:
        return await asyncio.gather(child("k-0", "k-1"), child("k-1", "k-0"))

    assert asyncio.run(both()) == [(True, False), (True, False)]


def test_batch_children_flag_is_set_only_inside():
    assert not in_batch()
    with batch_children():
        assert in_batch()
    assert not in_batch()


def test_the_batch_client_is_the_one_the_batch_gave_its_children_and_none_elsewhere():
    from prefect_aimlapi_video.flows.batch_context import batch_client

    client = object()  # opaque here: the batch opens a Prefect client of its own for its summaries
    assert batch_client() is None
    with batch_children(client):
        assert batch_client() is client
    assert batch_client() is None


def test_outside_a_batch_deferred_work_is_done_before_defer_returns():
    done: list[str] = []

    async def work() -> None:
        await asyncio.sleep(0.01)
        done.append("summary")

    async def run() -> list[str]:
        await defer(work())
        return list(done)

    assert asyncio.run(run()) == ["summary"]


def test_in_a_batch_a_child_does_not_wait_for_its_deferred_work_and_the_batch_does():
    done: list[tuple[str, bool]] = []

    async def run() -> tuple[list, list, int]:
        gate = asyncio.Event()  # made inside the loop that waits on it

        async def work(key: str) -> None:
            await gate.wait()
            done.append((key, owns_key(key)))  # the child's context travels with its work

        async def child(key: str) -> None:
            with owned_key(key):
                await defer(work(key))

        with batch_children() as deferred:
            await asyncio.gather(child("k-0"), child("k-1"))
            before = list(done)  # both children have returned; their work waits on the gate
            gate.set()
            failed = await finish_deferred(deferred)
        return before, sorted(done), failed

    before, after, failed = asyncio.run(run())
    assert before == [] and after == [("k-0", True), ("k-1", True)] and failed == 0


def test_a_batch_runs_at_most_a_few_deferred_works_at_once_and_finishes_them_all():
    """Hundreds of summaries sent at once would crowd out, in the Prefect client's 16 connections,
    the requests that start and finish the other children."""
    from prefect_aimlapi_video.flows.batch_context import DEFERRED_AT_ONCE

    total = 5 * DEFERRED_AT_ONCE
    running, most, finished = 0, 0, []

    async def work(index: int) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.005)
        running -= 1
        finished.append(index)

    async def run() -> int:
        with batch_children() as deferred:
            for index in range(total):
                await defer(work(index))  # returns at once: the child does not wait its turn
            assert finished == []
            return await finish_deferred(deferred)

    assert asyncio.run(run()) == 0
    assert most == DEFERRED_AT_ONCE and sorted(finished) == list(range(total))


def test_a_failed_deferred_work_is_counted_and_logged_not_raised(caplog):
    async def broken() -> None:
        raise RuntimeError("server said 500")

    async def run() -> int:
        with batch_children() as deferred:
            await defer(broken())
            return await finish_deferred(deferred)

    assert asyncio.run(run()) == 1
    assert "server said 500" in caplog.text


@pytest.fixture
def seen(monkeypatch) -> list[tuple[str, bool]]:
    """What each child saw: its key, and whether it owns it."""
    calls: list[tuple[str, bool]] = []

    async def child(**arguments):
        key = arguments["idempotency_key"]
        calls.append((key, owns_key(key)))
        return Completed(data=VideoToVideoResult(status="completed", model=DEFAULT_MODEL, prompt="p", input="v"))

    monkeypatch.setattr(batch_module, "video_to_video", child)
    return calls


def _run(items: list[ItemBase], *, scope: str = "batch:parent", scope_owned: bool = True) -> None:
    asyncio.run(batch_module._run_here(items, {"prompt": "p"}, scope=scope, scope_owned=scope_owned, limit=None,
                                       max_concurrency=4, on_done=lambda row: None))


def test_first_run_children_own_the_keys_the_batch_made_but_not_an_items_own(seen, monkeypatch):
    monkeypatch.setenv("PREFECT__RUNTIME__FLOW_RUN__RUN_COUNT", "1")
    _run([ItemBase(video="a.mp4"), ItemBase(video="b.mp4", idempotency_key="shared-by-a-trigger")])
    assert sorted(seen) == [("batch:parent:item-0", True), ("shared-by-a-trigger", False)]


def test_a_retried_batch_claims_no_key(seen, monkeypatch):
    monkeypatch.setenv("PREFECT__RUNTIME__FLOW_RUN__RUN_COUNT", "2")
    _run([ItemBase(video="a.mp4"), ItemBase(video="b.mp4")])
    assert sorted(seen) == [("batch:parent:item-0", False), ("batch:parent:item-1", False)]


def test_outside_a_flow_run_no_key_is_claimed(seen, monkeypatch):
    monkeypatch.setenv("PREFECT__RUNTIME__FLOW_RUN__RUN_COUNT", "0")
    _run([ItemBase(video="a.mp4")])
    assert seen == [("batch:parent:item-0", False)]


def test_a_scope_other_runs_share_is_never_claimed(seen, monkeypatch):
    """The sweep's scope ("folder") is the same in every sweep: its keys are not any one run's."""
    monkeypatch.setenv("PREFECT__RUNTIME__FLOW_RUN__RUN_COUNT", "1")
    _run([ItemBase(video="a.mp4")], scope="folder", scope_owned=False)
    assert seen == [("folder:item-0", False)]

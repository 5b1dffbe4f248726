"""What an in-process batch tells its children through context variables: nothing is sent anywhere.

* `in_batch()`: the child skips its progress and output-link artifacts; the batch's progress artifact
  and table carry both, and each would be requests and events the Prefect server must absorb while
  every child finishes at once. Summaries stay.
* `defer(work)`: a child's summary artifact is created alongside, not before, the end of its run;
  the batch waits for all of them (`finish_deferred`) before it reports. A child otherwise waits
  out one more Prefect API round trip just when every child is finishing and the server is at its
  busiest (seconds each in a batch of 100: `benchmarks/README.md`), and the batch waits for the slowest.
  The batch sends them through a Prefect client of its own (`batch_client()`), at most
  `DEFERRED_AT_ONCE` at a time: each summary carries its strip (tens of KB of base64 out, the same
  back), and sent through the client the children share they queued in its 16 connections ahead of
  the requests that start and finish the other children (or, held back to a few at a time there,
  piled up for the batch's end).
* `child_outcome()` / `keep_outcome(...)`: what a child knew at its end (its result, or the failure it
  raised, with any paid generation's id and collect command), kept for the batch in case Prefect
  cannot hand the child's final state back: with the Prefect API failing (a database restart), the
  state change that ends the child raises instead, and the batch's table would lose the generation.
* `owns_key(key)`: this child run alone ever uses its idempotency key. The batch makes each item's key
  from its own flow run id and the item's index; in the batch's first run no other run can hold that
  key (the sweep's scope is the same in every sweep, so it claims nothing), so the child's first
  attempt is provably the first of its generation and, like a flow run's own scope, needs no
  usage-log read before its POST. A retried batch (run count above 1) may meet
  what its earlier run sent, so it claims nothing and its children read the log. Without this every
  child of a batch scans the log (24 h back) before paying: slow on a busy account, and failing
  closed once the account lists more rows than a scan may read.

The context variables are private and read through functions: task and flow functions are pickled by value when a
flow is served, with the globals they name, and a ContextVar cannot be pickled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterator
from contextvars import ContextVar
from typing import Any

_IN_BATCH: ContextVar[bool] = ContextVar("aimlapi_in_batch", default=False)
_OWNED_KEY: ContextVar[str | None] = ContextVar("aimlapi_owned_key", default=None)
_DEFERRED: ContextVar[DeferredWork | None] = ContextVar("aimlapi_deferred", default=None)
_OUTCOME: ContextVar[ChildOutcome | None] = ContextVar("aimlapi_child_outcome", default=None)
DEFERRED_AT_ONCE = 16  # the connections of the batch's own client (as many as Prefect's shared one)
logger = logging.getLogger(__name__)


def in_batch() -> bool:
    """Whether this code runs as a child of an in-process batch."""
    return _IN_BATCH.get()


class DeferredWork:
    """One batch's deferred work, in flight at most `DEFERRED_AT_ONCE` at a time, and the Prefect
    client it is sent with (opaque here: this module sends nothing itself)."""

    def __init__(self, client: Any = None) -> None:
        self.client = client
        self.futures: list[asyncio.Future[Any]] = []
        self._turns = asyncio.Semaphore(DEFERRED_AT_ONCE)

    def start(self, work: Coroutine[Any, Any, Any]) -> None:
        async def in_turn() -> Any:
            async with self._turns:
                return await work

        self.futures.append(asyncio.ensure_future(in_turn()))


@contextlib.contextmanager
def batch_children(client: Any = None) -> Iterator[DeferredWork]:
    """Around an in-process batch's children: they skip their progress and output-link artifacts,
    and defer their summaries to what this yields (give it to `finish_deferred`), to be sent with
    `client` (a Prefect client the batch opened for them; None: Prefect's usual one)."""
    deferred = DeferredWork(client)
    tokens = _IN_BATCH.set(True), _DEFERRED.set(deferred)
    try:
        yield deferred
    finally:
        _DEFERRED.reset(tokens[1])
        _IN_BATCH.reset(tokens[0])


def batch_client() -> Any:
    """The Prefect client an in-process batch opened for its children's deferred artifacts, or None."""
    deferred = _DEFERRED.get()
    return deferred.client if deferred is not None else None


async def defer(work: Coroutine[Any, Any, Any]) -> None:
    """Await `work` now; in an in-process batch's child, start it and let the batch wait for it.

    A task copies the context it is started in, so what it creates (an artifact) is still the
    child's. `work` is a coroutine, not yet started: in a batch it waits for its turn.
    """
    deferred = _DEFERRED.get()
    if deferred is None:
        await work
    else:
        deferred.start(work)


async def finish_deferred(deferred: DeferredWork) -> int:
    """Wait for the children's deferred work; a failure is logged, not raised (the generations it
    describes are done and stored). Returns how many failed."""
    failed = 0
    for outcome in await asyncio.gather(*deferred.futures, return_exceptions=True):
        if isinstance(outcome, BaseException):
            failed += 1
            logger.warning("A child's summary was not published: %s: %s", type(outcome).__name__, outcome)
    return failed


def owns_key(key: str) -> bool:
    """Whether the batch running this child vouched that no other run uses `key`."""
    return _OWNED_KEY.get() == key


@contextlib.contextmanager
def owned_key(key: str) -> Iterator[None]:
    """Around one child of a batch's first run, whose key the batch made for it alone."""
    token = _OWNED_KEY.set(key)
    try:
        yield
    finally:
        _OWNED_KEY.reset(token)


class ChildOutcome:
    """What one child of an in-process batch knew at its end: its result, or the failure it raised."""

    def __init__(self) -> None:
        self.result: Any = None
        self.failure: BaseException | None = None


@contextlib.contextmanager
def child_outcome() -> Iterator[ChildOutcome]:
    """Around one child of an in-process batch: what it keeps (`keep_outcome`) lands in what this yields."""
    outcome = ChildOutcome()
    token = _OUTCOME.set(outcome)
    try:
        yield outcome
    finally:
        _OUTCOME.reset(token)


def keep_outcome(*, result: Any = None, failure: BaseException | None = None) -> None:
    """A child's end, kept for the batch running it (nothing outside a batch)."""
    outcome = _OUTCOME.get()
    if outcome is not None:
        outcome.result, outcome.failure = result, failure

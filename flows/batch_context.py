"""What an in-process batch tells its children through context variables: nothing is sent anywhere.

* `in_batch()`: the child skips its progress and output-link artifacts; the batch's progress artifact
  and table carry both, and each would be requests and events the Prefect server must absorb while
  every child finishes at once. Summaries stay.
* `owns_key(key)`: this child run alone ever uses its idempotency key. The batch makes each item's key
  from its own flow run id and the item's index; in the batch's first run no other run can hold that
  key (the sweep's scope is the same in every sweep, so it claims nothing), so the child's first attempt is provably the first of its generation and, like a flow run's
  own scope, needs no usage-log read before its POST. A retried batch (run count above 1) may meet
  what its earlier run sent, so it claims nothing and its children read the log. Without this every
  child of a batch scans the log (24 h back) before paying: slow on a busy account, and failing
  closed once the account lists more rows than a scan may read.

Both are private and read through functions: task and flow functions are pickled by value when a
flow is served, with the globals they name, and a ContextVar cannot be pickled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

_IN_BATCH: ContextVar[bool] = ContextVar("aimlapi_in_batch", default=False)
_OWNED_KEY: ContextVar[str | None] = ContextVar("aimlapi_owned_key", default=None)


def in_batch() -> bool:
    """Whether this code runs as a child of an in-process batch."""
    return _IN_BATCH.get()


@contextlib.contextmanager
def batch_children() -> Iterator[None]:
    """Around an in-process batch's children: they skip their progress and output-link artifacts."""
    token = _IN_BATCH.set(True)
    try:
        yield
    finally:
        _IN_BATCH.reset(token)


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

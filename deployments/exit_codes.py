"""The command line's one exit-code rule: what a failure's exit code says about money.

    0    done
    2    refused before anything was sent to the provider: nothing was charged, fix it and run again
    1    failed after a generation request was sent, or may have been (the message names the
         generation and the command that collects it, when there is one)
    130  interrupted (Ctrl-C), 143 stopped (SIGTERM): the same command resumes without a new charge

"Nothing was sent" is decided from what is certain, never guessed: when in doubt the answer is 1.
A failure counts as refused before sending only if it names no generation, no client request and
nothing in its chain of causes had an unknown outcome, and it is either one of the errors raised
before any POST by construction (`InvalidInputError`: our own checks, a missing block, an output
that cannot be written; `BudgetExceeded`: the spend cap, checked before the POST), or an error
raised by the free access check itself (`AimlApiClient.check_access`, found in its traceback): a
key refused there was refused before anything was sent. The same 401 from a POST, a poll or a
usage-log read (which may follow a POST whose outcome is unknown) stays 1.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

from prefect_aimlapi_video.api.client import AimlApiClient
from prefect_aimlapi_video.api.errors import (
    BudgetExceeded,
    GenerationNotRecorded,
    InvalidInputError,
    ReconciliationUnavailable,
    SubmissionOutcomeUnknown,
    UnidentifiedGenerationError,
)

DONE, AFTER_SENDING, NOTHING_SENT, INTERRUPTED, TERMINATED = 0, 1, 2, 130, 143

# Raised only before any POST (their contract in api/errors.py).
_BEFORE_ANY_POST = (InvalidInputError, BudgetExceeded)
# A POST was accepted, or may have been: never "nothing sent", wherever they sit in a chain of causes.
_MAYBE_SENT = (SubmissionOutcomeUnknown, UnidentifiedGenerationError, ReconciliationUnavailable, GenerationNotRecorded)
_ACCESS_CHECK = AimlApiClient.check_access.__code__


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and the ones it was raised from or while handling (each once)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _names_a_request(exc: BaseException) -> bool:
    return any(getattr(exc, name, None) for name in ("generation_id", "collect_command", "client_request_id"))


def raised_by_access_check(exc: BaseException) -> bool:
    """The free access check (`AimlApiClient.check_access`, one GET that cannot cost anything) raised it."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is _ACCESS_CHECK:
            return True
        tb = tb.tb_next
    return False


def nothing_sent(exc: BaseException) -> bool:
    """Certainly failed before any generation request was sent to the provider."""
    if any(isinstance(e, _MAYBE_SENT) or _names_a_request(e) for e in _chain(exc)):
        return False
    return isinstance(exc, _BEFORE_ANY_POST) or raised_by_access_check(exc)


def exit_code(exc: BaseException) -> int:
    """The exit code of a command that ended with `exc`."""
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    return NOTHING_SENT if nothing_sent(exc) else AFTER_SENDING


def stopped_code(signum: int) -> int:
    """The exit code of a command stopped by a signal: 130 for SIGINT (Ctrl-C), 143 for SIGTERM."""
    return TERMINATED if signum == signal.SIGTERM else INTERRUPTED

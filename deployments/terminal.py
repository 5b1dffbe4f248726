"""The command line's terminal manners: one `error: ...` line per failure, last; no tracebacks.

Prefect logs a failed run's traceback to the console and ships its queued logs and events at exit;
these helpers let those lines come first, keep the traceback in the flow run's log only, and end
with the one line a person (or a script reading the exit code) needs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn


def flush_prefect() -> None:
    """Let Prefect ship its queued events and logs now, so its exit-time warnings come before our
    last line rather than after it."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (EventsWorker, APILogWorker):
        worker.drain_all(timeout=5)
    stop_temporary_servers()  # a temporary server would say goodbye after our last line


def stop_temporary_servers() -> None:
    """Stop the temporary Prefect server(s) this process started, if any (at most 5 s each)."""
    if "prefect.server.api.server" in sys.modules:
        from prefect.server.api.server import SubprocessASGIServer

        for server in list(SubprocessASGIServer._instances.values()):
            server.stop()


TEMPORARY_SERVER_NOTE = (
    "note: no PREFECT_API_URL is set, so this starts a temporary Prefect server (15 s or more, every time). "
    "To skip that: run `prefect server start` in another terminal, then "
    "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`."
)


def note_temporary_server() -> bool:
    """Say (one line, stderr) that a temporary Prefect server is about to start, and how to keep one
    running instead. Prefect starts one when no API URL is configured (environment or profile)."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return False
    print(TEMPORARY_SERVER_NOTE, file=sys.stderr, flush=True)
    return True


def _one_error_line(message: str) -> str:
    """`message` as the one `error: ...` line a failure ends with."""
    return "error: " + " ".join(str(message).split())


def fail(message: str, code: int) -> int:
    flush_prefect()
    print(_one_error_line(message), file=sys.stderr, flush=True)
    return code


def exit_now(message: str, code: int) -> NoReturn:
    """End the process at once with `message` as its one error line: stop a temporary Prefect server
    this process started (it would outlive us), and skip Prefect's exit-time shipping of logs and
    events, which retries against a server that may be gone. What matters for money is in the record."""
    stop_temporary_servers()
    sys.stdout.flush()
    print(_one_error_line(message), file=sys.stderr, flush=True)
    os._exit(code)


class OneLineErrors(argparse.ArgumentParser):
    """Argument errors end like every other failure: one `error: ...` line, exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise SystemExit(fail(f"{message} (see {self.prog} --help)", 2))


class WithoutTracebacks(logging.Formatter):
    """Formats a record as the wrapped formatter would, minus its traceback: the terminal gets one
    line per error, while the flow run's log (formatted by Prefect's API handler) keeps the details."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def quiet_console() -> None:
    """Keep Prefect's console lines but not its tracebacks (the run's log on the server keeps them)."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, WithoutTracebacks):
            handler.setFormatter(WithoutTracebacks(handler.formatter or logging.Formatter()))

"""Run a flow from the command line so that SIGINT and SIGTERM stop it within seconds.

`timeout`, `docker stop` and Kubernetes stop a process with SIGTERM (`timeout` signals its whole
process group, so a temporary Prefect server the CLI started goes too). A flow run on the main
thread meets that signal through Prefect's own handler: a `TerminationSignal` traceback, then
minutes of retries reporting the crash to a server that may be gone. So the CLI runs the flow on a
worker thread (Prefect installs no signal handler off the main thread) and keeps the main thread
for the signals: on SIGINT or SIGTERM it cancels the flow, gives it `GRACE_SECONDS` to record its
state, and hands the signal back to the caller as `Stopped`, who says so in one line and ends the
process (`terminal.exit_now`) without waiting for Prefect's exit-time shipping of logs.

Money: stopping at any point is as safe as a crash (submission.protocol): a generation accepted
before the stop is in its record, and the same command resumes it without a new charge.
"""

from __future__ import annotations

import asyncio
import contextvars
import signal
import threading
from collections.abc import Coroutine
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")
# How long a cancelled flow may take to record its state (the server, the record store) before the
# process ends; with a temporary server's stop (at most 5 s) the whole stop stays within 10 s.
GRACE_SECONDS = 3.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(Exception):
    """SIGINT or SIGTERM arrived while the flow ran; the flow was cancelled."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


def run_until_stopped(flow_run: Coroutine[Any, Any, T]) -> T:
    """Await `flow_run` on a worker thread (with this thread's context: Prefect's settings) and
    return its result or raise its error; raise `Stopped` if a signal came first."""
    started, finished = threading.Event(), threading.Event()
    loop_and_task: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]] = []
    outcome: dict[str, Any] = {}

    async def main() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop_and_task.append((asyncio.get_running_loop(), task))
        started.set()
        return await flow_run

    def work() -> None:
        try:
            outcome["result"] = asyncio.run(main())
        except BaseException as exc:  # handed to the main thread as it is
            outcome["error"] = exc
        finally:
            started.set()
            finished.set()

    context = contextvars.copy_context()
    worker = threading.Thread(target=context.run, args=(work,), name="aimlapi-video-flow", daemon=True)
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in SIGNALS}
    try:
        worker.start()
        # Waiting on an Event, not Thread.join: a join that a signal handler's exception interrupts
        # may later return before the thread has ended (seen on 3.11).
        while not finished.wait(0.2):
            pass
    except Stopped:
        for sig in SIGNALS:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        started.wait(GRACE_SECONDS)
        for loop, task in loop_and_task:
            loop.call_soon_threadsafe(task.cancel)
        finished.wait(GRACE_SECONDS)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]

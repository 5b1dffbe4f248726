"""`run_until_stopped`: the flow's coroutine runs on a worker thread with the caller's context; its
result and its error come back as they are; SIGTERM or SIGINT to this process cancels it and raises
`Stopped` at once instead of waiting for it."""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import threading
import time

import pytest

from prefect_aimlapi_video.deployments.exit_codes import stopped_code
from prefect_aimlapi_video.deployments.stopping import GRACE_SECONDS, Stopped, run_until_stopped

setting: contextvars.ContextVar[str] = contextvars.ContextVar("setting", default="unset")


def test_result_error_and_context_come_back_as_they_are() -> None:
    async def read_setting() -> tuple[str, bool]:
        return setting.get(), threading.current_thread() is threading.main_thread()

    token = setting.set("temporary settings")
    try:
        assert run_until_stopped(read_setting()) == ("temporary settings", False)
    finally:
        setting.reset(token)

    async def fails() -> None:
        raise LookupError("its own error")

    with pytest.raises(LookupError, match="its own error"):
        run_until_stopped(fails())
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the caller's handlers are back


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_cancels_the_flow_and_raises_stopped_within_the_grace(signum: int) -> None:
    cancelled = threading.Event()

    async def waits_on_a_generation() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    timer = threading.Timer(0.5, os.kill, args=(os.getpid(), signum))
    timer.start()
    started = time.monotonic()
    with pytest.raises(Stopped) as caught:
        run_until_stopped(waits_on_a_generation())
    assert time.monotonic() - started < 0.5 + GRACE_SECONDS + 1
    assert caught.value.signum == signum and cancelled.is_set()
    assert stopped_code(signum) == {signal.SIGTERM: 143, signal.SIGINT: 130}[signum]

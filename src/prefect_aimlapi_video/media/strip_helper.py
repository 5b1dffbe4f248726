"""Before/after strips made in a helper process, so their decoding never fights the event loop for the GIL.

Why a process, not a thread: PyAV lets go of the GIL around each decode and scale call and takes it
back after. In a worker running a batch's child flow runs, every one of those hand-backs waits for
the busy event loop, and holds it up in turn: a batch runs closer to Prefect's floor and its worker
spends less CPU with the strips made in another process (`benchmarks/README.md` has the figures). A
crash of FFmpeg on a hostile file also ends the helper, not the flow run.

In-process batches use it (`download_video(strip_in_helper=True)`); a flow run alone in its process
(a single run, a work-pool child) makes its strip in a thread, as starting a helper would cost more
than the strip. One helper per process, started on first use, makes one strip at a time; requests
and answers are JSON lines on its stdin and stdout. It exits when its stdin closes, so it never
outlives the process that started it, even one that was SIGKILLed. It imports the strip's own
modules only: not the package's `__init__`, which imports Prefect for the block (a second's start
and tens of MB more per helper).

Best effort, like the strip itself: when the helper cannot be started, the strip is made in a thread
as before; when it dies on a file or gives no answer within `TIMEOUT_SECONDS`, that generation gets
no strip and a warning (making it in this process instead could crash the flow run too).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic import BaseModel, ValidationError

from prefect_aimlapi_video.media.strip import Strip, make_strip
from prefect_aimlapi_video.media.strip import logger as strip_logger

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS = 120.0  # a strip of a long 1080p clip takes about a second
MARKER = "prefect-aimlapi-video-strip-helper"  # the helper's argv[1], so `ps` says what it is
# The top-level package as a bare stand-in, so importing our strip modules skips its `__init__`.
STAND_IN = (
    "import importlib.util, sys, types\n"
    "spec = importlib.util.find_spec('prefect_aimlapi_video')\n"
    "package = types.ModuleType(spec.name)\n"
    "package.__path__ = list(spec.submodule_search_locations)\n"
    "sys.modules[spec.name] = package\n"
)
BOOTSTRAP = STAND_IN + "from prefect_aimlapi_video.media.strip_helper import serve\nserve()\n"


class StripRequest(BaseModel):
    before: str | None
    after: str

    def make(self) -> Strip | None:
        """The strip asked for, made here (in the helper, or in a thread when it cannot start)."""
        return make_strip(Path(self.before) if self.before else None, Path(self.after))


class StripAnswer(BaseModel):
    strip: Strip | None
    warnings: list[str] = []


class HelperGone(Exception):
    """The helper ended, or was ended, without answering."""


def serve() -> None:
    """The helper's loop: a request per line on stdin, an answer per line on stdout, until stdin closes.

    Answers go to a private copy of stdout; fd 1 itself then points at stderr, so nothing FFmpeg or a
    library prints can corrupt the protocol. The strip's warnings travel in the answer, to be logged
    by the process that asked (and so reach its flow run's log as they did from a thread).
    """
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    warnings: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    strip_logger.addHandler(Collect(logging.WARNING))
    strip_logger.propagate = False
    for line in sys.stdin:
        warnings.clear()
        strip = StripRequest.model_validate_json(line).make()
        answers.write(StripAnswer(strip=strip, warnings=list(warnings)).model_dump_json() + "\n")
        answers.flush()


class _Helper:
    """This process's helper and the one thread that talks to it (so requests never interleave)."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aimlapi-strip")
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> subprocess.Popen[str]:
        if self.process is None or self.process.poll() is not None:
            # stderr is inherited: FFmpeg's own messages and any traceback stay visible
            self.process = subprocess.Popen([sys.executable, "-c", BOOTSTRAP, MARKER], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True, encoding="utf-8")
        return self.process

    def ask(self, request: StripRequest, process: subprocess.Popen[str]) -> StripAnswer:
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            process.kill()

        timer = threading.Timer(TIMEOUT_SECONDS, expire)
        timer.start()
        try:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(request.model_dump_json() + "\n")
            process.stdin.flush()
            line = process.stdout.readline()
        except OSError:  # the pipe broke: it had already ended
            line = ""
        finally:
            timer.cancel()
        if not line:
            code = process.wait()
            raise HelperGone(f"gave no answer in {TIMEOUT_SECONDS:g} s and was stopped" if expired.is_set()
                             else f"ended with exit code {code}")
        try:
            return StripAnswer.model_validate_json(line)
        except ValidationError:  # half a line from a helper that died writing it, say: start afresh
            process.kill()
            process.wait()
            raise HelperGone("gave an unreadable answer and was stopped") from None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.stdin.close()  # type: ignore[union-attr]  # it exits at end of input
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                process.kill()


_helper: _Helper | None = None
_lock = threading.Lock()


def _this_process_helper() -> _Helper:
    global _helper
    with _lock:
        if _helper is None:
            _helper = _Helper()
            atexit.register(_helper.stop)
        return _helper


def _forget_after_fork() -> None:
    """A forked child shares the parent's pipes but not its thread: it starts a helper of its own."""
    global _helper, _lock
    _helper, _lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork to survive
    os.register_at_fork(after_in_child=_forget_after_fork)


def _make_via_helper(helper: _Helper, request: StripRequest) -> Strip | None:
    """On the helper's thread: start it if needed, ask, log its warnings; a thread's strip if it cannot start."""
    try:
        process = helper.start()
    except OSError as exc:
        logger.warning("Cannot start the strip helper (%s); making the strip in a thread.", exc)
        return request.make()
    try:
        answer = helper.ask(request, process)
    except HelperGone as exc:
        strip_logger.warning("No before/after strip for %s: the strip helper %s.", Path(request.after).name, exc)
        return None
    except Exception as exc:  # best effort, like the strip itself: never fail a generation
        strip_logger.warning("No before/after strip for %s: %s: %s", Path(request.after).name, type(exc).__name__, exc)
        return None
    for warning in answer.warnings:
        strip_logger.warning("%s", warning)
    return answer.strip


async def make_strip_in_helper(before: Path | None, after: Path) -> Strip | None:
    """`make_strip(before, after)` with its defaults, made in this process's helper; None if it cannot be made."""
    helper = _this_process_helper()
    request = StripRequest(before=str(before) if before else None, after=str(after))
    return await asyncio.get_running_loop().run_in_executor(helper.executor, _make_via_helper, helper, request)

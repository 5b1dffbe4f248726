"""The strip helper process, for real: same image as in-process, no Prefect inside, and every way it can go wrong.

Each test talks to a real helper (`python -c ...` started by the module) about real H.264 clips.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from prefect_aimlapi_video.media import strip_helper
from prefect_aimlapi_video.media.strip import make_strip
from prefect_aimlapi_video.media.strip_helper import MARKER, STAND_IN, make_strip_in_helper
from prefect_aimlapi_video.sandbox import make_test_clip


@pytest.fixture(autouse=True)
def fresh_helper():
    """Each test starts without a helper and leaves none running."""
    strip_helper._forget_after_fork()
    yield
    if strip_helper._helper is not None:
        strip_helper._helper.stop()
    strip_helper._forget_after_fork()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return (make_test_clip(folder / "before.mp4", width=160, height=96, seconds=1.0, fps=12),
            make_test_clip(folder / "after.mp4", width=192, height=108, seconds=1.0, fps=12))


def helper_process() -> subprocess.Popen[str]:
    assert strip_helper._helper is not None and strip_helper._helper.process is not None
    return strip_helper._helper.process


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


async def test_the_helper_makes_the_same_strip_as_this_process_and_is_reused(clips):
    before, after = clips
    first = await make_strip_in_helper(before, after)
    assert first is not None and first == make_strip(before, after)  # same JPEG bytes, size and times
    pid = helper_process().pid
    assert MARKER in cmdline(pid)
    second = await make_strip_in_helper(None, after)
    assert second is not None and second.rows == 1
    assert helper_process().pid == pid  # one helper per process, not one per strip


def test_the_helper_imports_no_prefect():
    """The stand-in package keeps the package's `__init__` (and so Prefect, for the block) out of it."""
    probe = STAND_IN + textwrap.dedent("""
        import prefect_aimlapi_video.media.strip_helper
        print(sorted(name for name in sys.modules if name == "prefect" or name.startswith("prefect.")))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


async def test_an_unreadable_video_gives_no_strip_and_its_warning_is_logged_here(tmp_path, clips, caplog):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with caplog.at_level(logging.WARNING, logger="prefect_aimlapi_video.media.strip"):
        assert await make_strip_in_helper(clips[0], broken) is None
    assert any("No before/after strip" in r.getMessage() and "broken.mp4" in r.getMessage() for r in caplog.records)
    assert await make_strip_in_helper(*clips) is not None  # the helper survived it


async def test_a_helper_that_hangs_is_stopped_and_the_next_strip_gets_a_new_one(tmp_path, clips, caplog, monkeypatch):
    monkeypatch.setattr(strip_helper, "TIMEOUT_SECONDS", 1.0)
    stuck = tmp_path / "stuck.mp4"
    os.mkfifo(stuck)  # opening it blocks until a writer comes: a decoder that never returns
    assert await make_strip_in_helper(None, after := clips[1]) is not None
    hung = helper_process()
    with caplog.at_level(logging.WARNING, logger="prefect_aimlapi_video.media.strip"):
        started = time.monotonic()
        assert await make_strip_in_helper(None, stuck) is None
        assert time.monotonic() - started < 30
    assert any("gave no answer in 1 s" in r.getMessage() for r in caplog.records)
    assert hung.poll() is not None
    assert await make_strip_in_helper(None, after) is not None
    assert helper_process().pid != hung.pid


async def test_a_helper_that_died_between_strips_is_replaced(clips):
    assert await make_strip_in_helper(*clips) is not None
    dead = helper_process()
    dead.kill()
    dead.wait()
    assert await make_strip_in_helper(*clips) is not None
    assert helper_process().pid != dead.pid


async def test_a_helper_killed_mid_strip_costs_that_strip_only(clips, caplog, monkeypatch):
    """A crash (say FFmpeg on a hostile file) ends the helper: no strip, a warning, and no retry in this process."""
    made_here = []
    monkeypatch.setattr(strip_helper, "make_strip", lambda *a: made_here.append(a))
    assert await make_strip_in_helper(*clips) is not None
    process = helper_process()
    ask = strip_helper._Helper.ask

    def ask_then_crash(self, request, process):
        process.send_signal(signal.SIGSEGV)
        process.wait()
        return ask(self, request, process)

    monkeypatch.setattr(strip_helper._Helper, "ask", ask_then_crash)
    with caplog.at_level(logging.WARNING, logger="prefect_aimlapi_video.media.strip"):
        assert await make_strip_in_helper(*clips) is None
    assert process.returncode == -signal.SIGSEGV
    assert any(f"ended with exit code {-signal.SIGSEGV}" in r.getMessage() for r in caplog.records)
    assert made_here == []


async def test_when_no_helper_can_start_the_strip_is_made_in_a_thread(clips, caplog, monkeypatch):
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with caplog.at_level(logging.WARNING, logger="prefect_aimlapi_video.media.strip_helper"):
        strip = await make_strip_in_helper(*clips)
    assert strip is not None and strip == make_strip(*clips)
    assert any("Cannot start the strip helper" in r.getMessage() for r in caplog.records)


def test_the_helper_ends_with_the_process_that_started_it_even_on_sigkill(clips, tmp_path):
    """Its stdin closes when its parent dies, however it dies: no helper outlives a killed worker."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, sys, time
        from pathlib import Path
        from prefect_aimlapi_video.media import strip_helper
        assert asyncio.run(strip_helper.make_strip_in_helper(None, Path({str(clips[1])!r}))) is not None
        print(strip_helper._helper.process.pid, flush=True)
        time.sleep(600)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        helper_pid = int(parent.stdout.readline())
        assert MARKER in cmdline(helper_pid)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and Path(f"/proc/{helper_pid}").exists():
        state = Path(f"/proc/{helper_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":  # exited; a zombie until init reaps it
            break
        time.sleep(0.05)
    else:
        assert not Path(f"/proc/{helper_pid}").exists(), "the helper outlived its SIGKILLed parent"


async def test_strips_asked_for_at_once_are_made_one_after_another_by_one_helper(clips):
    strips = await asyncio.gather(*(make_strip_in_helper(*clips) for _ in range(6)))
    assert all(strip == strips[0] for strip in strips) and strips[0] is not None


async def test_an_unreadable_answer_costs_that_strip_and_the_helper(clips, caplog, monkeypatch):
    monkeypatch.setattr(strip_helper, "BOOTSTRAP", "import sys, time\nsys.stdin.readline()\n"
                                                   "print('{\"strip\": {\"ima', flush=True)\ntime.sleep(60)\n")
    with caplog.at_level(logging.WARNING, logger="prefect_aimlapi_video.media.strip"):
        assert await make_strip_in_helper(*clips) is None
    assert any("gave an unreadable answer and was stopped" in r.getMessage() for r in caplog.records)
    assert helper_process().returncode is not None  # killed, so the next strip starts afresh


async def test_the_helper_is_used_only_when_asked(clips):
    """A run alone in its process makes its strip in a thread (a helper would cost more than the
    strip); a batch's children ask for the helper (`strip_in_helper`)."""
    from prefect_aimlapi_video.storage.delivery import _make_strip

    alone = await _make_strip(*clips, in_helper=False)
    assert alone is not None and strip_helper._helper is None
    in_batch = await _make_strip(*clips, in_helper=True)
    assert in_batch == alone and helper_process().poll() is None
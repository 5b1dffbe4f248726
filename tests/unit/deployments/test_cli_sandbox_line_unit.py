"""The lines `aimlapi-video sandbox` prints work: its save-key line (run as a shell would split it)
saves a block that the sandbox it came from accepts, and its run line uses that block.

The sandbox runs as the command a person starts (a subprocess, on a free loopback port); saving the
block to Prefect is stood in for (the integration test tests/integration/test_cli_first_hour.py
runs the same line in a real shell against a real temporary Prefect server)."""

from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from prefect_aimlapi_video.api.errors import AuthenticationError
from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.deployments import cli
from prefect_aimlapi_video.deployments.terminal import TEMPORARY_SERVER_NOTE

KEY = "sk-sandbox 'quoted' $HOME"  # a key a shell would mangle unless the line quotes it


def read_lines(process: subprocess.Popen, until: str, timeout: float = 60) -> list[str]:
    """Its stdout lines up to the first holding `until` (read by a thread: a pipe's buffer can hold
    several lines at once, which `select` on the pipe would not see)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in process.stdout], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while not any(until in line for line in seen):
        try:
            seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            raise AssertionError(f"the sandbox printed no line with {until!r}: {seen}") from None
    return seen


@pytest.fixture
def sandbox_lines() -> Iterator[list[str]]:
    """What `aimlapi-video sandbox --port 0` prints before it serves (a free port, loopback)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "prefect_aimlapi_video.sandbox", "--port", "0", "--api-key",
                                KEY, "--processing-seconds", "0.1"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        yield read_lines(process, "aimlapi-video run ")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0  # a clean shutdown


async def test_the_printed_save_key_line_saves_a_block_the_sandbox_accepts(sandbox_lines, monkeypatch, capsys):
    base_url = sandbox_lines[0].split()[4]  # "AI/ML API sandbox at <url>  (API key: ...)"
    save_line = next(line.strip() for line in sandbox_lines if "aimlapi-video save-key" in line)
    assignment, program, *argv = shlex.split(save_line)
    name, _, value = assignment.partition("=")
    assert (name, value, program) == ("AIMLAPI_API_KEY", KEY, "aimlapi-video")  # the key reaches save-key whole
    assert argv == ["save-key", "--name", "sandbox", "--base-url", base_url]

    saved: dict[str, AimlApiCredentials] = {}
    monkeypatch.setattr(AimlApiCredentials, "save", lambda self, block_name, overwrite=False: saved.update(
        {block_name: self}))
    for variable in cli.KEY_ENV_VARS:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(name, value)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert out == f"Saved AimlApiCredentials block 'sandbox' ({base_url}).\n"
    assert err == TEMPORARY_SERVER_NOTE + "\n"  # no Prefect server configured: it says so, and how to keep one

    block = saved["sandbox"]
    await block.check_access()  # the sandbox takes the key and the address the line saved
    with pytest.raises(AuthenticationError):  # and it does check: another key is refused
        await AimlApiCredentials(api_key="sk-not-the-sandbox", base_url=base_url).check_access()

    run_line = sandbox_lines[-1].strip()
    program, *run_argv = shlex.split(run_line)
    parsed = cli_run_args(run_argv)
    assert program == "aimlapi-video" and parsed.credentials == "sandbox" and parsed.video == "clip.mp4"
    assert any(line.strip() == "aimlapi-video sample-clip clip.mp4" for line in sandbox_lines)


def cli_run_args(argv: list[str]):
    import argparse

    from prefect_aimlapi_video.deployments.cli_options import run_parser

    parser = argparse.ArgumentParser()
    run_parser(parser.add_subparsers())
    return parser.parse_args(argv)

"""`aimlapi-video run` stopped with SIGTERM while it waits on a paid generation, on a temporary Prefect
server (no PREFECT_API_URL), as a user's scheduler stops it (issue 24):

- `timeout` signals the command's whole process group, so the temporary server goes at once too;
- `docker stop` and Kubernetes signal the command's process only, so the temporary server it started
  must be stopped by the command (nothing of the process group may outlive it).

Either way: the command exits within 10 s with 143 and one line saying how to resume, no traceback;
the same command then delivers the generation that was paid for, with no new charge.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from prefect_aimlapi_video.sandbox import SandboxConfig, run_sandbox
from tests.support.reliability import cli_command, last_line, sha256_file, subprocess_env, wait_until

pytestmark = pytest.mark.integration
STOP_WITHIN_SECONDS = 10
RESUME_LINE = "error: interrupted; run the same command again to resume without a new charge."


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_and_check(command: subprocess.Popen, whom: str) -> None:
    """SIGTERM as `whom` sends it; the command ends within seconds, as the module's docstring says."""
    signalled = time.monotonic()
    try:
        if whom == "process-group":  # as `timeout` does
            os.killpg(command.pid, signal.SIGTERM)
        else:  # as `docker stop` and Kubernetes do
            command.send_signal(signal.SIGTERM)
        _, stderr = command.communicate(timeout=60)
        took = time.monotonic() - signalled
    finally:
        if command.poll() is None:
            os.killpg(command.pid, signal.SIGKILL)
            command.wait()
    assert took < STOP_WITHIN_SECONDS, f"{whom}: exited {took:.1f} s after SIGTERM\n{stderr[-3000:]}"
    assert command.returncode == 143, stderr[-3000:]
    assert last_line(stderr) == RESUME_LINE, stderr[-3000:]
    assert "Traceback" not in stderr and "TerminationSignal" not in stderr, stderr[-3000:]
    time.sleep(1.0)
    assert not _group_alive(command.pid), f"{whom}: a process the command started (its temporary server) outlived it"


def test_sigterm_stops_the_cli_within_seconds_and_the_same_command_resumes_without_a_charge(clips, tmp_path):
    """Stopped as `timeout` stops it while it waits on the paid generation; run again, and stopped as
    `docker stop` stops it while it waits again; run a third time: it delivers that generation."""
    # 150 s: long enough that the second run (a temporary server to start, on a loaded machine) still
    # finds the generation processing, so it is stopped while it waits.
    with run_sandbox(SandboxConfig(processing_seconds=150, workers=2)) as sandbox:
        env = {k: v for k, v in subprocess_env(AIMLAPI_API_KEY=sandbox.api_key, PREFECT_HOME=str(tmp_path / "home"),
                                               AIMLAPI_SUBMISSIONS_DIR=str(tmp_path / "records")).items()
               if k != "PREFECT_API_URL"}  # a temporary server, as a user without one configured gets
        output = tmp_path / "out" / "{stem}-{generation}.mp4"
        argv = [*cli_command(), "run", str(clips["small"]), "--prompt", "woodcut", "--seed", "3",
                "--base-url", sandbox.base_url, "--output", str(output)]

        def start() -> subprocess.Popen:
            return subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True)

        first = start()
        entry = wait_until(lambda: next(iter(sandbox.ledger()), None), 180, what="the first POST")
        time.sleep(1.0)  # recorded, and polling
        _stop_and_check(first, "process-group")

        polls = sandbox.ledger()[0].polls
        second = start()
        wait_until(lambda: sandbox.ledger()[0].polls > polls, 120, what="the second run to resume polling")
        assert sandbox.ledger()[0].status != "completed"  # stopped while it waits, not after
        _stop_and_check(second, "process")

        again = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
        assert again.returncode == 0, again.stderr[-3000:]
        ledger = sandbox.ledger()
        assert len(ledger) == 1, ledger  # resumed twice: no second POST, no second charge
        assert entry.generation_id in last_line(again.stdout)
        (delivered,) = (tmp_path / "out").glob("*.mp4")
        assert sha256_file(delivered) == ledger[0].output_sha256

"""The command line's scope is the request itself: running the same command again resumes it.

`aimlapi-video run` interrupted with Ctrl-C (SIGINT) while it waits on a paid generation, then run
again with the same arguments: one charge, the output delivered. A third time: no new charge, the
same output. With `--new`: one more charge. Each run is a new flow run on the Prefect server.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from prefect_aimlapi_video.sandbox import SandboxConfig, run_sandbox
from tests.support.reliability import cli_command, last_line, sha256_file, subprocess_env, wait_until

pytestmark = pytest.mark.integration
SUMMARY = re.compile(r"^completed: (?P<output>.+) \(.*, generation (?P<generation>\S+)\)$")


def _summary(stdout: str) -> tuple[Path, str]:
    """(output, generation id) from the command's one-line summary."""
    match = SUMMARY.match(last_line(stdout))
    assert match, stdout[-2000:]
    return Path(match.group("output")), match.group("generation")


def test_interrupted_command_run_again_resumes_and_new_pays_again(prefect_server, clips, tmp_path):
    with run_sandbox(SandboxConfig(processing_seconds=6, workers=2)) as sandbox:
        env = subprocess_env(AIMLAPI_API_KEY=sandbox.api_key, AIMLAPI_SUBMISSIONS_DIR=str(tmp_path / "records"),
                             PREFECT_HOME=str(tmp_path / "prefect-home"))
        output = tmp_path / "out" / "{stem}-{generation}.mp4"
        argv = [*cli_command(), "run", str(clips["small"]), "--prompt", "risograph print", "--seed", "9",
                "--base-url", sandbox.base_url, "--output", str(output)]

        def run(*extra: str, timeout: float = 180) -> subprocess.CompletedProcess:
            return subprocess.run([*argv, *extra], cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=timeout)

        interrupted = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
        entry = wait_until(lambda: next(iter(sandbox.ledger()), None), 90, what="the first POST")
        time.sleep(1.0)  # recorded, and polling
        assert sandbox.ledger()[0].status != "completed"
        interrupted.send_signal(signal.SIGINT)
        _, stderr = interrupted.communicate(timeout=60)
        assert interrupted.returncode == 130, stderr[-2000:]
        assert last_line(stderr) == "error: interrupted; run the same command again to resume without a new charge."

        second = run()
        assert second.returncode == 0, second.stderr[-3000:]
        assert len(sandbox.ledger()) == 1
        delivered, generation = _summary(second.stdout)
        assert generation == entry.generation_id
        assert delivered.is_file() and sha256_file(delivered) == sandbox.ledger()[0].output_sha256

        third = run()
        assert third.returncode == 0 and len(sandbox.ledger()) == 1
        assert _summary(third.stdout) == (delivered, entry.generation_id)
        assert "resumed: no new charge" in third.stdout and "resumed: no new charge" not in second.stdout
        assert sha256_file(delivered) == sandbox.ledger()[0].output_sha256

        fresh = run("--new")
        assert fresh.returncode == 0, fresh.stderr[-3000:]
        ledger = sandbox.ledger()
        assert len(ledger) == 2 and ledger[1].status == "completed"
        assert ledger[1].client_request_id != ledger[0].client_request_id

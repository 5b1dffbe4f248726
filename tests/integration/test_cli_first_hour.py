"""The first hour of a user who installed the package, through the console script only.

Without a Prefect server configured: `aimlapi-video sandbox` in the background, the lines it prints run
in a real shell (save-key, sample-clip, run), each on a temporary Prefect server that the CLI says it
starts. With a server: `aimlapi-video init` in an empty project folder, then `prefect deploy --all`
there; and a key refused by the access check ends with exit code 2, its failed flow run on the server.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from prefect_aimlapi_video.deployments.terminal import TEMPORARY_SERVER_NOTE
from prefect_aimlapi_video.sandbox import SandboxConfig, run_sandbox
from tests.support import prefect_api
from tests.support.reliability import cli_command, last_line, subprocess_env

pytestmark = pytest.mark.integration


def shell(line: str, env: dict[str, str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run a line as a person pastes it into bash."""
    return subprocess.run(["bash", "-c", line], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def sandbox_process(tmp_path) -> Iterator[tuple[subprocess.Popen, list[str]]]:
    """`aimlapi-video sandbox --port 0` (a free loopback port) and the lines it printed before serving."""
    process = subprocess.Popen([*cli_command(), "sandbox", "--port", "0", "--processing-seconds", "0.3"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tmp_path,
                               env=subprocess_env())
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in process.stdout], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while not any("aimlapi-video run " in line for line in seen):
            seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        yield process, seen
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_lines_the_sandbox_prints_work_without_a_prefect_server(sandbox_process, tmp_path):
    _, printed = sandbox_process
    env = {k: v for k, v in subprocess_env(PREFECT_HOME=str(tmp_path / "prefect-home"),
                                           AIMLAPI_SUBMISSIONS_DIR=str(tmp_path / "records")).items()
           if k not in ("PREFECT_API_URL", "AIMLAPI_API_KEY", "AIML_API_KEY")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # `aimlapi-video` as installed
    save_key, sample_clip, run = (next(line.strip() for line in printed if line.strip().startswith(start))
                                  for start in ("AIMLAPI_API_KEY=", "aimlapi-video sample-clip ", "aimlapi-video run "))

    saved = shell(save_key, env, tmp_path)
    assert saved.returncode == 0, saved.stderr[-3000:]
    assert saved.stdout.startswith("Saved AimlApiCredentials block 'sandbox' (http://127.0.0.1:")
    assert TEMPORARY_SERVER_NOTE in saved.stderr.splitlines()

    clip = shell(sample_clip, env, tmp_path)
    assert clip.returncode == 0 and clip.stdout == f"{tmp_path / 'clip.mp4'}\n", clip.stderr[-2000:]

    done = shell(f"{run} --output out/", env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert last_line(done.stdout).startswith(f"completed: {tmp_path / 'out'}/"), done.stdout[-2000:]
    assert TEMPORARY_SERVER_NOTE in done.stderr.splitlines()
    assert "Traceback" not in done.stderr


async def test_init_then_prefect_deploy_all_from_the_project_folder(prefect_server, tmp_path):
    project = tmp_path / "my-project"
    project.mkdir()
    env = subprocess_env(AIMLAPI_BUCKET="first-hour-media")
    written = subprocess.run([*cli_command(), "init"], cwd=project, env=env, capture_output=True, text=True,
                             timeout=60)
    assert written.returncode == 0, written.stderr[-2000:]
    assert "prefect deploy --all" in written.stdout
    names = [d["name"] for d in yaml.safe_load((project / "prefect.yaml").read_text())["deployments"]]

    subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", "aimlapi", "--type", "process",
                    "--overwrite"], cwd=project, env=env, check=True, capture_output=True, timeout=120)
    deploy = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], cwd=project,
                            env=env, capture_output=True, text=True, timeout=180)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    upload, sweep, _ = await prefect_api.remove_bundled_deployments()
    assert [upload.name, sweep.name] == names
    assert upload.entrypoint == "prefect_aimlapi_video.flows.video_to_video:video_to_video"
    assert upload.pull_steps == [] and sweep.pull_steps == []  # nothing refers back to the project folder
    assert upload.work_pool_name == "aimlapi"
    assert upload.parameters["output"] == "s3://first-hour-media/outputs/{stem}-{fingerprint}.mp4"


async def test_a_key_refused_by_the_access_check_exits_2_and_its_run_stays_on_the_server(prefect_server, clips,
                                                                                         tmp_path):
    with run_sandbox(SandboxConfig(processing_seconds=0.3)) as sandbox:
        env = subprocess_env(AIMLAPI_API_KEY="sk-not-the-sandbox-key", AIMLAPI_SUBMISSIONS_DIR=str(tmp_path / "r"))
        done = subprocess.run([*cli_command(), "run", str(clips["small"]), "--prompt", "ink", "--base-url",
                               sandbox.base_url, "--output", f"{tmp_path}/"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=180)
        assert sandbox.ledger() == []
    assert done.returncode == 2, done.stderr[-3000:]
    assert "rejected the API key" in last_line(done.stderr) and last_line(done.stderr).startswith("error: ")
    assert TEMPORARY_SERVER_NOTE not in done.stderr  # a server is configured
    run = await prefect_api.latest_flow_run("aimlapi-video-to-video")
    assert run.state.is_failed() and "rejected the API key" in (run.state.message or "")

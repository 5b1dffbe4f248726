"""As a user installs it: the built wheel in a fresh venv, inside a Prefect project that has its own
`flows` and `blocks` packages.

The wheel is built from a copy of the source (not an editable install: the session's `wheel`
fixture, tests/support/wheel_venv.py) and installed with its dependencies into a new virtual
environment. Everything after that runs with that venv's Python, from the user's project folder:
their own `import flows.etl`, `prefect block register`, `prefect deploy` of a prefect.yaml that
names our module entrypoint, and a process worker that runs the deployment against the sandbox.
The user's `blocks/__init__.py` leaves a marker file if anything imports it, which Prefect's
collection loading used to do.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import uuid
import venv
import zipfile
from pathlib import Path

import pytest

from prefect_aimlapi_video import AimlApiCredentials
from tests.support import prefect_api
from tests.support.wheel_venv import PACKAGE, REPO
from tests.support.wheel_venv import run_checked as _run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def user_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """A fresh venv with the wheel and its dependencies, no extras (pip compiles bytecode, as users get it).

    No `[sandbox]`: the sandbox the deployment runs against is this process's (the `sandbox`
    fixture), and the runtime must work without what only the sandbox needs (numpy)."""
    home = tmp_path_factory.mktemp("user-venv") / "venv"
    venv.create(home, with_pip=True)
    python = home / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], cwd=home.parent, timeout=1200)
    return python


def test_wheel_holds_one_top_level_import_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (top_level_txt,) = [n for n in names if n.endswith(".dist-info/top_level.txt")] or [None]
        top = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        if top_level_txt:
            assert archive.read(top_level_txt).decode().split() == [PACKAGE]
    assert top == {PACKAGE}
    for sub in ("blocks", "flows", "deployments", "sandbox"):
        assert f"{PACKAGE}/{sub}/__init__.py" in names
    assert f"{PACKAGE}/deployments/prefect.yaml" in names
    assert f"prefect_aimlapi_video = {PACKAGE}" in entry_points
    assert f"aimlapi-video = {PACKAGE}.deployments.cli:main" in entry_points


SANDBOX_EXTRA = "pip install 'prefect-aimlapi-video[sandbox]'"


def test_without_extras_there_is_no_numpy_and_the_sandbox_commands_name_their_extra(
    user_venv: Path, wheel: Path, tmp_path: Path
) -> None:
    env = {"PATH": f"{user_venv.parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    assert _run([str(user_venv), "-c", "import importlib.util as u; print(u.find_spec('numpy'))"],
                cwd=tmp_path, env=env).strip() == "None"
    cli = str(user_venv.with_name("aimlapi-video"))
    demo = subprocess.run([cli, "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert demo.returncode == 2, (demo.stdout[-2000:], demo.stderr[-2000:])  # nothing sent
    assert demo.stderr.strip().splitlines()[-1] == (
        f"error: The sandbox needs numpy, which cannot be imported: {SANDBOX_EXTRA}")
    assert "Traceback" not in demo.stderr
    sandbox = subprocess.run([cli, "sandbox"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert sandbox.returncode == 2, sandbox.stderr[-2000:]
    assert sandbox.stderr.strip().splitlines()[-1] == demo.stderr.strip().splitlines()[-1]
    assert "Traceback" not in sandbox.stderr
    # the extra resolves to what the sandbox imports (resolved only: installing it would change this venv)
    report = tmp_path / "sandbox-extra.json"
    _run([str(user_venv), "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report), f"{wheel}[sandbox]"],
         cwd=tmp_path, env=env, timeout=600)
    adds = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"numpy", "uvloop", "httptools"} <= adds


def _user_project(root: Path, pool: str, block: str, output: Path) -> Path:
    project = root / "user-project"
    (project / "flows").mkdir(parents=True)
    (project / "blocks").mkdir()
    (project / "flows" / "__init__.py").write_text("")
    (project / "flows" / "etl.py").write_text("WHO = 'the user project'\n")
    (project / "blocks" / "__init__.py").write_text(textwrap.dedent("""
        # The user's own blocks package. Anything importing it leaves a marker next to it.
        from pathlib import Path

        Path(__file__).with_name("IMPORTED").write_text("imported")
    """))
    (project / "prefect.yaml").write_text(textwrap.dedent(f"""
        name: user-project
        prefect-version: 3.9.1
        build: null
        push: null
        pull: []
        deployments:
          - name: restyle
            entrypoint: {PACKAGE}.flows.video_to_video:video_to_video
            work_pool:
              name: {pool}
            parameters:
              prompt: "a linocut print"
              seed: 3
              credentials: {block}
              output: "{output}/{{stem}}-restyled.mp4"
    """))
    return project


async def test_deploy_and_run_from_a_user_project_with_its_own_flows_and_blocks(
    user_venv: Path, prefect_server: str, sandbox, clips, tmp_path: Path
) -> None:
    from prefect.deployments import run_deployment

    tag = uuid.uuid4().hex[:8]
    pool, block = f"wheel-pool-{tag}", f"wheel-{tag}"
    output = tmp_path / "outputs"
    project = _user_project(tmp_path, pool, block, output)
    prefect = str(user_venv.with_name("prefect"))
    env = {
        "PATH": f"{user_venv.parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(tmp_path / "user-prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "AIMLAPI_SUBMISSIONS_DIR": str(tmp_path / "submissions"),
    }

    # The user's own packages win in their project, and ours is the installed one.
    where = _run([str(user_venv), "-c", "import flows.etl, prefect_aimlapi_video as p; "
                  "print(flows.etl.WHO); print(p.__file__)"], cwd=project, env=env)
    user_line, ours = where.splitlines()
    assert user_line == "the user project"
    assert "site-packages" in ours and not ours.startswith(str(REPO))
    # Prefect loads collections with the project on sys.path (as `PYTHONPATH=.` or `python -m` does).
    loaded = _run([str(user_venv), "-c", "from prefect.plugins import load_prefect_collections as l; "
                   "print(sorted((k, type(v).__name__) for k, v in l().items()))"],
                  cwd=project, env={**env, "PYTHONPATH": str(project)})
    assert f"('{PACKAGE}', 'module')" in loaded

    _run([prefect, "block", "register", "-m", PACKAGE], cwd=project, env=env)
    await AimlApiCredentials(api_key=sandbox.api_key, base_url=sandbox.base_url).asave(block, overwrite=True)
    _run([prefect, "work-pool", "create", pool, "--type", "process", "--overwrite"], cwd=project, env=env)
    _run([prefect, "--no-prompt", "deploy", "--all"], cwd=project, env=env)

    run = await run_deployment("aimlapi-video-to-video/restyle", timeout=0,
                               parameters={"video": str(clips["small"])})
    worker = subprocess.run([prefect, "worker", "start", "--pool", pool, "--run-once"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=600)
    finished = await prefect_api.flow_run(run.id)
    assert finished.state.is_completed(), (finished.state, worker.stdout[-4000:], worker.stderr[-4000:])

    (entry,) = sandbox.ledger()
    result = output / "small-restyled.mp4"
    assert result.is_file() and entry.prompt == "a linocut print" and entry.seed == 3
    # the before/after strip, made by a worker whose venv has no numpy
    assert result.with_name(result.name + ".strip.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    artifacts = await prefect_api.artifacts(run.id, expect=3)
    assert any(a.type == "markdown" and a.data.startswith("# Video-to-video") and entry.generation_id in a.data
               for a in artifacts)
    assert any(a.type == "markdown" and a.data.startswith(f"[{result}]") for a in artifacts)  # the link
    assert any(a.type == "progress" and a.data == 100 for a in artifacts)
    assert not (project / "blocks" / "IMPORTED").exists(), "something imported the user's blocks package"

"""The package as a user gets it: a wheel built from a copy of the source, and pip told to install it.

`build_wheel` builds it (PEP 517, isolated) from a copy of the repository, never touching the
checkout; tests/conftest.py builds it once per session (the `wheel` fixture).
`pip_environment` is this machine's pip configuration as PIP_* variables with the wheel's folder
added to find-links, so that a plain `pip install prefect-aimlapi-video` in a shell with a HOME of
its own (whose user pip.conf it would not read) installs that wheel and still finds the
dependencies where pip finds them here. `installed_from` checks that a venv holds that very wheel.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "prefect_aimlapi_video"
DISTRIBUTION = "prefect-aimlapi-video"
IGNORED = shutil.ignore_patterns(".git", ".venv", "__pycache__", "build", "dist", "*.egg-info", "aimlapi-outputs")


def run_checked(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv} exited {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def build_wheel(work: Path) -> Path:
    """A wheel built from a copy of the repository in `work` (source/ and dist/ in it)."""
    source = work / "source"
    shutil.copytree(REPO, source, ignore=IGNORED)
    run_checked([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(work / "dist"), str(source)],
                cwd=work)
    (built,) = (work / "dist").glob(f"{PACKAGE}-*.whl")
    return built


# pip's option sections, the later overriding the earlier (`pip config list` names them so).
_SECTIONS = ("global", "install", ":env:")


def pip_environment(wheel: Path, work: Path) -> dict[str, str]:
    """PIP_* variables that make `pip install prefect-aimlapi-video[...]` install `wheel`.

    Every setting pip has here (its config files, user one included, and PIP_* variables) is
    carried over; find-links gets the wheel's folder first; a constraint pins the wheel's version
    (written into `work`), so no index's release of that name can be picked instead; the cache is
    pip's cache here, so the dependencies it already downloaded are not fetched again."""
    listed = run_checked([sys.executable, "-m", "pip", "config", "list"], cwd=work)
    chosen: dict[str, tuple[int, str]] = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        section, _, name = key.rpartition(".")
        if section in _SECTIONS and _SECTIONS.index(section) >= chosen.get(name, (-1, ""))[0]:
            chosen[name] = (_SECTIONS.index(section), ast.literal_eval(value))
    env = {f"PIP_{name.upper().replace('-', '_')}": value for name, (_, value) in chosen.items()}
    version = wheel.name.split("-")[1]
    pin = work / "pin-the-built-wheel.txt"
    pin.write_text(f"{DISTRIBUTION}=={version}\n")
    env["PIP_FIND_LINKS"] = " ".join([str(wheel.parent), env.get("PIP_FIND_LINKS", "")]).strip()
    env["PIP_CONSTRAINT"] = " ".join([env.get("PIP_CONSTRAINT", ""), str(pin)]).strip()
    cache = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True,
                           env={**os.environ, **env})
    if cache.returncode == 0 and cache.stdout.strip():
        env["PIP_CACHE_DIR"] = cache.stdout.strip()
    return env


def installed_from(venv: Path, wheel: Path) -> list[str]:
    """The package's files that `venv` does not hold as `wheel` has them (their RECORD lines): []
    when the venv's prefect-aimlapi-video is that wheel, installed unchanged."""
    records = sorted(venv.glob(f"lib/python*/site-packages/{PACKAGE}-*.dist-info/RECORD"))
    assert records, f"{venv} has no {DISTRIBUTION} installed"
    installed = set(records[0].read_text().splitlines())
    with zipfile.ZipFile(wheel) as archive:
        (record,) = [n for n in archive.namelist() if n.endswith(".dist-info/RECORD")]
        expected = [line for line in archive.read(record).decode().splitlines() if line.startswith(f"{PACKAGE}/")]
    assert expected
    return [line for line in expected if line not in installed]

"""The distribution's shape: one import package, every package folder mapped into it, no bare imports.

The wheel itself is built and installed into a fresh venv by tests/integration/test_installed_wheel.py;
these checks read the source tree and the installed metadata, so they run in milliseconds.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import re
import tomllib
from pathlib import Path

import prefect_aimlapi_video

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("blocks", "flows", "deployments", "sandbox")
PACKAGE = "prefect_aimlapi_video"
BARE_IN_TEXT = re.compile(rf"(^|[\s;\"'])(import|from) ({'|'.join(FOLDERS)})([.\s]|$)", re.M)


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _package_folders() -> dict[str, Path]:
    """Every folder holding an __init__.py in src/ and under the mapped top-level folders, by its package name."""
    found = {PACKAGE: REPO / "src" / PACKAGE}
    for init in (REPO / "src" / PACKAGE).rglob("__init__.py"):
        relative = init.parent.relative_to(REPO / "src" / PACKAGE)
        found[".".join((PACKAGE, *relative.parts))] = init.parent
    for folder in FOLDERS:
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            found[".".join((PACKAGE, folder, *relative.parts))] = init.parent
    return found


def test_every_package_folder_is_mapped_into_the_one_import_package() -> None:
    setuptools = _pyproject()["tool"]["setuptools"]
    assert sorted(setuptools["packages"]) == sorted(_package_folders())
    for name, directory in setuptools["package-dir"].items():
        assert name.startswith(PACKAGE) and (REPO / directory / "__init__.py").is_file()


def test_no_module_imports_a_bare_top_level_folder() -> None:
    """`import flows` / `from blocks import ...` would resolve to a user's own packages once installed."""
    offenders = []
    sources = [p for folder in (*FOLDERS, "src", "tests", "benchmarks") for p in (REPO / folder).rglob("*.py")]
    assert len(sources) > 50
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{source.relative_to(REPO)}:{node.lineno} {n}" for n in names
                          if n.split(".")[0] in FOLDERS]
            # code run in a subprocess (`python -c "..."`, generated scripts) counts too
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and source.name not in ("test_installed_wheel.py", "test_packaging_unit.py")
                    and BARE_IN_TEXT.search(node.value)):
                offenders.append(f"{source.relative_to(REPO)}:{node.lineno} (in a string)")
    assert offenders == []


def test_public_names_resolve_and_the_version_is_the_distributions() -> None:
    missing = [name for name in prefect_aimlapi_video.__all__ if not hasattr(prefect_aimlapi_video, name)]
    assert missing == []
    assert {"AimlApiCredentials", "video_to_video", "video_to_video_batch", "submit_generation",
            "wait_for_generation", "download_video", "VideoToVideoResult", "AimlApiError"} <= set(
        prefect_aimlapi_video.__all__)
    assert prefect_aimlapi_video.__version__ == importlib.metadata.version("prefect-aimlapi-video")


def test_entry_points_name_the_package() -> None:
    project = _pyproject()["project"]
    assert project["entry-points"]["prefect.collections"] == {PACKAGE: PACKAGE}
    assert project["scripts"]["aimlapi-video"] == f"{PACKAGE}.deployments.cli:main"
    installed = importlib.metadata.entry_points(group="prefect.collections", name=PACKAGE)
    assert [ep.value for ep in installed] == [PACKAGE]
    module, _, attribute = project["scripts"]["aimlapi-video"].partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))


def test_prefect_floor_is_the_one_the_project_needs() -> None:
    dependencies = _pyproject()["project"]["dependencies"]
    assert "prefect>=3.9.1,<4" in dependencies
    assert not [d for d in dependencies if d.startswith(("fastapi", "sqlalchemy"))]  # 3.8.x-only pins


def test_nothing_at_the_repository_root_shadows_the_installed_package() -> None:
    """A script run from the root has the root on sys.path: a folder there named like the package
    would hide the installed one (a regular install could not import its subpackages)."""
    assert not (REPO / PACKAGE).exists()
    assert (REPO / "src" / PACKAGE / "__init__.py").is_file()


SANDBOX_ONLY = ("numpy", "uvicorn", "starlette")
SANDBOX_EXTRA = "pip install 'prefect-aimlapi-video[sandbox]'"


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


def test_runtime_dependencies_leave_what_only_the_sandbox_needs_to_its_extra() -> None:
    project = _pyproject()["project"]
    runtime = {_name(d) for d in project["dependencies"]}
    assert runtime == {"prefect", "prefect-aws", "httpx", "pydantic", "av"}
    extras = project["optional-dependencies"]
    assert {_name(d) for d in extras["sandbox"]} == set(SANDBOX_ONLY)
    assert "prefect-aimlapi-video[sandbox]" in extras["test"]  # the tests start the sandbox
    assert "pillow" in {_name(d) for d in extras["test"]}  # Prefect's block suite checks the logo with it


def test_only_the_sandbox_imports_what_its_extra_installs() -> None:
    offenders = []
    for folder in ("src", "blocks", "flows", "deployments"):
        for source in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text(), str(source))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                offenders += [f"{source.relative_to(REPO)}:{node.lineno} {n}" for n in names
                              if n.split(".")[0] in SANDBOX_ONLY]
    assert offenders == []


def test_without_the_sandbox_extra_the_sandbox_and_the_demo_say_how_to_install_it() -> None:
    """numpy made unimportable stands in for an install without the extra (uvicorn and Starlette
    come with Prefect today): importing the sandbox names the install command, and the demo says it
    in one `error:` line, exit code 2 (nothing sent), no traceback."""
    import subprocess
    import sys

    block_numpy = "import sys\nsys.modules['numpy'] = None\n"
    expected = f"The sandbox needs numpy, which cannot be imported: {SANDBOX_EXTRA}"
    imported = subprocess.run(
        [sys.executable, "-c", block_numpy + "try:\n    import prefect_aimlapi_video.sandbox\n"
         "except ImportError as exc:\n    print(exc)\n"],
        capture_output=True, text=True, timeout=120, check=True)
    assert imported.stdout.strip() == expected
    demo = subprocess.run(
        [sys.executable, "-c", block_numpy + "from prefect_aimlapi_video.deployments.cli import main\n"
         "sys.exit(main(['demo']))\n"],
        capture_output=True, text=True, timeout=120)
    assert demo.returncode == 2, demo.stderr  # nothing was sent to the provider
    assert demo.stderr.strip().splitlines()[-1] == f"error: {expected}"
    assert "Traceback" not in demo.stderr

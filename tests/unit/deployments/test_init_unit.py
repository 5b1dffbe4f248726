"""deployments.init: `aimlapi-video init` writes the bundled deployments into ./prefect.yaml, refuses
to replace one (exit 2, one line) unless --force, and prints what `prefect deploy --all` needs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from prefect.flows import Flow, load_flow_from_entrypoint

from prefect_aimlapi_video.deployments import init
from prefect_aimlapi_video.deployments.cli import main
from prefect_aimlapi_video.deployments.serve import PREFECT_YAML, load_deployments


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """An empty folder, the current one: a user's Prefect project."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_init_writes_the_installed_deployments_and_says_what_to_run_next(project, capsys):
    assert main(["init"]) == 0
    written = project / "prefect.yaml"
    text = written.read_text()
    config = yaml.safe_load(text)
    assert config == yaml.safe_load(PREFECT_YAML.read_text())  # the installed file, as installed
    assert Path(init.bundled_path()) == PREFECT_YAML and PREFECT_YAML.is_file()
    assert config["pull"] == []  # no pull steps: a worker needs the package, not this folder
    assert [d["name"] for d in config["deployments"]] == ["on-s3-upload", "nightly-sweep"]
    for deployment in config["deployments"]:  # module paths that import from the installed package
        module, _, function = deployment["entrypoint"].partition(":")
        assert module.startswith("prefect_aimlapi_video.flows.") and not module.endswith(".py") and function
        assert isinstance(load_flow_from_entrypoint(deployment["entrypoint"]), Flow)
    assert text.startswith("# Deployments of the AI/ML API video-to-video flows") and "From the repository" not in text

    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"Wrote {written} (deployments: on-s3-upload, nightly-sweep)."
    assert out.rstrip().endswith(init.NEXT_STEPS)


def test_the_next_steps_cover_everything_the_file_needs(project):
    """Every work pool the file names is created, every `{{ $VAR }}` it reads is exported, and the
    block its flows load is saved, by the commands printed (and in the file's header)."""
    main(["init"])
    text = (project / "prefect.yaml").read_text()
    config = yaml.safe_load(text)
    pools = {d["work_pool"]["name"] for d in config["deployments"]}
    variables = set(re.findall(r"\{\{\s*\$(\w+)\s*\}\}", yaml.safe_dump(config)))
    blocks = {d["parameters"]["credentials"] for d in config["deployments"]}
    assert (pools, variables, blocks) == ({"aimlapi"}, {"AIMLAPI_BUCKET"}, {"aimlapi"})
    for steps in (init.NEXT_STEPS, init.HEADER):
        for pool in pools:
            assert f"prefect work-pool create {pool} --type process" in steps
            assert f"prefect worker start --pool {pool}" in steps
        for name in variables:
            assert f"export {name}=" in steps
        assert "aimlapi-video save-key  " in steps  # its default name is "aimlapi"
        assert "prefect deploy --all" in steps and "aimlapi-video serve --prefect-file prefect.yaml" in steps


def test_the_written_file_serves(project, monkeypatch):
    main(["init"])
    monkeypatch.setenv("AIMLAPI_BUCKET", "media")
    upload, sweep = load_deployments(project / "prefect.yaml")
    assert upload.name == "on-s3-upload" and upload.parameters["output"].startswith("s3://media/outputs/")
    assert sweep.name == "nightly-sweep"


def test_an_existing_prefect_yaml_is_kept_unless_forced(project, capsys):
    mine = project / "prefect.yaml"
    mine.write_text("name: my-own-project\n")
    with pytest.raises(SystemExit) as exited:  # as the console script ends
        raise SystemExit(main(["init"]))
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(f"error: {mine} already exists; add --force to replace it")
    assert mine.read_text() == "name: my-own-project\n"

    assert main(["init", "--force"]) == 0
    assert yaml.safe_load(mine.read_text()) == yaml.safe_load(PREFECT_YAML.read_text())


def test_a_folder_that_cannot_be_written_is_one_line_and_exit_2(project, capsys):
    (project / "prefect.yaml").mkdir()  # not a file: cannot be opened for writing, even with --force
    assert main(["init", "--force"]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot write {project / 'prefect.yaml'}")


@pytest.mark.parametrize("pull", ["", "pull: null\n", "pull:\n"])
def test_no_pull_steps_become_an_explicit_empty_list(pull):
    source = f"# our own notes\n# more\nname: p\nbuild: null\n{pull}deployments:\n  - name: d\n    entrypoint: m:f\n"
    written = init.project_text(source)
    assert yaml.safe_load(written)["pull"] == []
    assert "our own notes" not in written and written.startswith(init.HEADER)
    assert yaml.safe_load(written)["deployments"] == [{"name": "d", "entrypoint": "m:f"}]


def test_pull_steps_that_exist_are_left_alone():
    source = "name: p\npull:\n  - prefect.deployments.steps.set_working_directory:\n      directory: /app\n"
    assert yaml.safe_load(init.project_text(source))["pull"] == yaml.safe_load(source)["pull"]

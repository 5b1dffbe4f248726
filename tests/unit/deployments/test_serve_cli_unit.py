"""`aimlapi-video serve` as a person meets it: its help names the installed file it serves by default
(no source-tree path), and what stops it before serving is one `error:` line with exit code 2."""

from __future__ import annotations

import pytest

from prefect_aimlapi_video.deployments import serve
from prefect_aimlapi_video.deployments.cli import main


def flat(text: str) -> str:
    return "".join(text.split())  # argparse wraps a long path anywhere


def test_help_says_which_file_it_serves_the_installed_one(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert serve.PREFECT_YAML.is_absolute() and serve.PREFECT_YAML.is_file()
    assert flat(f"default: the one installed with this package, {serve.PREFECT_YAML}") in flat(text)
    assert "aimlapi-video init" in text


def test_the_command_list_names_no_source_tree_path(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("serve "))
    assert "deployments/" not in line and "bundled deployments" in line


def test_a_missing_environment_variable_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.delenv("AIMLAPI_BUCKET", raising=False)
    assert main(["serve"]) == 2
    assert capsys.readouterr().err == "error: prefect.yaml needs the environment variable AIMLAPI_BUCKET\n"


def test_a_missing_file_or_deployment_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("AIMLAPI_BUCKET", "media")
    assert main(["serve", "--prefect-file", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.startswith(f"error: --prefect-file {tmp_path / 'nope.yaml'}: ")
    assert main(["serve", "--only", "nightly-sweep", "--only", "hourly"]) == 2
    assert capsys.readouterr().err == f"error: no deployment named hourly in {serve.PREFECT_YAML}.\n"


def test_it_serves_what_it_loaded(monkeypatch):
    served = {}
    monkeypatch.setenv("AIMLAPI_BUCKET", "media")
    monkeypatch.setattr("prefect.serve", lambda *deployments, limit=None: served.update(
        names=[d.name for d in deployments], limit=limit))
    assert main(["serve", "--only", "nightly-sweep", "--limit", "2"]) == 0
    assert served == {"names": ["nightly-sweep"], "limit": 2}

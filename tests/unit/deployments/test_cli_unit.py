"""deployments.cli: options derived from the request, the scope of a command, one-line argument errors."""

from __future__ import annotations

import argparse

import pytest

from prefect_aimlapi_video.deployments.cli import _same_generation, main
from prefect_aimlapi_video.deployments.cli_options import request_values, run_parser


def parse(*argv: str) -> argparse.Namespace:
    """The `run` command's options, as `main` parses them (the video is a placeholder)."""
    parser = argparse.ArgumentParser()
    run_parser(parser.add_subparsers())
    return parser.parse_args(["run", "clip.mp4", *argv])


def test_request_options_typed_and_defaults_left_to_the_model():
    values = request_values(parse("--prompt", "ink", "--seed", "4"))
    assert values == {"prompt": "ink", "seed": 4, "model": "krea/krea-wan-14b/video-to-video"}  # the rest: the model's
    assert request_values(parse("--prompt", "x", "--no-prompt-expansion"))["enable_prompt_expansion"] is False
    with pytest.raises(SystemExit):
        parse("--prompt", "x", "--strength", "high")


def test_a_command_is_its_own_scope_unless_told_otherwise():
    assert _same_generation(parse("--prompt", "x")) == (None, {"idempotency_scope": "request"})
    assert _same_generation(parse("--prompt", "x", "--idempotency-key", "k")) == ("k", {})
    fresh = [_same_generation(parse("--prompt", "x", "--new"))[0] for _ in range(2)]
    assert fresh[0] != fresh[1] and all(k.startswith("cli-new:") for k in fresh)
    assert _same_generation(parse("--prompt", "x", "--new"))[1] == {}


def test_the_flags_given_become_the_runs_settings():
    key, settings = _same_generation(parse("--prompt", "x", "--timeout", "30", "--submissions", "records",
                                           "--aws-credentials", "aws", "--max-duration", "9"))
    assert key is None and settings == {"timeout_seconds": 30.0, "submissions": "records", "aws_credentials": "aws",
                                        "limits": {"max_duration_seconds": 9}, "idempotency_scope": "request"}


def test_argument_errors_are_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["run", "clip.mp4"])  # --prompt missing
    assert exited.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "--prompt" in lines[-1]
    with pytest.raises(SystemExit):
        main(["run", "clip.mp4", "--prompt", "x", "--new", "--idempotency-key", "k"])  # not both


def test_a_temporary_server_gets_two_minutes_to_start(monkeypatch):
    """Prefect reads its settings at import, so the CLI sets the start-up wait as a setting, not only
    in the environment (where it came too late: the first temporary server timed out after 20 s)."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    from prefect_aimlapi_video.deployments import cli

    seen = []
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    monkeypatch.setattr(cli, "_dispatch", lambda argv: seen.append(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()) or 0)
    assert cli.main(["demo"]) == 0
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "45")
    cli.main(["demo"])
    assert seen == [120, 45]

"""deployments.cli: options derived from the request, the scope of a command, one-line argument errors."""

from __future__ import annotations

import argparse

import pytest

from prefect_aimlapi_video.deployments.cli import _request_options, _request_values, _same_generation, main


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    _request_options(parser)
    for flag in ("--new", ):
        parser.add_argument(flag, action="store_true")
    parser.add_argument("--idempotency-key", default=None)
    return parser.parse_args(list(argv))


def test_request_options_typed_and_defaults_left_to_the_model():
    values = _request_values(parse("--prompt", "ink", "--seed", "4"))
    assert values == {"prompt": "ink", "strength": 0.85, "seed": 4, "enable_prompt_expansion": True,
                      "model": "krea/krea-wan-14b/video-to-video"}
    assert _request_values(parse("--prompt", "x", "--no-prompt-expansion"))["enable_prompt_expansion"] is False
    with pytest.raises(SystemExit):
        parse("--prompt", "x", "--strength", "high")


def test_a_command_is_its_own_scope_unless_told_otherwise():
    assert _same_generation(parse("--prompt", "x")) == {"idempotency_scope": "request"}
    assert _same_generation(parse("--prompt", "x", "--idempotency-key", "k")) == {"idempotency_key": "k"}
    fresh = [_same_generation(parse("--prompt", "x", "--new"))["idempotency_key"] for _ in range(2)]
    assert fresh[0] != fresh[1] and all(k.startswith("cli-new:") for k in fresh)


def test_argument_errors_are_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["run", "clip.mp4"])  # --prompt missing
    assert exited.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "--prompt" in lines[-1]
    with pytest.raises(SystemExit):
        main(["run", "clip.mp4", "--prompt", "x", "--new", "--idempotency-key", "k"])  # not both

"""deployments.sample_clip: `aimlapi-video sample-clip` writes a small real video, made here, that the
`run` command's own checks accept, prints its path, and never replaces a file unless told to."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from prefect_aimlapi_video.deployments import cli
from prefect_aimlapi_video.deployments.cli_options import run_parser
from prefect_aimlapi_video.deployments.sample_clip import HEIGHT, WIDTH
from prefect_aimlapi_video.media.video_checks import precheck


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_args(video: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    run_parser(parser.add_subparsers())
    return parser.parse_args(["run", str(video), "--prompt", "a watercolor painting"])


def test_it_writes_a_clip_the_run_command_accepts_and_prints_its_path(folder, capsys):
    assert cli.main(["sample-clip", "clip.mp4", "--seconds", "0.5"]) == 0
    clip = folder / "clip.mp4"
    assert capsys.readouterr().out == f"{clip}\n"  # the absolute path alone: clip=$(aimlapi-video sample-clip)
    info = precheck(str(clip))
    assert (info.width, info.height, info.codec) == (WIDTH, HEIGHT, "h264")
    assert info.duration == pytest.approx(0.5, abs=0.1)
    cli._precheck(run_args(clip))  # everything `aimlapi-video run clip.mp4 --prompt ...` checks before Prefect
    assert sorted(p.name for p in folder.iterdir()) == ["clip.mp4"]  # no partial file left


def test_default_name_and_a_directory(folder, capsys):
    assert cli.main(["sample-clip", "--seconds", "0.2"]) == 0
    assert capsys.readouterr().out == f"{folder / 'sample.mp4'}\n"
    (folder / "clips").mkdir()
    assert cli.main(["sample-clip", "clips", "--seconds", "0.2"]) == 0
    assert capsys.readouterr().out == f"{folder / 'clips' / 'sample.mp4'}\n"
    assert cli.main(["sample-clip", "new/deeper/c.mp4", "--seconds", "0.2"]) == 0  # folders made as needed
    assert (folder / "new" / "deeper" / "c.mp4").stat().st_size > 0


def test_an_existing_file_is_kept_unless_forced(folder, capsys):
    mine = folder / "clip.mp4"
    mine.write_bytes(b"my own video")
    assert cli.main(["sample-clip", "clip.mp4"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        f"error: {mine} already exists; add --force to replace it, or give another path.\n")
    assert mine.read_bytes() == b"my own video"
    assert cli.main(["sample-clip", "clip.mp4", "--force", "--seconds", "0.2"]) == 0
    assert precheck(str(mine)).width == WIDTH


@pytest.mark.parametrize(("argv", "reason"), [
    (["clip.mov"], "clip.mov: the sample clip is an MP4; give a path ending in .mp4."),
    (["clip.mp4", "--seconds", "0"], "--seconds must be between 0.1 and 30, not 0."),
    (["clip.mp4", "--seconds", "31"], "--seconds must be between 0.1 and 30, not 31."),
])
def test_what_it_cannot_write_is_one_line_and_exit_2(folder, capsys, argv, reason):
    assert cli.main(["sample-clip", *argv]) == 2
    assert capsys.readouterr().err == f"error: {reason}\n"
    assert list(folder.iterdir()) == []


@pytest.fixture
def no_sandbox_extra(monkeypatch):
    """The sandbox's import fails as it does without the extra (numpy missing), with the one-line
    message the sandbox package raises then; every cached import of it is forgotten meanwhile."""
    from prefect_aimlapi_video.sandbox import SANDBOX_EXTRA

    message = f"The sandbox needs numpy, which cannot be imported: {SANDBOX_EXTRA}"

    class Finder:
        def find_spec(self, name, path=None, target=None):
            if name == "prefect_aimlapi_video.sandbox":
                raise ImportError(message, name="numpy")
            return None

    for name in [n for n in sys.modules if n.startswith(("prefect_aimlapi_video.sandbox",
                                                         "prefect_aimlapi_video.deployments.sample_clip"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    return message


@pytest.mark.parametrize("argv", [["sample-clip", "clip.mp4"], ["sandbox", "--port", "0"]])
def test_without_the_sandbox_extra_it_says_how_to_install_it_in_one_line(folder, capsys, no_sandbox_extra, argv):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {no_sandbox_extra}\n" and captured.out == ""
    assert "pip install 'prefect-aimlapi-video[sandbox]'" in captured.err
    assert list(folder.iterdir()) == []

"""prefect_aimlapi_video.storage.destinations: local destinations, template fields, atomic moves (no Prefect server needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.storage.destinations import (
    DEFAULT_DIRECTORY,
    DEFAULT_TEMPLATE,
    move_atomically,
    resolve_output,
)
from prefect_aimlapi_video.storage.templates import TEMPLATE_FIELDS, template_fields

GEN_ID = "3637be63-e8d1-4ac1-9a4b-00afbdf10a55:krea/krea-wan-14b/video-to-video"


def fields(**overrides):
    values = dict(stem="clip", seed=None, strength=0.85, fingerprint="f" * 64, generation_id=GEN_ID, flow_run_id=None)
    return template_fields(**{**values, **overrides})


async def test_default_template_under_aimlapi_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = await resolve_output(None)
    assert target.kind == "local"
    assert target.template == str(tmp_path / DEFAULT_DIRECTORY / DEFAULT_TEMPLATE)
    rendered = target.render(fields())
    assert rendered == str(tmp_path / "aimlapi-outputs" / "clip-3637be63-e8d1-4ac1-9a4b-00afbdf10a55.mp4")
    assert target.location(rendered) == rendered


async def test_existing_directory_gets_default_file_name(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    target = await resolve_output(str(out))
    assert target.template == str(out / DEFAULT_TEMPLATE)


async def test_trailing_slash_is_a_directory_even_if_missing(tmp_path):
    target = await resolve_output(str(tmp_path / "new-dir") + "/")
    assert target.template == str(tmp_path / "new-dir" / DEFAULT_TEMPLATE)


async def test_absolute_path_template_kept(tmp_path):
    wanted = str(tmp_path / "videos" / "{date}" / "{stem}-{seed}-{strength}.mp4")
    target = await resolve_output(wanted)
    assert target.template == wanted
    rendered = target.render(fields(seed=42, strength=0.5))
    assert rendered.endswith("/clip-42-0.5.mp4")
    assert "{" not in rendered


async def test_relative_path_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = await resolve_output("out/{generation}.mp4")
    assert Path(target.template).is_absolute()
    assert target.template == str(tmp_path / "out" / "{generation}.mp4")


async def test_unknown_template_field_lists_the_available_ones():
    with pytest.raises(InvalidInputError) as info:
        await resolve_output("/tmp/{stem}-{resolution}.mp4")
    text = str(info.value)
    assert "'resolution'" in text
    for name in TEMPLATE_FIELDS:
        assert "{" + name + "}" in text


@pytest.mark.parametrize("template", ["/tmp/{stem", "/tmp/{0}.mp4", "/tmp/{}.mp4"])
async def test_malformed_template_refused(template):
    with pytest.raises(InvalidInputError, match="malformed|unknown field"):
        await resolve_output(template)


async def test_other_url_schemes_refused():
    with pytest.raises(InvalidInputError, match="supported are local paths and s3:// URLs"):
        await resolve_output("gs://bucket/{stem}.mp4")


def test_template_fields_sanitise_generation_id():
    values = fields(seed=7, strength=1.0, flow_run_id="0123456789abcdef")
    assert values["generation"] == "3637be63-e8d1-4ac1-9a4b-00afbdf10a55"
    assert values["seed"] == "7" and values["strength"] == "1"
    assert values["fingerprint"] == "f" * 12
    assert values["flow_run"] == "01234567"
    assert len(values["date"]) == 8 and values["date"].isdigit()
    assert fields()["seed"] == "random" and fields()["flow_run"] == "local"


@pytest.mark.parametrize("generation_id", ["../../etc/passwd", "a/b\\c:d", "weird id with spaces:x/y", ":", ""])
def test_template_fields_generation_is_one_safe_segment(generation_id):
    value = fields(generation_id=generation_id)["generation"]
    assert value
    assert not set(value) & set(":/\\ ")
    assert value not in (".", "..")
    assert len(value) <= 36


def test_move_atomically_same_filesystem(tmp_path):
    source = tmp_path / "staging" / "a.mp4"
    source.parent.mkdir()
    source.write_bytes(b"video-bytes")
    final = tmp_path / "out" / "deep" / "b.mp4"
    move_atomically(source, final)
    assert final.read_bytes() == b"video-bytes"
    assert not source.exists()
    assert [p.name for p in final.parent.iterdir()] == ["b.mp4"]


def test_move_atomically_across_filesystems_leaves_no_temp_files(tmp_path, monkeypatch):
    source = tmp_path / "a.mp4"
    source.write_bytes(b"video-bytes" * 1000)
    final = tmp_path / "out" / "b.mp4"
    real_replace = os.replace

    def cross_device(src, dst):
        if Path(src) == source:
            raise OSError(18, "Invalid cross-device link")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", cross_device)
    move_atomically(source, final)
    assert final.read_bytes() == b"video-bytes" * 1000
    assert [p.name for p in final.parent.iterdir()] == ["b.mp4"]


def test_move_atomically_failed_copy_leaves_no_temp_and_no_final(tmp_path, monkeypatch):
    source = tmp_path / "a.mp4"
    source.write_bytes(b"data")
    final = tmp_path / "out" / "b.mp4"

    def always_fails(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "replace", always_fails)
    with pytest.raises(OSError):
        move_atomically(source, final)
    assert list(final.parent.iterdir()) == []

"""prefect_aimlapi_video.tasks.output_path: where `download_video` stores a result, said once.

A template in `target` is rendered (what the task knows, plus `fields`); a `path` is used as given,
so a `{field}` in it, or a path next to a template target, is refused rather than silently ignored.
Then `download_video` itself, through `.fn` with `store_result` replaced by a recorder.
"""

from __future__ import annotations

import datetime as dt

import pytest
from prefect.logging import disable_run_logger

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.api.models import VideoInfo
from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.storage.delivery import StoredVideo
from prefect_aimlapi_video.storage.destinations import LocalDestination, S3Destination
from prefect_aimlapi_video.tasks import steps as tasks_module
from prefect_aimlapi_video.tasks.output_path import check_path_choice, field_text, render_output_path
from prefect_aimlapi_video.tasks.steps import download_video

GENERATION_ID = "0b6f3f2e-5a7c-4c1e-9d52-8a1f7c2b9e10:krea/krea-wan-14b/video-to-video"
CREDENTIALS = AimlApiCredentials(api_key="sk-unit-test-key")


def test_the_task_fills_in_the_generation_its_flow_run_and_the_date():
    destination = LocalDestination(template="/out/{generation}-{flow_run}-{date}.mp4")
    path = render_output_path(destination, GENERATION_ID, "3f0c0b1e-aaaa-bbbb", None)
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
    assert path == f"/out/0b6f3f2e-5a7c-4c1e-9d52-8a1f7c2b9e10-3f0c0b1e-{today}.mp4"
    assert render_output_path(destination, GENERATION_ID, None, None).split("-")[-2] == "local"  # outside a run


def test_the_request_fields_come_from_fields_the_way_the_flows_make_them():
    destination = S3Destination(template="renders/{stem}-{seed}-{strength}-{fingerprint}.mp4", bucket="media")
    fields = {"stem": "https://cdn.example.com/in/My Clip.mp4?X-Amz-Signature=secret", "seed": 42, "strength": 0.5,
              "fingerprint": "abc/../def"}
    assert render_output_path(destination, GENERATION_ID, None, fields) == "renders/My-Clip-42-0.5-abc-..-def.mp4"
    assert field_text("seed", None) == "random"  # as the flows name an unset seed
    assert field_text("stem", "/videos/take.2.mp4") == "take.2"


def test_a_template_field_nobody_gave_is_refused_by_name():
    destination = LocalDestination(template="/out/{stem}-{seed}-{generation}.mp4")
    with pytest.raises(InvalidInputError, match=r"needs \{seed\}, \{stem\}.*fields=") as info:
        render_output_path(destination, GENERATION_ID, None, None)
    assert "'stem': video" in str(info.value)
    with pytest.raises(InvalidInputError, match="'colour'.*not template fields"):
        render_output_path(destination, GENERATION_ID, None, {"stem": "a", "seed": 1, "colour": "red"})


@pytest.mark.parametrize("path", ["/out/{stem}.mp4", "renders/{generation}.mp4", "/out/{}.mp4"])
def test_a_field_in_path_is_refused_not_stored_literally(path):
    with pytest.raises(InvalidInputError, match="used as given, never rendered.*Put the template in target"):
        check_path_choice("/out/", path)


def test_a_template_target_with_a_path_is_refused_while_a_plain_one_or_a_checked_destination_is_not():
    with pytest.raises(InvalidInputError, match="output template.*would go unused"):
        check_path_choice("/out/{stem}.mp4", "/out/clip.mp4")
    check_path_choice("/out/", "/out/clip.mp4")  # a folder and a file in it
    check_path_choice("s3://media/renders/", "renders/clip.mp4")  # a bucket and a key in it
    check_path_choice(LocalDestination(template="/out/{stem}.mp4"), "/out/clip.mp4")  # the flows' own call
    check_path_choice("/out/{stem}.mp4", None)


class RecordingStore:
    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, client, generation_id, destination, path, **options) -> StoredVideo:
        self.paths.append(path)
        return StoredVideo(location=path, sha256="0" * 64, size_bytes=1, download_s=0.1,
                           info=VideoInfo(width=64, height=48, frames=6))


@pytest.fixture
def stored_at(monkeypatch) -> RecordingStore:
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    recorder = RecordingStore()
    monkeypatch.setattr(tasks_module, "store_result", recorder)
    with disable_run_logger():
        yield recorder


async def test_download_without_a_path_renders_its_target_template(stored_at, tmp_path):
    await download_video.fn(GENERATION_ID, CREDENTIALS, str(tmp_path / "{stem}-{seed}-{generation}.mp4"),
                            fields={"stem": str(tmp_path / "in" / "clip.mp4"), "seed": 7})
    assert stored_at.paths == [str(tmp_path / "clip-7-0b6f3f2e-5a7c-4c1e-9d52-8a1f7c2b9e10.mp4")]


async def test_download_to_a_folder_names_the_file_as_the_flows_do(stored_at, tmp_path):
    await download_video.fn(GENERATION_ID, CREDENTIALS, str(tmp_path) + "/", fields={"stem": "clip"})
    assert stored_at.paths == [str(tmp_path / "clip-0b6f3f2e-5a7c-4c1e-9d52-8a1f7c2b9e10.mp4")]


async def test_download_refuses_a_field_in_path_before_touching_anything(stored_at, tmp_path):
    with pytest.raises(InvalidInputError, match="never rendered"):
        await download_video.fn(GENERATION_ID, CREDENTIALS, str(tmp_path) + "/", str(tmp_path / "{stem}.mp4"))
    assert stored_at.paths == [] and list(tmp_path.iterdir()) == []

"""prefect_aimlapi_video.storage.sources: checking the `video` argument before anything is spent (no network here)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.storage.sources import data_uri, inspect_video


def as_data_uri(content: bytes, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64,{base64.b64encode(content).decode()}"


# ---------------------------------------------------------------- data URIs


async def test_data_uri_good(clip_bytes):
    source = await inspect_video(as_data_uri(clip_bytes))
    assert source.kind == "data_uri"
    assert source.identity == "sha256:" + hashlib.sha256(clip_bytes).hexdigest()
    assert source.size_bytes == len(clip_bytes)
    assert source.info.width == 64 and source.info.height == 48 and source.info.frames == 6
    assert source.info.codec == "h264"
    # safe to log: no payload in any field
    dumped = source.model_dump_json()
    assert base64.b64encode(clip_bytes).decode()[:40] not in dumped
    assert source.display == f"data URI ({len(clip_bytes)} bytes)"


async def test_data_uri_with_parameters_and_octet_stream(clip_bytes):
    payload = base64.b64encode(clip_bytes).decode()
    assert (await inspect_video(f"data:video/mp4;name=clip.mp4;base64,{payload}")).kind == "data_uri"
    assert (await inspect_video(f"data:application/octet-stream;base64,{payload}")).kind == "data_uri"


async def test_data_uri_identity_independent_of_mime_spelling(clip_bytes):
    a = await inspect_video(as_data_uri(clip_bytes, "video/mp4"))
    b = await inspect_video(as_data_uri(clip_bytes, "video/quicktime"))
    assert a.identity == b.identity


@pytest.mark.parametrize(
    "uri",
    ["data:video/mp4;base64", "data:,AAAA", "data:;base64,AAAA", "data:video;base64,AAAA", "data:"],
)
async def test_malformed_data_uri(uri):
    with pytest.raises(InvalidInputError, match="malformed data URI"):
        await inspect_video(uri)


async def test_data_uri_not_base64_encoded(clip_bytes):
    with pytest.raises(InvalidInputError, match="must be base64"):
        await inspect_video("data:video/mp4,%00%00%00%18ftyp")


@pytest.mark.parametrize("payload", ["@@@@not*base64!!", "AAAA====AAAA", "AAA"])
async def test_data_uri_invalid_base64_payload(payload):
    with pytest.raises(InvalidInputError, match="invalid base64"):
        await inspect_video(f"data:video/mp4;base64,{payload}")


@pytest.mark.parametrize("mime", ["image/png", "text/plain", "audio/mpeg"])
async def test_data_uri_non_video_mime(mime, clip_bytes):
    with pytest.raises(InvalidInputError, match=f"media type '{mime}'"):
        await inspect_video(as_data_uri(clip_bytes, mime))


async def test_data_uri_oversized(clip_bytes):
    with pytest.raises(InvalidInputError, match="above the 1000-byte cap") as info:
        await inspect_video(as_data_uri(clip_bytes), max_data_uri_bytes=1000)
    assert "s3://" in str(info.value)


async def test_data_uri_of_non_video_bytes():
    with pytest.raises(InvalidInputError, match="not a readable video|no video stream"):
        await inspect_video(as_data_uri(b"this is plainly not a video file, just some text" * 4))


async def test_error_messages_do_not_echo_the_payload():
    payload = base64.b64encode(b"SECRETISH-CONTENT" * 10).decode()
    with pytest.raises(InvalidInputError) as info:
        await inspect_video(f"data:image/png;base64,{payload}")
    assert payload[:30] not in str(info.value)


# ---------------------------------------------------------------- local files


async def test_local_file_good(clip_path, clip_bytes):
    source = await inspect_video(str(clip_path))
    assert source.kind == "local_file"
    assert source.identity == "sha256:" + hashlib.sha256(clip_bytes).hexdigest()
    assert source.display == str(clip_path.resolve())
    assert source.stem == "input-clip"
    assert source.size_bytes == len(clip_bytes)
    assert (source.info.width, source.info.height, source.info.frames) == (64, 48, 6)


async def test_local_file_and_data_uri_of_same_bytes_share_identity(clip_path, clip_bytes):
    assert (await inspect_video(str(clip_path))).identity == (await inspect_video(as_data_uri(clip_bytes))).identity


async def test_local_file_missing(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(InvalidInputError, match="does not exist") as info:
        await inspect_video(str(missing))
    assert str(missing) in str(info.value)


async def test_local_directory(tmp_path):
    with pytest.raises(InvalidInputError, match="is not a file"):
        await inspect_video(str(tmp_path))


async def test_local_empty_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(InvalidInputError, match="is empty"):
        await inspect_video(str(empty))


async def test_local_text_file_is_not_a_video(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("just a shopping list\n" * 20)
    with pytest.raises(InvalidInputError, match="not a readable video|no video stream") as info:
        await inspect_video(str(text))
    assert "notes.mp4" in str(info.value)


async def test_local_file_over_cap_and_at_cap(clip_path, clip_bytes):
    with pytest.raises(InvalidInputError, match=f"{len(clip_bytes)} bytes, above the 100-byte cap"):
        await inspect_video(str(clip_path), max_inline_file_bytes=100)
    assert (await inspect_video(str(clip_path), max_inline_file_bytes=len(clip_bytes))).kind == "local_file"


@pytest.mark.parametrize("video", ["", "   ", None])
async def test_empty_video_argument(video):
    with pytest.raises(InvalidInputError, match="video is empty"):
        await inspect_video(video)


# ---------------------------------------------------------------- URLs


@pytest.mark.parametrize("scheme", ["ftp", "file", "gs"])
async def test_unsupported_schemes_refused(scheme):
    with pytest.raises(InvalidInputError, match=f"scheme '{scheme}' is not supported"):
        await inspect_video(f"{scheme}://host/path/video.mp4", check_url=False)


async def test_plain_http_remote_refused():
    with pytest.raises(InvalidInputError, match="must be https") as info:
        await inspect_video("http://example.com/v.mp4?token=SECRETTOKEN", check_url=False)
    assert "SECRETTOKEN" not in str(info.value)


async def test_https_url_without_network_check():
    url = "https://cdn.example.com/media/My%20Clip.mp4?X-Amz-Signature=SIGXYZ&X-Amz-Credential=AKIA"
    source = await inspect_video(url, check_url=False)
    assert source.kind == "url"
    assert source.display == "https://cdn.example.com/media/My%20Clip.mp4"
    assert "SIGXYZ" not in source.model_dump_json() and "AKIA" not in source.model_dump_json()
    assert source.stem == "My-Clip"
    # identity distinguishes different signed objects without containing the signature
    other = await inspect_video(url.replace("My%20Clip", "Other"), check_url=False)
    assert other.identity != source.identity
    assert (await source.video_url()) == url


async def test_loopback_http_allowed_without_network_check():
    source = await inspect_video("http://127.0.0.1:8787/files/in.mp4", check_url=False)
    assert source.kind == "url"


# ---------------------------------------------------------------- video_url()


async def test_video_url_for_local_file_is_a_data_uri_of_the_file(clip_path, clip_bytes):
    source = await inspect_video(str(clip_path))
    uri = await source.video_url()
    assert uri.startswith("data:video/mp4;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == clip_bytes
    assert uri == data_uri(clip_bytes)


async def test_video_url_for_data_uri_is_the_same_uri(clip_bytes):
    uri = as_data_uri(clip_bytes)
    source = await inspect_video("  " + uri + "\n")
    assert await source.video_url() == uri


async def test_data_uri_at_exactly_the_cap_is_accepted(clip_bytes):
    # The cap is in bytes of video, as for local files (a file of exactly the cap is accepted above).
    # The estimate len(payload) * 3 // 4 counts base64 padding as data, so up to 2 bytes too many.
    assert len(clip_bytes) % 3 != 0  # the payload has '=' padding
    source = await inspect_video(as_data_uri(clip_bytes), max_data_uri_bytes=len(clip_bytes))
    assert source.size_bytes == len(clip_bytes)

"""prefect_aimlapi_video.media.video_checks: what is known about a `video` argument offline.

`precheck` (the CLI's check before anything starts), the kind of an argument (`scheme_of`), the
exact byte cap of a data URI, path-safe names for outputs (`file_stem`) and file digests. The
checks `inspect_video` shares with this module (malformed data URIs, missing or empty files, plain
http) are in test_sources_unit.py.
"""

from __future__ import annotations

import hashlib
import re

import pytest

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.media import video_checks
from prefect_aimlapi_video.media.video_checks import (
    data_uri,
    decode_data_uri,
    file_stem,
    precheck,
    scheme_of,
    sha256_file,
)

# ---------------------------------------------------------------- file_stem


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("https://cdn.example.com/media/My%20Clip.mp4?X-Amz-Signature=SIG", "My-Clip"),
        ("s3://bucket/dir/clip.final.mov", "clip.final"),
        ("/videos/in/", "in"),
        ("été vidéo.mp4", "t-vid-o"),
        # nothing usable left: a generic name
        ("", "video"),
        ("..", "video"),
        ("%%%.mp4", "video"),
        ("/", "video"),
    ],
)
def test_file_stem_is_the_last_segment_without_query_or_suffix(name, stem):
    assert file_stem(name) == stem


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", ".hidden.mp4", "a b/c:d*e?.mp4", "x" * 200 + ".mp4", "-- weird --.mov"]
)
def test_file_stem_is_always_a_short_safe_file_name(name):
    stem = file_stem(name)
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,60}", stem)
    assert not stem.startswith((".", "-"))  # never a hidden file or something that reads as an option
    assert "/" not in stem and ".." not in stem


# ---------------------------------------------------------------- scheme_of


@pytest.mark.parametrize(
    ("video", "scheme"),
    [
        ("C:\\videos\\in.mp4", ""),  # a Windows drive letter is not a URL scheme
        ("c:/videos/in.mp4", ""),
        ("relative/clip.mp4", ""),
        ("~/clip.mp4", ""),
        ("  data:video/mp4;base64,AAAA\n", "data"),
        ("S3://Bucket/key.mp4", "s3"),
        ("HTTPS://cdn.example.com/a.mp4", "https"),
        ("http://127.0.0.1:8787/in.mp4", "http"),
    ],
)
def test_scheme_of_names_the_kind_of_argument(video, scheme):
    assert scheme_of(video) == scheme


@pytest.mark.parametrize("video", ["mailto:someone@example.com", "ftp://host/v.mp4", "javascript:alert(1)"])
def test_scheme_of_refuses_other_schemes_and_says_what_is_taken(video):
    with pytest.raises(InvalidInputError, match="not supported") as info:
        scheme_of(video)
    assert "s3://bucket/key" in str(info.value)


# ---------------------------------------------------------------- data URIs


@pytest.mark.parametrize("mime", ["video/mp4", "video/webm", "application/octet-stream"])
def test_data_uri_round_trips_through_decode_data_uri(mime):
    content = bytes(range(256)) * 3 + b"\x00tail"
    uri = data_uri(content, mime)
    assert uri.startswith(f"data:{mime};base64,")
    assert decode_data_uri(uri, max_bytes=len(content)) == content


@pytest.mark.parametrize("size", [300, 301, 302])  # no padding, '==' and '='
def test_data_uri_cap_is_exact_in_bytes_of_video_whatever_the_padding(size):
    uri = data_uri(b"\x07" * size)
    assert len(decode_data_uri(uri, max_bytes=size)) == size
    with pytest.raises(InvalidInputError, match=f"about {size} bytes, above the {size - 1}-byte cap"):
        decode_data_uri(uri, max_bytes=size - 1)


# ---------------------------------------------------------------- sha256_file


def test_sha256_file_hashes_every_chunk_of_a_file_larger_than_one_read(tmp_path):
    content = b"0123456789abcdef" * (1024 * 1024 // 16) + b"after the first MiB"
    path = tmp_path / "big.bin"
    path.write_bytes(content)
    assert sha256_file(path) == hashlib.sha256(content).hexdigest()
    small = tmp_path / "abc.bin"
    small.write_bytes(b"abc")
    assert sha256_file(small) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# ---------------------------------------------------------------- precheck


def test_precheck_describes_what_is_at_hand_without_the_network(monkeypatch, clip_path, clip_bytes):
    assert precheck(str(clip_path)).frames == 6
    assert precheck(f"  {clip_path}\n").width == 64
    monkeypatch.setenv("HOME", str(clip_path.parent))
    assert precheck(f"~/{clip_path.name}").height == 48
    assert precheck(data_uri(clip_bytes)).duration > 0
    assert precheck("https://cdn.invalid/v.mp4?sig=1") is None  # .invalid never resolves: nothing fetched
    assert precheck("http://localhost:8787/in.mp4") is None
    assert precheck("http://[::1]:8787/in.mp4") is None
    assert precheck("s3://bucket/videos/in.mp4") is None


def test_precheck_probes_a_data_uri_and_refuses_one_that_holds_no_video():
    with pytest.raises(InvalidInputError, match="video data URI") as info:
        precheck(data_uri(b"plainly a text file, not a video " * 8))
    assert "not a readable video" in str(info.value) or "no video stream" in str(info.value)


def test_precheck_applies_the_data_uri_parameter_cap(monkeypatch, clip_bytes):
    monkeypatch.setattr(video_checks, "MAX_DATA_URI_BYTES", len(clip_bytes) - 1)
    with pytest.raises(InvalidInputError, match="cap for a data URI"):
        precheck(data_uri(clip_bytes))


def test_precheck_lets_a_staged_file_exceed_the_inline_cap_but_not_an_inline_one(monkeypatch, clip_path, clip_bytes):
    monkeypatch.setattr(video_checks, "MAX_INLINE_FILE_BYTES", len(clip_bytes) - 1)
    with pytest.raises(InvalidInputError, match="cap for sending a file inline") as info:
        precheck(str(clip_path))
    assert "stage_to" in str(info.value)
    assert precheck(str(clip_path), staged=True) is not None
    text = clip_path.with_name("notes.mp4")  # staged files are still probed
    text.write_text("a shopping list, not a video\n" * 20)
    with pytest.raises(InvalidInputError, match="notes.mp4"):
        precheck(str(text), staged=True)



@pytest.mark.parametrize("video", ["s3://", "s3://bucket", "s3://bucket/", "s3:///key.mp4"])
def test_precheck_refuses_an_s3_url_without_bucket_or_key_offline(video):
    with pytest.raises(InvalidInputError, match="s3://bucket/key"):
        precheck(video)


def test_a_local_file_whose_name_holds_a_colon_is_a_path_not_a_url_scheme(tmp_path, monkeypatch, clip_bytes):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "take:2.mp4").write_bytes(clip_bytes)
    assert scheme_of("take:2.mp4") == ""
    assert precheck("take:2.mp4") is not None
    with pytest.raises(InvalidInputError, match="scheme 'take' is not supported"):
        scheme_of("take:3.mp4")  # no such file: still read as a URL with an unknown scheme
    with pytest.raises(InvalidInputError, match="scheme 'ftp' is not supported"):
        scheme_of("ftp://host/take:2.mp4")

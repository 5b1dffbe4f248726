"""What can be known about a `video` argument without the network, S3 or Prefect.

The scheme, a data URI's shape and content, a local file's existence, size and readability as a
video: checked here, by `storage.sources` before it looks further (fetching a URL's first bytes, an S3
HeadObject), and by the CLI before it starts anything at all, so bad input is answered at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from prefect_aimlapi_video.api.connection import is_loopback
from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.api.models import VideoInfo
from prefect_aimlapi_video.api.redact import safe_url
from prefect_aimlapi_video.media.probe import probe_video

# A local file is sent inline: read and base64-encoded inside the submit step, it travels in the
# POST body. Keep bodies well below what an API gateway accepts: 20 MiB of video is about 27 MiB
# of request. Larger files go through S3 (`stage_to`, or pass s3://bucket/key).
MAX_INLINE_FILE_BYTES = 20 * 1024 * 1024
# A data URI given as the `video` parameter is stored with the flow run, and Prefect's API refuses
# parameters above 512 KB; 256 KiB of video (~342 KB of base64) leaves room for the rest.
MAX_DATA_URI_BYTES = 256 * 1024
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".mkv")
# A queued job may wait before the API fetches its input, so presigned input URLs live for hours.
DEFAULT_PRESIGN_SECONDS = 3 * 3600
# The kinds of `video` we take, by URL scheme ("" is a local path).
KNOWN_SCHEMES = ("data", "http", "https", "s3", "")
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)(?P<params>(?:;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,")


def file_stem(name: str) -> str:
    """A short, path-safe name for a video, from the last segment of its path or URL."""
    stem = Path(unquote(name.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])).stem or "video"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")[:60] or "video"


def data_uri(content: bytes, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64,{base64.b64encode(content).decode()}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def scheme_of(video: str) -> str:
    """The kind of a `video` argument (one of `KNOWN_SCHEMES`), or the error that says what we take."""
    if not isinstance(video, str) or not video.strip():
        raise InvalidInputError("video is empty: give an https URL, a data URI, a local path or s3://bucket/key.")
    video = video.strip()
    scheme = "data" if video.startswith("data:") else urlsplit(video).scheme
    if len(scheme) == 1:  # a Windows drive letter, not a scheme
        scheme = ""
    if scheme not in KNOWN_SCHEMES and not video[len(scheme) + 1:].startswith("//") and Path(video).expanduser().exists():
        scheme = ""  # a local file whose name holds a colon (`take:2.mp4`), not a URL
    if scheme not in KNOWN_SCHEMES:
        raise InvalidInputError(
            f"video URL scheme {scheme!r} is not supported; use https://, a data URI, a local path or s3://bucket/key."
        )
    return scheme


def parse_s3_url(url: str) -> tuple[str, str]:
    """Bucket and key of `s3://bucket/key` (offline: the CLI checks it before starting Prefect)."""
    parts = urlsplit(url)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if parts.scheme != "s3" or not bucket or not key:
        raise InvalidInputError(f"{url!r} is not an s3://bucket/key URL.")
    return bucket, key


def decode_data_uri(video: str, max_bytes: int) -> bytes:
    match = _DATA_URI.match(video)
    if not match:
        raise InvalidInputError("video is a malformed data URI: expected 'data:video/mp4;base64,<payload>'.")
    if not match.group("mime").startswith("video/") and match.group("mime") != "application/octet-stream":
        raise InvalidInputError(f"video data URI has media type {match.group('mime')!r}; expected video/*.")
    if not match.group("b64"):
        raise InvalidInputError("video data URI must be base64-encoded (';base64,').")
    payload = video[match.end():]
    size = len(payload) * 3 // 4 - len(payload) + len(payload.rstrip("="))
    if size > max_bytes:
        raise InvalidInputError(
            f"video data URI holds about {size} bytes, above the {max_bytes}-byte cap for a data URI "
            "parameter (Prefect stores parameters with the flow run); pass a local path or s3://bucket/key."
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError("video data URI has an invalid base64 payload.") from None


def check_url(video: str) -> None:
    """The API fetches a URL itself: https, or plain http only on loopback (the local sandbox)."""
    parts = urlsplit(video)
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise InvalidInputError(f"video URL must be https (got {safe_url(video)}); the API fetches it itself.")


def check_local_file(path: Path, max_bytes: int, *, staged: bool) -> tuple[int, VideoInfo]:
    """(size, what the video holds) of a local file that can be sent (inline, or `staged` through S3)."""
    if not path.exists():
        raise InvalidInputError(f"video file {path} does not exist.")
    if not path.is_file():
        raise InvalidInputError(f"video path {path} is not a file.")
    size = path.stat().st_size
    if size == 0:
        raise InvalidInputError(f"video file {path} is empty.")
    if size > max_bytes and not staged:
        raise InvalidInputError(
            f"video file {path} is {size} bytes, above the {max_bytes}-byte cap for sending a file inline; "
            "upload it to S3 and pass s3://bucket/key, or set `stage_to` to an S3Bucket block."
        )
    return size, probe_video(path, label=f"video file {path}")


def precheck(video: str, *, staged: bool = False) -> VideoInfo | None:
    """Everything knowable about `video` offline (scheme, data URI, local file); what the video holds,
    when it is at hand (a data URI, a local file)."""
    scheme = scheme_of(video)
    video = video.strip()
    if scheme == "data":
        return probe_video(decode_data_uri(video, MAX_DATA_URI_BYTES), label="video data URI")
    if scheme in ("http", "https"):
        check_url(video)
    elif scheme == "s3":
        parse_s3_url(video)
    elif scheme == "":
        return check_local_file(Path(video).expanduser(), MAX_INLINE_FILE_BYTES, staged=staged)[1]
    return None

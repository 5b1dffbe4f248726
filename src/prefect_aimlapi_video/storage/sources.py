"""Where a video comes from: one small class per kind of source, each checked before any POST.

`inspect_video` turns the user's `video` argument into a `VideoSource` (an https URL, a data URI, a
local file, an S3 object), failing fast with a specific message. A URL is fetched (its first
bytes, then its header for the probe) only through the fetch guard (`api.fetch_guard`: each
redirect hop https and public, unless the API is a sandbox on loopback) and within
`SourceOptions.fetch_deadline_seconds`; an S3 object is probed with S3's own client. A source knows how to show itself
safely (`display`), what identifies its content in a request fingerprint (`identity`), and how to
produce the value actually sent as `video_url` (`video_url()`: a data URI, the URL, or a presigned
S3 URL). Call `video_url()` only where the value can stay secret (inside the submit step).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mimetypes
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, Field

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.api.fetch_guard import (
    FetchPolicy,
    FetchRefused,
    GuardedSyncTransport,
    GuardedTransport,
    RangeFile,
    http_range_fetch,
    open_stream,
)
from prefect_aimlapi_video.api.models import VideoInfo
from prefect_aimlapi_video.api.redact import safe_url
from prefect_aimlapi_video.media import video_checks
from prefect_aimlapi_video.media.probe import probe_remote, probe_video
from prefect_aimlapi_video.media.video_checks import (
    DEFAULT_PRESIGN_SECONDS,
    MAX_DATA_URI_BYTES,
    MAX_INLINE_FILE_BYTES,
    VIDEO_SUFFIXES,
    check_local_file,
    check_url,
    data_uri,
    decode_data_uri,
    file_stem,
    scheme_of,
    sha256_file,
)
from prefect_aimlapi_video.storage.block_refs import load_block
from prefect_aimlapi_video.storage.s3 import (
    call,
    in_bucket_folder,
    object_version,
    parse_s3_url,
    presign_get,
    read_range,
    s3_client,
    s3_identity,
    upload_verified,
)

__all__ = ["DEFAULT_PRESIGN_SECONDS", "MAX_DATA_URI_BYTES", "MAX_INLINE_FILE_BYTES", "VIDEO_SUFFIXES", "AnySource",
           "DataUriSource", "LocalFileSource", "S3Source", "SourceOptions", "UrlSource", "VideoSource", "data_uri",
           "file_stem", "inspect_video", "sha256_file"]

_VIDEO_SIGNATURES = (b"ftyp", b"\x1a\x45\xdf\xa3")  # ISO BMFF box at offset 4, or an EBML (WebM) header


class SourceOptions(BaseModel):
    """What checking a source may need beyond the `video` argument itself."""

    aws_credentials: str | None = None
    stage_to: str | None = None
    presign_seconds: int = DEFAULT_PRESIGN_SECONDS
    max_data_uri_bytes: int | None = None  # None: video_checks.MAX_DATA_URI_BYTES (read when used)
    max_inline_file_bytes: int | None = None  # None: video_checks.MAX_INLINE_FILE_BYTES
    check_url: bool = True
    allow_local: bool = False  # plain http and loopback/private hosts: only for a sandbox on loopback
    fetch_deadline_seconds: float = 60.0  # all of checking a remote input, however slowly it answers

    @property
    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy(allow_local=self.allow_local)


class VideoSource(BaseModel):
    """A checked video source. `display`, `identity`, `stem` and `info` are safe to show anywhere;
    what a source needs to produce its `video_url` but must not show is excluded from its dumps."""

    kind: str
    display: str
    identity: str
    stem: str
    size_bytes: int | None = None
    info: VideoInfo | None = None

    async def video_url(self) -> str:
        """The `video_url` to send. A secret (a data URI, a signed URL): never log or return it."""
        raise NotImplementedError

    @contextlib.contextmanager
    def local_copy(self) -> Iterator[Path | None]:
        """The video as a local file, when it is at hand without fetching it (for previews)."""
        yield None


class DataUriSource(VideoSource):
    kind: Literal["data_uri"] = "data_uri"
    uri: str = Field(repr=False, exclude=True)  # the content itself: never dumped into logs or results

    @classmethod
    async def inspect(cls, video: str, options: SourceOptions) -> DataUriSource:
        content = decode_data_uri(video, options.max_data_uri_bytes or video_checks.MAX_DATA_URI_BYTES)
        digest = hashlib.sha256(content).hexdigest()
        info = probe_video(content, label="video data URI")
        return cls(display=f"data URI ({len(content)} bytes)", identity=f"sha256:{digest}", stem=f"inline-{digest[:8]}",
                   size_bytes=len(content), info=info, uri=video)

    async def video_url(self) -> str:
        return self.uri

    @contextlib.contextmanager
    def local_copy(self) -> Iterator[Path | None]:
        with tempfile.TemporaryDirectory(prefix="aimlapi-input-") as directory:
            path = Path(directory) / "input.mp4"
            path.write_bytes(decode_data_uri(self.uri, len(self.uri)))
            yield path


class UrlSource(VideoSource):
    kind: Literal["url"] = "url"
    url: str = Field(repr=False, exclude=True)  # may carry a signed query: never dumped

    @classmethod
    async def inspect(cls, video: str, options: SourceOptions) -> UrlSource:
        parts = urlsplit(video)
        check_url(video)
        info = None
        if options.check_url:
            shown = safe_url(video)
            deadline = time.monotonic() + options.fetch_deadline_seconds
            try:
                async with asyncio.timeout(options.fetch_deadline_seconds):
                    await _check_remote(video, options.fetch_policy)
                info = await asyncio.to_thread(_probe_url, video, options.fetch_policy, deadline)
            except FetchRefused as exc:
                raise InvalidInputError(f"video URL: {exc}") from None
            except TimeoutError:
                raise InvalidInputError(f"video URL {shown} did not answer within the {options.fetch_deadline_seconds:g} s "
                                        "input fetch deadline.") from None
        return cls(display=safe_url(video), identity=f"{safe_url(video)}#{hashlib.sha256(video.encode()).hexdigest()[:16]}",
                   stem=file_stem(parts.path), info=info, url=video)

    async def video_url(self) -> str:
        return self.url


class LocalFileSource(VideoSource):
    """Sent inline as a data URI, or, above the inline cap, uploaded through `stage_to` and presigned."""

    kind: Literal["local_file"] = "local_file"
    stage_to: str | None = None
    presign_seconds: int = DEFAULT_PRESIGN_SECONDS

    @property
    def path(self) -> Path:
        return Path(self.display)

    @contextlib.contextmanager
    def local_copy(self) -> Iterator[Path | None]:
        yield self.path

    @classmethod
    async def inspect(cls, video: str, options: SourceOptions) -> LocalFileSource:
        path = Path(video).expanduser()
        cap = options.max_inline_file_bytes or video_checks.MAX_INLINE_FILE_BYTES
        size, info = check_local_file(path, cap, staged=bool(options.stage_to))
        if options.stage_to:
            await load_block(options.stage_to, what="stage_to")
        return cls(display=str(path.resolve()), identity=f"sha256:{sha256_file(path)}", stem=file_stem(path.name),
                   size_bytes=size, info=info, stage_to=options.stage_to if size > cap else None,
                   presign_seconds=options.presign_seconds)

    async def video_url(self) -> str:
        if not self.stage_to:
            return data_uri(self.path.read_bytes(), mimetypes.guess_type(self.path.name)[0] or "video/mp4")
        block = await load_block(self.stage_to, what="stage_to")
        key = in_bucket_folder(block, f"aimlapi-staging/{self.identity.removeprefix('sha256:')[:16]}/{self.path.name}")
        client = await s3_client(bucket_block=block)
        await upload_verified(client, self.path, block.bucket_name, key, sha256=self.identity.removeprefix("sha256:"),
                              content_type="video/mp4")
        return await presign_get(f"s3://{block.bucket_name}/{key}", bucket_block=block, expires_in=self.presign_seconds)


class S3Source(VideoSource):
    """Handed to the API as a presigned GET, pinned to the version (or etag) that was checked."""

    kind: Literal["s3"] = "s3"
    aws_credentials: str | None = None
    version_id: str | None = None
    etag: str | None = None
    presign_seconds: int = DEFAULT_PRESIGN_SECONDS

    @classmethod
    async def inspect(cls, video: str, options: SourceOptions) -> S3Source:
        bucket, key = parse_s3_url(video)
        client = await s3_client(options.aws_credentials)
        shown = f"s3://{bucket}/{key}"
        head = await call(f"video {shown}", client.head_object, Bucket=bucket, Key=key)
        size = int(head.get("ContentLength", 0))
        if size == 0:
            raise InvalidInputError(f"video {shown} is empty.")
        content_type = str(head.get("ContentType") or "")
        if not content_type.startswith("video/"):
            magic = await read_range(bucket, key, client, 16)
            if magic[4:8] not in _VIDEO_SIGNATURES and magic[:4] not in _VIDEO_SIGNATURES:
                raise InvalidInputError(
                    f"video {shown} is not a video (content type {content_type or 'unset'}, no MP4/WebM signature)."
                )
        version_id, etag = object_version(head)
        deadline = time.monotonic() + options.fetch_deadline_seconds
        info = await asyncio.to_thread(probe_remote, RangeFile(_s3_range(client, bucket, key, version_id), deadline),
                                       label=f"video {shown}", size=size)
        return cls(display=shown, identity=s3_identity(shown, version_id, etag), stem=file_stem(key), size_bytes=size,
                   info=info, aws_credentials=options.aws_credentials, version_id=version_id, etag=etag,
                   presign_seconds=options.presign_seconds)

    async def video_url(self) -> str:
        return await presign_get(self.display, aws_credentials=self.aws_credentials, expires_in=self.presign_seconds,
                                 version_id=self.version_id, etag=self.etag)


# What a task can take: any checked source, told apart by `kind`.
AnySource = Annotated[DataUriSource | UrlSource | LocalFileSource | S3Source, Field(discriminator="kind")]
# scheme (`video_checks.KNOWN_SCHEMES`) -> source class; "" is a local path.
SOURCES: dict[str, Any] = {"data": DataUriSource, "http": UrlSource, "https": UrlSource, "s3": S3Source,
                           "": LocalFileSource}


async def inspect_video(video: str, options: SourceOptions | None = None, **settings: Any) -> VideoSource:
    """Check a `video` argument without spending anything; `InvalidInputError` if it is unusable."""
    options = options or SourceOptions(**settings)
    source = SOURCES[scheme_of(video)]
    video = video.strip()
    return await source.inspect(video, options)


async def _check_remote(url: str, policy: FetchPolicy) -> None:
    """Cheap reachability check: the first bytes of the URL, so a dead link fails before a POST."""
    shown = safe_url(url)
    try:
        async with httpx.AsyncClient(timeout=15.0, transport=GuardedTransport(policy)) as http:
            async with open_stream(http, url, headers={"Range": "bytes=0-1023"}) as response:
                if response.status_code >= 400:
                    raise InvalidInputError(f"video URL {shown} answered {response.status_code}; is it public?")
                if response.headers.get("content-type", "").startswith("text/html"):
                    raise InvalidInputError(f"video URL {shown} serves a web page, not a video file.")
    except httpx.HTTPError as exc:
        raise InvalidInputError(f"video URL {shown} cannot be reached ({type(exc).__name__}).") from None


def _probe_url(url: str, policy: FetchPolicy, deadline: float) -> VideoInfo | None:
    """The shape of a remote video, read with range requests through the fetch guard (in a thread)."""
    with httpx.Client(timeout=15.0, transport=GuardedSyncTransport(policy)) as http:
        return probe_remote(RangeFile(http_range_fetch(http, url), deadline), label=f"video URL {safe_url(url)}")


def _s3_range(client: Any, bucket: str, key: str, version_id: str | None) -> Any:
    """`RangeFile`'s fetch from S3 with the user's own client (no URL for anything else to follow)."""
    extra = {"VersionId": version_id} if version_id else {}

    def fetch(start: int, end: int) -> tuple[bytes, int]:
        answer = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end}", **extra)
        total = str(answer.get("ContentRange", "")).rpartition("/")[2]
        data = answer["Body"].read()
        return data, int(total) if total.isdigit() else start + len(data)
    return fetch

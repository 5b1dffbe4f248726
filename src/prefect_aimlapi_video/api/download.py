"""Streaming a result video to disk, verified, without holding it in memory. No Prefect here.

Result URLs are signed CDN links, fetched with a client that carries no API key, through the
fetch guard (`api.fetch_guard`: every redirect hop https and public), within an overall deadline
(`deadline_seconds`: a CDN that drips one byte a second never resets it, unlike a read timeout).
The bytes are hashed and written in a worker thread while the event loop keeps reading; a download
is verified (declared length, size cap, MP4 signature) and becomes visible only by an atomic
rename, so a failed attempt never leaves a partial file. A 4xx answer is final: not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from pathlib import Path

import httpx
from pydantic import BaseModel

from prefect_aimlapi_video.api.connection import shared_ssl_context
from prefect_aimlapi_video.api.errors import DownloadError
from prefect_aimlapi_video.api.fetch_guard import FetchPolicy, FetchRefused, GuardedTransport, open_stream
from prefect_aimlapi_video.api.redact import redact, safe_url

DEFAULT_MAX_DOWNLOAD_BYTES = 2 * 1024**3
DEFAULT_DOWNLOAD_DEADLINE_SECONDS = 900.0
_FLUSH_BYTES = 8 * 1024 * 1024


class DownloadedFile(BaseModel):
    path: Path
    sha256: str
    size_bytes: int
    content_type: str | None = None



class _HashingWriter:
    """Hashes and writes a download in a worker thread while the event loop keeps reading.

    Double-buffered: up to `_FLUSH_BYTES` accumulate while the previous batch is hashed and
    written (hashlib and file writes release the GIL), so neither the loop nor the network
    waits on the disk, and fsync happens off the loop.
    """

    def __init__(self, path: Path) -> None:
        self._handle = open(path, "wb")
        self._digest = hashlib.sha256()
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._pending: asyncio.Future[None] | None = None

    def _flush(self, chunks: list[bytes]) -> None:
        block = b"".join(chunks)  # one large update/write: each releases the GIL for its whole length
        self._digest.update(block)
        self._handle.write(block)

    async def _drain(self) -> None:
        if self._pending is not None:
            await self._pending
            self._pending = None

    def add(self, chunk: bytes) -> bool:
        """Buffer a chunk (no await per chunk: at 64 KiB a chunk, that would be thousands a second);
        True when a batch is ready for `hand_off`."""
        self._buffer.append(chunk)
        self._buffered += len(chunk)
        return self._buffered >= _FLUSH_BYTES

    async def hand_off(self) -> None:
        await self._drain()
        chunks, self._buffer, self._buffered = self._buffer, [], 0
        self._pending = asyncio.ensure_future(asyncio.to_thread(self._flush, chunks))

    async def finish(self) -> str:
        await self._drain()
        chunks, self._buffer = self._buffer, []
        await asyncio.to_thread(self._flush, chunks)
        await asyncio.to_thread(lambda: (self._handle.flush(), os.fsync(self._handle.fileno())))
        return self._digest.hexdigest()

    async def close(self) -> None:
        if self._pending is not None:
            await asyncio.gather(self._pending, return_exceptions=True)
        self._handle.close()



class ResultDownloader:
    """The key-less, guarded HTTP client for result files, made only when a download happens."""

    def __init__(self, *, timeout: httpx.Timeout, max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
                 deadline_seconds: float = DEFAULT_DOWNLOAD_DEADLINE_SECONDS, policy: FetchPolicy | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.max_bytes, self.deadline_seconds = max_bytes, deadline_seconds
        self.policy = policy or FetchPolicy()
        self._timeout = timeout
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    @property
    def _cdn(self) -> httpx.AsyncClient:
        if self._client is None:
            inner = self._transport or httpx.AsyncHTTPTransport(verify=shared_ssl_context())
            self._client = httpx.AsyncClient(timeout=self._timeout, transport=GuardedTransport(self.policy, inner))
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def download(self, url: str, destination: Path, *, max_bytes: int | None = None) -> DownloadedFile:
        """Stream `url` to `destination` atomically, verifying length, size cap and MP4 signature."""
        limit = max_bytes or self.max_bytes
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.parent / f".{destination.name}.{uuid.uuid4().hex}.part"
        try:
            try:
                async with asyncio.timeout(self.deadline_seconds):
                    result = await self._stream_to(url, partial, limit)
            except TimeoutError:
                raise DownloadError(f"Downloading {safe_url(url)} did not finish within its {self.deadline_seconds:g} s "
                                    "deadline (download_deadline_seconds).") from None
            os.replace(partial, destination)
            return result.model_copy(update={"path": destination})
        finally:
            with contextlib.suppress(OSError):  # never hide the download's own error behind a clean-up's
                partial.unlink(missing_ok=True)

    async def _stream_to(self, url: str, partial: Path, limit: int) -> DownloadedFile:
        shown = safe_url(url)
        try:
            async with open_stream(self._cdn, url) as response:
                if not response.is_success:
                    raise DownloadError(f"Downloading {shown} answered {response.status_code}.",
                                        status_code=response.status_code, permanent=400 <= response.status_code < 500
                                        and response.status_code not in (408, 429))
                return await self._write_body(response, partial, limit, shown)
        except FetchRefused as exc:
            raise DownloadError(f"Downloading the result: {exc}", permanent=True) from None
        except httpx.TransportError as exc:
            raise DownloadError(
                f"Downloading {shown} failed ({type(exc).__name__}: {redact(str(exc))[:200]})."
            ) from None

    async def _write_body(self, response: httpx.Response, partial: Path, limit: int, shown: str) -> DownloadedFile:
        declared = response.headers.get("content-length")
        expected = int(declared) if declared and declared.isdigit() else None
        if expected is not None and expected > limit:
            raise DownloadError(f"{shown} is {expected} bytes, above the {limit}-byte download limit.", permanent=True)
        sink = _HashingWriter(partial)
        size = 0
        head = b""
        try:
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > limit:
                    raise DownloadError(f"{shown} exceeded the {limit}-byte download limit.", permanent=True)
                if len(head) < 12:
                    head += chunk[: 12 - len(head)]
                if sink.add(chunk):
                    await sink.hand_off()
            digest = await sink.finish()
        finally:
            await sink.close()
        if expected is not None and size != expected:
            raise DownloadError(f"Download of {shown} was truncated: got {size} of {expected} bytes.")
        if head[4:8] != b"ftyp":
            raise DownloadError(f"{shown} is not an MP4 file (no 'ftyp' box at the start).", permanent=True)
        return DownloadedFile(
            path=partial,
            sha256=digest,
            size_bytes=size,
            content_type=response.headers.get("content-type"),
        )

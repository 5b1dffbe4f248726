"""An async client for the AI/ML API video-generation endpoints. Plain Python: no Prefect here.

The client maps every HTTP outcome to one exception type from `prefect_aimlapi_video.flows.errors`, and it keeps the
one distinction that matters for money: a POST that certainly was not accepted (connection
refused, an HTTP error answer) versus one whose answer was lost (`SubmissionOutcomeUnknown`).
Downloads use a second HTTP client without the API key, since result URLs point to a CDN.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import hashlib
import ipaddress
import os
import ssl
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import BaseModel, SecretStr

from prefect_aimlapi_video.flows.errors import (
    AimlApiError,
    AuthenticationError,
    DownloadError,
    InvalidRequestError,
    NotFoundError,
    OutOfCreditsError,
    ProviderSubmitError,
    RateLimitedError,
    ReconciliationUnavailable,
    SubmissionOutcomeUnknown,
    TransientApiError,
)
from prefect_aimlapi_video.flows.models import MODEL, Generation
from prefect_aimlapi_video.flows.redact import install_log_redaction, redact, safe_url

DEFAULT_BASE_URL = "https://api.aimlapi.com"
GENERATIONS_PATH = "/v2/video/generations"
LOGS_PATH = "/v2/logs"
DEFAULT_MAX_DOWNLOAD_BYTES = 2 * 1024**3
MAX_REDIRECTS = 5
LOG_RETRY_BASE_SECONDS = 0.5  # backoff of usage-log reads: 0.5, 1, 2 s
_FLUSH_BYTES = 8 * 1024 * 1024


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context per process: building one costs ~20 ms of CPU, and a batch makes thousands
    of clients (four per generation)."""
    return httpx.create_ssl_context()


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(base_url: str) -> str:
    """Accept https anywhere and plain http only on loopback (the local sandbox)."""
    parts = urlsplit(base_url)
    if parts.scheme == "https" and parts.hostname:
        return base_url.rstrip("/")
    if parts.scheme == "http" and is_loopback(parts.hostname):
        return base_url.rstrip("/")
    raise ValueError(
        f"base_url must be an https URL (plain http only for a loopback sandbox), got {safe_url(base_url)!r}"
    )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class ApiAnswer(BaseModel):
    """A generation object plus the tracing headers the provider sent with it."""

    generation: Generation
    request_id: str | None = None
    client_request_id: str | None = None
    credits_header: float | None = None


class DownloadedFile(BaseModel):
    path: Path
    sha256: str
    size_bytes: int
    content_type: str | None = None


def _error_text(response: httpx.Response) -> str:
    """The provider's message (and validation hints) without echoing any input back."""
    try:
        body = response.json()
    except ValueError:
        return redact(response.text[:300]) or response.reason_phrase
    if not isinstance(body, dict):
        return redact(str(body)[:300])
    parts = [str(body.get("message") or body.get("error") or response.reason_phrase)]
    for item in body.get("detail", []) if isinstance(body.get("detail"), list) else []:
        if isinstance(item, dict):
            loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
            parts.append(f"{loc}: {item.get('msg', '')}")
    return redact("; ".join(p for p in parts if p)[:500])


# POST answers that prove the provider did not accept the request (nothing was charged).
REFUSED_POST_STATUSES = frozenset({400, 401, 403, 404, 422, 429})


def provider_error_shape(response: httpx.Response) -> bool:
    """True for the provider's own error body, `{message, path, requestId, statusCode, timestamp}`.

    A gateway in front of the provider (load balancer, CDN) answers with its own page instead,
    which says nothing about whether the provider accepted the request behind it.
    """
    try:
        body = response.json()
    except ValueError:
        return False
    return (
        isinstance(body, dict)
        and isinstance(body.get("message"), str)
        and body.get("statusCode") == response.status_code
        and ("requestId" in body or "path" in body)
    )


def raise_for_answer(response: httpx.Response, action: str) -> None:
    """Translate a non-2xx answer into the exception that says what to do about it."""
    if response.is_success:
        return
    status = response.status_code
    text = _error_text(response)
    request_id = response.headers.get("x-request-id")
    kwargs: dict[str, Any] = {"status_code": status, "request_id": request_id}
    if status == 401:
        raise AuthenticationError(
            f"{action}: the AI/ML API rejected the API key (401: {text}). Check the api_key saved in "
            "your AimlApiCredentials block (or AIMLAPI_API_KEY).",
            **kwargs,
        )
    if status == 403:
        if "credit" in text.lower():
            raise OutOfCreditsError(
                f"{action}: you've run out of credits (403: {text}). Top up at "
                "https://aimlapi.com/app/billing, then re-run; nothing was charged for this request.",
                **kwargs,
            )
        raise AuthenticationError(
            f"{action}: the API key is not allowed to do this (403: {text}). Check the key and its "
            "permissions in your AimlApiCredentials block.",
            **kwargs,
        )
    if status in (400, 422):
        raise InvalidRequestError(f"{action}: the provider refused the request ({status}: {text}).", **kwargs)
    if status == 404:
        raise NotFoundError(f"{action}: not found (404: {text}).", **kwargs)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        hint = f"; retry after {retry_after:g} s" if retry_after is not None else ""
        raise RateLimitedError(f"{action}: rate limited (429: {text}){hint}.", retry_after=retry_after, **kwargs)
    if status >= 500:
        raise TransientApiError(f"{action}: provider error ({status}: {text}); safe to retry.", **kwargs)
    raise AimlApiError(f"{action}: unexpected answer {status}: {text}", **kwargs)


def _log_rows(body: Any) -> list[Any] | None:
    """The rows of a `/v2/logs` answer (a list, or a dict holding one), None if unrecognisable."""
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        return next((body[k] for k in ("data", "items", "logs", "rows") if isinstance(body.get(k), list)), None)
    return None


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


class AimlApiClient:
    """Submit, poll, reconcile and download `krea/krea-wan-14b/video-to-video` generations."""

    def __init__(
        self,
        api_key: SecretStr | str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout_seconds: float = 30.0,
        connect_timeout_seconds: float = 10.0,
        download_timeout_seconds: float = 120.0,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        if not key:
            raise AuthenticationError("No API key: set api_key on the AimlApiCredentials block.")
        install_log_redaction()
        self.base_url = check_base_url(base_url)
        # Tells accounts apart (shared usage-log readers, access checks) without holding the key.
        self.key_fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
        self.max_download_bytes = max_download_bytes
        self._transport = transport
        self._cdn_timeout = httpx.Timeout(download_timeout_seconds, connect=connect_timeout_seconds)
        self._cdn_client: httpx.AsyncClient | None = None
        self._api = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout_seconds, connect=connect_timeout_seconds),
            # Drop idle connections before a server's usual 5 s keep-alive does, so a poll rarely
            # meets a connection the other side has just closed.
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50, keepalive_expiry=4.0),
            verify=shared_ssl_context(),
            transport=transport,
        )

    @property
    def _cdn(self) -> httpx.AsyncClient:
        """The key-less client for result downloads, made only when a download happens."""
        if self._cdn_client is None:
            self._cdn_client = httpx.AsyncClient(
                timeout=self._cdn_timeout, verify=shared_ssl_context(), transport=self._transport
            )
        return self._cdn_client

    def __repr__(self) -> str:
        return f"AimlApiClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> AimlApiClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._api.aclose()
        if self._cdn_client is not None:
            await self._cdn_client.aclose()

    async def submit(self, payload: dict[str, Any], *, client_request_id: str) -> ApiAnswer:
        """POST a generation, sorting every outcome by what it proves about acceptance (money).

        * connection refused / connect timeout: not sent -> `TransientApiError` (resend at once);
        * 400/401/403/404/422, 429: the provider refused it -> the matching error (429 retryable);
        * 500/503 in the provider's own JSON error shape -> `ProviderSubmitError` (resend only after
          the usage log, read after a short pause, shows no row);
        * anything else (a reset or timeout after sending, 502/504, an HTML or other non-provider
          error page, an unreadable 2xx body) -> `SubmissionOutcomeUnknown` (reconcile, never resend
          blindly).
        """
        action = "Submitting the generation"
        try:
            response = await self._api.post(
                GENERATIONS_PATH, json=payload, headers={"X-Client-Request-Id": client_request_id}
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise TransientApiError(
                f"{action}: could not connect to {self.base_url} ({type(exc).__name__}); the request "
                "was not sent, so it is safe to retry."
            ) from None
        except httpx.TransportError as exc:
            raise SubmissionOutcomeUnknown(
                f"{action}: the request was sent but no answer came back ({type(exc).__name__}). The "
                f"provider may have accepted it; reconcile with client request id {client_request_id} "
                "before sending it again.",
                client_request_id=client_request_id,
            ) from None
        request_id = response.headers.get("x-request-id")
        status = response.status_code
        if status in REFUSED_POST_STATUSES:
            raise_for_answer(response, action)
        if status in (500, 503) and provider_error_shape(response):
            raise ProviderSubmitError(
                f"{action}: the provider answered {status} ({_error_text(response)}); it will be sent again "
                f"only if the usage log shows no request {client_request_id} after a short pause.",
                client_request_id=client_request_id, status_code=status, request_id=request_id,
            )
        if not response.is_success:
            raise SubmissionOutcomeUnknown(
                f"{action}: answered {status} by a gateway or in a form the provider does not use "
                f"({_error_text(response)[:120]}); the provider may still have accepted it. Reconcile with "
                f"client request id {client_request_id} before sending it again.",
                client_request_id=client_request_id, status_code=status, request_id=request_id,
            )
        try:
            return self._answer(response)
        except TransientApiError:
            raise SubmissionOutcomeUnknown(
                f"{action}: the provider answered {status} but the body cannot be read; "
                f"reconcile with client request id {client_request_id}.",
                client_request_id=client_request_id, request_id=request_id,
            ) from None

    async def get_generation(self, generation_id: str) -> ApiAnswer:
        """GET the current state of a generation (the id goes in the query: it holds ':' and '/')."""
        action = f"Checking generation {generation_id}"
        try:
            response = await self._api.get(GENERATIONS_PATH, params={"generation_id": generation_id})
        except httpx.TransportError as exc:
            raise TransientApiError(f"{action}: network error ({type(exc).__name__}).") from None
        raise_for_answer(response, action)
        return self._answer(response)

    async def check_access(self) -> None:
        """A free request that proves the API is reachable and the key accepted, before any paid call.

        It asks for a generation id that cannot exist: any answer but 401/403 (or a network error)
        means the base URL answers and the key is good.
        """
        action = f"Checking access to {self.base_url}"
        try:
            response = await self._api.get(GENERATIONS_PATH, params={"generation_id": "access-check"})
        except httpx.TransportError as exc:
            raise TransientApiError(f"{action}: cannot connect ({type(exc).__name__}).") from None
        if response.status_code in (401, 403):
            raise_for_answer(response, action)

    async def read_log_page(self, offset: int, limit: int, *, attempts: int = 4) -> list[Any]:
        """One page of `GET /v2/logs` for our model, newest first (the raw rows).

        Reading the log is free and changes nothing, so transient failures (network, 429, 5xx)
        are retried here with backoff before giving up with `ReconciliationUnavailable`.
        """
        action = "Reading the usage log"
        params = {"model": MODEL, "offset": offset, "limit": limit}
        for attempt in range(attempts):
            try:
                response = await self._api.get(LOGS_PATH, params=params)
                raise_for_answer(response, action)
                rows = _log_rows(response.json())
            except (httpx.TransportError, RateLimitedError, TransientApiError) as exc:
                cause = f"{type(exc).__name__}" + (f" {exc.status_code}" if isinstance(exc, AimlApiError) else "")
                if attempt + 1 == attempts:
                    raise ReconciliationUnavailable(f"{action} failed {attempts} times (last: {cause}).") from None
                retry_after = exc.retry_after if isinstance(exc, RateLimitedError) else None
                await asyncio.sleep(retry_after or LOG_RETRY_BASE_SECONDS * 2**attempt)
                continue
            except (AimlApiError, ValueError) as exc:
                status = f" {exc.status_code}" if isinstance(exc, AimlApiError) else ""
                raise ReconciliationUnavailable(f"{action} failed ({type(exc).__name__}{status}).") from None
            if rows is None:
                raise ReconciliationUnavailable(f"{action}: the answer has no list of rows we recognise.")
            return rows
        raise AssertionError("unreachable")

    async def download(self, url: str, destination: Path, *, max_bytes: int | None = None) -> DownloadedFile:
        """Stream `url` to `destination` atomically, verifying length, size cap and MP4 signature."""
        limit = max_bytes or self.max_download_bytes
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.parent / f".{destination.name}.{uuid.uuid4().hex}.part"
        try:
            result = await self._stream_to(url, partial, limit)
            os.replace(partial, destination)
            return result.model_copy(update={"path": destination})
        finally:
            partial.unlink(missing_ok=True)

    async def _stream_to(self, url: str, partial: Path, limit: int) -> DownloadedFile:
        shown = safe_url(url)
        for _ in range(MAX_REDIRECTS + 1):
            if urlsplit(url).scheme not in ("http", "https"):
                raise DownloadError(f"Refusing to download from a non-http(s) URL ({shown}).", permanent=True)
            try:
                async with self._cdn.stream("GET", url) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        shown = safe_url(url)
                        continue
                    if not response.is_success:
                        raise DownloadError(
                            f"Downloading {shown} answered {response.status_code}.",
                            status_code=response.status_code,
                        )
                    return await self._write_body(response, partial, limit, shown)
            except httpx.TransportError as exc:
                raise DownloadError(
                    f"Downloading {shown} failed ({type(exc).__name__}: {redact(str(exc))[:200]})."
                ) from None
        raise DownloadError(f"Downloading {shown}: more than {MAX_REDIRECTS} redirects.", permanent=True)

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

    @staticmethod
    def _answer(response: httpx.Response) -> ApiAnswer:
        try:
            generation = Generation.model_validate(response.json())
        except ValueError as exc:
            raise TransientApiError(
                f"The provider answered {response.status_code} with a body we cannot read "
                f"({type(exc).__name__}).",
                request_id=response.headers.get("x-request-id"),
            ) from None
        credits = response.headers.get("x-aimlapi-credits-used")
        try:
            credits_header = float(credits) if credits else None
        except ValueError:
            credits_header = None
        return ApiAnswer(
            generation=generation,
            request_id=response.headers.get("x-request-id"),
            client_request_id=response.headers.get("x-client-request-id"),
            credits_header=credits_header,
        )

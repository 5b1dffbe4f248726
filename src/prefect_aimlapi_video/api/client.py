"""An async client for the AI/ML API video-generation endpoints. Plain Python: no Prefect here.

Every HTTP outcome becomes one exception type from `api.errors` (see `api.answers` for what
each answer proves). Downloads go through `api.download`, with a second HTTP client that
carries no API key, since result URLs point to a CDN.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, SecretStr

from prefect_aimlapi_video.api.answers import (
    REFUSED_POST_STATUSES,
    error_text,
    log_rows,
    provider_error_shape,
    raise_for_answer,
)
from prefect_aimlapi_video.api.connection import DEFAULT_BASE_URL, check_base_url, is_loopback, shared_ssl_context
from prefect_aimlapi_video.api.download import (
    DEFAULT_DOWNLOAD_DEADLINE_SECONDS,
    DEFAULT_MAX_DOWNLOAD_BYTES,
    DownloadedFile,
    ResultDownloader,
)
from prefect_aimlapi_video.api.errors import (
    AimlApiError,
    AuthenticationError,
    ProviderSubmitError,
    RateLimitedError,
    ReconciliationUnavailable,
    SubmissionOutcomeUnknown,
    TransientApiError,
)
from prefect_aimlapi_video.api.fetch_guard import FetchPolicy
from prefect_aimlapi_video.api.models import Generation
from prefect_aimlapi_video.api.redact import install_log_redaction, register_secret

GENERATIONS_PATH = "/v2/video/generations"
LOGS_PATH = "/v2/logs"
LOG_RETRY_BASE_SECONDS = 0.5  # backoff of usage-log reads: 0.5, 1, 2 s

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_MAX_DOWNLOAD_BYTES", "AimlApiClient", "ApiAnswer", "DownloadedFile"]


class ApiAnswer(BaseModel):
    """A generation object plus the tracing headers the provider sent with it."""

    generation: Generation
    request_id: str | None = None
    client_request_id: str | None = None
    credits_header: float | None = None



class AimlApiClient:
    """Submit, poll, reconcile and download video generations (`POST/GET /v2/video/generations`)."""

    def __init__(
        self,
        api_key: SecretStr | str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout_seconds: float = 30.0,
        connect_timeout_seconds: float = 10.0,
        download_timeout_seconds: float = 120.0,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        download_deadline_seconds: float = DEFAULT_DOWNLOAD_DEADLINE_SECONDS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        if not key:
            raise AuthenticationError("No API key: set api_key on the AimlApiCredentials block.")
        install_log_redaction()
        register_secret(key)  # scrubbed even where the provider echoes it bare (an error body)
        self.base_url = check_base_url(base_url)
        # The longest a POST can take, whatever the server does: connect, then write and read at
        # most `timeout_seconds` each (a drip-fed answer resets httpx's read timeout, this does not).
        # A claim on a record outlives it by a wide margin (see `submission.lease`).
        self.post_deadline_seconds = connect_timeout_seconds + 2 * timeout_seconds
        # What our fetches of users' and results' URLs may reach: public https only, unless the API
        # itself is on loopback (the local sandbox serves its files there).
        self.fetch_policy = FetchPolicy(allow_local=is_loopback(urlsplit(self.base_url).hostname))
        # Tells accounts apart (shared usage-log readers, access checks) without holding the key.
        self.key_fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
        self.downloads = ResultDownloader(
            timeout=httpx.Timeout(download_timeout_seconds, connect=connect_timeout_seconds),
            max_bytes=max_download_bytes, deadline_seconds=download_deadline_seconds,
            policy=self.fetch_policy, transport=transport,
        )
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

    def __repr__(self) -> str:
        return f"AimlApiClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> AimlApiClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._api.aclose()
        await self.downloads.aclose()

    async def download(self, url: str, destination: Path, *, max_bytes: int | None = None) -> DownloadedFile:
        """Stream a result URL to `destination`, verified and atomic (see `api.download`)."""
        return await self.downloads.download(url, destination, max_bytes=max_bytes)

    async def submit(self, payload: dict[str, Any], *, client_request_id: str) -> ApiAnswer:
        """POST a generation, sorting every outcome by what it proves about acceptance (money).

        * connection refused / connect timeout: not sent -> `TransientApiError` (resend at once);
        * 400/401/403/404/422, 429: the provider refused it -> the matching error (429 retryable);
        * anything else -> `SubmissionOutcomeUnknown` (reconcile, never resend blindly): a reset or
          timeout after sending, 502/504, an HTML or other non-provider error page, an unreadable
          2xx body, and the provider's own 500/503 JSON answer (`ProviderSubmitError`: a provider
          may accept a request and still fail to answer it).
        """
        action = "Submitting the generation"
        try:
            async with asyncio.timeout(self.post_deadline_seconds):
                response = await self._api.post(
                    GENERATIONS_PATH, json=payload, headers={"X-Client-Request-Id": client_request_id}
                )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise TransientApiError(
                f"{action}: could not connect to {self.base_url} ({type(exc).__name__}); the request "
                "was not sent, so it is safe to retry."
            ) from None
        except (httpx.TransportError, TimeoutError) as exc:
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
                f"{action}: the provider answered {status} ({error_text(response)}); it may still have accepted "
                f"it. Reconcile with client request id {client_request_id} before sending it again.",
                client_request_id=client_request_id, status_code=status, request_id=request_id,
            )
        if not response.is_success:
            raise SubmissionOutcomeUnknown(
                f"{action}: answered {status} by a gateway or in a form the provider does not use "
                f"({error_text(response)[:120]}); the provider may still have accepted it. Reconcile with "
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

    async def read_log_page(self, offset: int, limit: int, *, model: str | None = None, attempts: int = 4) -> list[Any]:
        """One page of `GET /v2/logs` (of `model`, if given), newest first: the raw rows.

        Reading the log is free and changes nothing, so transient failures (network, 429, 5xx)
        are retried here with backoff before giving up with `ReconciliationUnavailable`.
        """
        action = "Reading the usage log"
        params: dict[str, Any] = {"offset": offset, "limit": limit, **({"model": model} if model else {})}
        for attempt in range(attempts):
            try:
                response = await self._api.get(LOGS_PATH, params=params)
                raise_for_answer(response, action)
                rows = log_rows(response.json())
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

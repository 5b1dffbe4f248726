"""What every sandbox route answers with, and the state the routes share.

The base of ``SandboxApp`` (in ``app.py``): the config, the fault injector, the engine (made at
lifespan startup), the usage-log read counters, and the helpers that shape answers like the
provider's (error bodies, the 401 check, injected rejections, fault-bent JSON, generation bodies).
Kept apart from the routes so each module stays small; it imports nothing from ``app.py``.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import json
import math
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .config import CREDITS_PER_USD, SandboxConfig
from .contract import error_body, generation_body
from .engine import Engine, Generation
from .faults import LOG_COUNTS, REJECTING_KINDS, FaultInjector, FaultKind, add_extra_fields
from .responses import AbortedResponse, linger

REJECTION_MESSAGES = {
    429: "Too many requests: rate limit exceeded",
    500: "Internal server error",
    502: "Bad gateway: the upstream model provider failed",
    503: "Service unavailable: the model is under maintenance",
}


class Answers:
    """The shared state (one Engine, one FaultInjector) and the answer helpers of the route handlers."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.faults = FaultInjector(config.faults)
        self.engine: Engine  # created at startup, inside the server's event loop
        self.log_reads: collections.deque[float] = collections.deque()  # times of recent GET /v2/logs
        self.log_counts = dict.fromkeys(LOG_COUNTS, 0)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self.engine = Engine(self.config)
        try:
            yield
        finally:
            await self.engine.aclose()

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def error(
        request: Request, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> JSONResponse:
        body = error_body(status, message, request.url.path, request.state.request_id, **extra)
        return JSONResponse(body, status_code=status, headers=headers)

    def denied(self, request: Request) -> JSONResponse | None:
        """401 unless ``Authorization: Bearer <api_key>``."""
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(key.strip().encode(), self.config.api_key.encode()):
            return None
        message = "Invalid API key" if scheme else "Missing Authorization header: send 'Authorization: Bearer <key>'"
        if scheme and self.faults.config.echo_key_in_errors:
            message = f"Invalid API key {key.strip()}: no such key"
        return self.error(request, 401, message, headers={"www-authenticate": "Bearer"})

    def rejection(self, request: Request, kind: FaultKind) -> JSONResponse:
        status = REJECTING_KINDS[kind]
        headers = {"retry-after": str(math.ceil(self.faults.config.retry_after_seconds))} if status == 429 else None
        return self.error(request, status, REJECTION_MESSAGES[status], headers=headers)

    async def respond(
        self, request: Request, fault: FaultKind | None, body: dict[str, Any], headers: dict[str, str]
    ) -> Response:
        """A JSON answer, bent by the request's fault (extra fields, slowness, a dropped connection)."""
        if fault == "extra_fields":
            body = add_extra_fields(body)
        if fault == "slow_response":
            await linger(request, self.faults.config.slow_seconds)
        if fault == "drop_connection":
            data = json.dumps(body).encode()
            return AbortedResponse(data[: len(data) // 2], len(data), "application/json", headers)
        return JSONResponse(body, headers=headers)

    def base_url(self, request: Request) -> str:
        return (self.config.public_base_url or str(request.base_url)).rstrip("/")

    async def generation_response(
        self, request: Request, generation: Generation, fault: FaultKind | None, *, masked: bool
    ) -> Response:
        """POST and GET answers; only GET shows an injected unknown status word."""
        credits = generation.reported_credits
        status = generation.reported_status if masked else generation.entry.status
        video_url = None
        if status == "completed":
            video_url = self.engine.files.signed_url(self.base_url(request), generation.token)
        body = generation_body(
            generation.entry, status=status, credits=credits, video_url=video_url, duration=generation.duration
        )
        headers = {
            "x-inference-id": generation.entry.generation_id,
            "x-aimlapi-credits-used": str(credits),
            "x-aimlapi-usd-spent": f"{credits / CREDITS_PER_USD:.6f}",
        }
        return await self.respond(request, fault, body, headers)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        """Starlette's own 404/405 (and any crash, as 500) in the provider's error shape."""
        if isinstance(exc, HTTPException):
            return self.error(request, exc.status_code, exc.detail, headers=exc.headers)
        return self.error(request, 500, REJECTION_MESSAGES[500])

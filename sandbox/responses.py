"""HTTP plumbing of the sandbox: request ids on every answer, and answers that break off like a failing network."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIds:
    """Gives every request an ``x-request-id`` and echoes a valid ``X-Client-Request-Id``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = str(uuid.uuid4())
        client_id = Headers(scope=scope).get("x-client-request-id")
        client_id = client_id if client_id and CLIENT_REQUEST_ID.fullmatch(client_id) else None
        scope.setdefault("state", {}).update(request_id=request_id, client_request_id=client_id)

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                if client_id:
                    headers["x-client-request-id"] = client_id
            await send(message)

        await self.app(scope, receive, send_with_ids)


class AbortedResponse(Response):
    """Announces ``declared_length`` bytes, sends only ``prefix``, then drops the connection."""

    def __init__(
        self, prefix: bytes, declared_length: int, media_type: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(
            prefix, headers={**(headers or {}), "content-length": str(declared_length)}, media_type=media_type
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": True})
        # Returning with the body unfinished makes the server close the socket mid-response.


async def linger(request: Request, seconds: float) -> None:
    """Wait like a slow upstream, but stop as soon as the client hangs up (frees the handler)."""

    async def hang_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(hang_up(), seconds)


async def drip(content: bytes, bytes_per_second: float) -> AsyncIterator[bytes]:
    """The body one byte at a time, `bytes_per_second`: each byte resets a client's read timeout."""
    for index in range(len(content)):
        yield content[index:index + 1]
        await asyncio.sleep(1 / bytes_per_second)

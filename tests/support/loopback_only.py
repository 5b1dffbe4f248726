"""Every connection this test process opens, recorded; any to an address off loopback refused.

No test may send a packet anywhere but loopback, not even to prove it is refused. Product code
refuses internal addresses itself (`api.fetch_guard`); this records that it did so before any
connection: `connections.off_loopback` must stay empty. Wraps `socket.socket.connect` (sync code:
httpx, boto3) and the event loop's `sock_connect` (asyncio: httpx's async transport).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


def _is_loopback(address: Any) -> bool:
    if isinstance(address, tuple) and address:
        try:
            return ipaddress.ip_address(str(address[0]).split("%", 1)[0]).is_loopback
        except ValueError:
            return False
    return isinstance(address, (str, bytes))  # a Unix socket path: not the network


@dataclass
class Connections:
    attempts: list[Any] = field(default_factory=list)

    @property
    def off_loopback(self) -> list[Any]:
        return [a for a in self.attempts if not _is_loopback(a)]


@contextlib.contextmanager
def loopback_only() -> Iterator[Connections]:
    seen = Connections()
    real_connect = socket.socket.connect
    real_sock_connect = asyncio.BaseEventLoop.sock_connect

    def connect(self: socket.socket, address: Any) -> Any:
        seen.attempts.append(address)
        if not _is_loopback(address):
            raise ConnectionRefusedError(f"test guard: no connection off loopback ({address!r})")
        return real_connect(self, address)

    async def sock_connect(self: asyncio.BaseEventLoop, sock: socket.socket, address: Any) -> Any:
        seen.attempts.append(address)
        if not _is_loopback(address):
            raise ConnectionRefusedError(f"test guard: no connection off loopback ({address!r})")
        return await real_sock_connect(self, sock, address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    asyncio.BaseEventLoop.sock_connect = sock_connect  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]
        asyncio.BaseEventLoop.sock_connect = real_sock_connect  # type: ignore[method-assign]

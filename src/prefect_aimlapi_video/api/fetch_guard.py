"""Every hop of every fetch we make for a user's URL is checked, so a URL cannot be turned against
the worker. No Prefect here.

A result URL comes from the provider's answer, an input URL from whoever triggered the run, and
either may redirect. A redirect to `http://169.254.169.254/` (a cloud's metadata service), to
`10.0.0.1` or to a plain-http host would make the worker fetch it with its own network position. So
each request (each redirect hop is one) goes through `GuardedTransport`, which:

* allows https to public addresses only; under `FetchPolicy.allow_local` (the API itself is a
  sandbox on loopback), also https and plain http to loopback, and nothing else: a private or
  link-local address is refused whatever the API's base URL;
* resolves the host itself and checks every address it has, before any connection is opened;
* then connects to the address it checked (the request is pinned to it, with the original name for
  TLS and the Host header), so a name that resolves differently a moment later (DNS rebinding)
  cannot slip through.

Redirects are followed by `open_stream`, one checked hop at a time. FFmpeg never gets a URL: remote
videos are probed through `RangeFile` (range requests through this guard, or S3's own client).
A refusal is `FetchRefused`: permanent, never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import BaseModel

from prefect_aimlapi_video.api.redact import safe_url

MAX_REDIRECTS = 5
Resolve = Callable[[str, int], Awaitable[list[str]]]
ResolveSync = Callable[[str, int], list[str]]


class FetchRefused(Exception):
    """A URL (or a hop of its redirects) we will not fetch; the message says which and why."""


class FetchPolicy(BaseModel):
    """`allow_local`: loopback addresses, over https or plain http, are allowed too (only where the
    API's base URL is itself on loopback: the local sandbox serves its files there)."""

    allow_local: bool = False


def _refusal(address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for name in ("loopback", "link_local", "private", "reserved", "multicast", "unspecified"):
        if getattr(ip, f"is_{name}"):
            return name.replace("_", "-")
    return None if ip.is_global else "not public"


def check_url(url: str, policy: FetchPolicy) -> tuple[str, int]:
    """(host, port) of a URL whose scheme the policy allows, else `FetchRefused`."""
    parts = urlsplit(url)
    allowed = ("https", "http") if policy.allow_local else ("https",)
    if parts.scheme not in allowed or not parts.hostname:
        raise FetchRefused(f"refusing to fetch {safe_url(url)}: only https URLs are fetched"
                           + ("" if policy.allow_local else " (plain http only for a sandbox on loopback)") + ".")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def check_addresses(url: str, host: str, addresses: list[str], policy: FetchPolicy) -> str:
    """The address to connect to, once every address the host has is allowed."""
    if not addresses:
        raise FetchRefused(f"refusing to fetch {safe_url(url)}: {host} does not resolve.")
    plain = urlsplit(url).scheme == "http"
    for address in addresses:
        why = _refusal(address)
        if why == "loopback" and policy.allow_local:
            continue
        if plain and why is None:
            why = "public, over plain http"
        if why is not None:
            raise FetchRefused(f"refusing to fetch {safe_url(url)}: {host} is {address} ({why}).")
    return addresses[0]


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses a name has (a literal address is its own); read at each request, so a test can
    put a resolver stub in its place."""
    return _literal(host) or [info[4][0] for info in await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM)]


def system_resolve_sync(host: str, port: int) -> list[str]:
    return _literal(host) or [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def _literal(host: str) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        return []


def _pinned(request: httpx.Request, host: str, address: str) -> httpx.Request:
    """The same request, sent to the checked address; TLS and Host still name the host."""
    if address == host.strip("[]"):
        return request
    netloc = f"[{address}]" if ":" in address else address
    request.url = request.url.copy_with(host=netloc.strip("[]"))
    request.extensions = {**request.extensions, "sni_hostname": host}
    return request


class GuardedTransport(httpx.AsyncBaseTransport):
    """Checks each request (scheme, every resolved address) before `inner` may connect."""

    def __init__(self, policy: FetchPolicy, inner: httpx.AsyncBaseTransport | None = None,
                 resolve: Resolve | None = None) -> None:
        self.policy, self.resolve = policy, resolve
        self.inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        host, port = check_url(url, self.policy)
        try:
            addresses = await (self.resolve or system_resolve)(host, port)
        except OSError as exc:
            raise FetchRefused(f"refusing to fetch {safe_url(url)}: {host} does not resolve ({exc}).") from None
        address = check_addresses(url, host, addresses, self.policy)
        return await self.inner.handle_async_request(_pinned(request, host, address))

    async def aclose(self) -> None:
        await self.inner.aclose()


class GuardedSyncTransport(httpx.BaseTransport):
    """`GuardedTransport` for synchronous code (a probe reading in a worker thread)."""

    def __init__(self, policy: FetchPolicy, inner: httpx.BaseTransport | None = None,
                 resolve: ResolveSync | None = None) -> None:
        self.policy, self.resolve = policy, resolve
        self.inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        host, port = check_url(url, self.policy)
        try:
            addresses = (self.resolve or system_resolve_sync)(host, port)
        except OSError as exc:
            raise FetchRefused(f"refusing to fetch {safe_url(url)}: {host} does not resolve ({exc}).") from None
        return self.inner.handle_request(_pinned(request, host, check_addresses(url, host, addresses, self.policy)))

    def close(self) -> None:
        self.inner.close()


@contextlib.asynccontextmanager
async def open_stream(client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
                      ) -> AsyncIterator[httpx.Response]:
    """GET `url`, following at most `MAX_REDIRECTS` redirects one checked hop at a time (the client
    must not follow them itself); the final response, streamed."""
    for _ in range(MAX_REDIRECTS + 1):
        response = await client.send(client.build_request("GET", url, headers=headers), stream=True)
        if response.is_redirect:
            await response.aclose()
            url = urljoin(url, response.headers.get("location", ""))
            continue
        try:
            yield response
        finally:
            await response.aclose()
        return
    raise FetchRefused(f"refusing to fetch {safe_url(url)}: more than {MAX_REDIRECTS} redirects.")


class RangeFile(io.RawIOBase):
    """A remote file read with range requests, for a probe (PyAV reads only the headers it needs).

    `fetch(start, end)` returns bytes [start, end] (inclusive) and the file's total size. Reads stop
    at `deadline` (a `time.monotonic()` value) with `TimeoutError`."""

    CHUNK = 256 * 1024

    def __init__(self, fetch: Callable[[int, int], tuple[bytes, int]], deadline: float) -> None:
        super().__init__()
        self._fetch, self._deadline = fetch, deadline
        self._position, self._size = 0, None
        self._cached: tuple[int, bytes] = (0, b"")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            offset += self._known_size()
        elif whence == io.SEEK_CUR:
            offset += self._position
        self._position = max(0, offset)
        return self._position

    def _known_size(self) -> int:
        if self._size is None:
            self._read_at(0)
        assert self._size is not None
        return self._size

    def _read_at(self, start: int) -> bytes:
        if time.monotonic() > self._deadline:
            raise TimeoutError("the input fetch deadline passed")
        data, self._size = self._fetch(start, start + self.CHUNK - 1)
        self._cached = (start, data)
        return data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._size is not None and self._position >= self._size:
            return 0
        start, data = self._cached
        if not start <= self._position < start + len(data):
            start, data = self._position, self._read_at(self._position)
        chunk = data[self._position - start:self._position - start + len(buffer)]
        buffer[:len(chunk)] = chunk
        self._position += len(chunk)
        return len(chunk)


def http_range_fetch(client: httpx.Client, url: str) -> Callable[[int, int], tuple[bytes, int]]:
    """`RangeFile`'s fetch over HTTP: each range request follows redirects one checked hop at a time."""
    def fetch(start: int, end: int) -> tuple[bytes, int]:
        target = url
        for _ in range(MAX_REDIRECTS + 1):
            response = client.get(target, headers={"Range": f"bytes={start}-{end}"})
            if response.is_redirect:
                target = urljoin(target, response.headers.get("location", ""))
                continue
            if response.status_code == 200:  # no range support: the whole body came
                return response.content[start:end + 1], len(response.content)
            if response.status_code == 416:
                return b"", start
            response.raise_for_status()
            total = response.headers.get("content-range", "").rpartition("/")[2]
            return response.content, int(total) if total.isdigit() else start + len(response.content)
        raise FetchRefused(f"refusing to fetch {safe_url(url)}: more than {MAX_REDIRECTS} redirects.")
    return fetch

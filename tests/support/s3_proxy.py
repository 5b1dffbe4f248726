"""A fault-injecting HTTP reverse proxy in front of moto's S3 server, for the integration tests.

It exists to prove that the product refuses a record store that does not honour conditional writes
(some S3-compatible stores and proxies silently ignore `If-None-Match` / `If-Match`: the proxy strips
them on request), and to inject record-store outages (S3-style 5xx errors, reset connections).
Everything else passes through unchanged: a boto3 client with `endpoint_url=proxy.url` works exactly
as against moto. Standard library only; it listens on 127.0.0.1 and only connects to a loopback upstream.

    with S3FaultProxy(moto_endpoint) as proxy:
        proxy.drop_request_headers = {"If-None-Match"}
        outage = proxy.fail(methods=("PUT",), seconds=2)  # ends early with outage.stop() or proxy.heal()
"""

from __future__ import annotations

import http.client
import ipaddress
import math
import socket
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple, Self
from urllib.parse import unquote, urlsplit

# Headers about one hop, not the message: never copied across. The proxy answers `Expect` itself.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
                         "te", "trailer", "transfer-encoding", "upgrade", "expect"})
_ERROR_CODES = {400: "BadRequest", 403: "AccessDenied", 404: "NoSuchKey", 500: "InternalError", 502: "BadGateway"}
_PIECE = 64 * 1024


@dataclass(eq=False)
class Fault:
    """One injected failure, until `until` (monotonic clock) or `stop()`; a `reset` one drops connections."""

    proxy: S3FaultProxy = field(repr=False)
    methods: frozenset[str] | None  # None: every method
    key_contains: str | None
    status: int
    code: str
    until: float
    reset: bool = False

    @property
    def active(self) -> bool:
        return time.monotonic() < self.until and self in self.proxy._faults

    def stop(self) -> None:
        self.proxy._remove(self)

    def matches(self, method: str | None, path: str) -> bool:
        """method None stands for a new connection, which only resets match."""
        return (time.monotonic() < self.until and (self.methods is None or method in self.methods)
                and (method is not None or self.reset) and (self.key_contains is None or self.key_contains in path))


class Stats(NamedTuple):
    forwarded: Counter[str]  # requests forwarded to the upstream, per method
    injected: Counter[str]  # requests answered by an injected error or reset, per method
    resets: int  # connections reset as soon as accepted (while unreachable)
    seen: list[tuple[str, str, int]]  # the last requests as (method, unquoted path, status); status 0: reset


def _loopback(url: str) -> tuple[str, int]:
    """(address, port) of a plain-HTTP URL on a loopback address; anything else is refused."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"not a plain http URL: {url!r}")
    port = parts.port or 80
    addresses = [str(info[4][0]) for info in socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)]
    if not addresses or not all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses):
        raise ValueError(f"the proxy only forwards to loopback addresses, not {url!r}")
    return addresses[0], port


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed or firewalled store would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


class S3FaultProxy:
    """A reverse proxy on 127.0.0.1 (ephemeral port) in front of `upstream`; every control is thread-safe."""

    def __init__(self, upstream: str, *, history: int = 1000, upstream_timeout: float = 60.0) -> None:
        self.upstream, self.upstream_timeout = _loopback(upstream), upstream_timeout
        self._lock = threading.Lock()
        self._drop: frozenset[str] = frozenset()
        self._faults: list[Fault] = []
        self._forwarded: Counter[str] = Counter()
        self._injected: Counter[str] = Counter()
        self._resets = 0
        self._seen: deque[tuple[str, str, int]] = deque(maxlen=history)
        self._server = _Server(self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"s3-fault-proxy {self.url}", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut the open client connections, and wait for their threads."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.close_connections()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def drop_request_headers(self) -> frozenset[str]:
        """Request headers removed before forwarding (names compared case-insensitively)."""
        return self._drop

    @drop_request_headers.setter
    def drop_request_headers(self, names: Iterable[str]) -> None:
        with self._lock:
            self._drop = frozenset(name.lower() for name in names)

    def fail(self, methods: Iterable[str] | None = ("PUT",), key_contains: str | None = None,
             seconds: float | None = None, status: int = 503, code: str | None = None) -> Fault:
        """Answer matching requests (methods None: all) with an S3 XML error instead of forwarding them, for
        `seconds` or until stopped or healed. A 503's code is ServiceUnavailable unless `code="SlowDown"`."""
        return self._add(methods, key_contains, seconds, status, code or _ERROR_CODES.get(status, "ServiceUnavailable"))

    def unreachable(self, seconds: float | None = None) -> Fault:
        """Reset every new connection, and any request on an open one, for `seconds` or until healed."""
        return self._add(None, None, seconds, 0, "", reset=True)

    def heal(self) -> None:
        """End every failure and outage."""
        with self._lock:
            self._faults = []

    def stats(self) -> Stats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return Stats(Counter(self._forwarded), Counter(self._injected), self._resets, list(self._seen))

    def reset_stats(self) -> None:
        with self._lock:
            self._forwarded, self._injected, self._resets = Counter(), Counter(), 0
            self._seen.clear()

    def _add(self, methods: Iterable[str] | None, key_contains: str | None, seconds: float | None,
             status: int, code: str, reset: bool = False) -> Fault:
        until = math.inf if seconds is None else time.monotonic() + seconds
        chosen = None if methods is None else frozenset(method.upper() for method in methods)
        fault = Fault(self, chosen, key_contains, status, code, until, reset)
        with self._lock:
            self._faults = [f for f in self._faults if time.monotonic() < f.until] + [fault]
        return fault

    def _remove(self, fault: Fault) -> None:
        with self._lock:
            self._faults = [f for f in self._faults if f is not fault]

    def _fault_for(self, method: str | None, path: str = "") -> Fault | None:
        with self._lock:
            return next((f for f in reversed(self._faults) if f.matches(method, path)), None)

    def _record(self, method: str | None, path: str, status: int, *, forwarded: bool) -> None:
        with self._lock:
            if method is None:
                self._resets += 1
            else:
                (self._forwarded if forwarded else self._injected)[method] += 1
                self._seen.append((method, path, status))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, proxy: S3FaultProxy) -> None:
        self.proxy = proxy
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def verify_request(self, request, client_address) -> bool:  # type: ignore[no-untyped-def]
        if self.proxy._fault_for(None) is not None:
            self.proxy._record(None, "", 0, forwarded=False)
            _reset(request)
            return False
        with self._open_lock:
            self._open.add(request)
        return True

    def shutdown_request(self, request) -> None:  # type: ignore[no-untyped-def]
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):  # a client that left is normal
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self._open_lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    disable_nagle_algorithm = True  # else headers and body, written apart, wait on delayed ACKs (~40 ms)
    timeout = 120  # an idle client connection is closed after this
    server: _Server
    continues = chunked = False  # this request's `Expect: 100-continue`, `Transfer-Encoding: chunked`

    def log_message(self, format: str, *args: object) -> None:
        pass

    def handle_expect_100(self) -> bool:
        return True  # "100 Continue" is sent later, and only for requests that are forwarded

    def _relay(self) -> None:
        proxy, method, path = self.server.proxy, self.command, unquote(urlsplit(self.path).path)
        self.continues = self.headers.get("Expect", "").lower() == "100-continue"
        self.chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        if (fault := proxy._fault_for(method, path)) is None:
            self._forward(path)
            return
        proxy._record(method, path, fault.status, forwarded=False)  # first: whoever got the answer sees the count
        if fault.reset:
            self.close_connection = True
            _reset(self.connection)
        else:
            self._answer(fault.status, fault.code, drain=not self.continues)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _relay

    def _request_body(self) -> Iterator[bytes]:
        """The request body exactly as sent: chunked framing and trailers are passed on untouched."""
        if not self.chunked:
            yield from self._read(int(self.headers.get("Content-Length") or 0))
            return
        while True:
            yield (line := self.rfile.readline(_PIECE))
            if (size := int(line.split(b";")[0].strip() or b"0", 16)) == 0:
                break
            yield from self._read(size + 2)  # the data and its CRLF
        while line not in (b"\r\n", b"\n", b""):  # trailers, up to the blank line
            yield (line := self.rfile.readline(_PIECE))

    def _read(self, remaining: int) -> Iterator[bytes]:
        while remaining > 0:
            if not (piece := self.rfile.read(min(remaining, _PIECE))):
                raise ConnectionError("the client closed its connection mid-body")
            remaining -= len(piece)
            yield piece

    def _answer(self, status: int, code: str, *, drain: bool) -> None:
        """An S3-style XML error. The request body is read and dropped, or else the connection closed
        (its body is then unread, or held back by a client waiting for "100 Continue")."""
        if drain:
            for _ in self._request_body():
                pass
        else:
            self.close_connection = True
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>Injected by '
                f"the test proxy</Message><RequestId>s3-fault-proxy</RequestId></Error>").encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self, path: str) -> None:
        proxy = self.server.proxy
        if self.continues:
            self.send_response_only(HTTPStatus.CONTINUE)
            self.end_headers()
        skip = _HOP_BY_HOP | proxy.drop_request_headers
        upstream = http.client.HTTPConnection(*proxy.upstream, timeout=proxy.upstream_timeout)
        try:
            upstream.putrequest(self.command, self.path, skip_host="Host" in self.headers, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in skip:
                    upstream.putheader(name, value)
            if self.chunked:
                upstream.putheader("Transfer-Encoding", "chunked")
            upstream.endheaders()
            for piece in self._request_body():
                upstream.send(piece)
            response = upstream.getresponse()
        except (OSError, http.client.HTTPException):  # the store behind the proxy is down
            upstream.close()
            proxy._record(self.command, path, HTTPStatus.BAD_GATEWAY, forwarded=True)
            self._answer(HTTPStatus.BAD_GATEWAY, "BadGateway", drain=False)
            return
        try:
            proxy._record(self.command, path, response.status, forwarded=True)
            self._send_back(response)
        finally:
            upstream.close()

    def _send_back(self, response: http.client.HTTPResponse) -> None:
        """Status, headers and body as the upstream sent them; re-chunked if it gave no length."""
        has_body = self.command != "HEAD" and response.status not in (204, 304)
        rechunk = has_body and response.getheader("Content-Length") is None
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        if rechunk:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while has_body and (piece := response.read1(_PIECE)):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if rechunk else piece)
        if rechunk:
            self.wfile.write(b"0\r\n\r\n")


def start_s3_fault_proxy(upstream: str) -> S3FaultProxy:
    """A started proxy in front of `upstream` (e.g. moto's endpoint URL); call `stop()` when done."""
    return S3FaultProxy(upstream).start()

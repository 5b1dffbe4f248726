"""Serving the sandbox: in a background thread for tests (``run_sandbox``) or as a CLI (``main``)."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from pydantic import ValidationError

from .app import create_app
from .config import SandboxConfig
from .faults import FaultConfig
from .ledger import LedgerEntry

# Seconds uvicorn waits for open requests (e.g. an injected slow response) before cancelling them.
GRACEFUL_SHUTDOWN_SECONDS = 2.0


@dataclass(frozen=True)
class SandboxHandle:
    """Where a running sandbox listens, plus sync helpers for its control routes."""

    base_url: str
    api_key: str

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.base_url}{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()

    def ledger(self) -> list[LedgerEntry]:
        return [LedgerEntry.model_validate(e) for e in self._request("GET", "/sandbox/ledger")["entries"]]

    def max_in_flight(self) -> int:
        return self._request("GET", "/sandbox/ledger")["max_in_flight"]

    def log_reads(self) -> dict[str, int]:
        """How many ``GET /v2/logs`` requests arrived since the last reset, and how many got 429; with
        ``polls_share_log_limit``, the polls counted against the same limit, and how many of those got 429."""
        return self._request("GET", "/sandbox/ledger")["log_reads"]

    def faults_injected(self) -> dict[str, int]:
        """How many requests got each fault (``route:kind``) since faults were last set."""
        return self._request("GET", "/sandbox/ledger")["faults_injected"]

    def refused(self) -> list[dict[str, Any]]:
        """Usage-log rows of refused POSTs (listed when ``log_refused_requests`` is on)."""
        return self._request("GET", "/sandbox/ledger")["refused"]

    def reset(self) -> None:
        self._request("POST", "/sandbox/reset")

    def set_faults(self, faults: FaultConfig | dict[str, Any]) -> FaultConfig:
        config = faults if isinstance(faults, FaultConfig) else FaultConfig.model_validate(faults)
        return FaultConfig.model_validate(self._request("POST", "/sandbox/faults", content=config.model_dump_json()))

    def logs(self, **params: Any) -> list[dict[str, Any]]:
        """Rows of ``GET /v2/logs`` (newest first); ``params`` are its query filters."""
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return self._request("GET", "/v2/logs", params=params, headers=headers)["data"]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # An explicit IPPROTO_TCP lets asyncio set TCP_NODELAY on accepted sockets (it skips proto 0),
    # without which every two-write response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # connections made before uvicorn runs wait in the backlog instead of being refused
    return sock


def _base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server(config: SandboxConfig, log_level: str) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(create_app(config), log_level=log_level, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
    )


@contextmanager
def run_sandbox(config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> Iterator[SandboxHandle]:
    """Serve a sandbox in a background thread (port 0 = a free port) until the block exits."""
    config = config or SandboxConfig()
    sock = _bind(host, port)
    server = _server(config, "warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="aimlapi-sandbox", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the sandbox server did not start")
            time.sleep(0.01)
        handle = SandboxHandle(base_url=_base_url(sock), api_key=config.api_key)
        httpx.get(f"{handle.base_url}/sandbox/health", timeout=10).raise_for_status()
        yield handle
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def main(argv: list[str] | None = None) -> int:
    """``aimlapi-video sandbox``: serve until Ctrl-C or SIGTERM, then shut down cleanly."""
    parser = argparse.ArgumentParser(
        prog="aimlapi-video sandbox", description="Local stand-in of the AI/ML API video-to-video endpoints."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--api-key", default=os.environ.get("AIMLAPI_SANDBOX_KEY", "sandbox-key"))
    parser.add_argument("--processing-seconds", type=float, default=SandboxConfig().processing_seconds)
    parser.add_argument("--workers", type=int, default=SandboxConfig().workers, help="parallel GPU slots")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="probability of a random fault per request")
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument("--credit-balance", type=float, default=None, help="default: unlimited")
    args = parser.parse_args(argv)
    try:
        config = SandboxConfig(
            api_key=args.api_key,
            processing_seconds=args.processing_seconds,
            workers=args.workers,
            credit_balance=args.credit_balance,
            faults=FaultConfig(rate=args.fault_rate, seed=args.fault_seed),
        )
        sock = _bind(args.host, args.port)
    except (ValidationError, OSError) as exc:
        parser.error(str(exc))
    import shlex  # here, not above: only this command prints shell lines

    base_url = _base_url(sock)
    # The lines a person runs next (save-key reads the key from AIMLAPI_API_KEY): a block of its own
    # name, so a block holding a real key ("aimlapi", the flows' default) is never replaced by this one.
    save_key = (f"AIMLAPI_API_KEY={shlex.quote(config.api_key)} aimlapi-video save-key --name sandbox "
                f"--base-url {shlex.quote(base_url)}")
    print(f"AI/ML API sandbox at {base_url}  (API key: {config.api_key}; Ctrl-C to stop)\n"
          f"In another terminal, save its key as a block:\n  {save_key}\n"
          "then restyle a video with it (sample-clip writes one if you have none):\n"
          "  aimlapi-video sample-clip clip.mp4\n"
          "  aimlapi-video run clip.mp4 --prompt 'a watercolor painting' --credentials sandbox",
          flush=True)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler that
    # was installed before it; a no-op handler there lets us return 0 instead of dying by signal.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _server(config, "info").run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    return 0

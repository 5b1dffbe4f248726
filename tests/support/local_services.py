"""Local stand-ins for the services a deployment talks to: a Prefect server and moto's S3/SQS server.

Used by the integration tests, the benchmarks and local trials of the deployments: each starts
the real program as a subprocess on a free loopback port and stops it on exit.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(process: subprocess.Popen, url: str, log: Path, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{what} did not start; see {log}")
        time.sleep(0.3)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _version(initdb: str) -> tuple[int, ...]:
    """(16,) for /usr/lib/postgresql/16/bin/initdb, (9, 6) for 9.6: numbers, so 16 ranks above 9.6."""
    return tuple(int(part) for part in re.findall(r"\d+", Path(initdb).parent.parent.name))


def postgres_binaries() -> Path | None:
    """The bin directory of a local PostgreSQL install (Debian: apt-get install postgresql), if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresCluster:
    """A throwaway PostgreSQL cluster in a temp dir on a free port, with a database `prefect`; `url` is
    an asyncpg URL for Prefect. `stop()` (fast shutdown) and `start()` again restart it in place.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user.
    """

    def __init__(self) -> None:
        binaries = postgres_binaries()
        if binaries is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.binaries, self.home = binaries, Path(tempfile.mkdtemp(prefix="aimlapi-postgres-"))
        self.data, self.port, self.as_user = self.home / "pgdata", free_port(), []
        if os.geteuid() == 0:
            shutil.chown(self.home, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/prefect"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "prefect")

    def _run(self, program: str, *argv: str, check: bool = True) -> None:
        subprocess.run([*self.as_user, str(self.binaries / program), *argv], check=check, capture_output=True)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.home / "postgres.log"), "-w", "-o",
                  f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                  "start")

    def stop(self) -> None:
        """Fast shutdown: open transactions are rolled back, clients disconnected."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "stop", check=False)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster (`PostgresCluster`) for one `with`; yields its asyncpg URL."""
    cluster = PostgresCluster()
    try:
        yield cluster.url
    finally:
        cluster.remove()


class PrefectServerProcess:
    """`prefect server start` on its own database (SQLite under `home` by default) and port; `url` is
    its API URL. `kill()` (SIGKILL, as a crash) and `start()` again restart it on the same port and
    database. `ui`: serve the Prefect UI too (at the URL without `/api`), for browser checks."""

    def __init__(self, home: Path, database_url: str | None = None, *, ui: bool = False) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.home, self.log, self.port = home, home / "prefect-server.log", free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home / "prefect-home"),
            "PREFECT_API_DATABASE_CONNECTION_URL": database_url or f"sqlite+aiosqlite:///{home / 'prefect.db'}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "true" if ui else "false",
            "PREFECT_UI_API_URL": self.url,  # the UI's own calls go to this server, not to the default port
            # Persist events (and so fire triggers from them) twice a second instead of every 5 s.
            "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "0.5",
        }
        self.env.pop("PREFECT_API_URL", None)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            )
        _wait_until_up(self.process, f"{self.url}/health", self.log, "the Prefect server", timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the server and anything it started, as a crash or an OOM kill does."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            _stop(self.process)


@contextmanager
def prefect_server(home: Path, database_url: str | None = None, *, ui: bool = False) -> Iterator[str]:
    """A `PrefectServerProcess` for one `with`; yields its API URL."""
    server = PrefectServerProcess(home, database_url, ui=ui)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


# moto checks a PutObject's If-Match / If-None-Match, then writes, with no lock in between: two
# concurrent conditional writes can both pass (seen: a budget update lost under load in CI). S3
# itself makes a conditional write atomic, and the exactly-once records rely on it, so the test
# server serializes PutObject, as S3 behaves.
_ATOMIC_MOTO = """
import sys, threading
import moto.s3.responses as responses
_lock, _put = threading.Lock(), responses.S3Response.put_object
def put_object(self):
    with _lock:
        return _put(self)
responses.S3Response.put_object = put_object
from moto.server import main
sys.exit(main(sys.argv[1:]))
"""


@contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """moto in server mode (S3, SQS, ... over HTTP), its conditional writes atomic as S3's are; yields
    its endpoint URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-c", _ATOMIC_MOTO, "-H", "127.0.0.1", "-p", str(port)],
            stdout=output, stderr=subprocess.STDOUT,
        )
        try:
            _wait_until_up(process, f"{endpoint}/moto-api/", log, "moto's server", timeout=60)
            yield endpoint
        finally:
            _stop(process)


AWS_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

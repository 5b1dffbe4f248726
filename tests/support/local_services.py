"""Local stand-ins for the services a deployment talks to: a Prefect server and moto's S3/SQS server.

Used by the integration tests, the benchmarks and local trials of the deployments: each starts
the real program as a subprocess on a free loopback port and stops it on exit.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
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


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster in a temp dir on a free port; yields an asyncpg URL for Prefect.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user.
    """
    binaries = postgres_binaries()
    if binaries is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    home = Path(tempfile.mkdtemp(prefix="aimlapi-postgres-"))
    data, port = home / "pgdata", free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    log = home / "postgres.log"
    subprocess.run([*as_user, str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run(
        [*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
         f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", "start"],
        check=True, capture_output=True,
    )
    try:
        subprocess.run([*as_user, str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                        "prefect"], check=True, capture_output=True)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    finally:
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def prefect_server(home: Path, database_url: str | None = None, *, ui: bool = False) -> Iterator[str]:
    """`prefect server start` on its own database (SQLite under `home` by default); yields the API URL.

    `ui`: serve the Prefect UI too (at the URL without `/api`), for browser checks of artifacts.
    """
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home / "prefect-home"),
        "PREFECT_API_DATABASE_CONNECTION_URL": database_url or f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true" if ui else "false",
        "PREFECT_UI_API_URL": url,  # the UI's own calls go to this server, not to the default port
        # Persist events (and so fire triggers from them) twice a second instead of every 5 s.
        "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "0.5",
    }
    env.pop("PREFECT_API_URL", None)
    log = home / "prefect-server.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=output, stderr=subprocess.STDOUT,
        )
        try:
            _wait_until_up(process, f"{url}/health", log, "the Prefect server", timeout=120)
            yield url
        finally:
            _stop(process)


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

"""tests.support.local_services' helpers, without starting PostgreSQL, Prefect or moto: free loopback
ports, finding a PostgreSQL install, waiting for a started service (up, crashed, too slow) and
stopping one that ignores SIGTERM."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support import local_services
from tests.support.local_services import _stop, _wait_until_up, free_port, postgres_binaries


class FakeProcess:
    """A started service: `exit_code` None while it runs; `wait` can time out `timeouts` times."""

    def __init__(self, exit_code: int | None = None, timeouts: int = 0) -> None:
        self.exit_code, self.timeouts = exit_code, timeouts
        self.calls: list[str] = []

    def poll(self) -> int | None:
        return self.exit_code

    def kill(self) -> None:
        self.calls.append("kill")

    def terminate(self) -> None:
        self.calls.append("terminate")

    def wait(self, timeout: float | None = None) -> int:
        self.calls.append(f"wait {timeout}")
        if self.timeouts:
            self.timeouts -= 1
            raise subprocess.TimeoutExpired("service", timeout)
        return 0


@pytest.fixture
def no_sleep(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(local_services.time, "sleep", sleeps.append)
    return sleeps


def answers(monkeypatch, *outcomes: int | Exception) -> list[str]:
    """httpx.get answers with these status codes (or raises these errors), then keeps the last one."""
    asked: list[str] = []
    queue = list(outcomes)

    def get(url: str, timeout: float) -> httpx.Response:
        asked.append(url)
        outcome = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(outcome, Exception):
            raise outcome
        return httpx.Response(outcome)

    monkeypatch.setattr(local_services.httpx, "get", get)
    return asked


def test_free_port_returns_a_loopback_port_that_can_be_bound():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_a_service_counts_as_up_once_it_answers_below_500(monkeypatch, no_sleep, tmp_path):
    asked = answers(monkeypatch, httpx.ConnectError("refused"), 503, 404)
    process = FakeProcess()

    _wait_until_up(process, "http://127.0.0.1:1/health", tmp_path / "log", "the service", timeout=60)

    assert asked == ["http://127.0.0.1:1/health"] * 3 and len(no_sleep) == 2
    assert process.calls == []  # left running


def test_a_service_that_exits_while_starting_is_reported_with_its_log(no_sleep, tmp_path):
    process = FakeProcess(exit_code=1)
    log = tmp_path / "service.log"
    refused = f"http://127.0.0.1:{free_port()}/health"  # nothing listens there

    with pytest.raises(RuntimeError, match=f"the Prefect server did not start; see {log}"):
        _wait_until_up(process, refused, log, "the Prefect server", timeout=60)
    assert process.calls == ["kill"] and no_sleep == []  # no waiting for the deadline


def test_a_service_still_not_answering_at_the_deadline_is_killed(monkeypatch, no_sleep, tmp_path):
    answers(monkeypatch, 500)
    process = FakeProcess()
    with pytest.raises(RuntimeError, match="moto's server did not start"):
        _wait_until_up(process, "http://127.0.0.1:1/moto-api/", tmp_path / "log", "moto's server", timeout=0)
    assert process.calls == ["kill"]


def test_stop_terminates_and_kills_only_a_process_that_does_not_exit_in_time():
    polite = FakeProcess()
    _stop(polite)
    assert polite.calls == ["terminate", "wait 20"]

    stubborn = FakeProcess(timeouts=1)
    _stop(stubborn)
    assert stubborn.calls == ["terminate", "wait 20", "kill", "wait None"]


def test_postgres_binaries_prefers_debians_install_over_the_path(monkeypatch):
    found = ["/usr/lib/postgresql/15/bin/initdb", "/usr/lib/postgresql/16/bin/initdb"]
    monkeypatch.setattr(local_services.glob, "glob", lambda pattern: list(reversed(found)))
    monkeypatch.setattr(local_services.shutil, "which", lambda name: "/opt/pg/bin/initdb")
    assert postgres_binaries() == Path("/usr/lib/postgresql/16/bin")


def test_postgres_binaries_falls_back_to_initdb_on_the_path_and_else_to_none(monkeypatch):
    monkeypatch.setattr(local_services.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(local_services.shutil, "which", lambda name: "/opt/pg/bin/initdb" if name == "initdb" else None)
    assert postgres_binaries() == Path("/opt/pg/bin")
    monkeypatch.setattr(local_services.shutil, "which", lambda name: None)
    assert postgres_binaries() is None


def test_postgres_binaries_picks_the_newest_major_version_across_digit_counts(monkeypatch):
    found = ["/usr/lib/postgresql/9.6/bin/initdb", "/usr/lib/postgresql/16/bin/initdb"]
    monkeypatch.setattr(local_services.glob, "glob", lambda pattern: found)
    assert postgres_binaries() == Path("/usr/lib/postgresql/16/bin")

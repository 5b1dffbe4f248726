"""deployments.terminal: a failure ends with one `error: ...` line after Prefect's own queued output,
argument errors look the same, and the console keeps Prefect's log lines without their tracebacks
(which stay on the records for the flow run's log)."""

from __future__ import annotations

import logging
import sys
import types
from typing import ClassVar

import pytest
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker, PrefectConsoleHandler

from prefect_aimlapi_video.deployments import terminal
from prefect_aimlapi_video.deployments.terminal import OneLineErrors, WithoutTracebacks, fail, quiet_console


def failed_record(name: str = "prefect.flow_runs") -> logging.LogRecord:
    try:
        raise RuntimeError("the model said no")
    except RuntimeError:
        exc_info = sys.exc_info()
    return logging.LogRecord(name, logging.ERROR, __file__, 1, "Finished in state %s", ("Failed",), exc_info)


@pytest.fixture
def drains(monkeypatch):
    """Prefect's event and log workers, drained into a list instead of for real."""
    seen: list[tuple[str, float | None]] = []
    for worker in (EventsWorker, APILogWorker):
        monkeypatch.setattr(worker, "drain_all", classmethod(
            lambda cls, timeout=None, at_exit=True: seen.append((cls.__name__, timeout))))
    return seen


def test_fail_prints_one_error_line_to_stderr_and_returns_the_exit_code(drains, capsys):
    assert fail("the upload failed:\n  503 Service Unavailable\n\tretry later", 3) == 3
    captured = capsys.readouterr()
    assert captured.err == "error: the upload failed: 503 Service Unavailable retry later\n"
    assert captured.out == ""


def test_fail_lets_prefect_ship_its_queued_output_before_the_error_line(monkeypatch, capsys):
    monkeypatch.setattr(terminal, "flush_prefect", lambda: print("prefect: 3 logs shipped", file=sys.stderr))
    fail("boom", 1)
    assert capsys.readouterr().err.splitlines() == ["prefect: 3 logs shipped", "error: boom"]


def test_flush_prefect_drains_both_workers_with_a_bound_and_stops_temporary_servers(drains, monkeypatch):
    stopped: list[int] = []

    class FakeServer:
        def __init__(self, port: int) -> None:
            self.port = port

        def stop(self) -> None:
            stopped.append(self.port)
            del FakeSubprocessASGIServer._instances[self.port]  # as the real one does: no "changed size" error

    class FakeSubprocessASGIServer:
        _instances: ClassVar[dict[int, FakeServer]] = {8001: FakeServer(8001), 8002: FakeServer(8002)}

    fake_module = types.ModuleType("prefect.server.api.server")
    fake_module.SubprocessASGIServer = FakeSubprocessASGIServer
    monkeypatch.setitem(sys.modules, "prefect.server.api.server", fake_module)

    terminal.flush_prefect()

    assert sorted(name for name, _ in drains) == ["APILogWorker", "EventsWorker"]
    assert all(timeout is not None for _, timeout in drains)  # exit is never held up indefinitely
    assert sorted(stopped) == [8001, 8002] and FakeSubprocessASGIServer._instances == {}


def test_flush_prefect_starts_no_server_machinery_when_none_was_imported(drains, monkeypatch):
    monkeypatch.delitem(sys.modules, "prefect.server.api.server", raising=False)
    terminal.flush_prefect()
    assert len(drains) == 2
    assert "prefect.server.api.server" not in sys.modules


def test_flush_prefect_does_nothing_when_prefect_was_never_imported(drains, monkeypatch):
    monkeypatch.delitem(sys.modules, "prefect")
    terminal.flush_prefect()
    assert drains == []


def test_argument_errors_end_with_one_line_naming_the_help_and_exit_2(drains, capsys):
    parser = OneLineErrors(prog="aimlapi-video batch")
    parser.add_argument("--count", type=int, required=True)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--count", "many"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: argument --count: invalid int value: 'many' (see aimlapi-video batch --help)")


def test_without_tracebacks_keeps_the_line_and_leaves_the_traceback_on_the_record():
    inner = logging.Formatter("%(levelname)s %(message)s")
    record = failed_record()
    record.stack_info = "Stack (most recent call last): ..."

    assert inner.format(failed_record()).count("\n") > 0  # the plain formatter would print the traceback
    assert WithoutTracebacks(inner).format(record) == "ERROR Finished in state Failed"
    assert record.exc_info is not None and record.stack_info is not None  # the API log handler still gets them
    assert "RuntimeError: the model said no" in logging.Formatter().format(record)


@pytest.fixture
def root_handlers():
    """Handlers added to the root logger for the test; every root handler's formatter is put back after."""
    root = logging.getLogger()
    saved = [(handler, handler.formatter) for handler in root.handlers]
    added: list[logging.Handler] = []
    yield added
    for handler in added:
        root.removeHandler(handler)
    for handler, formatter in saved:
        handler.setFormatter(formatter)


def test_quiet_console_wraps_prefects_console_handlers_once_and_no_other_handler(root_handlers):
    other, console = logging.StreamHandler(), PrefectConsoleHandler()
    other_formatter = logging.Formatter("%(message)s")
    console_formatter = logging.Formatter("%(levelname)s %(message)s")
    other.setFormatter(other_formatter)
    console.setFormatter(console_formatter)
    for handler in (other, console):
        logging.getLogger().addHandler(handler)
        root_handlers.append(handler)

    quiet_console()
    quiet_console()

    assert isinstance(console.formatter, WithoutTracebacks) and console.formatter.inner is console_formatter
    assert console.format(failed_record()) == "ERROR Finished in state Failed"
    assert other.formatter is other_formatter


def test_a_temporary_prefect_server_is_announced_with_how_to_keep_one_running(capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_aimlapi_video.deployments.terminal import TEMPORARY_SERVER_NOTE, note_temporary_server

    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # nothing configured: Prefect starts one
        assert note_temporary_server() is True
    err = capsys.readouterr().err
    assert err == TEMPORARY_SERVER_NOTE + "\n" and err.count("\n") == 1
    assert "`prefect server start` in another terminal" in err
    assert "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`" in err
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        assert note_temporary_server() is False
    assert capsys.readouterr().err == ""

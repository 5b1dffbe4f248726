"""The runnable pages of the docs, run as a reader runs them, with the built wheel (issue 22).

docs/getting-started.md then docs/deployments.md (RUNNABLE_PAGES, in that order, as a reader goes
from one to the next in the same project): every ```bash and ```python block, unchanged and in
order, in one bash session started in an empty folder (the reader's project), each python block by
that shell's `python` (`python - <<'...'`, a quoted here-document), as
tests/unit/test_docs_site_unit.py states the rule. Each page does the rest itself:
`python3 -m venv .venv`, `pip install 'prefect-aimlapi-video[sandbox]'` (the second page finds it
installed: one install, not two, which keeps the suite inside its time), a Prefect server on
127.0.0.1:4200, the sandbox on 127.0.0.1:8787, and stopping both at its end; between the pages the
test checks that the first page's clean-up left both ports free.

The session gets what a reader's new terminal has: a PATH with the Python that runs the tests and
the system's folders (nothing of the development venv); a HOME and a PREFECT_HOME of its own; this
machine's pip settings as PIP_* variables (tests/support/wheel_venv.py: the new HOME hides the user
pip.conf), with the session's built wheel first in find-links and its version pinned, so that the
pages' `pip install` installs that wheel and takes the dependencies from the indexes (and the cache)
pip uses here. Afterwards the page's .venv must hold exactly that wheel's files.

No network beyond loopback and the package index: Prefect's analytics off (server and client), no
proxy for loopback, no AWS instance metadata. The server logs at DEBUG, so that it writes log lines
from its start as a server offline does. The pages name the ports 4200 and 8787: if something
listens on one, the test fails saying so (the pages cannot run as written there).

`set -e`: the first command that fails ends the session. The log marks each block with
`>>> docs/PAGE:LINE (LANG)`, and a failure names the last block started and shows the log's end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.docs_blocks import RUNNABLE_PAGES, runnable_blocks
from tests.support.wheel_venv import installed_from, pip_environment

SESSION_TIMEOUT = 1200  # s: on a busy 2-core machine, pip install alone may take two minutes
PORTS = {4200: "the Prefect server", 8787: "the sandbox"}
HEREDOC_END = "END_OF_THE_PYTHON_BLOCK"
MARK = ">>> "
# Inherited as they are: the way to the package index (proxies, certificates) and the locale.
PASSED_ON = ("LANG", "LC_ALL", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
             "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(SESSION_TIMEOUT + 300)]


def session_script(pages: tuple[str, ...]) -> str:
    """The pages' runnable blocks as one bash script, each after a line that marks it in the log;
    between two pages, a wait (up to 60 s) for the first page's clean-up to free the ports, then a
    failure if it did not."""
    lines = ["set -e -o pipefail"]
    for number, page in enumerate(pages):
        if number:
            lines.append(f"echo '{MARK}between docs/{pages[number - 1]} and docs/{page}: ports {list(PORTS)} free'")
            lines.append(_ports_free_check())
        for block in runnable_blocks(page):
            lines.append(f"echo '{MARK}docs/{page}:{block.line} ({block.lang})'")
            if block.lang == "bash":
                lines.append(block.code)
            else:
                assert HEREDOC_END not in block.code
                lines += [f"python - <<'{HEREDOC_END}'", block.code, HEREDOC_END]
    return "\n".join(lines) + "\n"


def _ports_free_check() -> str:
    """Bash that waits up to 60 s for nothing to listen on PORTS, then fails naming what still does."""
    probe = ("import socket, sys, time\n"
             f"ports = {list(PORTS)}\n"
             "def busy(p):\n"
             "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
             "    try: s.bind(('127.0.0.1', p)); return False\n"
             "    except OSError: return True\n"
             "    finally: s.close()\n"
             "deadline = time.monotonic() + 60\n"
             "while (left := [p for p in ports if busy(p)]) and time.monotonic() < deadline: time.sleep(0.5)\n"
             "sys.exit(f'the previous page left something listening on {left}' if left else 0)\n")
    return f"python3 - <<'{HEREDOC_END}'\n{probe}{HEREDOC_END}"


def _listening(port: int) -> bool:
    """Whether something listens on the port (SO_REUSEADDR, as the servers bind: a closed
    connection's TIME_WAIT does not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def _busy_ports(wait: float) -> list[int]:
    """The pages' ports something still listens on after up to `wait` seconds."""
    deadline = time.monotonic() + wait
    while (busy := [port for port in PORTS if _listening(port)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    return busy


def _session_env(home: Path, wheel: Path, work: Path) -> dict[str, str]:
    env = {name: os.environ[name] for name in PASSED_ON if name in os.environ}
    env.setdefault("LANG", "C.UTF-8")
    env.update(pip_environment(wheel, work))
    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY") or os.environ.get("no_proxy"),
                                      "127.0.0.1,localhost"]))
    env.update(
        PATH=f"{Path(sys.base_prefix) / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        HOME=str(home),
        PREFECT_HOME=str(home / ".prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        # The pages' Prefect server writes log lines from its start, as one offline does (its failed
        # telemetry): a server started with `--background` dies at its first line (Prefect 3.9.1 leaves
        # its output on pipes that close), so the pages must start theirs so that it survives them.
        PREFECT_LOGGING_SERVER_LEVEL="DEBUG",
        AWS_EC2_METADATA_DISABLED="true",
        NO_PROXY=no_proxy,
        no_proxy=no_proxy,
    )
    return env


def _end_of(log: Path, chars: int = 12000) -> tuple[str, str]:
    """The last block the session started, and the log's last characters."""
    text = log.read_text(errors="replace")
    marks = [line[len(MARK):] for line in text.splitlines() if line.startswith(MARK)]
    return (marks[-1] if marks else "none"), text[-chars:]


def test_every_runnable_block_of_the_pages_runs_unchanged_with_the_built_wheel(wheel: Path, tmp_path: Path) -> None:
    pages = RUNNABLE_PAGES
    busy = _busy_ports(wait=60)  # a test before this one may still be stopping a server
    assert not busy, (f"docs/{' and docs/'.join(pages)} need {' and '.join(f'{p} ({what})' for p, what in PORTS.items())} free; "
                      f"something listens on 127.0.0.1 port {busy}, so the page cannot run as written here")

    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    home.mkdir()
    script = tmp_path / "session.sh"
    script.write_text(session_script(pages))
    log = tmp_path / "session.log"
    env = _session_env(home, wheel, tmp_path)

    started = time.monotonic()
    with log.open("wb") as out:
        session = subprocess.Popen(["bash", str(script)], cwd=project, env=env, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code: int | None = session.wait(timeout=SESSION_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            # What the page itself stops (its last block) must be gone; then whatever is left of the
            # session (the server and the sandbox, when it ended early) is stopped: its process group.
            left = _busy_ports(wait=60) if session.poll() == 0 else []
            try:
                os.killpg(session.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                session.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(session.pid, signal.SIGKILL)
                session.wait()
    took = time.monotonic() - started

    last, end = _end_of(log)
    outcome = f"timed out after {SESSION_TIMEOUT} s" if code is None else f"exited {code}"
    assert code == 0, (f"The session {outcome} ({took:.0f} s) in the block at {last}. "
                       f"Script: {script}; log: {log}; its end:\n{end}")
    assert not left, f"docs/{pages[-1]} ran to its end, but its clean-up left something listening on {left}:\n{end}"
    assert installed_from(project / ".venv", wheel) == [], f"the pages' .venv does not hold {wheel}"
    print(f"docs/{' + docs/'.join(pages)}: every runnable block passed in {took:.0f} s")

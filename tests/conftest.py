"""Shared fixtures: one real Prefect server per test session, the sandbox, sample clips, the wheel.

Settings that Prefect reads at import time (PREFECT_HOME, logging) are set here, before any test
module imports Prefect, so the suite never touches the developer's own Prefect profile.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="aimlapi-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect-home")
os.environ["AIMLAPI_SUBMISSIONS_DIR"] = str(_SESSION_HOME / "submissions")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.3")
# A temporary server on a fresh database runs its migrations first: ~25 s on this 2-core machine,
# past Prefect's default 20 s wait for it.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("PREFECT_API_KEY", None)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """A real `prefect server start` subprocess; the tests (and their subprocesses) use its API.

    It runs on PostgreSQL when that is installed (Prefect's SQLite answers "database is locked"
    under concurrent flow runs, and its client then backs off for seconds), else on SQLite.
    Set AIMLAPI_TEST_DATABASE=sqlite to force SQLite.
    """
    from contextlib import ExitStack

    from tests.support import local_services

    with ExitStack() as stack:
        database = None
        if os.environ.get("AIMLAPI_TEST_DATABASE") != "sqlite" and local_services.postgres_binaries():
            database = stack.enter_context(local_services.postgres_server())
        url = stack.enter_context(local_services.prefect_server(_SESSION_HOME / "prefect-server", database, ui=True))
        os.environ["PREFECT_API_URL"] = url
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: url}):
            yield url
        os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's wheel, built once per session (PEP 517, isolated) from a copy of the repository,
    never touching the checkout (tests/support/wheel_venv.py)."""
    from tests.support.wheel_venv import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel-build"))


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small real H.264 clips, made once per session."""
    from prefect_aimlapi_video.sandbox import make_test_clip

    directory = tmp_path_factory.mktemp("clips")
    return {
        "small": make_test_clip(directory / "small.mp4", width=160, height=96, seconds=0.5, fps=12),
        "odd": make_test_clip(directory / "odd size.mp4", width=161, height=97, seconds=0.5, fps=12, pattern_seed=3),
    }


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator:
    """One sandbox for the session; tests reset it and set their own faults."""
    from prefect_aimlapi_video.sandbox import SandboxConfig, run_sandbox

    with run_sandbox(SandboxConfig(processing_seconds=0.3, workers=16)) as handle:
        yield handle


@pytest.fixture
def sandbox(sandbox_server):
    """The session's sandbox, reset (ledger, faults) for this test."""
    sandbox_server.reset()
    yield sandbox_server
    sandbox_server.reset()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's server mode in a subprocess: real S3 (and SQS) over HTTP on loopback.

    The default AWS credential chain of this process (and its children) points at it through
    the standard environment variables, AWS_ENDPOINT_URL included.
    """
    from tests.support import local_services

    with local_services.moto_server(_SESSION_HOME / "moto-server.log") as endpoint:
        os.environ.update(local_services.AWS_TEST_ENV, AWS_ENDPOINT_URL=endpoint)
        yield endpoint
        for name in (*local_services.AWS_TEST_ENV, "AWS_ENDPOINT_URL"):
            os.environ.pop(name, None)


@pytest.fixture
def s3(moto_server):
    """A boto3 S3 client on moto's server, with every bucket emptied and deleted after the test."""
    import boto3

    client = boto3.client("s3", endpoint_url=moto_server)
    yield client
    for bucket in client.list_buckets().get("Buckets", []):
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket["Name"]):
            for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                client.delete_object(Bucket=bucket["Name"], Key=item["Key"], VersionId=item["VersionId"])
        client.delete_bucket(Bucket=bucket["Name"])

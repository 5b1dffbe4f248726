"""AimlApiCredentials.check_access: one check shared by concurrent callers, never a shared failure."""

from __future__ import annotations

import asyncio

import pytest

import prefect_aimlapi_video.blocks.credentials as credentials_module
from prefect_aimlapi_video.api.errors import AuthenticationError
from prefect_aimlapi_video.blocks import AimlApiCredentials


@pytest.fixture
def checks(monkeypatch) -> list[str]:
    """Stand-in for the request itself (tested in test_client_unit); records the key each check used."""
    calls: list[str] = []

    async def check_now(credentials: AimlApiCredentials, attempts: int) -> None:  # replaces the method
        calls.append(credentials.api_key.get_secret_value())
        await asyncio.sleep(0.05)
        if credentials.api_key.get_secret_value() == "bad":
            raise AuthenticationError("Wrong key: check the AimlApiCredentials block.")

    monkeypatch.setattr(AimlApiCredentials, "_check_access_now", check_now)
    monkeypatch.setattr(AimlApiCredentials, "_access_checks", {})
    return calls


def creds(key: str, base_url: str = "http://127.0.0.1:9") -> AimlApiCredentials:
    return AimlApiCredentials(api_key=key, base_url=base_url)


async def test_concurrent_and_recent_checks_are_shared(checks):
    await asyncio.gather(*(creds("good").check_access() for _ in range(20)))
    await creds("good").check_access()
    assert checks == ["good"]


async def test_other_keys_and_urls_are_checked_on_their_own(checks):
    await creds("good").check_access()
    await creds("other").check_access()
    await creds("good", base_url="http://127.0.0.1:10").check_access()
    assert checks == ["good", "other", "good"]


async def test_a_failure_reaches_every_waiter_and_is_not_remembered(checks):
    results = await asyncio.gather(*(creds("bad").check_access() for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, AuthenticationError) for r in results)
    with pytest.raises(AuthenticationError):
        await creds("bad").check_access()
    assert checks == ["bad", "bad"]


async def test_a_check_older_than_the_ttl_is_made_again(checks, monkeypatch):
    await creds("good").check_access()
    monkeypatch.setattr(credentials_module, "ACCESS_CHECK_TTL_SECONDS", 0.0)
    await creds("good").check_access()
    assert checks == ["good", "good"]


async def test_a_cancelled_waiter_does_not_cancel_the_shared_check(checks):
    first = asyncio.ensure_future(creds("good").check_access())
    await asyncio.sleep(0.01)
    first.cancel()
    await creds("good").check_access()
    assert checks == ["good"]

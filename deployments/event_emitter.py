"""Where the bridge's events go: the Prefect API's `POST /api/events`; only a 2xx counts as emitted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import httpx
from prefect.events import Event


class EmitError(Exception):
    """The Prefect API did not accept the events (network error, non-2xx or non-JSON answer)."""


class Emitter(Protocol):
    """Where events go; raises EmitError when they were not accepted."""

    async def emit(self, events: Sequence[Event]) -> None: ...


class PrefectEventEmitter:
    """POST /api/events on the configured Prefect API (or `api_url`); only a 2xx answer counts as emitted."""

    def __init__(self, api_url: str | None = None) -> None:
        self.api_url = api_url

    def _client(self) -> Any:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        if self.api_url is None:
            return get_client()
        with temporary_settings({PREFECT_API_URL: self.api_url}):
            return get_client()

    async def emit(self, events: Sequence[Event]) -> None:
        try:
            async with self._client() as client:
                response = await client.request("POST", "/events", json=[e.model_dump(mode="json") for e in events])
                response.raise_for_status()
        # ValueError: a 2xx answer that is not JSON (an API URL without `/api` reaches the UI's page)
        except (httpx.HTTPError, OSError, ValueError) as error:
            raise EmitError(f"POST /api/events failed: {error}") from error

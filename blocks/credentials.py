"""The `AimlApiCredentials` block: where the API key lives, so flows never take it as a parameter.

Like prefect-aws's `AwsCredentials`, the block owns what is done with its credentials: making
clients, loading a block by name with a message that says how to fix a miss (`resolve`), and the
free access check that runs before anything is paid (`check_access`, shared per key and process).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import ClassVar
from urllib.parse import urlsplit

from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, HttpUrl, SecretStr, field_validator

from prefect_aimlapi_video.api.client import AimlApiClient
from prefect_aimlapi_video.api.connection import DEFAULT_BASE_URL, check_base_url, is_loopback
from prefect_aimlapi_video.api.download import DEFAULT_DOWNLOAD_DEADLINE_SECONDS, DEFAULT_MAX_DOWNLOAD_BYTES
from prefect_aimlapi_video.api.errors import InvalidInputError, TransientApiError

ACCESS_CHECK_TTL_SECONDS = 60.0

# PLACEHOLDER, declared here once: our documentation site (mkdocs.yml, docs/) is not hosted anywhere
# yet, and Prefect takes only an http(s) URL for a block type's documentation (its BlockType model
# validates `_documentation_url` as an HttpUrl, so no relative or repository path). `.invalid` is a
# reserved top-level domain (RFC 2606, never resolves): this points at nobody's site until the real
# host replaces it. The path is the page of the site that documents the block (docs/reference/client.md).
DOCS_SITE = "https://prefect-aimlapi-video.invalid"
DOCUMENTATION_URL = f"{DOCS_SITE}/reference/client/"


class AimlApiCredentials(CredentialsBlock):
    """Credentials and connection settings for the AI/ML API (https://aimlapi.com).

    Example:
        Load a saved block by name and use its client:
        ```python
        from prefect_aimlapi_video import AimlApiCredentials

        aimlapi_credentials_block = AimlApiCredentials.load("BLOCK_NAME")
        async with aimlapi_credentials_block.get_client() as client:
            generation = await client.get_generation("GENERATION_ID")
        ```
    """

    # The provider's name is "AI/ML API", but Prefect refuses "/" (and "%&><") in a block type's
    # name, on the client and the server alike; the description keeps the slash.
    _block_type_name = "AIML API Credentials"
    # Explicit, because the slug is how saved blocks find their type and Prefect would otherwise
    # derive it from the name (here "aiml-api-credentials"): a new name must never move the slug.
    _block_type_slug = "aimlapi-credentials"
    _description = "API key and connection settings for the AI/ML API video-to-video model."
    _documentation_url = HttpUrl(DOCUMENTATION_URL)
    # No logo yet: Prefect takes only an http(s) URL the UI loads (a data: URI fails its HttpUrl
    # validation at registration), and nothing of ours is served. The logo to publish is
    # blocks/logo.png (256 px square, as Prefect's block test suite wants); set its URL here then.
    _logo_url = None

    api_key: SecretStr = Field(description="Your AI/ML API key (https://aimlapi.com/app/keys).")
    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        description="API base URL. https, or plain http on loopback for the local sandbox.",
    )
    timeout_seconds: float = Field(default=30.0, gt=0, description="Timeout of each API request.")
    connect_timeout_seconds: float = Field(default=10.0, gt=0, description="Timeout to open a connection.")
    download_timeout_seconds: float = Field(
        default=120.0, gt=0, description="Read timeout while downloading a result video."
    )
    max_download_bytes: int = Field(
        default=DEFAULT_MAX_DOWNLOAD_BYTES, gt=0, description="Refuse result files larger than this."
    )
    download_deadline_seconds: float = Field(
        default=DEFAULT_DOWNLOAD_DEADLINE_SECONDS, gt=0,
        description="The longest a result download may take in all, however slowly the bytes come.",
    )

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_base_url(value)

    @property
    def on_loopback(self) -> bool:
        """The API is on this machine (the local sandbox): only then may fetches of user and result
        URLs use plain http or reach loopback and private addresses (`api.fetch_guard`)."""
        return is_loopback(urlsplit(self.base_url).hostname)

    def get_client(self) -> AimlApiClient:
        """A new async client; use it as `async with credentials.get_client() as client:`."""
        return AimlApiClient(
            self.api_key,
            self.base_url,
            timeout_seconds=self.timeout_seconds,
            connect_timeout_seconds=self.connect_timeout_seconds,
            download_timeout_seconds=self.download_timeout_seconds,
            max_download_bytes=self.max_download_bytes,
            download_deadline_seconds=self.download_deadline_seconds,
        )

    @classmethod
    async def resolve(cls, credentials: str | AimlApiCredentials) -> AimlApiCredentials:
        """A block, or the block saved under that name; a missing one is an input error saying how to fix it."""
        if isinstance(credentials, AimlApiCredentials):
            return credentials
        try:
            return await cls.aload(credentials)
        except ValueError:
            raise InvalidInputError(
                f"No AimlApiCredentials block named {credentials!r}. Save one first: "
                f"`aimlapi-video save-key --name {credentials}` (key from AIMLAPI_API_KEY), or "
                f"AimlApiCredentials(api_key=...).save({credentials!r})."
            ) from None

    # (base URL and key hash) -> the check in flight or passed, and when it started
    _access_checks: ClassVar[dict[str, tuple[asyncio.Future[None], float]]] = {}

    async def check_access(self, attempts: int = 3) -> None:
        """Fail fast, before anything is spent, if the API cannot be reached or refuses the key.

        A check that passed in this process less than a minute ago, or is in flight, is shared: a
        batch checks once for all its children instead of once per child. A failure is never shared.
        """
        key = hashlib.sha256(f"{self.base_url}|{self.api_key.get_secret_value()}".encode()).hexdigest()
        checks = AimlApiCredentials._access_checks
        shared = checks.get(key)
        if (shared is None or shared[0].get_loop() is not asyncio.get_running_loop()
                or (shared[0].done() and time.monotonic() - shared[1] > ACCESS_CHECK_TTL_SECONDS)):
            shared = (asyncio.ensure_future(self._check_access_now(attempts)), time.monotonic())
            checks[key] = shared
        try:
            await asyncio.shield(shared[0])
        finally:
            check = shared[0]
            if check.done() and (check.cancelled() or check.exception()) and checks.get(key) is shared:
                del checks[key]  # never share a failure: the next caller checks again

    async def _check_access_now(self, attempts: int) -> None:
        async with self.get_client() as client:
            for attempt in range(attempts):
                try:
                    return await client.check_access()
                except TransientApiError as exc:
                    if attempt + 1 == attempts:
                        raise InvalidInputError(
                            f"{exc} Check base_url ({self.base_url}) in your AimlApiCredentials block "
                            "and your network; nothing was sent or spent."
                        ) from None
                    await asyncio.sleep(0.5 * 2**attempt)

"""The `AimlApiCredentials` block: where the API key lives, so flows never take it as a parameter."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from prefect.blocks.abstract import CredentialsBlock

from prefect_aimlapi_video.flows.client import DEFAULT_BASE_URL, DEFAULT_MAX_DOWNLOAD_BYTES, AimlApiClient, check_base_url


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

    _block_type_name = "AimlApi Credentials"
    _block_type_slug = "aimlapi-credentials"
    _description = "API key and connection settings for the AI/ML API video-to-video model."
    _documentation_url = "https://docs.aimlapi.com/api-references/video-models/krea/krea-wan-14b-video-to-video"

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

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_base_url(value)

    def get_client(self) -> AimlApiClient:
        """A new async client; use it as `async with credentials.get_client() as client:`."""
        return AimlApiClient(
            self.api_key,
            self.base_url,
            timeout_seconds=self.timeout_seconds,
            connect_timeout_seconds=self.connect_timeout_seconds,
            download_timeout_seconds=self.download_timeout_seconds,
            max_download_bytes=self.max_download_bytes,
        )

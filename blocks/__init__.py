"""Prefect blocks of this integration (`prefect block register -m prefect_aimlapi_video` registers them)."""

from prefect_aimlapi_video.blocks.credentials import AimlApiCredentials

__all__ = ["AimlApiCredentials"]

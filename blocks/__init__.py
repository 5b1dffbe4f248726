"""Prefect blocks of this integration (`prefect block register -m blocks` registers them)."""

from blocks.credentials import AimlApiCredentials

__all__ = ["AimlApiCredentials"]

"""Blocks named by `block-type-slug/block-name` in flow parameters (output storage, staging buckets).

Loading one is a free call to the Prefect API, made before anything is paid; a miss becomes a
message that says how to fix it.
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block

from prefect_aimlapi_video.api.errors import InvalidInputError


async def load_block(slug_and_name: str, *, what: str) -> Any:
    """Load a block by `block-type-slug/block-name`, with a message that says how to fix a miss."""
    if "/" not in slug_and_name:
        raise InvalidInputError(
            f"{what} must be 'block-type-slug/block-name' (e.g. 'local-file-system/outputs'), got {slug_and_name!r}."
        )
    try:
        return await Block.aload(slug_and_name)
    except (ValueError, KeyError) as exc:
        raise InvalidInputError(
            f"{what}: no block {slug_and_name!r} on this Prefect server ({exc}). Create it in the UI "
            "(Blocks) or with Python, then retry."
        ) from None

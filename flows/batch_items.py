"""What a batch is made of: its items (as rows of a manifest or a list) and the row each leaves.

An item names a video, where its result goes, its idempotency key, and any of the request's
fields; the fields come from the model's request class (`flows.requests`), so a new model's
fields are batch columns without a change here. Unset fields take the batch's defaults.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from prefect_aimlapi_video.flows.errors import InvalidInputError
from prefect_aimlapi_video.flows.redact import safe_url
from prefect_aimlapi_video.flows.requests import GenerationParams, VideoRequest
from prefect_aimlapi_video.flows.s3 import read_object


def shown_video(video: str) -> str:
    """How a table shows an item's video: never a data URI or a URL's (possibly signed) query."""
    return "data URI" if video.startswith("data:") else safe_url(video) if "://" in video else video


class ItemBase(BaseModel):
    """The fields of an item that are not the request's."""

    model_config = ConfigDict(extra="forbid")

    video: str
    output: str | None = None
    idempotency_key: str | None = None


@functools.cache
def batch_item_model(request: type[VideoRequest]) -> type[ItemBase]:
    """The item class of a request model: `ItemBase` plus each request field, optional."""
    fields: dict[str, Any] = {name: (field.annotation | None, None) for name, field in request.model_fields.items()}
    return create_model("BatchItem", __base__=ItemBase, __doc__="One row of a batch; unset fields take the "
                        "batch's defaults.", **fields)


BatchItem = batch_item_model(GenerationParams)


class BatchItemResult(BaseModel):
    index: int
    video: str
    status: str
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    generation_id: str | None = None
    output: str | None = None
    credits: float | None = None
    collect_command: str | None = None  # a paid generation left behind: how to collect it at no new cost
    queued_s: float | None = None
    generating_s: float | None = None
    download_s: float | None = None
    total_s: float | None = None
    error: str | None = None


def _parse_rows(text: str, name: str) -> list[dict[str, Any]]:
    if name.endswith(".jsonl"):
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InvalidInputError(f"manifest {name} line {number}: not JSON ({exc.msg}).") from None
        return rows
    if name.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "video" not in reader.fieldnames:
            raise InvalidInputError(f"manifest {name}: the CSV header must have a 'video' column.")
        return [{k: v for k, v in row.items() if v not in (None, "")} for row in reader]
    raise InvalidInputError(f"manifest {name}: use a .csv or .jsonl file.")


async def load_manifest(manifest: str, aws_credentials: str | None = None,
                        request: type[VideoRequest] = GenerationParams) -> list[ItemBase]:
    """Items from a CSV or JSONL manifest, local or `s3://bucket/key`; errors name the line."""
    if manifest.startswith("s3://"):
        text = (await read_object(manifest, aws_credentials)).decode()
    else:
        path = Path(manifest).expanduser()
        if not path.is_file():
            raise InvalidInputError(f"manifest {manifest} does not exist.")
        text = path.read_text()
    item = batch_item_model(request)
    return [_item(item, request.from_text(row), f"manifest {manifest} item {number}")
            for number, row in enumerate(_parse_rows(text, manifest.lower()), 1)]


def parse_items(items: list[Any], request: type[VideoRequest] = GenerationParams) -> list[ItemBase]:
    """Items given as dicts (a deployment, the UI) or item objects, checked before anything is spent."""
    item = batch_item_model(request)
    return [_item(item, entry.model_dump(exclude_unset=True) if isinstance(entry, BaseModel) else entry,
                  f"batch item {number}") for number, entry in enumerate(items)]


def _item(item: type[ItemBase], row: Any, where: str) -> ItemBase:
    try:
        return item.model_validate(row)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InvalidInputError(f"{where}: {error['msg']} at {'.'.join(map(str, error['loc'])) or 'the row'}.") from None

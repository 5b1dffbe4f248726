"""What a batch is made of: its items (as rows of a manifest or a list) and the row each leaves.

An item names a video, where its result goes, its idempotency key, and any of the request's
fields; the fields come from the model's request class (`api.requests`), so a new model's
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

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.api.redact import redact, safe_url
from prefect_aimlapi_video.api.requests import GenerationParams, VideoRequest
from prefect_aimlapi_video.flows.batch_context import ChildOutcome
from prefect_aimlapi_video.flows.choices import NAMED_FIELDS
from prefect_aimlapi_video.media.video_checks import scheme_of
from prefect_aimlapi_video.storage.s3 import read_object


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


def child_arguments(arguments: dict[str, Any], item: ItemBase) -> dict[str, Any]:
    """One child's `video_to_video` arguments: the batch's, then the item's video, output and key.
    The item's request fields win over the batch's; those the flow names (`NAMED_FIELDS`: its run
    name and the UI show them) go as its parameters, any other model's in `overrides`."""
    own = item.model_dump(exclude_none=True)
    fields = {**(arguments.get("overrides") or {}),
              **{name: own.pop(name) for name in list(own) if name not in ItemBase.model_fields}}
    named = {name: fields.pop(name) for name in NAMED_FIELDS if name in fields}
    return {**arguments, **own, **named, "overrides": fields or None}


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


def completed_row(row: BatchItemResult, result: Any) -> BatchItemResult:
    """`row` with what a child's `VideoToVideoResult` says."""
    return row.model_copy(update={
        "status": result.status, "generation_id": result.generation_id, "output": result.output,
        "credits": result.credits, **result.timing.model_dump(),
    })


def failed_row(row: BatchItemResult, status: str, reason: str, failure: BaseException | None) -> BatchItemResult:
    """`row` failed with `reason`, naming any paid generation the failure names and its collect command."""
    return row.model_copy(update={"status": status, "error": reason[:300],
                                  "generation_id": getattr(failure, "generation_id", None),
                                  "collect_command": getattr(failure, "collect_command", None)})


def row_without_state(row: BatchItemResult, outcome: ChildOutcome, exc: Exception) -> BatchItemResult:
    """A child whose final state Prefect could not hand back (its API failing): the row says what the
    child knew at its end (`flows.batch_context.child_outcome`), so a paid generation keeps its id and
    collect command in the table; a child that never started says why."""
    if outcome.result is not None:
        return completed_row(row, outcome.result).model_copy(update={"flow_run_id": outcome.result.flow_run_id})
    if outcome.failure is not None:
        return failed_row(row, "failed", redact(str(outcome.failure)), outcome.failure)
    return row.model_copy(update={"error": f"could not run: {type(exc).__name__}: {redact(str(exc))[:250]}"})


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
                        request: type[VideoRequest] = GenerationParams, *, output_root: str | None = None,
                        input_root: str | None = None) -> list[ItemBase]:
    """Items from a CSV or JSONL manifest, local or `s3://bucket/key`; errors name the line.

    A manifest is data: whoever can write it (an S3 upload, say) must not be able to make a worker
    overwrite any file or send any local video. So an item's `output` must lie under `output_root` (a
    relative one is placed there), and a local `video` under `input_root` (default: the directory of a
    local manifest; an s3:// manifest may name local videos only when `input_root` is given).
    """
    if manifest.startswith("s3://"):
        text = (await read_object(manifest, aws_credentials)).decode()
    else:
        path = Path(manifest).expanduser()
        if not path.is_file():
            raise InvalidInputError(f"manifest {manifest} does not exist.")
        text = path.read_text()
        input_root = input_root or str(path.resolve().parent)
    item = batch_item_model(request)
    items = []
    for number, row in enumerate(_parse_rows(text, manifest.lower()), 1):
        where = f"manifest {manifest} item {number}"
        entry = _item(item, request.from_text(row), where)
        update: dict[str, str] = {}
        if entry.output is not None:
            update["output"] = confined(entry.output, output_root or DEFAULT_OUTPUT_ROOT, f"{where}: output")
        if scheme_of(entry.video) == "":
            if input_root is None:
                raise InvalidInputError(f"{where}: a local video in an s3:// manifest needs `input_root` (the "
                                        "directory the deployment allows local inputs from).")
            update["video"] = confined(entry.video, input_root, f"{where}: video")
        items.append(entry.model_copy(update=update))
    return items


DEFAULT_OUTPUT_ROOT = "aimlapi-outputs"  # the flows' default output directory


def output_root(output: str | None) -> str:
    """The folder a batch's outputs live in: its `output` up to the last '/' before any `{field}`."""
    if not output:
        return DEFAULT_OUTPUT_ROOT
    fixed = output.split("{", 1)[0]
    if "{" in output or not (fixed.endswith("/") or (not fixed.startswith("s3://") and Path(fixed).is_dir())):
        fixed = fixed.rpartition("/")[0] + "/"
    return fixed


def confined(path: str, root: str, what: str) -> str:
    """`path` placed under `root` (a relative one is joined to it); refused if it would leave it."""
    if root.startswith("s3://"):
        prefix = root.rstrip("/") + "/"
        joined = path if path.startswith("s3://") else prefix + path.lstrip("/")
        if not joined.startswith(prefix) or ".." in joined.removeprefix(prefix).split("/"):
            raise InvalidInputError(f"{what} {path!r} is not under {prefix}; nothing was sent.")
        return joined
    if "://" in path:
        raise InvalidInputError(f"{what} {path!r} is not under {root}; nothing was sent.")
    base = Path(root).expanduser().resolve()
    final = (base / Path(path).expanduser()).resolve()
    if final != base and base not in final.parents:
        raise InvalidInputError(f"{what} {path!r} is not under {base}; nothing was sent.")
    return str(final)


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

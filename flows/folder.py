"""The scheduled sweep: restyle every video under an S3 prefix (or in a manifest) not done yet.

Made to be re-run on a schedule: an item whose output already exists is skipped before any
request, and each generation's idempotency key is the input object's identity (its etag), so
a run that crashed half-way resumes its accepted generations instead of paying for them again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.flows.batch import (
    DEFAULT_CONCURRENCY_LIMIT,
    DEFAULT_MAX_CONCURRENCY,
    BatchItem,
    BatchItemResult,
    load_manifest,
    report,
    run_items,
)
from prefect_aimlapi_video.flows.errors import InvalidInputError
from prefect_aimlapi_video.flows.inputs import VIDEO_SUFFIXES, file_stem
from prefect_aimlapi_video.flows.outputs import TEMPLATE_FIELDS
from prefect_aimlapi_video.flows.polling import PollPolicy
from prefect_aimlapi_video.flows.storage import list_objects, object_exists
from prefect_aimlapi_video.flows.tasks import DEFAULT_TIMEOUT_SECONDS
from prefect_aimlapi_video.flows.video_to_video import DEFAULT_CREDENTIALS_BLOCK

# Fields that change from run to run cannot name an output we look for on the next run.
_UNSTABLE_FIELDS = ("generation", "flow_run", "date")


def _output_for(video: str, output_prefix: str, output_name: str, seed: int | None, strength: float) -> str:
    stem = file_stem(video.rsplit("/", 1)[-1])
    name = output_name.format_map({"stem": stem, "seed": "random" if seed is None else seed, "strength": f"{strength:g}"})
    return f"{output_prefix.rstrip('/')}/{name}"


async def _exists(location: str, aws_credentials: str | None) -> bool:
    if location.startswith("s3://"):
        return await object_exists(location, aws_credentials)
    return Path(location).expanduser().exists()


async def _discover(source: str, output_prefix: str, aws_credentials: str | None) -> list[BatchItem]:
    """Videos under an S3 prefix (never those under the output prefix), or a manifest's items."""
    if source.lower().endswith((".csv", ".jsonl")):
        return await load_manifest(source, aws_credentials)
    if not source.startswith("s3://"):
        raise InvalidInputError(f"source must be s3://bucket/prefix/ or a .csv/.jsonl manifest, got {source!r}.")
    items = []
    for entry in await list_objects(source, aws_credentials):
        url = f"s3://{source.removeprefix('s3://').split('/', 1)[0]}/{entry['Key']}"
        if url.startswith(output_prefix.rstrip("/") + "/") or not entry["Key"].lower().endswith(VIDEO_SUFFIXES):
            continue
        etag = entry.get("ETag", "").strip('"')
        items.append(BatchItem(video=url, idempotency_key=f"{url}#{etag}"))
    return items


@flow(name="aimlapi-video-to-video-folder")
async def video_to_video_folder(
    source: str,
    output_prefix: str,
    prompt: str,
    strength: float = 0.85,
    seed: int | None = None,
    enable_prompt_expansion: bool = True,
    output_name: str = "{stem}.mp4",
    credentials: str | AimlApiCredentials = DEFAULT_CREDENTIALS_BLOCK,
    aws_credentials: str | None = None,
    concurrency_limit: str | None = DEFAULT_CONCURRENCY_LIMIT,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    tolerate_failures: bool = False,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    poll_policy: PollPolicy | None = None,
) -> list[BatchItemResult]:
    """Restyle each video under `source` whose output under `output_prefix` does not exist yet.

    Args:
        source: `s3://bucket/prefix/` to sweep, or a .csv/.jsonl manifest (local or s3://).
        output_prefix: where results go (`s3://bucket/outputs/` or a local directory); objects under
            it are never treated as inputs, even inside `source`.
        output_name: file name under `output_prefix`; {stem}, {seed} and {strength} only, so the
            next run can tell which outputs exist.
    """
    logger = get_run_logger()
    unstable = [f for f in _UNSTABLE_FIELDS if "{" + f + "}" in output_name]
    unknown = [f for f in TEMPLATE_FIELDS if f not in ("stem", "seed", "strength") and "{" + f + "}" in output_name]
    if unstable or unknown:
        raise InvalidInputError(f"output_name may use only {{stem}}, {{seed}}, {{strength}}; got {output_name!r}.")
    rows: list[BatchItemResult] = []
    todo: list[BatchItem] = []
    for index, item in enumerate(await _discover(source, output_prefix, aws_credentials)):
        output = item.output or _output_for(
            item.video, output_prefix, output_name,
            item.seed if item.seed is not None else seed, item.strength if item.strength is not None else strength,
        )
        if await _exists(output, aws_credentials):
            rows.append(BatchItemResult(index=index, video=item.video, status="skipped", output=output,
                                        error="output exists"))
        else:
            todo.append(item.model_copy(update={"output": output}))
    logger.info("%d videos to restyle, %d already done.", len(todo), len(rows))
    defaults: dict[str, Any] = dict(
        prompt=prompt, strength=strength, seed=seed, enable_prompt_expansion=enable_prompt_expansion,
        credentials=credentials, aws_credentials=aws_credentials, timeout_seconds=timeout_seconds,
        poll_policy=poll_policy,
    )
    if todo:
        done = await run_items(todo, defaults, scope="folder", concurrency_limit=concurrency_limit,
                               max_concurrency=max_concurrency)
        rows = [row.model_copy(update={"index": i}) for i, row in enumerate(rows + done)]
    return await report(rows, tolerate_failures=tolerate_failures)

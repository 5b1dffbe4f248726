"""The scheduled sweep: restyle every video under an S3 prefix (or in a manifest) not done yet.

Made to be re-run on a schedule, and to run beside the upload trigger: an item whose output already
exists is skipped before any request, and each object runs exactly as the trigger would run it
(see `storage.s3_requests`), so a run that crashed half-way, or an object the trigger is handling,
resumes its accepted generation instead of paying for it again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.api.requests import DEFAULT_MODEL, VideoRequest, request_model
from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.flows.batch import DEFAULT_CONCURRENCY_LIMIT, DEFAULT_MAX_CONCURRENCY, run_items
from prefect_aimlapi_video.flows.batch_items import BatchItemResult, ItemBase, batch_item_model, load_manifest
from prefect_aimlapi_video.flows.batch_report import budget_line, report, shared_budget
from prefect_aimlapi_video.flows.choices import chosen_fields, parse_overrides
from prefect_aimlapi_video.flows.settings import RunSettings
from prefect_aimlapi_video.flows.video_to_video import DEFAULT_CREDENTIALS_BLOCK
from prefect_aimlapi_video.storage.s3 import head_object, list_objects, object_exists, object_version, s3_identity
from prefect_aimlapi_video.storage.s3_requests import object_idempotency_key, overrides_from_metadata
from prefect_aimlapi_video.storage.sources import VIDEO_SUFFIXES, file_stem
from prefect_aimlapi_video.storage.templates import TEMPLATE_FIELDS

# Fields that stay the same from run to run for one object and one request: outputs named with
# them can be found again by the next run (and by the upload trigger, which uses the same names).
STABLE_FIELDS = ("stem", "seed", "strength", "fingerprint")


def _check_output_name(output_name: str, source: str) -> None:
    used = {f for f in TEMPLATE_FIELDS if "{" + f + "}" in output_name}
    if used - set(STABLE_FIELDS):
        raise InvalidInputError(
            f"output_name may use only {{stem}}, {{seed}}, {{strength}} and {{fingerprint}} (the same for the "
            f"same object and request, so the next run finds it); got {output_name!r}."
        )
    if "fingerprint" in used and not source.startswith("s3://"):
        raise InvalidInputError("output_name may use {fingerprint} only when sweeping an s3:// prefix; give manifest "
                                "items their own `output` instead.")


def _render(output_prefix: str, output_name: str, video: str, seed: int | None, strength: float,
            fingerprint: str = "") -> str:
    fields = dict(stem=file_stem(video), seed="random" if seed is None else seed,
                  strength=f"{strength:g}", fingerprint=fingerprint[:12])
    return f"{output_prefix.rstrip('/')}/{output_name.format_map(fields)}"


def _value(item: ItemBase, name: str, defaults: dict[str, Any]) -> Any:
    """An item's own value of a request field, else the sweep's default."""
    value = getattr(item, name, None)
    return defaults.get(name) if value is None else value


async def _exists(location: str, aws_credentials: str | None) -> bool:
    if location.startswith("s3://"):
        return await object_exists(location, aws_credentials)
    return Path(location).expanduser().exists()


async def _object_item(url: str, request: type[VideoRequest], defaults: dict[str, Any], output_prefix: str,
                       output_name: str, aws_credentials: str | None) -> ItemBase:
    """The batch item for one object, as the upload trigger would run it: the object's metadata
    overrides, its object+etag idempotency key, and the output name its request fingerprint gives."""
    head = await head_object(url, aws_credentials)
    version_id, etag = object_version(head)
    overrides = parse_overrides(overrides_from_metadata(head.get("Metadata", {})), request)
    params = request.validated(**{**defaults, **overrides})
    fingerprint = params.fingerprint(s3_identity(url, version_id, etag))
    output = _render(output_prefix, output_name, url, getattr(params, "seed", None), getattr(params, "strength", 0.0),
                     fingerprint)
    return batch_item_model(request)(video=url, idempotency_key=object_idempotency_key(url, etag), output=output,
                                     **params.model_dump())


async def _discover(source: str, output_prefix: str, output_name: str, request: type[VideoRequest],
                    defaults: dict[str, Any], aws_credentials: str | None,
                    input_root: str | None = None) -> list[ItemBase | BatchItemResult]:
    """Items to run (S3 objects under the prefix, never under the output prefix; or a manifest's
    rows), and a failed row for each object whose metadata overrides are invalid."""
    if source.lower().endswith((".csv", ".jsonl")):
        items = await load_manifest(source, aws_credentials, request, output_root=output_prefix, input_root=input_root)
        return [item if item.output else item.model_copy(update={"output": _render(
            output_prefix, output_name, item.video, _value(item, "seed", defaults),
            _value(item, "strength", defaults) or 0.0)}) for item in items]
    if not source.startswith("s3://"):
        raise InvalidInputError(f"source must be s3://bucket/prefix/ or a .csv/.jsonl manifest, got {source!r}.")
    bucket = source.removeprefix("s3://").split("/", 1)[0]
    found: list[ItemBase | BatchItemResult] = []
    for entry in await list_objects(source, aws_credentials):
        url = f"s3://{bucket}/{entry['Key']}"
        if url.startswith(output_prefix.rstrip("/") + "/") or not entry["Key"].lower().endswith(VIDEO_SUFFIXES):
            continue
        try:
            found.append(await _object_item(url, request, defaults, output_prefix, output_name, aws_credentials))
        except InvalidInputError as exc:  # bad metadata on one object fails that object only
            found.append(BatchItemResult(index=0, video=url, status="failed", error=f"metadata overrides: {exc}"))
    return found


@flow(name="aimlapi-video-to-video-folder", validate_parameters=False)
async def video_to_video_folder(
    source: str,
    output_prefix: str,
    prompt: str | None = None,
    strength: float | None = None,
    seed: int | None = None,
    enable_prompt_expansion: bool | None = None,
    output_name: str = "{stem}.mp4",
    credentials: str | AimlApiCredentials = DEFAULT_CREDENTIALS_BLOCK,
    overrides: dict[str, Any] | str | None = None,
    model: str = DEFAULT_MODEL,
    concurrency_limit: str | None = DEFAULT_CONCURRENCY_LIMIT,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    tolerate_failures: bool = False,
    deployment: str | None = None,
    workers_share_disk: bool = False,
    input_root: str | None = None,
    settings: RunSettings | None = None,
) -> list[BatchItemResult]:
    """Restyle each video under `source` whose output under `output_prefix` does not exist yet.

    Args:
        source: `s3://bucket/prefix/` to sweep, or a .csv/.jsonl manifest (local or s3://).
        output_prefix: where results go (`s3://bucket/outputs/` or a local directory); objects under
            it are never treated as inputs, even inside `source`.
        output_name: file name under `output_prefix`: {stem}, {seed}, {strength} and (for s3://
            sources) {fingerprint}, which stay the same for the same object and request, so the next
            run, and the upload trigger when its `output` is `output_prefix` + `output_name`, find it.
        prompt, strength, seed, enable_prompt_expansion, overrides, model: the sweep's request, as for
            `video_to_video` (an object's metadata wins over it).
        concurrency_limit, max_concurrency, tolerate_failures, deployment, workers_share_disk,
            input_root: as for `video_to_video_batch` (a manifest's outputs stay under `output_prefix`).
        settings: as for `video_to_video_batch` (a spend cap per sweep, or per named `budget`); use a
            shared s3:// `submissions` store when the upload trigger's runs may run on other hosts.

    Each S3 object runs as the upload trigger would run it: its metadata overrides
    (x-amz-meta-aimlapi-prompt, ...), its object+etag idempotency key, the same output name. So an
    object either of them handled is skipped (output exists) or resumed (same record), never paid twice.
    """
    from prefect.runtime import flow_run

    logger = get_run_logger()
    _check_output_name(output_name, source)
    shared = shared_budget(RunSettings.parse(settings), f"sweep-{flow_run.id}")
    aws_credentials = shared.aws_credentials
    request = request_model(model)
    defaults = request.validated(**chosen_fields(request, overrides, prompt=prompt, strength=strength, seed=seed,
                                                 enable_prompt_expansion=enable_prompt_expansion)).model_dump()
    rows: list[BatchItemResult] = []
    todo: list[ItemBase] = []
    for found in await _discover(source, output_prefix, output_name, request, defaults, aws_credentials, input_root):
        if isinstance(found, BatchItemResult):
            rows.append(found)
        elif found.output and await _exists(found.output, aws_credentials):
            rows.append(BatchItemResult(index=0, video=found.video, status="skipped", output=found.output,
                                        error="output exists"))
        else:
            todo.append(found)
    logger.info("%d videos to restyle, %d already done or refused.", len(todo), len(rows))
    if todo:
        rows += await run_items(todo, dict(model=model, credentials=credentials, overrides=defaults), shared,
                                scope="folder", concurrency_limit=concurrency_limit, max_concurrency=max_concurrency,
                                deployment=deployment, workers_share_disk=workers_share_disk)
    rows = [row.model_copy(update={"index": i}) for i, row in enumerate(rows)]
    return await report(rows, tolerate_failures=tolerate_failures, budget=await budget_line(shared))

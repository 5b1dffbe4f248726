"""Many generations from one flow run: each item is its own child `video_to_video` flow run.

Waiting is asyncio all the way (one process, no thread per generation). Concurrency is capped
twice: by a Prefect global concurrency limit shared by every batch on the server (when it exists)
and by a local cap per batch. One item failing never cancels the others; the parent ends Failed
when any child failed, unless `tolerate_failures`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from prefect import flow, tags
from prefect.client.orchestration import get_client
from prefect.logging import get_run_logger

from prefect_aimlapi_video.api.errors import BatchFailedError, BudgetExceeded, InvalidInputError
from prefect_aimlapi_video.api.redact import redact
from prefect_aimlapi_video.api.requests import DEFAULT_MODEL, request_model
from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.flows.batch_context import (
    DEFERRED_AT_ONCE,
    batch_children,
    child_outcome,
    finish_deferred,
    owned_key,
)
from prefect_aimlapi_video.flows.batch_items import (
    BatchItem,
    BatchItemResult,
    ItemBase,
    child_arguments,
    completed_row,
    failed_row,
    load_manifest,
    output_root,
    parse_items,
    row_without_state,
    shown_video,
)
from prefect_aimlapi_video.flows.batch_report import budget_line, report, shared_budget
from prefect_aimlapi_video.flows.choices import chosen_fields
from prefect_aimlapi_video.flows.fanout import check_children, children_env, run_on_work_pool
from prefect_aimlapi_video.flows.settings import RunSettings, check_run
from prefect_aimlapi_video.flows.video_to_video import (
    DEFAULT_CREDENTIALS_BLOCK,
    RUN_TAGS,
    SKIPPED_BUDGET,
    video_to_video,
)
from prefect_aimlapi_video.storage.record_store import open_store
from prefect_aimlapi_video.tasks.progress import ProgressArtifact

__all__ = ["BatchFailedError", "BatchItem", "BatchItemResult", "run_items", "video_to_video_batch"]

DEFAULT_CONCURRENCY_LIMIT = "aimlapi-video-to-video"
DEFAULT_MAX_CONCURRENCY = 16


@contextlib.asynccontextmanager
async def _global_slot(limit: str | None) -> AsyncIterator[None]:
    if limit is None:
        yield
        return
    from prefect.concurrency.asyncio import concurrency

    async with concurrency(limit, occupy=1, strict=True):
        yield


async def _check_limit(limit: str | None, local_cap: int) -> str | None:
    """The limit's name if it exists on the server; else None, with a warning on how to create it."""
    if limit is None:
        return None
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        async with get_client() as client:
            await client.read_global_concurrency_limit_by_name(limit)
        return limit
    except ObjectNotFound:
        get_run_logger().warning(
            "Global concurrency limit %r does not exist, so only this batch's local cap (%d) applies. "
            "To cap all batches together: `prefect gcl create %s --limit 8`.", limit, local_cap, limit,
        )
        return None


def _flow_run_url(flow_run_id: str | None) -> str | None:
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    base = PREFECT_UI_URL.value() or (PREFECT_API_URL.value() or "").removesuffix("/api")
    return f"{base}/runs/flow-run/{flow_run_id}" if base and flow_run_id else None


async def run_items(
    items: list[ItemBase],
    arguments: dict[str, Any],
    settings: RunSettings,
    *,
    scope: str,
    concurrency_limit: str | None,
    max_concurrency: int,
    deployment: str | None = None,
    scope_owned: bool = False,
    workers_share_disk: bool = False,
) -> list[BatchItemResult]:
    """Run each item as a child flow run, concurrently within the caps, never cancelling siblings.

    `arguments`: the children's own `video_to_video` arguments (request fields, model, credentials,
    output, overrides); `settings`: what they share. In this process by default; with `deployment`,
    as flow runs of that deployment on its work pool (`flows.fanout`). The settings, the key and
    the record store are checked first, so a wrong one fails here instead of in every child.
    `scope_owned`: the scope is this flow run's own (made from its id), so no other run makes the
    items' keys (see `flows.batch_context`).
    """
    logger = get_run_logger()
    checked = check_run(settings, output=arguments.get("output"))
    arguments = {**arguments, "settings": settings.model_dump(mode="json", exclude_defaults=True)}
    await (await AimlApiCredentials.resolve(arguments["credentials"])).check_access()  # once, before any child
    await (await open_store(checked.submissions, checked.aws_credentials)).check()
    heartbeats = deployment is not None and check_children(await children_env(deployment), checked.submissions,
                                                           workers_share_disk)
    total = len(items)
    counts = {"done": 0, "failed": 0}

    def on_done(row: BatchItemResult) -> None:
        counts["done"] += 1
        counts["failed"] += row.status != "completed"
        progress.update(100.0 * counts["done"] / total,
                        f"{counts['done']}/{total} generations done, {counts['failed']} not completed")

    async with ProgressArtifact() as progress:
        progress.update(0, f"0/{total} generations done")
        if deployment:
            rows = await run_on_work_pool(items, arguments, scope=scope, deployment=deployment,
                                          max_concurrency=max_concurrency, on_done=on_done, heartbeats=heartbeats)
        else:
            rows = await _run_here(items, arguments, scope=scope, scope_owned=scope_owned,
                                   limit=await _check_limit(concurrency_limit, max_concurrency),
                                   max_concurrency=max_concurrency, on_done=on_done)
    rows = [row.model_copy(update={"flow_run_url": _flow_run_url(row.flow_run_id)}) for row in rows]
    logger.info("Batch finished: %d completed, %d not of %d.", total - counts["failed"], counts["failed"], total)
    return rows


async def _run_here(items: list[ItemBase], defaults: dict[str, Any], *, scope: str, scope_owned: bool,
                    limit: str | None, max_concurrency: int, on_done: Any) -> list[BatchItemResult]:
    """Each item a child flow run in this process, on its event loop (no thread per child)."""
    from prefect.runtime import flow_run

    local = asyncio.Semaphore(max_concurrency)
    # See `flows.batch_context`: the keys made from the scope are ours alone only if the scope is this
    # run's own, and only in its first run (0: no run at all).
    claims = scope_owned and flow_run.run_count == 1

    async def run_one(index: int, item: ItemBase) -> BatchItemResult:
        arguments = child_arguments(defaults, item)
        ours = claims and "idempotency_key" not in arguments  # an item's own key may be shared
        arguments.setdefault("idempotency_key", f"{scope}:item-{index}")
        row = BatchItemResult(index=index, video=shown_video(item.video), status="failed")
        with child_outcome() as outcome:
            try:
                async with local, _global_slot(limit):
                    claim = owned_key(arguments["idempotency_key"]) if ours else contextlib.nullcontext()
                    with tags(*RUN_TAGS), claim:  # tags set at creation, saving each child a request
                        state = await video_to_video(**arguments, return_state=True)
            except Exception as exc:  # the server refused to create the child run, or to record its end
                return row_without_state(row, outcome, exc)
        flow_run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
        row = row.model_copy(update={"flow_run_id": flow_run_id})
        if not state.is_completed():
            error = await state.aresult(raise_on_failure=False)
            status = SKIPPED_BUDGET if isinstance(error, BudgetExceeded) else state.name.lower()
            return failed_row(row, status, redact(state.message or state.name), error)
        return completed_row(row, await state.aresult())

    async def one(index: int, item: ItemBase) -> BatchItemResult:
        row = await run_one(index, item)
        on_done(row)
        return row

    async with _client_for_deferred() as client:
        with _no_child_heartbeats(), batch_children(client) as deferred:
            rows = list(await asyncio.gather(*(one(i, item) for i, item in enumerate(items))))
            await finish_deferred(deferred)  # the children's summaries, before the table that links them
            return rows


def _client_for_deferred() -> contextlib.AbstractAsyncContextManager[Any]:
    """A Prefect client with connections of its own for the children's summaries (see
    `flows.batch_context`), so they never queue ahead of the requests that run the children."""
    return get_client(httpx_settings={"limits": httpx.Limits(max_connections=DEFERRED_AT_ONCE,
                                                             max_keepalive_connections=DEFERRED_AT_ONCE)})


def _no_child_heartbeats() -> contextlib.AbstractContextManager[Any]:
    """Children share this process, so the batch's own heartbeat covers them: no thread per child.

    Prefect gives every flow run a heartbeat thread; in a batch that would be one thread (and a
    stream of heartbeat events) per waiting generation, for a liveness signal the parent run
    already sends for the same process.
    """
    from prefect.settings import temporary_settings

    return temporary_settings(updates={"flows.heartbeat_frequency": None})


def _batch_run_name() -> str:
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    manifest = parameters.get("manifest")
    if manifest:
        return f"v2v-batch-{Path(str(manifest)).stem}"
    return f"v2v-batch-{len(parameters.get('items') or [])}-items"


@flow(name="aimlapi-video-to-video-batch", flow_run_name=_batch_run_name, validate_parameters=False)
async def video_to_video_batch(
    items: list[BatchItem] | list[dict[str, Any]] | None = None,
    manifest: str | None = None,
    prompt: str | None = None,
    strength: float | None = None,
    seed: int | None = None,
    enable_prompt_expansion: bool | None = None,
    credentials: str | AimlApiCredentials = DEFAULT_CREDENTIALS_BLOCK,
    output: str | None = None,
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
    """Restyle many videos: one child `video_to_video` flow run per item.

    Args:
        items: a list of {video, output?, idempotency_key?, and any of the model's request fields
            (prompt, strength, seed, enable_prompt_expansion)}.
        manifest: instead of items, a .csv (header row) or .jsonl file, local or s3://.
        prompt, strength, seed, enable_prompt_expansion, output, overrides, model: defaults for the
            items, as for `video_to_video`.
        concurrency_limit: name of a Prefect global concurrency limit shared by all batches (skipped
            with a warning if it does not exist; None to not use one).
        max_concurrency: this batch's own cap on generations in flight.
        tolerate_failures: end Completed even if some items failed (the table says which).
        deployment: `<flow name>/<deployment name>` of `video_to_video`: each item becomes a flow run of
            it, run by any worker of its work pool (process, Docker, ECS, Kubernetes); default: the
            children run in this process. Give `credentials` as a block name then.
        workers_share_disk: with `deployment` and a local `settings.submissions` directory, say that every
            worker of the pool sees that same directory; otherwise such a fan-out is refused (use s3://).
        input_root: the directory a manifest's local videos must be in (default: a local manifest's own
            directory; an s3:// manifest names local videos only with it). A manifest's outputs must lie
            under `output`'s folder (a relative one is placed there).
        settings: as for `video_to_video`, for every item. A spend cap (`max_usd`, `max_credits`) is for
            the whole batch: items that could pass it are not sent (`skipped (budget)` in the table);
            `budget` names it to share it with other runs (default: this batch alone).
    """
    from prefect.runtime import flow_run

    if (items is None) == (manifest is None):
        raise InvalidInputError("Give either `items` or `manifest` (not both).")
    if max_concurrency < 1:
        raise InvalidInputError("max_concurrency must be at least 1.")
    shared = shared_budget(RunSettings.parse(settings), f"batch-{flow_run.id}")
    request = request_model(model)
    batch = parse_items(items, request) if items is not None else await load_manifest(
        manifest, shared.aws_credentials, request, output_root=output_root(output), input_root=input_root)
    if not batch:
        raise InvalidInputError("The batch is empty.")
    own = chosen_fields(request, overrides, prompt=prompt, strength=strength, seed=seed,
                        enable_prompt_expansion=enable_prompt_expansion)
    missing = [i for i, item in enumerate(batch) if not (getattr(item, "prompt", None) or own.get("prompt"))]
    if missing:
        raise InvalidInputError(f"Items {missing[:10]} have no prompt and the batch has no default `prompt`.")
    arguments = dict(model=model, credentials=credentials, output=output, overrides=own)
    rows = await run_items(
        batch, arguments, shared, scope=f"batch:{flow_run.id}", scope_owned=True,
        concurrency_limit=concurrency_limit, max_concurrency=max_concurrency, deployment=deployment,
        workers_share_disk=workers_share_disk,
    )
    return await report(rows, tolerate_failures=tolerate_failures, budget=await budget_line(shared))

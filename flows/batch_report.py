"""What a batch leaves in the UI when it ends: one table row per item, and the run's final state.

The batch's budget is a named, shared one (`shared_budget`): every child reserves from it, and the
table's description says what it holds when the batch ends.
"""

from __future__ import annotations

from prefect.artifacts import acreate_table_artifact

from prefect_aimlapi_video.api.errors import BatchFailedError
from prefect_aimlapi_video.flows.batch_items import BatchItemResult
from prefect_aimlapi_video.flows.settings import RunSettings
from prefect_aimlapi_video.flows.summary import artifact_key
from prefect_aimlapi_video.flows.video_to_video import SKIPPED_BUDGET, budget_ref, budget_text

# What a person scans first (how it went, why not, where the result is, what it cost), then the rest.
TABLE_COLUMNS = ("status", "error", "collect_command", "output", "credits", "video", "total_s", "queued_s",
                 "generating_s", "download_s", "generation_id", "flow_run_url", "index")


def table_row(row: BatchItemResult) -> dict[str, object]:
    return {column: getattr(row, column) for column in TABLE_COLUMNS}


def shared_budget(settings: RunSettings, default: str) -> RunSettings:
    """The children's cap: one named budget for the whole batch (`default`), or the one the caller names."""
    if settings.max_usd is None and settings.max_credits is None and settings.budget is None:
        return settings
    return settings.model_copy(update={"budget": settings.budget or default})


async def budget_line(settings: RunSettings) -> str | None:
    """`spent ..., in flight ..., cap ...` of the batch's budget, for its table's description."""
    return await budget_text(budget_ref(settings, ""), settings)


async def report(rows: list[BatchItemResult], *, tolerate_failures: bool, budget: str | None = None
                 ) -> list[BatchItemResult]:
    """Publish the table artifact; fail the run, with counts, if any generation failed or was not sent
    for the budget (unless `tolerate_failures`)."""
    counts = {status: sum(r.status == status for r in rows) for status in ("completed", "skipped", SKIPPED_BUDGET)}
    failed = [row for row in rows if row.status not in counts]
    description = f"{counts['completed']} completed, {len(failed)} failed"
    if counts[SKIPPED_BUDGET]:
        description += f", {counts[SKIPPED_BUDGET]} skipped (budget)"
    if counts["skipped"]:
        description += f", {counts['skipped']} skipped (output exists)"
    if budget:
        description += f"; budget {budget}"
    await acreate_table_artifact(key=await artifact_key("table"), table=[table_row(row) for row in rows],
                                 description=description)
    unsent = [row for row in rows if row.status == SKIPPED_BUDGET]
    if (failed or unsent) and not tolerate_failures:
        raise BatchFailedError(
            f"{len(failed)} of {len(rows) - counts['skipped']} generations failed and {len(unsent)} were skipped "
            f"(budget) (items {[r.index for r in failed + unsent][:20]}); the others completed. See the table "
            "artifact, or pass tolerate_failures=True."
        )
    return rows

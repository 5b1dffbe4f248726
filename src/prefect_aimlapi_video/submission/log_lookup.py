"""What the usage log says about one logical generation, failing closed.

A lookup that cannot be made (the log unreadable, or longer than a scan may read), or a row for our
request whose generation id we cannot recognise, ends the attempt with an error that names the
client request id: sending again could charge twice (see `api.usage_log` for the reading itself).
"""

from __future__ import annotations

from prefect_aimlapi_video.api.client import AimlApiClient
from prefect_aimlapi_video.api.errors import ReconciliationUnavailable, UnidentifiedGenerationError
from prefect_aimlapi_video.api.usage_log import Finding, UsageLog
from prefect_aimlapi_video.submission.record import SubmissionRecord, client_request_prefix


async def look_up(log: UsageLog, client: AimlApiClient, record_key: str, record: SubmissionRecord | None) -> Finding:
    """The log's rows for every attempt of this generation, back to when its record began."""
    prefix = client_request_prefix(record_key)
    try:
        finding = await log.find(client, prefix, record.created_at if record else None)
    except ReconciliationUnavailable as exc:
        named = f"{record.client_request_id} (or another {prefix}N)" if record else f"{prefix}N"
        raise ReconciliationUnavailable(
            f"Cannot tell whether an earlier POST with client request id {named} was accepted: {exc} "
            "Sending it again could charge twice. Check GET /v2/logs (or the usage page of your AI/ML API "
            "dashboard) for that client_request_id, then re-run this flow run."
        ) from None
    if finding.live is None and finding.unidentified is not None:
        crid = finding.unidentified.client_request_id
        raise UnidentifiedGenerationError(
            f"The usage log lists our request {crid} (status {finding.unidentified.status!r}) but no generation "
            "id we can recognise in its row, so it was accepted and may be charged. It will not be sent again. "
            f"Find the generation for client request id {crid} in your AI/ML API dashboard, then collect its "
            "result by id (or pass that id to wait_for_generation / download_video)."
        )
    return finding

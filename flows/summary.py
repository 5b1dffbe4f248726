"""What a generation's flow run shows in the Prefect UI: a summary, a link, and progress while waiting.

The markdown is built by pure functions (testable without a server) from the pydantic result, so
the artifact can only ever show fields that are safe by construction. Every value someone else wrote
(the prompt, which S3 metadata can set, the input and output names, the provider's ids, statuses and
errors) goes through `flows.markdown`, so it shows as text: never HTML, a link, a heading or a broken
table. What we write (the labels, the numbers, the strip and the links we build) is markdown as is.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from typing import Any
from urllib.parse import quote

from prefect.artifacts import MarkdownArtifact, acreate_link_artifact

from prefect_aimlapi_video.api.models import CREDITS_PER_USD, VideoToVideoResult
from prefect_aimlapi_video.api.requests import REQUEST_MODELS
from prefect_aimlapi_video.flows.batch_context import batch_client, in_batch
from prefect_aimlapi_video.flows.markdown import cell, code, code_cell, fenced, text
from prefect_aimlapi_video.media.strip import Strip, strip_markdown

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # javascript:, data:... (a block's "type/name:path" has a "/" first)


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _size(size: int | None) -> str:
    return "—" if size is None else f"{size / 1_000_000:.2f} MB ({size:,} bytes)"


def request_rows(report: VideoToVideoResult) -> list[tuple[str, Any]]:
    """(label, value) for each field of the report's request, as its request class declares it."""
    request = REQUEST_MODELS.get(report.model) if report.prompt is not None else None  # None: collected by id
    rows = []
    for name, field in (request.model_fields.items() if request else ()):
        value = getattr(report, name, None)
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if value is None:
            value = extra.get("when_unset", "provider's choice")
        elif isinstance(value, bool):
            value = "on" if value else "off"
        elif isinstance(value, float):
            value = f"{value:g}"
        rows.append((field.title or name.replace("_", " ").capitalize(), value))
    return rows


_DEPLOYMENT_NAMES: dict[str, str] = {}


async def artifact_key(kind: str) -> str:
    """`aimlapi-<deployment or flow>-<kind>`, lowercase and dashes: one history per deployment (or flow)
    on the UI's Artifacts page.

    Read from the run's context, not `prefect.runtime.deployment`: that looks the flow run up with a
    blocking API call (and a new client) every time, even for a run without a deployment, which
    stalled a batch's shared event loop once per child. A deployment's name is read once per process.
    """
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    owner = context.flow.name if context and context.flow else "video-to-video"
    deployment_id = context.flow_run.deployment_id if context and context.flow_run else None
    if deployment_id is not None:
        if str(deployment_id) not in _DEPLOYMENT_NAMES:
            async with get_client() as client:
                _DEPLOYMENT_NAMES[str(deployment_id)] = (await client.read_deployment(deployment_id)).name
        owner = _DEPLOYMENT_NAMES[str(deployment_id)]
    slug = re.sub(r"[^a-z0-9]+", "-", f"aimlapi-{owner}-{kind}".lower()).strip("-")
    return re.sub(r"^aimlapi-aimlapi-", "aimlapi-", slug)


def summary_markdown(report: VideoToVideoResult, strip: Strip | None = None) -> str:
    usage = "—"
    if report.credits is not None and report.usd is not None:
        usage = f"{report.credits:,.0f} credits (≈ ${report.usd:.4f})"
        if report.resumed and not report.charged_credits:
            usage += ", no new charge for this run"
    estimate = "—"
    if report.estimate_credits is not None:
        usd = report.estimate_credits / CREDITS_PER_USD
        estimate = f"{report.estimate_credits:,.0f} credits (≈ ${usd:.4f}), before paying"
    t = report.timing
    rows = [  # (label, markdown of the cell)
        ("Status", f"**{text(report.status)}**"),
        ("Model", code(report.model)),
        *((label, cell(value)) for label, value in request_rows(report)),
        ("Generation id", code_cell(report.generation_id)),
        ("Resumed", "yes: no new request was sent" if report.resumed else "no"),
        ("Client request id", code_cell(report.client_request_id)),
        ("Provider request ids", ", ".join(code(r) for r in report.request_ids) or "—"),
        ("Input", cell(report.input)),
        ("Input video", cell(report.input_info.describe() if report.input_info else None)),
        ("Output", cell(report.output)),
        ("Output video", cell(report.output_info.describe() if report.output_info else None)),
        ("SHA-256", code_cell(report.sha256)),
        ("Size", _size(report.size_bytes)),
        ("Usage", usage),
        ("Estimate", estimate),
        ("Budget", cell(report.budget)),
        ("Queued", _seconds(t.queued_s)),
        ("Generating", _seconds(t.generating_s)),
        ("Download", _seconds(t.download_s)),
        ("Total", _seconds(t.total_s)),
    ]
    if report.error_name or report.error_message:
        rows.insert(1, ("Error", ": ".join(text(p) for p in (report.error_name, report.error_message) if p)))
    lines = ["# Video-to-video generation", ""]
    if strip is not None:  # what a person restyling video wants to see first
        rows_shown = "input (top) and output (bottom)" if strip.rows == 2 else "output"
        lines += [strip_markdown(strip), "",
                  f"Before / after: {rows_shown} at {', '.join(f'{t:.1f} s' for t in strip.times)}"
                  + (f"; also at {code(report.strip, in_table=False)}" if report.strip else ""), ""]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {name} | {markdown} |" for name, markdown in rows]
    if report.collect_command:
        lines += ["", "## The paid generation can still be collected", "",
                  "It was accepted (and is charged when it completes); download it later with no new charge:", "",
                  fenced(report.collect_command)]
    if report.timeline:
        start = report.timeline[0].at
        lines += ["", "## Status timeline", "", "| Status | Seen at | + seconds |", "|---|---|---|"]
        lines += [f"| {cell(c.status)} | {_when(c.at)} | {c.at - start:.1f} |" for c in report.timeline]
    return "\n".join(lines) + "\n"


async def publish_summary(report: VideoToVideoResult, strip: Strip | None = None) -> None:
    """The summary artifact, sent with the batch's own client in an in-process batch's child."""
    await MarkdownArtifact(
        key=await artifact_key("summary"), markdown=summary_markdown(report, strip),
        description=f"AI/ML API video-to-video: {text(report.status)}",
    ).acreate(batch_client())


def output_link(location: str) -> str:
    """Where the link to a stored result points: the S3 console for s3:// objects, a file URL for a
    local file, else the location itself. A key comes from whoever uploaded the input, so the parts
    are percent-encoded (a space or ")" would end the markdown link) and never make a scheme of their own."""
    if location.startswith("s3://"):
        bucket, _, key = location[5:].partition("/")
        return f"https://s3.console.aws.amazon.com/s3/object/{quote(bucket, safe='')}?prefix={quote(key)}"
    if location.startswith("/"):
        return f"file://{quote(location)}"
    return quote(("./" if _SCHEME.match(location) else "") + location, safe="/:")


async def publish_output_link(location: str) -> None:
    """Link to the stored result, its location as the text (not for the children of an in-process
    batch: its table links them)."""
    if in_batch():
        return
    await acreate_link_artifact(key=await artifact_key("output"), link=output_link(location), link_text=text(location),
                                description="Generated video")


async def publish_result(report: VideoToVideoResult, strip: Strip | None, location: str) -> None:
    """A finished generation's summary and output link, sent together (independent requests)."""
    await asyncio.gather(publish_summary(report, strip), publish_output_link(location))

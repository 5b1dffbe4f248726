"""flows.artifacts.summary_markdown: the run summary shown in the Prefect UI."""

from __future__ import annotations

from prefect_aimlapi_video.flows.artifacts import summary_markdown
from prefect_aimlapi_video.flows.models import StatusChange, Timing, VideoInfo, VideoToVideoResult
from prefect_aimlapi_video.flows.requests import DEFAULT_MODEL as MODEL

GEN_ID = "3637be63-e8d1-4ac1-9a4b-00afbdf10a55:krea/krea-wan-14b/video-to-video"


def result(**overrides) -> VideoToVideoResult:
    values = dict(
        status="completed",
        model=MODEL,
        prompt="turn it into a watercolor | with pipes",
        strength=0.85,
        seed=None,
        enable_prompt_expansion=True,
        input="/data/in.mp4",
        generation_id=GEN_ID,
        client_request_id="v2v-abc-a1",
        request_ids=["req-1", "req-2"],
        credits=315000,
        timing=Timing(queued_s=1.5, generating_s=11.4, download_s=0.5, total_s=13.2),
        timeline=[
            StatusChange(status="queued", at=1_700_000_000.0),
            StatusChange(status="generating", at=1_700_000_001.5),
            StatusChange(status="completed", at=1_700_000_012.65),
        ],
        output="/out/clip.mp4",
        sha256="ab" * 32,
        size_bytes=1_234_567,
        input_info=VideoInfo(width=832, height=480, frames=81, fps=16),
    )
    return VideoToVideoResult(**{**values, **overrides})


def rows(markdown: str) -> dict[str, str]:
    table = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and line.count(" | ") >= 1 and not line.startswith("| Status | Seen"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            if len(cells) == 2:
                table.setdefault(cells[0], cells[1])
    return table


def test_summary_main_fields():
    markdown = summary_markdown(result())
    table = rows(markdown)
    assert table["Model"] == f"`{MODEL}`"
    assert table["Prompt"] == "turn it into a watercolor \\| with pipes"
    assert table["Strength"] == "0.85"
    assert table["Seed"].startswith("random")
    assert table["Generation id"] == f"`{GEN_ID}`"
    assert table["Status"] == "**completed**"
    assert table["Prompt expansion"] == "on"
    assert table["Resumed"] == "no"
    assert table["Provider request ids"] == "`req-1`, `req-2`"
    assert table["Input video"] == "832x480, 81 frames @ 16 fps"
    assert table["Size"] == "1.23 MB (1,234,567 bytes)"
    assert "Error" not in table


def test_summary_usage_in_credits_and_usd():
    table = rows(summary_markdown(result()))
    assert "315,000 credits" in table["Usage"]
    assert "$0.1575" in table["Usage"]
    assert rows(summary_markdown(result(credits=None)))["Usage"] == "—"


def test_summary_explicit_seed_and_missing_values():
    table = rows(summary_markdown(result(seed=42, generation_id=None, output=None, resumed=True,
                                         enable_prompt_expansion=False, request_ids=[])))
    assert table["Seed"] == "42"
    assert table["Generation id"] == "—"
    assert table["Output"] == "—"
    assert table["Resumed"].startswith("yes")
    assert table["Prompt expansion"] == "off"
    assert table["Provider request ids"] == "—"


def test_summary_timeline_rows():
    markdown = summary_markdown(result())
    assert "## Status timeline" in markdown
    timeline = markdown.split("## Status timeline", 1)[1]
    lines = [line for line in timeline.splitlines() if line.startswith("| ") and "UTC" in line]
    assert len(lines) == 3
    assert lines[0].startswith("| queued | 2023-11-14 22:13:20.000 UTC | 0.0 |")
    assert lines[1].startswith("| generating | 2023-11-14 22:13:21.500 UTC |") and lines[1].endswith("| 1.5 |")
    assert lines[2].startswith("| completed |") and lines[2].endswith("| 12.7 |")
    table = rows(markdown)
    assert table["Queued"] == "1.5 s"
    assert table["Generating"] == "11.4 s"


def test_summary_without_timeline_has_no_timeline_section():
    assert "Status timeline" not in summary_markdown(result(timeline=[]))


def test_summary_error_row():
    markdown = summary_markdown(result(status="failed", error_name="ModelError", error_message="CUDA out | of memory"))
    table = rows(markdown)
    assert table["Error"] == "ModelError: CUDA out \\| of memory"
    assert table["Status"] == "**failed**"
    # the error row comes right after the status
    names = list(table)
    assert names.index("Error") == names.index("Status") + 1


def test_summary_error_row_with_message_only_does_not_say_none():
    table = rows(summary_markdown(result(status="failed", error_name=None, error_message="timed out")))
    assert "timed out" in table["Error"]
    assert "None" not in table["Error"]


def test_summary_newlines_do_not_break_the_table():
    markdown = summary_markdown(result(prompt="line one\nline two"))
    assert rows(markdown)["Prompt"] == "line one line two"


def test_summary_does_not_publish_a_signed_url_from_a_provider_error():
    # A provider error message may echo the signed input URL; the summary is a published artifact.
    signed = "https://bucket.s3.amazonaws.com/in.mp4?X-Amz-Credential=AKIALEAK&X-Amz-Signature=SIGLEAK"
    markdown = summary_markdown(result(status="failed", error_name="FetchError",
                                       error_message=f"could not download {signed}"))
    assert "SIGLEAK" not in markdown and "AKIALEAK" not in markdown

"""flows.summary.summary_markdown: the run summary shown in the Prefect UI, where what others wrote
(the prompt, names, errors: flows.markdown) shows as text; the output link."""

from __future__ import annotations

import re

import pytest
from markdown_it import MarkdownIt

from prefect_aimlapi_video.api.models import StatusChange, Timing, VideoInfo, VideoToVideoResult
from prefect_aimlapi_video.api.requests import DEFAULT_MODEL as MODEL
from prefect_aimlapi_video.flows.markdown import text
from prefect_aimlapi_video.flows.summary import output_link, summary_markdown
from prefect_aimlapi_video.media.strip import Strip

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


# What others wrote (the prompt can come from S3 metadata anyone who may upload writes) shows as text.

HOSTILE = "x | y <script>alert(1)</script> [link](http://evil) **bold** `code`"
AUTOLINK = re.compile(r"(?i)(https?|ftp)://|www\.|[A-Za-z0-9._+-]@[A-Za-z0-9_-]")  # what GFM links without markup


def render(markdown: str) -> str:
    """HTML as a CommonMark renderer with GFM tables makes it, raw HTML allowed (as marked allows it)."""
    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown)


def table_lines(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|") and not line.startswith("|---")]


def unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)(?:\\\\)*\|", line))


def test_a_hostile_prompt_shows_as_text_and_keeps_the_table_in_shape():
    markdown = summary_markdown(result(prompt=HOSTILE))
    summary, _ = markdown.split("## Status timeline")
    assert "<script>" not in markdown and "</script>" not in markdown
    assert not re.search(r"(?<!\\)\]\(", markdown) and not AUTOLINK.search(summary)  # no [text](url), no bare URL
    assert all(unescaped_pipes(line) == 3 for line in table_lines(summary))  # | label | value |: 2 columns

    html = render(markdown)
    assert "<script" not in html and "<a " not in html and "<strong>bold" not in html and "<code>code" not in html
    prompt_row = next(row for row in re.findall(r"<tr>(.*?)</tr>", html, re.DOTALL) if "<td>Prompt</td>" in row)
    assert re.findall(r"<td>(.*?)</td>", prompt_row, re.DOTALL) == [
        "Prompt", "x | y &lt;script&gt;alert(1)&lt;/script&gt; [link](http://evil) **bold** `code`"]


def test_ordinary_text_is_the_same_markdown_as_before():
    table = rows(summary_markdown(result(prompt="a watercolor painting", input="/data/my_clip_v2.mp4",
                                         output="s3://media/outputs/clip one-3637be63.mp4")))
    assert table["Prompt"] == "a watercolor painting"
    assert table["Input"] == "/data/my_clip_v2.mp4"  # underscores inside words make no emphasis
    assert table["Output"] == "s3://media/outputs/clip one-3637be63.mp4"


def test_every_field_others_wrote_is_escaped_where_it_lands():
    markdown = summary_markdown(result(
        status="fail<b>ed</b>", input="/in/_x_/[a](javascript:alert(1)).mp4", output="/out/# heading.mp4",
        error_name="Model*Error*", error_message="see <img src=x onerror=alert(1)>\n# not a heading | really",
        generation_id="id`with`ticks", client_request_id="r|1", request_ids=["a`b", "c|d"],
        budget="<i>spent</i>", strip="/out/`strip`.jpg", collect_command="aimlapi-video collect x\n```\n<b>out</b>",
        timeline=[StatusChange(status="queued|<u>x</u>", at=1_700_000_000.0)],
    ), Strip(image=b"\xff\xd8 jpeg", width=8, height=4, frames=1, times=[0.5]))
    html = render(markdown)
    for tag in ("<b>", "<img src=x", "<i>", "<u>", "<em>", "<a "):
        assert tag not in html, tag
    assert html.count("<img") == 1  # our strip only
    assert html.count("<h1>") == 1 and "<h2>" not in html.split("</table>")[0]  # only our title
    summary, timeline = markdown.split("## Status timeline")
    assert all(unescaped_pipes(line) == 3 for line in table_lines(summary))
    assert all(unescaped_pipes(line) == 4 for line in table_lines(timeline))
    table = rows(markdown)
    assert table["Status"] == "**fail\\<b\\>ed\\</b\\>**"
    assert table["Error"] == "Model\\*Error\\*: see \\<img src=x onerror=alert(1)\\> # not a heading \\| really"
    assert table["Input"] == "/in/\\_x\\_/\\[a\\](javascript:alert(1)).mp4"
    assert table["Generation id"] == "``id`with`ticks``"
    assert table["Provider request ids"] == "``a`b``, `c\\|d`"
    assert "<code>id`with`ticks</code>" in html and "<code>c|d</code>" in html
    assert "at 0.5 s; also at ``/out/`strip`.jpg``\n" in markdown and "<code>/out/`strip`.jpg</code>" in html
    assert "````\naimlapi-video collect x\n```\n<b>out</b>\n````" in markdown  # a longer fence: cannot be closed early
    assert "<pre><code>aimlapi-video collect x\n```\n&lt;b&gt;out&lt;/b&gt;\n</code></pre>" in html


@pytest.mark.parametrize(("plain", "escaped"), [
    ("a watercolor painting", "a watercolor painting"),
    ("my_clip_v2 and _emphasis_ and __init__", "my_clip_v2 and \\_emphasis\\_ and \\_\\_init\\_\\_"),
    ("visit https://evil.example/x or www.evil.example", "visit https\\://evil.example/x or www\\.evil.example"),
    ("mail me@evil.example, 81 frames @ 16 fps", "mail me\\@evil.example, 81 frames @ 16 fps"),
    ("&lt;script&gt; & co", "\\&lt;script\\&gt; & co"),
    ("# title", "\\# title"), ("- item", "\\- item"), ("1. item", "1\\. item"), ("0.85", "0.85"),
    ("~~gone~~ \\ back", "\\~\\~gone\\~\\~ \\\\ back"),
    ("two\r\nlines\tand  tabs", "two lines and tabs"),
    ("https://bucket.s3.amazonaws.com/in.mp4?X-Amz-Signature=SIG", "https\\://bucket.s3.amazonaws.com/in.mp4?\\<redacted\\>"),
])
def test_text(plain, escaped):
    assert text(plain) == escaped


def test_output_links_encode_what_an_uploader_named():
    assert output_link("/out/small-11.mp4") == "file:///out/small-11.mp4"
    assert output_link("s3://media/outputs/clip one (2)-abc.mp4") == (
        "https://s3.console.aws.amazon.com/s3/object/media?prefix=outputs/clip%20one%20%282%29-abc.mp4")
    assert output_link("/out/x](javascript:alert(1)).mp4") == "file:///out/x%5D%28javascript%3Aalert%281%29%29.mp4"
    assert output_link("javascript:alert(1)") == "./javascript:alert%281%29"  # never a scheme of its own
    assert output_link("local-file-system/results:clips/a.mp4") == "local-file-system/results:clips/a.mp4"

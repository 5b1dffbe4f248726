"""Text others wrote (a prompt, an S3 key, a provider's error), put into markdown so it shows as itself.

A prompt can come from S3 object metadata that anyone who may upload writes, so in a summary it must
render as the text it is: no raw HTML, no live link, no emphasis, no heading, and a table keeps its
columns. Every function here scrubs secrets first (`redact`) and returns one line (newlines become
spaces), except `fenced`, a code block that keeps its lines.

Ordinary text is left as it is (a prompt "a watercolor painting" is the same markdown): only the
characters that could start markup are escaped with a backslash, which renders as the character
itself. Underscores inside a word (`my_clip_v2.mp4`) cannot make emphasis and stay bare. Bare URLs
and emails, which GFM turns into links, are broken by escaping their `:` / `.` / `@`.
The Prefect UI renders artifacts with marked (GFM); the escapes are CommonMark's, which it follows.
"""

from __future__ import annotations

import re
from typing import Any

from prefect_aimlapi_video.api.redact import redact

_MARKUP = re.compile(r"[\\`*\[\]<>|~]")  # escaped wherever they are
_UNDERSCORES = re.compile(r"_+")
_ENTITY = re.compile(r"&(?=#?[0-9A-Za-z]+;)")  # &lt; would render as "<", &amp; as "&"
_URL_SCHEME = re.compile(r"(?i)(https?|ftp)(?=://)")  # GFM's bare-URL autolinks, even inside a word
_WWW = re.compile(r"(?i)(www)\.")
_EMAIL_AT = re.compile(r"(?<=[A-Za-z0-9._+-])@(?=[A-Za-z0-9_-])")
_LEADING_MARK = re.compile(r"^[#+-]")  # a heading, a list item, a thematic break (prose only, but cheap)
_LEADING_NUMBER = re.compile(r"^(\d{1,9})([.)])(?=\s|$)")  # an ordered list item
_BACKTICKS = re.compile(r"`+")


def _one_line(value: Any) -> str:
    return " ".join(redact(str(value)).split())


def text(value: Any) -> str:
    """`value` as markdown that renders as the same text, on one line; safe in a table cell and in prose."""
    line = _one_line(value)
    line = _MARKUP.sub(lambda m: "\\" + m.group(), line)

    def underscores(match: re.Match[str]) -> str:
        start, end = match.span()
        inside_a_word = start > 0 and end < len(line) and line[start - 1].isalnum() and line[end].isalnum()
        return match.group() if inside_a_word else "\\_" * (end - start)

    line = _UNDERSCORES.sub(underscores, line)
    line = _ENTITY.sub(r"\\&", line)
    line = _URL_SCHEME.sub(lambda m: m.group(1) + "\\", line)  # http\://host: shown as http://host, no link
    line = _WWW.sub(lambda m: m.group(1) + "\\.", line)
    line = _EMAIL_AT.sub(r"\\@", line)
    line = _LEADING_MARK.sub(lambda m: "\\" + m.group(), line)
    return _LEADING_NUMBER.sub(r"\1\\\2", line)


def cell(value: Any) -> str:
    """A table cell of text: `text(value)`, or a dash when there is nothing to show."""
    return "—" if value is None or value == "" else text(value)


def code(value: Any, *, in_table: bool = True) -> str:
    """`value` as an inline code span that no content can end early; a pipe is escaped in a table cell,
    where GFM splits on it even inside code (and shows `\\|` as `|`)."""
    line = _one_line(value)
    if in_table:
        line = line.replace("|", "\\|")
    fence = "`" * (max((len(run) for run in _BACKTICKS.findall(line)), default=0) + 1)
    pad = " " if line.startswith("`") or line.endswith("`") else ""
    return f"{fence}{pad}{line}{pad}{fence}"


def code_cell(value: Any) -> str:
    return "—" if value is None or value == "" else code(value)


def fenced(value: Any) -> str:
    """A fenced code block longer than any run of backticks in `value`, so nothing in it can close it."""
    content = redact(str(value))
    fence = "`" * max(3, max((len(run) for run in _BACKTICKS.findall(content)), default=0) + 1)
    return f"{fence}\n{content}\n{fence}"

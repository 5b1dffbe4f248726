"""The fenced code blocks of the documentation pages, and which of them are run.

The rule (stated for writers in docs/development.md, checked in tests/unit/test_docs_site_unit.py,
run in tests/integration/test_docs_snippets.py): ```bash and ```python blocks are run, unchanged, in
order, in one shell session started in an empty folder, and only on RUNNABLE_PAGES; ```text and
```console are what a command prints; any other language is an illustration, never run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"

RUNNABLE_PAGES = ("getting-started.md", "deployments.md")
RUN = {"bash", "python"}
OUTPUT = {"text", "console"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[^\s`{]*)")


@dataclass(frozen=True)
class Block:
    line: int  # the opening fence's line number, 1-based
    lang: str  # "" when the fence names no language
    code: str  # the lines between the fences, the opening fence's indentation removed


def code_blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown text, in order. A block closes at a fence of the same
    character, at least as long, that names no language."""
    found: list[Block] = []
    opening: tuple[int, str, str, str] | None = None  # line, indent, fence, lang
    body: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if opening is None:
            if match:
                opening, body = (number, match["indent"], match["fence"], match["lang"]), []
            continue
        start, indent, fence, lang = opening
        if (match and match["fence"].startswith(fence[0]) and len(match["fence"]) >= len(fence)
                and not match["lang"]):
            found.append(Block(start, lang, "\n".join(body)))
            opening = None
        else:
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
    assert opening is None, f"the fenced block opened at line {opening[0]} is never closed"
    return found


def runnable_blocks(page: str) -> list[Block]:
    """The blocks of docs/`page` that are run, in order."""
    return [b for b in code_blocks((DOCS / page).read_text(encoding="utf-8")) if b.lang in RUN]

"""The documentation site builds with `mkdocs build --strict` and every relative link in it resolves;
the README stays a front page whose links stay inside the repository. Offline: no link is fetched.

Code blocks in the docs follow one convention (docs/development.md says it for writers):

* ```bash and ```python: meant to be run, unchanged. Only docs/getting-started.md and
  docs/deployments.md have them (RUNNABLE_PAGES), and there they run in order, in one shell session
  started in an empty folder: the bash blocks as they are, each python block by that shell's
  `python` (so the environment, the working directory and background processes carry over).
* ```text and ```console: what a command prints. Never run.
* any other language (```sh, ```py, ```yaml, ```json, ```dockerfile, ...): an illustration that
  needs the reader's key, files, bucket or cloud. Never run.

Every fence on every page names its language, so which blocks run is never a guess. The blocks are
read by tests/support/docs_blocks.py; tests/integration/test_docs_snippets.py runs them.
"""

from __future__ import annotations

import html.parser
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

import prefect_aimlapi_video
from tests.support.docs_blocks import DOCS, FENCE, RUN, RUNNABLE_PAGES, code_blocks

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
README_MAX_LINES = 200

# "868 tests", "1,024 unit tests": counts that go stale with the next test.
TEST_COUNT = re.compile(r"\b\d[\d,]*\s+(?:\w+\s+)?tests?\b", re.IGNORECASE)
NOT_FETCHED = ("http:", "https:", "mailto:", "data:", "javascript:", "tel:", "//")


# -- the site -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mkdocs build --strict` into a temporary folder (the mkdocs.yml's validation makes a link to a
    missing page or anchor, or a page left out of the nav, a warning, and --strict fails on any)."""
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONWARNINGS": "ignore"},
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stdout}\n{build.stderr}"
    return out


class _Page(html.parser.HTMLParser):
    """The ids a page defines and the URLs it points to (href, src)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name == "id" or (tag == "a" and name == "name"):
                self.ids.add(value)
            elif name in ("href", "src"):
                self.urls.append(value)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _target(site: Path, page: Path, path: str) -> Path:
    """The file a relative URL on `page` serves: a folder's index.html, as a web server would."""
    base = site if path.startswith("/") else page.parent
    target = (base / unquote(path.lstrip("/"))).resolve() if path else page
    return target / "index.html" if target.is_dir() else target


def test_site_builds_strict_with_every_page(site: Path) -> None:
    pages = sorted(p.relative_to(DOCS).with_suffix("") for p in DOCS.rglob("*.md"))
    missing = [str(p) for p in pages
               if not (site / p / "index.html").is_file() and not (site / p.parent / "index.html").is_file()]
    assert missing == []


def test_every_relative_link_and_anchor_in_the_site_resolves(site: Path) -> None:
    pages = {p.resolve(): _parse(p) for p in site.rglob("*.html")}
    assert len(pages) > 10
    broken = []
    for page, parsed in pages.items():
        for url in parsed.urls:
            if url.startswith(NOT_FETCHED):
                continue
            parts = urlsplit(url)
            target = _target(site, page, parts.path)
            if not target.is_relative_to(site.resolve()) or not target.exists():
                broken.append(f"{page.relative_to(site)}: {url} (no {target})")
            elif parts.fragment and target.suffix == ".html":
                ids = (pages.get(target) or _parse(target)).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{page.relative_to(site)}: {url} (no anchor #{parts.fragment})")
    assert broken == []


def test_the_api_reference_has_every_public_name(site: Path) -> None:
    """Each name of `prefect_aimlapi_video.__all__` is rendered from its docstring (an anchor of its
    own), except an alias, which the reference names."""
    reference = [_parse(p) for p in (site / "reference").rglob("*.html")]
    ids = set().union(*(page.ids for page in reference))
    text = "\n".join(p.read_text(encoding="utf-8") for p in (site / "reference").rglob("*.html"))
    aliases = {"GenerationParams", "__version__"}
    unrendered = [name for name in prefect_aimlapi_video.__all__
                  if name not in aliases and not any(i.endswith(f".{name}") for i in ids)]
    assert unrendered == []
    assert all(name in text for name in aliases)


# -- the pages' code blocks ---------------------------------------------------------------------------


@pytest.mark.parametrize("page", sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")))
def test_code_blocks_say_whether_they_run(page: str) -> None:
    fences = [(block.line, block.lang) for block in code_blocks((DOCS / page).read_text(encoding="utf-8"))]
    unlabelled = [number for number, lang in fences if not lang]
    assert unlabelled == [], f"docs/{page}: fences without a language at lines {unlabelled}"
    runnable = [(number, lang) for number, lang in fences if lang in RUN]
    if page in RUNNABLE_PAGES:
        assert runnable, f"docs/{page} promises commands that work as written, and has none"
    else:
        assert runnable == [], (f"docs/{page}: ```bash and ```python are for blocks that are run, on "
                                f"{RUNNABLE_PAGES} only; use ```sh or ```py for an illustration")


def test_no_page_counts_the_tests() -> None:
    texts = {path: path.read_text(encoding="utf-8") for path in (README, *DOCS.rglob("*.md"))}
    counts = {str(path.relative_to(REPO)): TEST_COUNT.findall(text) for path, text in texts.items()}
    assert {path: found for path, found in counts.items() if found} == {}


# -- the README ---------------------------------------------------------------------------------------


MD_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
MD_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HTML_LINK = re.compile(r"\b(?:href|src)\s*=\s*[\"']([^\"']+)[\"']")


def _github_slugs(markdown: str) -> set[str]:
    """The anchors GitHub gives a file's headings (lowercase, punctuation dropped, spaces to dashes)."""
    slugs: set[str] = set()
    in_fence = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (heading := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            slug = re.sub(r"[^\w\- ]", "", heading[1].strip().lower()).replace(" ", "-")
            while slug in slugs:
                slug += "-1"
            slugs.add(slug)
    return slugs


def test_readme_is_a_front_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; the rest belongs in docs/"


def test_readme_links_resolve_inside_the_repository() -> None:
    text = README.read_text(encoding="utf-8")
    links = [*MD_LINK.findall(text), *MD_REFERENCE.findall(text), *HTML_LINK.findall(text)]
    assert links
    broken = []
    for link in links:
        if link.startswith(NOT_FETCHED):
            continue
        parts = urlsplit(link)
        target = (README.parent / unquote(parts.path)).resolve() if parts.path else README
        if not target.is_relative_to(REPO):
            broken.append(f"{link}: outside the repository")
        elif not target.exists():
            broken.append(f"{link}: no such file")
        elif parts.fragment and target.suffix == ".md":
            if parts.fragment not in _github_slugs(target.read_text(encoding="utf-8")):
                broken.append(f"{link}: no heading #{parts.fragment}")
    assert broken == []


def test_readme_test_command_is_the_one_ci_runs() -> None:
    """The README's second command (the tests) is exactly what .ci/run runs on a fresh venv."""
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    assert len(blocks) >= 2
    demo, tests = blocks[0].strip(), blocks[1].strip()
    assert demo.endswith("aimlapi-video demo")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert tests == ci

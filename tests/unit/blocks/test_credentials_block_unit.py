"""The `AimlApiCredentials` block against Prefect's own standard block test suite (as prefect-aws does),
and what Prefect makes of its name, slug, documentation URL and logo."""

from __future__ import annotations

import re
import uuid
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prefect.blocks import core as block_core
from prefect.client.schemas.actions import BlockTypeCreate, BlockTypeUpdate
from prefect.client.schemas.objects import BlockDocument, BlockType
from prefect.server.schemas.actions import BlockTypeCreate as ServerBlockTypeCreate
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from prefect.utilities.slugify import slugify
from pydantic import SecretStr, ValidationError

from prefect_aimlapi_video import AimlApiCredentials
from prefect_aimlapi_video.blocks import credentials as credentials_module

REPO = Path(__file__).resolve().parents[3]
SLUG = "aimlapi-credentials"
OLD_NAME = "AimlApi Credentials"  # the block type's name up to 0.2, under which blocks were saved


class TestAimlApiCredentialsStandard(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[AimlApiCredentials]:
        return AimlApiCredentials

    def test_has_a_valid_image(self, block: type[AimlApiCredentials]) -> None:
        """Prefect's own logo check, in full once the logo is served at an http(s) URL. Until then
        (`_logo_url` is None, see the block) the same check runs on the image to publish, read from
        a file: URL: Pillow opens it, it is square and 46 to 999 px wide."""
        import PIL  # noqa: F401  # the suite's check opens the logo with Pillow (test extra): fail, never skip
        if block._logo_url is not None:
            return super().test_has_a_valid_image(block)
        with resources.as_file(resources.files("prefect_aimlapi_video.blocks") / "logo.png") as logo:
            to_publish = type(block.__name__, (), {"_logo_url": logo.as_uri()})
            super().test_has_a_valid_image(to_publish)  # type: ignore[arg-type]


def test_the_slug_is_explicit_so_the_new_name_does_not_move_it() -> None:
    assert AimlApiCredentials._block_type_slug == SLUG
    assert AimlApiCredentials.get_block_type_slug() == SLUG
    # derived from the name, as Prefect does without an explicit slug, it would have moved
    assert slugify(AimlApiCredentials.get_block_type_name()) != SLUG
    assert AimlApiCredentials._to_block_type().slug == SLUG


def test_the_name_is_the_providers_as_far_as_prefect_allows() -> None:
    assert AimlApiCredentials.get_block_type_name() == "AIML API Credentials"
    assert "AI/ML API" in AimlApiCredentials.get_description()
    # "AI/ML API Credentials" itself is refused: Prefect bans "/" in a block type's name, in the
    # client's BlockType (built when the class is defined, so the import would fail) and the server's
    with pytest.raises(ValidationError, match="pattern"):
        BlockType(id=uuid.uuid4(), name="AI/ML API Credentials", slug=SLUG)
    with pytest.raises(ValidationError, match="pattern"):
        ServerBlockTypeCreate(name="AI/ML API Credentials", slug=SLUG)


async def test_a_block_saved_under_the_old_name_still_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect finds a saved block by its type's slug, never by the type's name."""
    asked: list[tuple[str, str]] = []
    events: list[str] = []
    # the "loaded" event would start Prefect's events worker, and with it a temporary server
    monkeypatch.setattr(block_core, "emit_event", lambda event, **_: events.append(event))
    schema = AimlApiCredentials._to_block_schema()
    old_type = BlockType(id=uuid.uuid4(), name=OLD_NAME, slug=SLUG)

    class SavedUnderTheOldName:  # the one call `aload` makes of a Prefect client
        async def read_block_document_by_name(self, name: str, block_type_slug: str) -> BlockDocument:
            asked.append((name, block_type_slug))
            return BlockDocument(
                id=uuid.uuid4(), name=name, data={"api_key": "sk-saved-in-0.2"},
                block_schema_id=schema.id, block_schema=schema,
                block_type_id=old_type.id, block_type_name=OLD_NAME, block_type=old_type,
            )

    loaded = await AimlApiCredentials.aload("aimlapi", client=SavedUnderTheOldName())  # type: ignore[arg-type]
    assert asked == [("aimlapi", SLUG)] and events == ["prefect.block.aimlapi-credentials.loaded"]
    assert isinstance(loaded, AimlApiCredentials) and loaded.api_key.get_secret_value() == "sk-saved-in-0.2"


def test_a_server_that_registered_the_old_name_keeps_it() -> None:
    """What the docs must say: `prefect block register` updates an existing block type's documentation
    URL, logo, description and code example, never its name (Prefect's update has no name field), so a
    server that registered "AimlApi Credentials" keeps showing that; only a new server shows the new name."""
    assert "name" not in BlockTypeUpdate.updatable_fields()
    assert {"documentation_url", "logo_url", "description"} <= BlockTypeUpdate.updatable_fields()


def test_the_documentation_url_is_one_placeholder_naming_the_blocks_page_of_our_site() -> None:
    url = str(AimlApiCredentials._documentation_url)
    assert url == credentials_module.DOCUMENTATION_URL
    assert str(AimlApiCredentials._to_block_type().documentation_url) == url  # Prefect's HttpUrl takes it
    site = credentials_module.DOCS_SITE
    host = urlsplit(site).hostname
    assert host is not None and host.endswith(".invalid")  # RFC 2606: a placeholder that reaches no one's site
    sources = [p for folder in ("src", "blocks", "flows", "deployments", "sandbox", "benchmarks", "tests")
               for p in (REPO / folder).rglob("*.py")]
    assert [p.relative_to(REPO) for p in sources if host in p.read_text()] == [Path("blocks/credentials.py")]
    page = urlsplit(url).path.strip("/")  # MkDocs' directory URLs: reference/client/ is reference/client.md
    assert re.search(rf"\b{re.escape(page)}\.md\b", (REPO / "mkdocs.yml").read_text())


def test_a_data_uri_logo_is_refused_so_the_logo_needs_a_served_url() -> None:
    """Why the block has no logo yet: Prefect registers only an http(s) logo URL."""
    with pytest.raises(ValidationError, match="URL scheme"):
        BlockTypeCreate(name="AIML API Credentials", slug=SLUG, logo_url="data:image/png;base64,iVBORw0KGgo=")


def test_key_stays_secret_in_repr_and_dump() -> None:
    block = AimlApiCredentials(api_key="sk-very-secret")
    assert isinstance(block.api_key, SecretStr)
    assert "sk-very-secret" not in repr(block) and "sk-very-secret" not in block.model_dump_json()

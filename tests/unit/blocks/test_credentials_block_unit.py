"""The `AimlApiCredentials` block against Prefect's own standard block test suite (as prefect-aws does)."""

from __future__ import annotations

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr

from prefect_aimlapi_video import AimlApiCredentials


class TestAimlApiCredentialsStandard(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[AimlApiCredentials]:
        return AimlApiCredentials


def test_slug_is_unchanged_so_saved_blocks_keep_loading() -> None:
    assert AimlApiCredentials.get_block_type_slug() == "aimlapi-credentials"


def test_key_stays_secret_in_repr_and_dump() -> None:
    block = AimlApiCredentials(api_key="sk-very-secret")
    assert isinstance(block.api_key, SecretStr)
    assert "sk-very-secret" not in repr(block) and "sk-very-secret" not in block.model_dump_json()

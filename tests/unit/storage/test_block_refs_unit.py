"""prefect_aimlapi_video.storage.block_refs: loading a block named `block-type-slug/block-name` in a parameter.

A malformed name is refused before Prefect is asked; a block Prefect cannot find becomes an input
error that says how to fix it; anything else (an unreachable server) is not blamed on the input.
Prefect's `Block.aload` is replaced by a recorder: no server.
"""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.storage import block_refs
from prefect_aimlapi_video.storage.block_refs import load_block


class FakeAload:
    """Stands in for `Block.aload`: answers `result`, or raises `error`; records what was asked."""

    def __init__(self, result: object = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.asked: list[str] = []

    async def __call__(self, name: str) -> object:
        self.asked.append(name)
        if self.error is not None:
            raise self.error
        return self.result


def use(monkeypatch, aload: FakeAload) -> FakeAload:
    monkeypatch.setattr(block_refs, "Block", SimpleNamespace(aload=aload))
    return aload


@pytest.mark.parametrize("name", ["outputs", "", "local-file-system.outputs"])
async def test_a_name_without_a_slash_is_refused_before_prefect_is_asked(monkeypatch, name):
    aload = use(monkeypatch, FakeAload(result=object()))
    with pytest.raises(InvalidInputError, match="output_storage must be 'block-type-slug/block-name'") as info:
        await load_block(name, what="output_storage")
    assert repr(name) in str(info.value) and "local-file-system/outputs" in str(info.value)
    assert aload.asked == []


async def test_a_found_block_is_returned_as_prefect_loaded_it(monkeypatch):
    block = object()
    aload = use(monkeypatch, FakeAload(result=block))
    assert await load_block("s3-bucket/staging", what="stage_to") is block
    assert aload.asked == ["s3-bucket/staging"]


@pytest.mark.parametrize(
    "error",
    [
        ValueError("Unable to find block document named staging for block type s3-bucket"),
        KeyError("No class found for dispatch key 's3-bucket'"),  # the block type is not installed here
    ],
)
async def test_a_block_prefect_cannot_load_is_an_input_error_that_says_how_to_fix_it(monkeypatch, error):
    use(monkeypatch, FakeAload(error=error))
    with pytest.raises(InvalidInputError) as info:
        await load_block("s3-bucket/staging", what="stage_to")
    message = str(info.value)
    assert message.startswith("stage_to: no block 's3-bucket/staging' on this Prefect server")
    assert str(error) in message  # Prefect's own reason
    assert "Create it in the UI" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # one clear message, no chain


@pytest.mark.parametrize("error", [httpx.ConnectError("connection refused"), RuntimeError("server error")])
async def test_other_failures_are_not_blamed_on_the_block_name(monkeypatch, error):
    use(monkeypatch, FakeAload(error=error))
    with pytest.raises(type(error)) as info:
        await load_block("local-file-system/outputs", what="output_storage")
    assert info.value is error
    assert not isinstance(info.value, InvalidInputError)

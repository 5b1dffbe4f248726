"""A new kind of destination is one class and one line in `SCHEMES`: shown with an in-memory one."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from prefect_aimlapi_video.api.client import AimlApiClient
from prefect_aimlapi_video.storage import destinations
from prefect_aimlapi_video.storage.delivery import store_result
from prefect_aimlapi_video.storage.destinations import Destination, resolve_output

STORED: dict[str, bytes] = {}


class MemoryDestination(Destination):
    """`mem://<anything>/<template>`: files kept in a dict (a stand-in for, say, gs://)."""

    kind: str = "memory"

    def location(self, path: str) -> str:
        return f"mem://{path}"

    async def store(self, local_file: Path, path: str, *, sha256: str, content_type: str = "video/mp4") -> str:
        STORED[path] = local_file.read_bytes()
        return self.location(path)

    @classmethod
    async def resolve(cls, output: str, aws_credentials: str | None) -> MemoryDestination:
        return cls(template=output.removeprefix("mem://"))


async def _chunks(content: bytes):
    """A body streamed like a network one (`content=bytes` is pre-read, and a download streams it)."""
    for start in range(0, len(content), 4096):
        yield content[start: start + 4096]


@pytest.fixture
def memory_scheme(monkeypatch):
    monkeypatch.setitem(destinations.SCHEMES, "mem", MemoryDestination.resolve)  # the one line
    STORED.clear()
    yield


async def test_a_new_scheme_resolves_stores_and_writes_sidecars(memory_scheme, clip_bytes):
    target = await resolve_output("mem://renders/{stem}-{generation}.mp4")
    assert isinstance(target, MemoryDestination)

    def provider(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/video/generations":
            return httpx.Response(200, json={"id": "g-1", "status": "completed", "video": {"url": "https://cdn.test/o.mp4"}})
        return httpx.Response(200, content=_chunks(clip_bytes), headers={"content-length": str(len(clip_bytes))})

    async with AimlApiClient("k", "https://api.test", transport=httpx.MockTransport(provider)) as client:
        stored = await store_result(client, "g-1", target, "renders/clip-g-1.mp4")
    assert stored.location == "mem://renders/clip-g-1.mp4" and STORED["renders/clip-g-1.mp4"] == clip_bytes
    assert stored.info.frames > 0
    assert await target.write_sidecar("renders/clip-g-1.mp4", {"ok": True}) == "mem://renders/clip-g-1.mp4.json"
    assert STORED["renders/clip-g-1.mp4.json"].startswith(b"{")


async def test_unknown_schemes_name_the_supported_ones():
    from prefect_aimlapi_video.api.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="supported are local paths and s3:// URLs"):
        await resolve_output("gs://bucket/{stem}.mp4")

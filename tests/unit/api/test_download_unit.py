"""AimlApiClient.download: atomic, verified, capped streaming from a (mock) CDN."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import httpx
import pytest

from prefect_aimlapi_video.api.client import AimlApiClient
from prefect_aimlapi_video.api.errors import DownloadError

API_KEY = "sk-unit-test-SECRET-KEY-0123456789"
BASE_URL = "https://api.test"
SIGNED = "https://cdn.test/results/out.mp4?Expires=1700000000&Signature=SIGSECRET~x&Key-Pair-Id=KPIDSECRET"


class Cdn:
    """A mock CDN: routes by URL (without query) to a response factory; records every request."""

    def __init__(self, routes):
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = f"{request.url.scheme}://{request.headers['host']}{request.url.path}"  # the guard pins the address
        return self.routes[key](request)


def client_for(cdn: Cdn, **kwargs) -> AimlApiClient:
    return AimlApiClient(API_KEY, BASE_URL, transport=httpx.MockTransport(cdn), **kwargs)


async def _stream(content: bytes, chunk: int = 256):
    for start in range(0, len(content), chunk):
        yield content[start: start + chunk]


def streamed(status: int, content: bytes, *, length: int | None | bool = True, **headers: str) -> httpx.Response:
    """A response whose body is streamed like a real network body (httpx pre-reads `content=bytes`,
    which `aiter_raw` cannot stream again). Content-Length is the real size unless overridden."""
    if length is True:
        headers["content-length"] = str(len(content))
    elif length not in (None, False):
        headers["content-length"] = str(length)
    return httpx.Response(status, content=_stream(content), headers=headers)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part") or p.name.startswith("."))


async def test_download_success_atomic_and_verified(tmp_path, clip_bytes):
    cdn = Cdn({"https://cdn.test/results/out.mp4": lambda r: streamed(
        200, clip_bytes, **{"content-type": "video/mp4"})})
    destination = tmp_path / "out" / "result.mp4"
    async with client_for(cdn) as client:
        result = await client.download(SIGNED, destination)
    assert result.path == destination
    assert destination.read_bytes() == clip_bytes
    assert result.sha256 == hashlib.sha256(clip_bytes).hexdigest()
    assert result.size_bytes == len(clip_bytes)
    assert result.content_type == "video/mp4"
    assert leftovers(destination.parent) == []
    assert sorted(p.name for p in destination.parent.iterdir()) == ["result.mp4"]


async def test_download_does_not_send_the_api_key(tmp_path, clip_bytes):
    cdn = Cdn({"https://cdn.test/results/out.mp4": lambda r: streamed(200, clip_bytes)})
    async with client_for(cdn) as client:
        await client.download(SIGNED, tmp_path / "r.mp4")
    assert len(cdn.requests) == 1
    request = cdn.requests[0]
    assert "authorization" not in request.headers
    assert API_KEY not in str(request.headers)
    assert request.url.params["Signature"] == "SIGSECRET~x"  # the signed URL is used as given


async def test_download_truncated_body_is_refused(tmp_path, clip_bytes):
    cdn = Cdn({"https://cdn.test/results/out.mp4": lambda r: streamed(
        200, clip_bytes[:1000], length=len(clip_bytes))})
    destination = tmp_path / "r.mp4"
    async with client_for(cdn) as client:
        with pytest.raises(DownloadError, match="truncated") as info:
            await client.download(SIGNED, destination)
    assert f"got 1000 of {len(clip_bytes)} bytes" in str(info.value)
    assert info.value.retryable  # a retry with a fresh URL can cure a cut transfer
    assert not destination.exists()
    assert list(tmp_path.iterdir()) == []
    assert "SIGSECRET" not in str(info.value) and "KPIDSECRET" not in str(info.value)


async def test_download_over_max_bytes_without_content_length(tmp_path, clip_bytes):
    cdn = Cdn({"https://cdn.test/results/out.mp4": lambda r: streamed(200, clip_bytes, length=None)})
    destination = tmp_path / "r.mp4"
    async with client_for(cdn) as client:
        with pytest.raises(DownloadError, match="download limit") as info:
            await client.download(SIGNED, destination, max_bytes=1000)
    assert not info.value.retryable  # the same file will be just as big next time
    assert not destination.exists()
    assert list(tmp_path.iterdir()) == []


async def test_download_declared_over_max_bytes(tmp_path, clip_bytes):
    cdn = Cdn({"https://cdn.test/results/out.mp4": lambda r: streamed(200, clip_bytes)})
    destination = tmp_path / "r.mp4"
    async with client_for(cdn, max_download_bytes=500) as client:
        with pytest.raises(DownloadError, match="above the 500-byte download limit"):
            await client.download(SIGNED, destination)
    assert list(tmp_path.iterdir()) == []


async def test_download_exactly_max_bytes_is_fine(tmp_path, clip_bytes):
    cdn = Cdn({"https://cdn.test/results/out.mp4": lambda r: streamed(200, clip_bytes, length=None)})
    async with client_for(cdn) as client:
        result = await client.download(SIGNED, tmp_path / "r.mp4", max_bytes=len(clip_bytes))
    assert result.size_bytes == len(clip_bytes)


@pytest.mark.parametrize("body", [b"<html><body>Access denied</body></html>", b"\x00\x01", b""])
async def test_download_non_mp4_refused(tmp_path, body):
    cdn = Cdn({"https://cdn.test/results/out.mp4": lambda r: streamed(200, body)})
    destination = tmp_path / "r.mp4"
    async with client_for(cdn) as client:
        with pytest.raises(DownloadError, match="not an MP4"):
            await client.download(SIGNED, destination)
    assert list(tmp_path.iterdir()) == []


async def test_failed_download_keeps_existing_destination(tmp_path):
    destination = tmp_path / "r.mp4"
    destination.write_bytes(b"previous result")
    cdn = Cdn({"https://cdn.test/results/out.mp4": lambda r: streamed(200, b"garbage")})
    async with client_for(cdn) as client:
        with pytest.raises(DownloadError):
            await client.download(SIGNED, destination)
    assert destination.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["r.mp4"]


async def test_download_follows_https_redirects_each_hop_checked(tmp_path, clip_bytes, resolver_stub):
    cdn = Cdn({
        "https://cdn.test/results/out.mp4": lambda r: httpx.Response(
            302, headers={"location": "https://edge.cdn2.test/cache/out.mp4?token=EDGETOKEN"}),
        "https://edge.cdn2.test/cache/out.mp4": lambda r: httpx.Response(301, headers={"location": "/final.mp4"}),
        "https://edge.cdn2.test/final.mp4": lambda r: streamed(200, clip_bytes),
    })
    async with client_for(cdn) as client:
        result = await client.download(SIGNED, tmp_path / "r.mp4")
    assert result.sha256 == hashlib.sha256(clip_bytes).hexdigest()
    assert [f"{r.url.scheme}://{r.headers['host']}{r.url.path}" for r in cdn.requests] == [
        "https://cdn.test/results/out.mp4", "https://edge.cdn2.test/cache/out.mp4", "https://edge.cdn2.test/final.mp4"]
    assert resolver_stub == ["cdn.test", "edge.cdn2.test", "edge.cdn2.test"]  # every hop resolved and checked
    assert all("authorization" not in r.headers for r in cdn.requests)


@pytest.mark.parametrize("hop, why", [
    ("http://169.254.169.254/latest/meta-data/", "only https"),
    ("https://169.254.169.254/latest/meta-data/", "link-local"),
    ("https://10.0.0.1/out.mp4", "private"),
    ("https://127.0.0.1:9/out.mp4", "loopback"),
    ("https://[::ffff:10.0.0.1]/out.mp4", "private"),
    ("http://edge.cdn2.test/out.mp4", "only https"),
])
async def test_a_redirect_to_an_internal_or_plain_http_address_is_refused_before_any_connection(tmp_path, hop, why):
    cdn = Cdn({"https://cdn.test/results/out.mp4": lambda r: httpx.Response(302, headers={"location": hop})})
    async with client_for(cdn) as client:
        with pytest.raises(DownloadError, match=why) as info:
            await client.download(SIGNED, tmp_path / "r.mp4")
    assert len(cdn.requests) == 1  # the refused hop never reached the transport
    assert info.value.retryable is False and list(tmp_path.iterdir()) == []


async def test_a_sandbox_on_loopback_may_serve_its_files_over_plain_http(tmp_path, clip_bytes):
    cdn = Cdn({"http://127.0.0.1:8787/files/out.mp4": lambda r: streamed(200, clip_bytes)})
    async with AimlApiClient(API_KEY, "http://127.0.0.1:8787", transport=httpx.MockTransport(cdn)) as client:
        result = await client.download("http://127.0.0.1:8787/files/out.mp4", tmp_path / "r.mp4")
    assert result.size_bytes == len(clip_bytes)


async def test_a_drip_fed_download_stops_at_its_deadline(tmp_path):
    async def drip():
        yield b"\x00\x00\x00\x18ftyp"
        while True:
            await asyncio.sleep(0.2)
            yield b"x"

    cdn = Cdn({"https://cdn.test/results/out.mp4": lambda r: httpx.Response(200, content=drip())})
    async with client_for(cdn, download_deadline_seconds=1.0) as client:
        started = time.monotonic()
        with pytest.raises(DownloadError, match="did not finish within its 1 s deadline") as info:
            await client.download(SIGNED, tmp_path / "r.mp4")
    assert time.monotonic() - started < 3 and info.value.retryable and list(tmp_path.iterdir()) == []


async def test_download_refuses_redirect_to_ftp(tmp_path):
    cdn = Cdn({"https://cdn.test/results/out.mp4": lambda r: httpx.Response(
        302, headers={"location": "ftp://files.test/out.mp4?sig=FTPSECRET"})})
    async with client_for(cdn) as client:
        with pytest.raises(DownloadError, match="only https") as info:
            await client.download(SIGNED, tmp_path / "r.mp4")
    assert len(cdn.requests) == 1
    assert "FTPSECRET" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


async def test_download_refuses_non_http_url_and_redirect_loops(tmp_path):
    async with client_for(Cdn({})) as client:
        with pytest.raises(DownloadError, match="only https"):
            await client.download("file:///etc/passwd", tmp_path / "r.mp4")
    loop = Cdn({"https://cdn.test/results/out.mp4": lambda r: httpx.Response(302, headers={"location": SIGNED})})
    async with client_for(loop) as client:
        with pytest.raises(DownloadError, match="redirects") as info:
            await client.download(SIGNED, tmp_path / "r.mp4")
    assert "SIGSECRET" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


async def test_download_error_status_does_not_leak_signature(tmp_path):
    cdn = Cdn({"https://cdn.test/results/out.mp4": lambda r: streamed(403, f"expired: {SIGNED}".encode())})
    async with client_for(cdn) as client:
        with pytest.raises(DownloadError) as info:
            await client.download(SIGNED, tmp_path / "r.mp4")
    text = str(info.value)
    assert info.value.status_code == 403 and "403" in text and info.value.retryable is False  # a 4xx is final
    assert "https://cdn.test/results/out.mp4" in text
    for secret in ("SIGSECRET", "KPIDSECRET", "1700000000"):
        assert secret not in text


async def test_download_transport_error_does_not_leak_signature(tmp_path):
    def handler(request):
        raise httpx.ReadError(f"connection reset while reading {request.url}", request=request)

    async with client_for(Cdn({"https://cdn.test/results/out.mp4": handler})) as client:
        with pytest.raises(DownloadError) as info:
            await client.download(SIGNED, tmp_path / "r.mp4")
    assert "SIGSECRET" not in str(info.value) and "KPIDSECRET" not in str(info.value)
    assert "ReadError" in str(info.value)
    assert list(tmp_path.iterdir()) == []

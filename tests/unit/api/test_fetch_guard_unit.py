"""api.fetch_guard: every hop of every fetch for a user's or a result's URL is checked before any
connection; FFmpeg reads remote videos only through `RangeFile`. No socket is opened here: names go
to the resolver stub (tests/unit/conftest.py) and requests to a MockTransport that records them."""

from __future__ import annotations

import time

import httpx
import pytest

from prefect_aimlapi_video.api.fetch_guard import (
    FetchPolicy,
    FetchRefused,
    GuardedSyncTransport,
    GuardedTransport,
    RangeFile,
    http_range_fetch,
    open_stream,
)
from prefect_aimlapi_video.media.probe import probe_remote

PUBLIC, SANDBOX = FetchPolicy(), FetchPolicy(allow_local=True)


@pytest.mark.parametrize("url, policy, why", [
    ("http://cdn.test/a.mp4", PUBLIC, "only https"),
    ("ftp://cdn.test/a.mp4", SANDBOX, "only https"),
    ("https://169.254.169.254/latest", PUBLIC, "link-local"),
    ("https://169.254.169.254/latest", SANDBOX, "link-local"),  # a sandbox opens loopback, nothing else
    ("http://169.254.169.254/latest", SANDBOX, "link-local"),
    ("https://10.0.0.1/a.mp4", SANDBOX, "private"),
    ("https://192.168.1.20/a.mp4", PUBLIC, "private"),
    ("https://127.0.0.1/a.mp4", PUBLIC, "loopback"),
    ("https://[::1]/a.mp4", PUBLIC, "loopback"),
    ("https://[::ffff:169.254.169.254]/a.mp4", PUBLIC, "link-local"),
    ("https://0.0.0.0/a.mp4", PUBLIC, "private|unspecified"),
    ("http://cdn.test/a.mp4", SANDBOX, "public, over plain http"),
])
async def test_refused_before_any_connection(url, policy, why):
    sent = []
    transport = GuardedTransport(policy, httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(200)))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(FetchRefused, match=why):
            await client.get(url)
    assert sent == []


@pytest.mark.parametrize("url, policy", [
    ("https://cdn.test/a.mp4", PUBLIC), ("https://cdn.test/a.mp4", SANDBOX),
    ("http://127.0.0.1:8787/files/a.mp4", SANDBOX), ("https://[::1]:8787/a.mp4", SANDBOX),
])
async def test_allowed_requests_go_to_the_address_that_was_checked(url, policy, resolver_stub):
    sent = []
    transport = GuardedTransport(policy, httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(200)))
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get(url)).status_code == 200
    (request,) = sent
    host = httpx.URL(url).host
    assert request.headers["host"].rsplit(":", 1)[0].strip("[]") in (host, f"[{host}]")  # the name it expects
    if host == "cdn.test":  # pinned: the connection goes to the checked address, TLS still names the host
        assert request.url.host == "93.184.215.14" and request.extensions["sni_hostname"] == "cdn.test"


async def test_a_name_that_resolves_to_a_private_address_is_refused(monkeypatch):
    from prefect_aimlapi_video.api import fetch_guard

    async def rebinding(host, port):
        return ["93.184.215.14", "10.1.2.3"]  # one public, one private: refused

    monkeypatch.setattr(fetch_guard, "system_resolve", rebinding)
    transport = GuardedTransport(PUBLIC, httpx.MockTransport(lambda r: httpx.Response(200)))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(FetchRefused, match="10.1.2.3 \\(private\\)"):
            await client.get("https://evil.test/a.mp4")


async def test_redirects_are_followed_one_checked_hop_at_a_time():
    hops = {"https://cdn.test/a": httpx.Response(302, headers={"location": "https://cdn2.test/b"}),
            "https://cdn2.test/b": httpx.Response(302, headers={"location": "https://10.0.0.1/c"})}
    sent = []

    def answer(request):
        sent.append(f"https://{request.headers['host']}{request.url.path}")
        return hops[sent[-1]]

    async with httpx.AsyncClient(transport=GuardedTransport(PUBLIC, httpx.MockTransport(answer))) as client:
        with pytest.raises(FetchRefused, match="private"):
            async with open_stream(client, "https://cdn.test/a"):
                pass
    assert sent == ["https://cdn.test/a", "https://cdn2.test/b"]


def test_a_remote_video_is_probed_through_range_requests_never_by_ffmpeg(clip_bytes):
    ranges = []

    def serve(request):
        start, end = (int(x) for x in request.headers["range"].removeprefix("bytes=").split("-"))
        ranges.append((start, end))
        body = clip_bytes[start:end + 1]
        return httpx.Response(206, content=body,
                              headers={"content-range": f"bytes {start}-{start + len(body) - 1}/{len(clip_bytes)}"})

    with httpx.Client(transport=GuardedSyncTransport(PUBLIC, httpx.MockTransport(serve))) as http:
        info = probe_remote(RangeFile(http_range_fetch(http, "https://cdn.test/clip.mp4"), time.monotonic() + 10),
                            label="clip")
    assert info is not None and (info.width, info.height) == (64, 48) and ranges[0][0] == 0


def test_a_range_read_refuses_a_redirect_to_an_internal_address():
    def serve(request):
        return httpx.Response(302, headers={"location": "http://169.254.169.254/latest/meta-data/"})

    with httpx.Client(transport=GuardedSyncTransport(PUBLIC, httpx.MockTransport(serve))) as http:
        with pytest.raises(FetchRefused):
            probe_remote(RangeFile(http_range_fetch(http, "https://cdn.test/clip.mp4"), time.monotonic() + 10),
                         label="clip")


def test_a_range_read_stops_at_its_deadline():
    file = RangeFile(lambda start, end: (b"x" * (end - start + 1), 10**9), deadline=time.monotonic() - 1)
    with pytest.raises(TimeoutError):
        file.read(10)

"""Getting the input video: decode a ``data:`` URI, or stream an http(s) URL to a file.

Messages name the host only: a presigned URL's query string is a credential and must not leak
into error bodies or logs.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlsplit

import httpx


class InputFetchError(Exception):
    """The input URL could not be downloaded (reported as the generation's error)."""


def parse_data_uri(uri: str, max_bytes: int) -> bytes:
    """Bytes of a ``data:[<type>][;base64],<payload>`` URI; ValueError says what is wrong with it."""
    if uri[:5].lower() != "data:":
        raise ValueError("not a data URI")
    header, comma, payload = uri[5:].partition(",")
    if not comma:
        raise ValueError("malformed data URI: no ',' before the payload")
    is_base64 = header.lower().endswith(";base64")
    if (len(payload) * 3 // 4 if is_base64 else len(payload) // 3) > max_bytes:
        raise ValueError(f"data URI is larger than {max_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=True) if is_base64 else unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"malformed data URI: invalid base64 ({exc})") from None
    if not data:
        raise ValueError("data URI is empty")
    if len(data) > max_bytes:
        raise ValueError(f"data URI is larger than {max_bytes} bytes")
    return data


def url_host(url: str) -> str:
    return urlsplit(url).netloc.rpartition("@")[2]


async def fetch_to_file(client: httpx.AsyncClient, url: str, dest: Path, max_bytes: int) -> None:
    """Stream ``url`` into ``dest``, refusing non-2xx answers and bodies above ``max_bytes``."""
    where = f"video_url (host {url_host(url)})"
    try:
        async with client.stream("GET", url) as response:
            if not response.is_success:
                raise InputFetchError(f"fetching {where} failed: HTTP {response.status_code}")
            size = 0
            with dest.open("wb") as file:
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise InputFetchError(f"{where} is larger than {max_bytes} bytes")
                    file.write(chunk)
    except httpx.HTTPError as exc:
        raise InputFetchError(f"fetching {where} failed: {type(exc).__name__}") from exc

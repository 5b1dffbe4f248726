"""Where the API is and how we reach it: base URL rules and the shared TLS context. No Prefect here."""

from __future__ import annotations

import functools
import ipaddress
import ssl
from urllib.parse import urlsplit

import httpx

from prefect_aimlapi_video.api.redact import safe_url

DEFAULT_BASE_URL = "https://api.aimlapi.com"


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context per process: building one costs milliseconds of CPU (loading the CA bundle),
    and a batch makes thousands of clients (four per generation)."""
    return httpx.create_ssl_context()


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(base_url: str) -> str:
    """Accept https anywhere and plain http only on loopback (the local sandbox)."""
    parts = urlsplit(base_url)
    if parts.scheme == "https" and parts.hostname:
        return base_url.rstrip("/")
    if parts.scheme == "http" and is_loopback(parts.hostname):
        return base_url.rstrip("/")
    raise ValueError(
        f"base_url must be an https URL (plain http only for a loopback sandbox), got {safe_url(base_url)!r}"
    )

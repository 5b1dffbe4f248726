"""Scrubbing of credentials from text before it reaches a log, an exception or an artifact.

Presigned and signed CDN URLs carry their credential in the query string, data URIs can be
megabytes of base64, and an `Authorization` header is the API key itself. Everything we show a
human goes through `redact` first; `safe_url` is the form of a URL that may be displayed.

A provider may echo the key itself back in an error body (a 401 that quotes what it refused), with
no `Bearer` in front of it. So every key a client holds is registered (`register_secret`) and its
literal text is scrubbed too, wherever it appears.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

_URL_QUERY = re.compile(r"(?P<base>\b(?:https?|s3)://[^\s?#\"'<>]+)\?[^\s\"'<>)]*")
_DATA_URI = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w=.+-]+)*,[A-Za-z0-9+/=%_-]{16,}")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[^\s\"',]+")
_SIGNATURE_PARAM = re.compile(
    r"(?i)\b(X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|Expires|Key-Pair-Id|Policy)="
    r"[^&\s\"'<>,]+"
)
_SIGNATURE_LINE = re.compile(r"(?i)\b(signature):\s*[0-9a-f]{16,}")  # botocore.auth at DEBUG
_MIN_SECRET_CHARS = 6  # shorter values would scrub ordinary words
_SECRETS: set[str] = set()  # literal secrets this process holds (API keys), scrubbed wherever they appear


def register_secret(value: str) -> None:
    """Scrub this literal value (an API key) from everything `redact` cleans, from now on."""
    if len(value) >= _MIN_SECRET_CHARS:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """Return `text` with registered secrets, URL query strings, data URI payloads and bearer tokens removed."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "<redacted>")
    text = _DATA_URI.sub(lambda m: f"data:{m.group('mime') or ''};base64,<redacted>", text)
    text = _URL_QUERY.sub(lambda m: f"{m.group('base')}?<redacted>", text)
    text = _SIGNATURE_PARAM.sub(lambda m: f"{m.group(1)}=<redacted>", text)
    text = _SIGNATURE_LINE.sub(lambda m: f"{m.group(1)}: <redacted>", text)
    return _BEARER.sub(lambda m: f"{m.group(1)} <redacted>", text)


def safe_url(url: str) -> str:
    """The displayable form of a URL: scheme, host and path, never the query or userinfo."""
    if url.startswith("data:"):
        return redact(url[:200])
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class RedactingFilter(logging.Filter):
    """A logging filter that scrubs each record's rendered message (installed on httpx/httpcore)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


# Libraries that log request URLs, headers or signatures (at DEBUG). A logger's filters see only
# records created at that very logger, so the children that log are listed one by one.
NOISY_LOGGERS = (
    "httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2",
    "botocore.auth", "botocore.endpoint", "botocore.parsers", "botocore.hooks", "urllib3.connectionpool",
)


def install_log_redaction(logger_names: tuple[str, ...] = NOISY_LOGGERS) -> None:
    """Attach `RedactingFilter` once to the loggers of libraries that log credentials."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())

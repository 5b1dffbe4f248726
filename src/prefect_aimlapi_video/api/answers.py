"""What an HTTP answer from the API means: the exception a caller (or a retry policy) can act on.

The one distinction that matters for money is kept here: answers that prove a POST was refused
(`REFUSED_POST_STATUSES`), the provider's own error shape (`provider_error_shape`), and
everything else, which says nothing about whether the provider accepted it.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx

from prefect_aimlapi_video.api.errors import (
    AimlApiError,
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    OutOfCreditsError,
    RateLimitedError,
    TransientApiError,
)
from prefect_aimlapi_video.api.redact import redact


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def error_text(response: httpx.Response) -> str:
    """The provider's message (and validation hints) without echoing any input back."""
    try:
        body = response.json()
    except ValueError:
        return redact(response.text[:300]) or response.reason_phrase
    if not isinstance(body, dict):
        return redact(str(body)[:300])
    parts = [str(body.get("message") or body.get("error") or response.reason_phrase)]
    for item in body.get("detail", []) if isinstance(body.get("detail"), list) else []:
        if isinstance(item, dict):
            loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
            parts.append(f"{loc}: {item.get('msg', '')}")
    return redact("; ".join(p for p in parts if p)[:500])


# POST answers that prove the provider did not accept the request (nothing was charged).
REFUSED_POST_STATUSES = frozenset({400, 401, 403, 404, 422, 429})


def provider_error_shape(response: httpx.Response) -> bool:
    """True for the provider's own error body, `{message, path, requestId, statusCode, timestamp}`.

    A gateway in front of the provider (load balancer, CDN) answers with its own page instead,
    which says nothing about whether the provider accepted the request behind it.
    """
    try:
        body = response.json()
    except ValueError:
        return False
    return (
        isinstance(body, dict)
        and isinstance(body.get("message"), str)
        and body.get("statusCode") == response.status_code
        and ("requestId" in body or "path" in body)
    )


def raise_for_answer(response: httpx.Response, action: str) -> None:
    """Translate a non-2xx answer into the exception that says what to do about it."""
    if response.is_success:
        return
    status = response.status_code
    text = error_text(response)
    request_id = response.headers.get("x-request-id")
    kwargs: dict[str, Any] = {"status_code": status, "request_id": request_id}
    if status == 401:
        raise AuthenticationError(
            f"{action}: the AI/ML API rejected the API key (401: {text}). Check the api_key saved in "
            "your AimlApiCredentials block (or AIMLAPI_API_KEY).",
            **kwargs,
        )
    if status == 403:
        if "credit" in text.lower():
            raise OutOfCreditsError(
                f"{action}: you've run out of credits (403: {text}). Top up at "
                "https://aimlapi.com/app/billing, then re-run; nothing was charged for this request.",
                **kwargs,
            )
        raise AuthenticationError(
            f"{action}: the API key is not allowed to do this (403: {text}). Check the key and its "
            "permissions in your AimlApiCredentials block.",
            **kwargs,
        )
    if status in (400, 422):
        raise InvalidRequestError(f"{action}: the provider refused the request ({status}: {text}).", **kwargs)
    if status == 404:
        raise NotFoundError(f"{action}: not found (404: {text}).", **kwargs)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        hint = f"; retry after {retry_after:g} s" if retry_after is not None else ""
        raise RateLimitedError(f"{action}: rate limited (429: {text}){hint}.", retry_after=retry_after, **kwargs)
    if status >= 500:
        raise TransientApiError(f"{action}: provider error ({status}: {text}); safe to retry.", **kwargs)
    raise AimlApiError(f"{action}: unexpected answer {status}: {text}", **kwargs)


def log_rows(body: Any) -> list[Any] | None:
    """The rows of a `/v2/logs` answer (a list, or a dict holding one), None if unrecognisable."""
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        return next((body[k] for k in ("data", "items", "logs", "rows") if isinstance(body.get(k), list)), None)
    return None

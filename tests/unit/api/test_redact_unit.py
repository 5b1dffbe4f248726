"""api.redact and the secret-free messages of api.errors."""

from __future__ import annotations

import base64
import logging

import pytest

from prefect_aimlapi_video.api.errors import (
    AimlApiError,
    AuthenticationError,
    DownloadError,
    GenerationFailedError,
    GenerationTimeoutError,
    InvalidInputError,
    OutOfCreditsError,
    RateLimitedError,
    SubmissionOutcomeUnknown,
    TransientApiError,
)
from prefect_aimlapi_video.api.redact import RedactingFilter, redact, safe_url

SIGNED_S3 = (
    "https://my-bucket.s3.us-east-1.amazonaws.com/videos/in.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20240101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20240101T000000Z"
    "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=0123abcdSIGNATURE"
)
SIGNED_CDN = "https://cdn.aimlapi.test/out/video.mp4?Expires=1700000000&Signature=CDNSIG~abc&Key-Pair-Id=KPID123"


def test_https_query_string_removed():
    text = f"could not fetch {SIGNED_S3} (403)"
    cleaned = redact(text)
    assert "0123abcdSIGNATURE" not in cleaned
    assert "AKIAEXAMPLE" not in cleaned
    assert "X-Amz-Date" not in cleaned
    assert "https://my-bucket.s3.us-east-1.amazonaws.com/videos/in.mp4?<redacted>" in cleaned
    assert cleaned.endswith("(403)")


def test_cdn_signature_params_removed():
    cleaned = redact(f"GET {SIGNED_CDN} -> 200")
    for secret in ("CDNSIG", "KPID123", "1700000000"):
        assert secret not in cleaned
    assert "https://cdn.aimlapi.test/out/video.mp4" in cleaned


def test_s3_url_query_removed():
    cleaned = redact("source s3://bucket/key.mp4?versionId=SECRETVERSION&x=1 ok")
    assert "SECRETVERSION" not in cleaned
    assert "s3://bucket/key.mp4" in cleaned


@pytest.mark.parametrize(
    "fragment, secret",
    [
        ("X-Amz-Signature=abcdef0123456789", "abcdef0123456789"),
        ("Signature=zzTopSecret", "zzTopSecret"),
        ("Expires=1700000000", "1700000000"),
        ("X-Amz-Security-Token=FQoGZXIvYXdzEXAMPLE", "FQoGZXIvYXdzEXAMPLE"),
    ],
)
def test_bare_signature_params_removed(fragment, secret):
    cleaned = redact(f"bad request params {fragment}&other=1")
    assert secret not in cleaned
    assert fragment.split("=")[0] + "=<redacted>" in cleaned


def test_data_uri_payload_removed():
    payload = base64.b64encode(b"\x00\x00\x00\x18ftypmp42" + b"x" * 200).decode()
    cleaned = redact(f"video_url=data:video/mp4;base64,{payload} rejected")
    assert payload[:20] not in cleaned
    assert "data:video/mp4;base64,<redacted>" in cleaned
    assert cleaned.endswith(" rejected")


@pytest.mark.parametrize("header", ["Authorization: Bearer sk-abc123SECRET", "authorization: bearer sk-abc123SECRET"])
def test_bearer_token_removed(header):
    cleaned = redact(f"sent {header}, got 401")
    assert "sk-abc123SECRET" not in cleaned
    assert "<redacted>" in cleaned


def test_plain_text_unchanged():
    text = "Generation abc:krea/krea-wan-14b/video-to-video failed: CUDA out of memory"
    assert redact(text) == text


def test_safe_url_drops_query_fragment_and_userinfo():
    assert safe_url(SIGNED_S3) == "https://my-bucket.s3.us-east-1.amazonaws.com/videos/in.mp4"
    assert safe_url("https://user:p4ssw0rd@example.com:8443/a/b.mp4?token=T#frag") == "https://example.com:8443/a/b.mp4"


def test_safe_url_of_data_uri_is_short_and_redacted():
    uri = "data:video/mp4;base64," + base64.b64encode(b"v" * 100_000).decode()
    shown = safe_url(uri)
    assert len(shown) < 100
    assert shown.startswith("data:video/mp4")
    assert "dnZ2dnZ2" not in shown  # base64 of 'vvvvvv'


def test_safe_url_keeps_ipv6_brackets():
    # A displayed URL must still be a URL: '::1' without brackets cannot be told apart from the port.
    assert safe_url("http://[::1]:8787/v2/video/generations?x=1") == "http://[::1]:8787/v2/video/generations"


def test_redacting_filter_scrubs_log_records():
    record = logging.LogRecord("httpx", logging.INFO, __file__, 1, 'HTTP Request: GET %s "%s"', (SIGNED_CDN, "200 OK"), None)
    assert RedactingFilter().filter(record) is True
    assert "CDNSIG" not in record.getMessage()
    assert "200 OK" in record.getMessage()


# ---------------------------------------------------------------- errors


def test_error_messages_are_redacted_and_carry_request_id():
    exc = TransientApiError(f"failed for {SIGNED_CDN} with Bearer sk-secret", status_code=502, request_id="req-42")
    text = str(exc)
    assert "CDNSIG" not in text and "sk-secret" not in text
    assert text.endswith("(x-request-id: req-42)")
    assert exc.status_code == 502 and exc.request_id == "req-42"


def test_retryable_flags():
    assert TransientApiError("x").retryable is True
    assert RateLimitedError("x", retry_after=3).retryable is True
    assert SubmissionOutcomeUnknown("x", client_request_id="c").retryable is True
    assert DownloadError("x").retryable is True
    for cls in (AuthenticationError, OutOfCreditsError, InvalidInputError):
        assert cls("x").retryable is False
    assert issubclass(InvalidInputError, ValueError)


def test_generation_failed_and_timeout_messages():
    failed = GenerationFailedError("gen-1", "ModelError", "bad frames", raw={"name": "ModelError"})
    assert str(failed) == "Generation gen-1 failed: ModelError: bad frames"
    assert failed.raw == {"name": "ModelError"} and failed.retryable is False
    timeout = GenerationTimeoutError("gen-2", 601.4, "generating")
    assert "601 s" in str(timeout) and "gen-2" in str(timeout) and "'generating'" in str(timeout)
    assert isinstance(timeout, AimlApiError)


def test_generation_failed_error_holds_no_signed_url():
    # api.errors promises that no exception ever holds a signed URL; `error_message` is copied into
    # the flow result and its summary artifact, so it must be as clean as str(exc).
    failed = GenerationFailedError("gen-1", "FetchError", f"could not download {SIGNED_S3}")
    assert "0123abcdSIGNATURE" not in str(failed)
    assert "0123abcdSIGNATURE" not in failed.error_message


def test_library_debug_logs_are_scrubbed(caplog):
    """What botocore and httpx print at DEBUG (signatures, Authorization headers, signed URLs)."""
    import logging

    from prefect_aimlapi_video.api.redact import install_log_redaction

    install_log_redaction()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("botocore.auth").debug("Signature:\n%s", "9f" * 32)
        logging.getLogger("botocore.endpoint").debug(
            "Making request with params: %s",
            {"headers": {"Authorization": "AWS4-HMAC-SHA256 Credential=AKIA/x, SignedHeaders=host, Signature=abcdef0123456789"}},
        )
        logging.getLogger("httpx").info("HTTP Request: GET https://cdn.test/v.mp4?Expires=1&Signature=SIGSECRET")
    text = caplog.text
    assert "9f" * 32 not in text and "abcdef0123456789" not in text and "SIGSECRET" not in text
    assert text.count("<redacted>") >= 3

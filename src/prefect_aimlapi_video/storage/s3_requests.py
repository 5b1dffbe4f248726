"""An S3 object as a generation request: the same key, overrides and identity whoever starts it.

Two things start generations for objects under a watched prefix: the upload trigger (the bridge's
event, then the deployment's trigger template) and the scheduled sweep. They must agree on what
makes two runs the same generation, or an object one of them handled is paid for again by the
other: the idempotency key (`object_idempotency_key`, which the trigger template in
deployments/prefect.yaml renders identically), the per-object overrides read from the object's
metadata (`overrides_from_metadata`), and the identity of its content in the request fingerprint
(`storage.s3.s3_identity`). Output names agree through the deployments' shared template.
"""

from __future__ import annotations

from collections.abc import Mapping
from email.errors import HeaderParseError
from email.header import decode_header, make_header

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.api.requests import request_fields

# User metadata (x-amz-meta-*) -> request field, one for each field of the registered request
# models (x-amz-meta-aimlapi-prompt, -strength, -seed, -enable-prompt-expansion); the flow validates
# the values. Metadata rather than a sidecar file, because it arrives atomically with the object.
METADATA_PREFIX = "aimlapi-"


def metadata_name(field: str) -> str:
    return METADATA_PREFIX + field.replace("_", "-")


def overrides_from_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """Per-object flow parameters from user metadata, which arrives atomically with the object.

    S3 metadata is ASCII; non-ASCII values (a prompt in any language) travel RFC 2047-encoded.
    """
    lowered = {name.lower(): value for name, value in metadata.items()}
    found = {field: lowered[metadata_name(field)] for field in request_fields() if metadata_name(field) in lowered}
    try:
        return {field: str(make_header(decode_header(value))) if "=?" in value else value
                for field, value in found.items()}
    except (LookupError, ValueError, HeaderParseError) as error:  # whoever uploads writes it: any charset, any bytes
        raise InvalidInputError(f"object metadata cannot be decoded ({type(error).__name__}: {error}).") from None


def object_idempotency_key(uri: str, etag: str) -> str:
    """One logical generation per object version: `s3://bucket/key#etag` (etag without quotes)."""
    return f"{uri}#{etag.strip(chr(34))}"

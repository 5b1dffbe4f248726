"""storage.s3: the plain S3 facts and messages that need no S3 (the rest runs against moto's server)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, NoCredentialsError

from prefect_aimlapi_video.api.errors import InvalidInputError, TransientApiError
from prefect_aimlapi_video.storage.s3 import explain, object_version, parse_s3_url, s3_identity


def test_urls_and_identities():
    assert parse_s3_url("s3://bucket/in/a b.mp4") == ("bucket", "in/a b.mp4")
    for bad in ("s3://bucket", "s3:///key", "https://bucket/key"):
        with pytest.raises(InvalidInputError, match="not an s3://bucket/key URL"):
            parse_s3_url(bad)
    assert object_version({"VersionId": "v1", "ETag": '"abc"'}) == ("v1", "abc")
    assert object_version({"VersionId": "null", "ETag": '"abc"'}) == (None, "abc")  # unversioned bucket
    assert s3_identity("s3://b/k", None, "abc") == "s3://b/k#abc" and s3_identity("s3://b/k", "v1", "abc") == "s3://b/k#v1"


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "HeadObject")


@pytest.mark.parametrize("error, kind, text", [
    (_client_error("NoSuchBucket", 404), InvalidInputError, "the bucket does not exist"),
    (_client_error("404", 404), InvalidInputError, "no such object"),
    (_client_error("AccessDenied", 403), InvalidInputError, "access denied"),
    (_client_error("SlowDown", 503), TransientApiError, "S3 answered 503"),
    (NoCredentialsError(), InvalidInputError, "no AWS credentials"),
])
def test_errors_become_messages_naming_what_to_do(error, kind, text):
    explained = explain(error, "video s3://b/k", "no such object")
    assert isinstance(explained, kind) and text in str(explained) and "s3://b/k" in str(explained)

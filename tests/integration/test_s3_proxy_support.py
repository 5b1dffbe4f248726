"""The fault-injecting S3 proxy (tests/support/s3_proxy.py) against moto's server, with real boto3 clients.

Facts about moto 5.x these tests rely on (checked directly against moto, see test_moto_honours_conditional_puts):
a put with `If-None-Match: *` on an existing key, or with an `If-Match` that is not the key's ETag, is refused
with 412 PreconditionFailed. Facts about botocore: `retries={"max_attempts": N}` means N *retries* (N + 1
attempts), and the default ("legacy") mode makes 5 attempts with exponential backoff, so a client that must
fail fast here uses `total_max_attempts=1`.
"""

from __future__ import annotations

import http.client
import io
import socket
import time
from collections.abc import Iterator

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

from tests.support.s3_proxy import S3FaultProxy, start_s3_fault_proxy

pytestmark = pytest.mark.integration

BUCKET = "proxy-support"
FAST = Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=10)


@pytest.fixture
def proxy(moto_server: str) -> Iterator[S3FaultProxy]:
    with S3FaultProxy(moto_server) as running:
        yield running


def client(url: str, config: Config = FAST):
    """An S3 client on `url`, with the test credentials the `moto_server` fixture put in the environment."""
    return boto3.client("s3", endpoint_url=url, config=config)


def status_of(error: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    response = error.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def test_moto_honours_conditional_puts(s3) -> None:
    s3.create_bucket(Bucket=BUCKET)
    etag = s3.put_object(Bucket=BUCKET, Key="k", Body=b"one")["ETag"]
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=BUCKET, Key="k", Body=b"two", IfNoneMatch="*")
    assert status_of(refused) == (412, "PreconditionFailed")
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=BUCKET, Key="k", Body=b"two", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert status_of(refused) == (412, "PreconditionFailed")
    assert s3.put_object(Bucket=BUCKET, Key="k", Body=b"two", IfMatch=etag)["ETag"] != etag


def test_passthrough(proxy: S3FaultProxy, s3) -> None:
    via = client(proxy.url)
    via.create_bucket(Bucket=BUCKET)
    put = via.put_object(Bucket=BUCKET, Key="dir/a key", Body=b"hello", Metadata={"colour": "blue"})
    got = via.get_object(Bucket=BUCKET, Key="dir/a key")
    assert got["Body"].read() == b"hello" and got["Metadata"] == {"colour": "blue"}
    head, direct = via.head_object(Bucket=BUCKET, Key="dir/a key"), s3.head_object(Bucket=BUCKET, Key="dir/a key")
    assert head["ETag"] == direct["ETag"] == put["ETag"] and head["ContentLength"] == 5

    # A file-like body makes botocore send `Expect: 100-continue` and wait up to 1 s for "100 Continue".
    started = time.monotonic()
    via.put_object(Bucket=BUCKET, Key="streamed", Body=io.BytesIO(b"x" * 300_000))
    assert time.monotonic() - started < 0.9
    assert s3.get_object(Bucket=BUCKET, Key="streamed")["Body"].read() == b"x" * 300_000
    assert via.get_object(Bucket=BUCKET, Key="streamed", Range="bytes=10-19")["Body"].read() == b"x" * 10
    listed = via.list_objects_v2(Bucket=BUCKET, Prefix="dir/")
    assert [item["Key"] for item in listed["Contents"]] == ["dir/a key"]

    upload = via.create_multipart_upload(Bucket=BUCKET, Key="multi")["UploadId"]
    parts = [via.upload_part(Bucket=BUCKET, Key="multi", UploadId=upload, PartNumber=number, Body=body)["ETag"]
             for number, body in ((1, b"a" * 5 * 1024 * 1024), (2, b"b" * 10))]
    via.complete_multipart_upload(Bucket=BUCKET, Key="multi", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": number, "ETag": etag} for number, etag in enumerate(parts, start=1)]})
    assert s3.head_object(Bucket=BUCKET, Key="multi")["ETag"] == via.head_object(Bucket=BUCKET, Key="multi")["ETag"]
    assert s3.head_object(Bucket=BUCKET, Key="multi")["ETag"].endswith('-2"')

    with pytest.raises(ClientError) as refused:
        via.put_object(Bucket=BUCKET, Key="dir/a key", Body=b"again", IfNoneMatch="*")
    assert status_of(refused) == (412, "PreconditionFailed")
    assert s3.get_object(Bucket=BUCKET, Key="dir/a key")["Body"].read() == b"hello"
    via.delete_object(Bucket=BUCKET, Key="streamed")
    assert "Contents" not in via.list_objects_v2(Bucket=BUCKET, Prefix="streamed")

    stats = proxy.stats()
    assert stats.injected == {} and stats.forwarded["PUT"] >= 5 and stats.forwarded["POST"] == 2
    assert ("PUT", f"/{BUCKET}/dir/a key", 412) in stats.seen


def test_keep_alive_and_chunked_request_bodies(proxy: S3FaultProxy, s3) -> None:
    s3.create_bucket(Bucket=BUCKET)
    connection = http.client.HTTPConnection("127.0.0.1", int(proxy.url.rsplit(":", 1)[1]), timeout=10)
    auth = {"Authorization": "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/s3/aws4_request, "
                             "SignedHeaders=host, Signature=unchecked"}
    connection.putrequest("PUT", f"/{BUCKET}/chunked")
    for name, value in {**auth, "Transfer-Encoding": "chunked"}.items():
        connection.putheader(name, value)
    connection.endheaders()
    for piece in (b"hello ", b"chunked ", b"world", b""):
        connection.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    first = connection.getresponse()
    assert first.status == 200 and first.getheader("Connection") is None  # moto's "close" is not passed on
    first.read()
    local_port = connection.sock.getsockname()[1]
    connection.request("GET", f"/{BUCKET}/chunked", headers=auth)  # same TCP connection: keep-alive
    second = connection.getresponse()
    assert second.read() == b"hello chunked world" and connection.sock.getsockname()[1] == local_port
    assert second.getheader("ETag") == s3.head_object(Bucket=BUCKET, Key="chunked")["ETag"]
    connection.close()


def test_dropped_conditional_headers(proxy: S3FaultProxy, s3) -> None:
    via = client(proxy.url)
    via.create_bucket(Bucket=BUCKET)
    etag = via.put_object(Bucket=BUCKET, Key="record", Body=b"first")["ETag"]

    proxy.drop_request_headers = {"If-None-Match"}
    via.put_object(Bucket=BUCKET, Key="record", Body=b"second", IfNoneMatch="*")  # ignored: overwrites
    assert s3.get_object(Bucket=BUCKET, Key="record")["Body"].read() == b"second"
    with pytest.raises(ClientError) as refused:  # If-Match still reaches moto
        via.put_object(Bucket=BUCKET, Key="record", Body=b"x", IfMatch=etag)
    assert status_of(refused) == (412, "PreconditionFailed")

    proxy.drop_request_headers = {"if-match"}  # case-insensitive
    via.put_object(Bucket=BUCKET, Key="record", Body=b"third", IfMatch=etag)  # a stale ETag, yet it succeeds
    assert s3.get_object(Bucket=BUCKET, Key="record")["Body"].read() == b"third"
    with pytest.raises(ClientError) as refused:
        via.put_object(Bucket=BUCKET, Key="record", Body=b"x", IfNoneMatch="*")
    assert status_of(refused) == (412, "PreconditionFailed")

    proxy.drop_request_headers = set()
    with pytest.raises(ClientError) as refused:
        via.put_object(Bucket=BUCKET, Key="record", Body=b"x", IfMatch=etag)
    assert status_of(refused) == (412, "PreconditionFailed")
    assert s3.get_object(Bucket=BUCKET, Key="record")["Body"].read() == b"third"


def test_injected_errors(proxy: S3FaultProxy, s3) -> None:
    via = client(proxy.url)
    via.create_bucket(Bucket=BUCKET)
    via.put_object(Bucket=BUCKET, Key="kept", Body=b"kept")
    proxy.reset_stats()

    outage = proxy.fail(methods=("PUT",), seconds=1.5)
    started = time.monotonic()
    with pytest.raises(ClientError) as failed:
        via.put_object(Bucket=BUCKET, Key="new", Body=b"new")
    assert status_of(failed) == (503, "ServiceUnavailable") and time.monotonic() - started < 1
    with pytest.raises(ClientError) as failed:  # `Expect: 100-continue`: answered before the body is sent
        via.put_object(Bucket=BUCKET, Key="new", Body=io.BytesIO(b"new"))
    assert status_of(failed) == (503, "ServiceUnavailable")
    assert via.get_object(Bucket=BUCKET, Key="kept")["Body"].read() == b"kept"
    assert proxy.stats().injected == {"PUT": 2} and proxy.stats().forwarded == {"GET": 1} and outage.active
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="new")

    # botocore's `max_attempts` counts retries: 1 means two attempts.
    with pytest.raises(ClientError):
        client(proxy.url, Config(retries={"max_attempts": 1})).put_object(Bucket=BUCKET, Key="new", Body=b"x")
    assert proxy.stats().injected == {"PUT": 4}

    while outage.active:
        time.sleep(0.05)
    via.put_object(Bucket=BUCKET, Key="new", Body=b"new")
    assert proxy.stats().forwarded["PUT"] == 1

    only = proxy.fail(methods=("GET", "HEAD"), key_contains="only/", status=500)
    via.put_object(Bucket=BUCKET, Key="only/this", Body=b"x")
    assert via.get_object(Bucket=BUCKET, Key="new")["Body"].read() == b"new"
    with pytest.raises(ClientError) as failed:
        via.get_object(Bucket=BUCKET, Key="only/this")
    assert status_of(failed) == (500, "InternalError")
    with pytest.raises(ClientError) as failed:
        via.head_object(Bucket=BUCKET, Key="only/this")
    assert status_of(failed)[0] == 500
    only.stop()
    assert via.get_object(Bucket=BUCKET, Key="only/this")["Body"].read() == b"x"

    proxy.fail(methods=("PUT", "DELETE"), code="SlowDown")
    with pytest.raises(ClientError) as failed:
        via.delete_object(Bucket=BUCKET, Key="new")
    assert status_of(failed) == (503, "SlowDown")
    proxy.heal()
    via.delete_object(Bucket=BUCKET, Key="new")
    seen = proxy.stats().seen
    assert ("PUT", f"/{BUCKET}/new", 503) in seen and ("GET", f"/{BUCKET}/only/this", 500) in seen


def test_unreachable(proxy: S3FaultProxy, s3) -> None:
    via = client(proxy.url, Config(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=2))
    via.create_bucket(Bucket=BUCKET)  # leaves a keep-alive connection in the client's pool

    proxy.unreachable()
    for _ in range(2):  # first on the pooled connection, then on a new one
        started = time.monotonic()
        with pytest.raises((EndpointConnectionError, ConnectionClosedError)):
            via.put_object(Bucket=BUCKET, Key="k", Body=b"x")
        assert time.monotonic() - started < 1.5
    assert proxy.stats().resets >= 1 and s3.head_bucket(Bucket=BUCKET)  # moto itself is fine
    proxy.heal()
    via.put_object(Bucket=BUCKET, Key="k", Body=b"x")

    proxy.unreachable(seconds=0.5)
    with pytest.raises((EndpointConnectionError, ConnectionClosedError)):
        via.head_object(Bucket=BUCKET, Key="k")
    time.sleep(0.6)
    assert via.head_object(Bucket=BUCKET, Key="k")["ContentLength"] == 1


def test_store_down_behind_the_proxy_and_clean_stop() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    proxy = start_s3_fault_proxy(f"http://127.0.0.1:{closed_port}")
    try:
        with pytest.raises(ClientError) as failed:
            client(proxy.url).list_buckets()
        assert status_of(failed) == (502, "BadGateway")
    finally:
        proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(proxy.url.rsplit(":", 1)[1])), timeout=1)
    for not_loopback in ("http://10.1.2.3:9000", "https://127.0.0.1:9000"):
        with pytest.raises(ValueError):
            S3FaultProxy(not_loopback)

"""S3 as plain facts: a thin adapter over boto3 (through prefect-aws credentials) that knows no flow.

Every call runs off the event loop, and every S3 error that can happen before anything is paid
becomes a message naming what went wrong (`explain`). Presigned URLs are credentials: functions
here return them only to the one caller that hands them to the API, and never log them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from prefect_aimlapi_video.api.errors import InvalidInputError, TransientApiError
from prefect_aimlapi_video.api.redact import install_log_redaction
from prefect_aimlapi_video.media.video_checks import parse_s3_url

MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024
NO_BUCKET = "the bucket does not exist"


async def s3_client(aws_credentials: str | None = None, bucket_block: Any = None) -> Any:
    """A boto3 S3 client from a bucket block, an `AwsCredentials` block name, or the default chain."""
    from prefect_aws import AwsCredentials

    install_log_redaction()
    if bucket_block is not None:
        return bucket_block.credentials.get_s3_client()
    if aws_credentials:
        try:
            credentials = await AwsCredentials.aload(aws_credentials)
        except ValueError:
            raise InvalidInputError(
                f"No AwsCredentials block named {aws_credentials!r}. Create it (prefect-aws) or omit it to "
                "use the default AWS credential chain (environment, profile, instance role)."
            ) from None
        return credentials.get_s3_client()
    return AwsCredentials().get_s3_client()  # boto3's default chain; honours AWS_ENDPOINT_URL


def explain(error: Exception, what: str, missing: str) -> InvalidInputError | TransientApiError:
    """A message a user can act on, for the S3 errors that can happen before any credit is spent."""
    if isinstance(error, NoCredentialsError):
        return InvalidInputError(f"{what}: no AWS credentials found; set them in the environment or a profile, "
                                 "or pass an AwsCredentials block name.")
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return InvalidInputError(f"{what}: {NO_BUCKET}.")
        if code in ("NoSuchKey", "404", "NotFound"):
            return InvalidInputError(f"{what}: {missing}.")
        if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return InvalidInputError(f"{what}: access denied ({code}); check the AWS credentials and bucket policy.")
        if status and status >= 500:
            return TransientApiError(f"{what}: S3 answered {status} ({code}); retry later.")
        return InvalidInputError(f"{what}: S3 refused the request ({code}).")
    return TransientApiError(f"{what}: could not reach S3 ({type(error).__name__}).")


async def call(what: str, function: Any, /, *, missing: str = "no such object (or bucket)", **kwargs: Any) -> Any:
    """Run a boto3 call off the event loop; S3 errors become messages naming `what` went wrong."""
    try:
        return await asyncio.to_thread(function, **kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise explain(exc, what, missing) from None


def object_version(head: dict[str, Any]) -> tuple[str | None, str]:
    """(VersionId on a versioned bucket, else None; the ETag without quotes) of a HeadObject answer."""
    version_id = head.get("VersionId")
    return (version_id if version_id and version_id != "null" else None), str(head.get("ETag", "")).strip('"')


def s3_identity(shown: str, version_id: str | None, etag: str) -> str:
    """The identity of an object's content in request fingerprints: its version, else its etag."""
    return f"{shown}#{version_id or etag}"


async def presign_get(
    video: str, *, aws_credentials: str | None = None, bucket_block: Any = None,
    expires_in: int, version_id: str | None = None, etag: str | None = None,
) -> str:
    """A presigned GET URL for the API to fetch the input. A secret: never log or return it.

    Pinned to what was checked: `version_id` (a versioned bucket) goes into the URL, so the API
    fetches exactly that version; otherwise, with `etag`, the object must still have that etag
    now, or nothing is sent (the fingerprint, and so the exactly-once record, named that content).
    """
    bucket, key = parse_s3_url(video)
    client = await s3_client(aws_credentials, bucket_block)
    params = {"Bucket": bucket, "Key": key}
    if version_id:
        params["VersionId"] = version_id
    elif etag:
        try:
            await asyncio.to_thread(client.head_object, Bucket=bucket, Key=key, IfMatch=f'"{etag}"')
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (404, 412):
                raise InvalidInputError(
                    f"video s3://{bucket}/{key} changed (or vanished) since it was checked (etag {etag}); "
                    "nothing was sent. Run again to restyle the current content."
                ) from None
            raise explain(exc, f"video s3://{bucket}/{key}", "no such object") from None
    return await call(
        f"presigning s3://{bucket}/{key}", client.generate_presigned_url,
        ClientMethod="get_object", Params=params, ExpiresIn=expires_in,
    )


def in_bucket_folder(block: Any, path: str) -> str:
    """`path` under an `S3Bucket` block's `bucket_folder`, as the block's own read/write methods place it."""
    folder = block.bucket_folder.strip("/")
    return f"{folder}/{path.lstrip('/')}" if folder else path.lstrip("/")


async def check_bucket(bucket: str, client: Any) -> None:
    """The bucket exists and these credentials may use it (a free HeadBucket)."""
    await call(f"output bucket s3://{bucket}", client.head_bucket, Bucket=bucket, missing=NO_BUCKET)


async def read_range(bucket: str, key: str, client: Any, length: int) -> bytes:
    """The first `length` bytes of an object (a signature check), without fetching the rest."""
    answer = await call(f"s3://{bucket}/{key}", client.get_object, Bucket=bucket, Key=key, Range=f"bytes=0-{length - 1}")
    return await asyncio.to_thread(answer["Body"].read)


async def upload_verified(client: Any, path: Path, bucket: str, key: str, *, sha256: str, content_type: str) -> None:
    """Managed transfer (multipart above 64 MiB, streamed from disk), then verify size and sha256 tag."""
    shown = f"s3://{bucket}/{key}"
    config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK)
    await call(
        f"uploading {shown}", client.upload_file, Filename=str(path), Bucket=bucket, Key=key,
        ExtraArgs={"ContentType": content_type, "Metadata": {"sha256": sha256}}, Config=config,
    )
    head = await call(f"verifying {shown}", client.head_object, Bucket=bucket, Key=key)
    size = path.stat().st_size
    if int(head.get("ContentLength", -1)) != size or head.get("Metadata", {}).get("sha256") != sha256:
        raise TransientApiError(f"Upload to {shown} did not verify (size or sha256 differ); it will be retried.")


async def read_object(url: str, aws_credentials: str | None = None, max_bytes: int = 16 * 1024 * 1024) -> bytes:
    """A small object (e.g. a manifest) read whole; larger ones are refused rather than held in memory."""
    bucket, key = parse_s3_url(url)
    client = await s3_client(aws_credentials)
    head = await call(f"s3://{bucket}/{key}", client.head_object, Bucket=bucket, Key=key)
    if int(head.get("ContentLength", 0)) > max_bytes:
        raise InvalidInputError(f"s3://{bucket}/{key} is larger than {max_bytes} bytes; not a manifest?")
    response = await call(f"s3://{bucket}/{key}", client.get_object, Bucket=bucket, Key=key)
    return await asyncio.to_thread(response["Body"].read)


async def list_objects(prefix_url: str, aws_credentials: str | None = None) -> list[dict[str, Any]]:
    """Every object under `s3://bucket/prefix` (all pages), as boto3's Contents entries."""
    bucket, _, prefix = prefix_url.removeprefix("s3://").partition("/")
    client = await s3_client(aws_credentials)

    def pages() -> list[dict[str, Any]]:
        paginator = client.get_paginator("list_objects_v2")
        return [item for page in paginator.paginate(Bucket=bucket, Prefix=prefix) for item in page.get("Contents", [])]

    return await call(f"listing s3://{bucket}/{prefix}", pages, missing=NO_BUCKET)


async def head_object(url: str, aws_credentials: str | None = None) -> dict[str, Any]:
    """HeadObject of `s3://bucket/key`: size, ETag, VersionId, user metadata."""
    bucket, key = parse_s3_url(url)
    client = await s3_client(aws_credentials)
    return await call(f"s3://{bucket}/{key}", client.head_object, Bucket=bucket, Key=key)


async def object_exists(url: str, aws_credentials: str | None = None) -> bool:
    bucket, key = parse_s3_url(url)
    client = await s3_client(aws_credentials)
    try:
        await asyncio.to_thread(client.head_object, Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise explain(exc, f"checking s3://{bucket}/{key}", "no such object") from None

"""S3 in and out, through prefect-aws blocks (`AwsCredentials`, `S3Bucket`) or the default AWS chain.

Inputs: an `s3://bucket/key` is checked (exists, non-empty, looks like a video) before any POST,
then handed to the API as a presigned GET URL made inside the submit task. Outputs: streamed
from the verified local download with boto3's managed (multipart) transfer, then checked (size,
sha256 kept as object metadata). Presigned URLs are credentials: only `s3://bucket/key` is
ever shown.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from prefect_aimlapi_video.flows.errors import InvalidInputError, TransientApiError
from prefect_aimlapi_video.flows.inputs import DEFAULT_PRESIGN_SECONDS, VideoInput, file_stem
from prefect_aimlapi_video.flows.outputs import DEFAULT_TEMPLATE, OutputTarget, load_block
from prefect_aimlapi_video.flows.probe import probe_url
from prefect_aimlapi_video.flows.redact import install_log_redaction

MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024
_NO_BUCKET = "the bucket does not exist"
_VIDEO_SIGNATURES = (b"ftyp", b"\x1a\x45\xdf\xa3")  # ISO BMFF box at offset 4, or an EBML (WebM) header


def parse_s3_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if parts.scheme != "s3" or not bucket or not key:
        raise InvalidInputError(f"{url!r} is not an s3://bucket/key URL.")
    return bucket, key


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


def _explain(error: Exception, what: str, missing: str) -> InvalidInputError | TransientApiError:
    """A message a user can act on, for the S3 errors that can happen before any credit is spent."""
    if isinstance(error, NoCredentialsError):
        return InvalidInputError(f"{what}: no AWS credentials found; set them in the environment or a profile, "
                                 "or pass an AwsCredentials block name.")
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return InvalidInputError(f"{what}: {_NO_BUCKET}.")
        if code in ("NoSuchKey", "404", "NotFound"):
            return InvalidInputError(f"{what}: {missing}.")
        if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return InvalidInputError(f"{what}: access denied ({code}); check the AWS credentials and bucket policy.")
        if status and status >= 500:
            return TransientApiError(f"{what}: S3 answered {status} ({code}); retry later.")
        return InvalidInputError(f"{what}: S3 refused the request ({code}).")
    return TransientApiError(f"{what}: could not reach S3 ({type(error).__name__}).")


async def _call(what: str, function: Any, /, *, missing: str = "no such object (or bucket)", **kwargs: Any) -> Any:
    """Run a boto3 call off the event loop; S3 errors become messages naming `what` went wrong."""
    try:
        return await asyncio.to_thread(function, **kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise _explain(exc, what, missing) from None


async def inspect_s3_video(video: str, aws_credentials: str | None = None) -> VideoInput:
    """Check that `s3://bucket/key` exists and looks like a video, without spending anything."""
    bucket, key = parse_s3_url(video)
    client = await s3_client(aws_credentials)
    shown = f"s3://{bucket}/{key}"
    head = await _call(f"video {shown}", client.head_object, Bucket=bucket, Key=key)
    size = int(head.get("ContentLength", 0))
    if size == 0:
        raise InvalidInputError(f"video {shown} is empty.")
    content_type = str(head.get("ContentType") or "")
    if not content_type.startswith("video/"):
        first = await _call(f"video {shown}", client.get_object, Bucket=bucket, Key=key, Range="bytes=0-15")
        magic = first["Body"].read()
        if magic[4:8] not in _VIDEO_SIGNATURES and magic[:4] not in _VIDEO_SIGNATURES:
            raise InvalidInputError(
                f"video {shown} is not a video (content type {content_type or 'unset'}, no MP4/WebM signature)."
            )
    version_id, etag = object_version(head)
    peek = await presign_video(video, aws_credentials=aws_credentials, expires_in=300, version_id=version_id)
    info = await asyncio.to_thread(probe_url, peek, label=f"video {shown}", size=size)
    return VideoInput(
        kind="s3", display=shown, identity=s3_identity(shown, version_id, etag), stem=file_stem(key),
        size_bytes=size, info=info, aws_credentials=aws_credentials, version_id=version_id, etag=etag,
    )


def object_version(head: dict[str, Any]) -> tuple[str | None, str]:
    """(VersionId on a versioned bucket, else None; the ETag without quotes) of a HeadObject answer."""
    version_id = head.get("VersionId")
    return (version_id if version_id and version_id != "null" else None), str(head.get("ETag", "")).strip('"')


def s3_identity(shown: str, version_id: str | None, etag: str) -> str:
    """The identity of an object's content in request fingerprints: its version, else its etag."""
    return f"{shown}#{version_id or etag}"


async def presign_video(
    video: str, *, aws_credentials: str | None = None, bucket_block: Any = None,
    expires_in: int = DEFAULT_PRESIGN_SECONDS, version_id: str | None = None, etag: str | None = None,
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
            raise _explain(exc, f"video s3://{bucket}/{key}", "no such object") from None
    return await _call(
        f"presigning s3://{bucket}/{key}", client.generate_presigned_url,
        ClientMethod="get_object", Params=params, ExpiresIn=expires_in,
    )


def _in_folder(block: Any, path: str) -> str:
    """`path` under the bucket block's `bucket_folder`, as its own read/write methods place it."""
    folder = block.bucket_folder.strip("/")
    return f"{folder}/{path.lstrip('/')}" if folder else path.lstrip("/")


async def stage_local_file(path: Path, bucket_block_name: str, sha256: str, *, expires_in: int) -> str:
    """Upload a local file too big for a data URI through an `S3Bucket` block; presign it for the API."""
    block = await load_block(bucket_block_name, what="stage_to")
    key = _in_folder(block, f"aimlapi-staging/{sha256[:16]}/{path.name}")
    client = await s3_client(bucket_block=block)
    await _upload(client, path, block.bucket_name, key, sha256=sha256, content_type="video/mp4")
    return await presign_video(f"s3://{block.bucket_name}/{key}", bucket_block=block, expires_in=expires_in)


async def resolve_s3_output(output: str, aws_credentials: str | None) -> OutputTarget:
    """`s3://bucket/key-template` (or `s3://bucket/prefix/`): check the bucket before any POST."""
    bucket, _, template = output.removeprefix("s3://").partition("/")
    if not bucket:
        raise InvalidInputError(f"output {output!r} is not an s3://bucket/key URL.")
    if not template or template.endswith("/"):
        template += DEFAULT_TEMPLATE
    client = await s3_client(aws_credentials)
    await _call(f"output bucket s3://{bucket}", client.head_bucket, Bucket=bucket, missing=_NO_BUCKET)
    return OutputTarget(kind="s3", template=template, bucket=bucket, aws_credentials=aws_credentials)


async def resolve_s3_bucket_output(block: Any, slug_and_name: str, template: str) -> OutputTarget:
    client = await s3_client(bucket_block=block)
    await _call(f"output bucket s3://{block.bucket_name}", client.head_bucket, Bucket=block.bucket_name, missing=_NO_BUCKET)
    return OutputTarget(kind="s3", template=_in_folder(block, template), bucket=block.bucket_name, block=slug_and_name)


async def _target_client(target: OutputTarget) -> Any:
    if target.block:
        return await s3_client(bucket_block=await load_block(target.block, what="output_storage"))
    return await s3_client(target.aws_credentials)


async def _upload(client: Any, path: Path, bucket: str, key: str, *, sha256: str, content_type: str) -> None:
    """Managed transfer (multipart above 64 MiB, streamed from disk), then verify size and sha256 tag."""
    shown = f"s3://{bucket}/{key}"
    config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK)
    await _call(
        f"uploading {shown}", client.upload_file, Filename=str(path), Bucket=bucket, Key=key,
        ExtraArgs={"ContentType": content_type, "Metadata": {"sha256": sha256}}, Config=config,
    )
    head = await _call(f"verifying {shown}", client.head_object, Bucket=bucket, Key=key)
    size = path.stat().st_size
    if int(head.get("ContentLength", -1)) != size or head.get("Metadata", {}).get("sha256") != sha256:
        raise TransientApiError(f"Upload to {shown} did not verify (size or sha256 differ); it will be retried.")


async def upload_file(target: OutputTarget, path: Path, key: str, *, sha256: str, content_type: str) -> str:
    client = await _target_client(target)
    await _upload(client, path, target.bucket or "", key, sha256=sha256, content_type=content_type)
    return target.location(key)


async def read_object(url: str, aws_credentials: str | None = None, max_bytes: int = 16 * 1024 * 1024) -> bytes:
    """A small object (e.g. a manifest) read whole; larger ones are refused rather than held in memory."""
    bucket, key = parse_s3_url(url)
    client = await s3_client(aws_credentials)
    head = await _call(f"s3://{bucket}/{key}", client.head_object, Bucket=bucket, Key=key)
    if int(head.get("ContentLength", 0)) > max_bytes:
        raise InvalidInputError(f"s3://{bucket}/{key} is larger than {max_bytes} bytes; not a manifest?")
    response = await _call(f"s3://{bucket}/{key}", client.get_object, Bucket=bucket, Key=key)
    return await asyncio.to_thread(response["Body"].read)


async def list_objects(prefix_url: str, aws_credentials: str | None = None) -> list[dict[str, Any]]:
    """Every object under `s3://bucket/prefix` (all pages), as boto3's Contents entries."""
    bucket, _, prefix = prefix_url.removeprefix("s3://").partition("/")
    client = await s3_client(aws_credentials)

    def pages() -> list[dict[str, Any]]:
        paginator = client.get_paginator("list_objects_v2")
        return [item for page in paginator.paginate(Bucket=bucket, Prefix=prefix) for item in page.get("Contents", [])]

    return await _call(f"listing s3://{bucket}/{prefix}", pages, missing=_NO_BUCKET)


async def head_object(url: str, aws_credentials: str | None = None) -> dict[str, Any]:
    """HeadObject of `s3://bucket/key`: size, ETag, VersionId, user metadata."""
    bucket, key = parse_s3_url(url)
    client = await s3_client(aws_credentials)
    return await _call(f"s3://{bucket}/{key}", client.head_object, Bucket=bucket, Key=key)


async def object_exists(url: str, aws_credentials: str | None = None) -> bool:
    bucket, key = parse_s3_url(url)
    client = await s3_client(aws_credentials)
    try:
        await asyncio.to_thread(client.head_object, Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise _explain(exc, f"checking s3://{bucket}/{key}", "no such object") from None

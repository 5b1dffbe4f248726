"""S3 in and out through prefect-aws, against moto's server over HTTP, a real Prefect server and the sandbox."""

from __future__ import annotations

import hashlib
import json

import pytest
from prefect_aws import AwsCredentials
from prefect_aws.client_parameters import AwsClientParameters
from prefect_aws.s3 import S3Bucket

import prefect_aimlapi_video.media.video_checks as video_checks
from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.flows.video_to_video import video_to_video
from tests.support import prefect_api

pytestmark = pytest.mark.integration
SIGNATURE_MARKERS = ("X-Amz-Signature", "X-Amz-Credential", "Signature=", "AWSAccessKeyId")


def credentials(sandbox) -> AimlApiCredentials:
    return AimlApiCredentials(api_key=sandbox.api_key, base_url=sandbox.base_url)


def assert_no_signature(text: str) -> None:
    for marker in SIGNATURE_MARKERS:
        assert marker not in text, marker


async def test_s3_input_and_output_default_chain(prefect_server, sandbox, s3, clips, capfd):
    s3.create_bucket(Bucket="media-in")
    s3.create_bucket(Bucket="media-out")
    s3.upload_file(str(clips["small"]), "media-in", "clips/beach day.mp4", ExtraArgs={"ContentType": "video/mp4"})

    result = await video_to_video(
        video="s3://media-in/clips/beach day.mp4", prompt="neon noir", strength=0.5, seed=4,
        credentials=credentials(sandbox), output="s3://media-out/results/{stem}-{seed}.mp4",
    )

    (entry,) = sandbox.ledger()
    assert entry.status == "completed"  # the sandbox fetched the input through the presigned URL
    assert result.output == "s3://media-out/results/beach-day-4.mp4"
    head = s3.head_object(Bucket="media-out", Key="results/beach-day-4.mp4")
    body = s3.get_object(Bucket="media-out", Key="results/beach-day-4.mp4")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == entry.output_sha256 == result.sha256 == head["Metadata"]["sha256"]
    assert head["ContentType"] == "video/mp4" and head["ContentLength"] == result.size_bytes
    sidecar = json.loads(s3.get_object(Bucket="media-out", Key="results/beach-day-4.mp4.json")["Body"].read())
    assert sidecar["generation_id"] == entry.generation_id and sidecar["sha256"] == entry.output_sha256
    assert sidecar["input"] == "s3://media-in/clips/beach day.mp4" and sidecar["prompt"] == "neon noir"
    assert sidecar["credits"] == entry.credits and sidecar["timing"]["total_s"] > 0

    recorded = await prefect_api.everything_recorded(result.flow_run_id)
    assert "s3://media-out/results/beach-day-4.mp4" in recorded
    assert result.input_info and (result.input_info.width, result.input_info.frames) == (160, 6)  # read via S3
    assert "| Input video | 160x96, 6 frames @ 12 fps |" in recorded
    assert "https://s3.console.aws.amazon.com/s3/object/media-out?prefix=results/beach-day-4.mp4" in recorded
    assert_no_signature(recorded)
    assert_no_signature(result.model_dump_json())
    assert_no_signature(json.dumps(sidecar))
    captured = capfd.readouterr()
    assert_no_signature(captured.out + captured.err)


async def test_output_to_s3_bucket_block_with_aws_credentials_block(prefect_server, sandbox, s3, moto_server, clips):
    s3.create_bucket(Bucket="studio")
    aws = AwsCredentials(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=moto_server),
    )
    await aws.asave("moto-it", overwrite=True)
    await S3Bucket(bucket_name="studio", bucket_folder="renders", credentials=aws).asave("studio-it", overwrite=True)

    result = await video_to_video(
        video=str(clips["small"]), prompt="pencil sketch", seed=9, credentials=credentials(sandbox),
        settings={"output_storage": "s3-bucket/studio-it"}, output="{stem}/{seed}.mp4",
    )

    assert result.output == "s3://studio/renders/small/9.mp4"
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="studio")["Contents"])
    assert keys == ["renders/small/9.mp4", "renders/small/9.mp4.json", "renders/small/9.mp4.strip.jpg"]
    (entry,) = sandbox.ledger()
    assert s3.head_object(Bucket="studio", Key="renders/small/9.mp4")["Metadata"]["sha256"] == entry.output_sha256


async def test_local_file_above_inline_cap_is_staged_through_s3(prefect_server, sandbox, s3, moto_server, clips,
                                                                tmp_path, monkeypatch):
    s3.create_bucket(Bucket="staging")
    aws = AwsCredentials(aws_client_parameters=AwsClientParameters(endpoint_url=moto_server))
    await S3Bucket(bucket_name="staging", credentials=aws).asave("staging-it", overwrite=True)
    monkeypatch.setattr(video_checks, "MAX_INLINE_FILE_BYTES", 1024)  # the clip is ~10 kB

    with pytest.raises(InvalidInputError, match="stage_to"):
        await video_to_video(video=str(clips["small"]), prompt="x", credentials=credentials(sandbox))
    result = await video_to_video(
        video=str(clips["small"]), prompt="x", credentials=credentials(sandbox),
        settings={"stage_to": "s3-bucket/staging-it"}, output=str(tmp_path / "out.mp4"),
    )
    (entry,) = sandbox.ledger()
    assert entry.output_sha256 == result.sha256
    staged = [o["Key"] for o in s3.list_objects_v2(Bucket="staging")["Contents"]]
    assert len(staged) == 1 and staged[0].startswith("aimlapi-staging/") and staged[0].endswith("small.mp4")
    assert_no_signature(await prefect_api.everything_recorded(result.flow_run_id))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(video="s3://media-in/missing.mp4"), "no such object"),
        (dict(video="s3://no-such-bucket/clip.mp4"), "bucket does not exist|no such object"),
        (dict(video="s3://media-in/notes.txt"), "is not a video"),
        (dict(video="s3://media-in/empty.mp4"), "is empty"),
        (dict(video="s3://media-in/clip.mp4", settings={"aws_credentials": "no-such-aws-block"}),
         "No AwsCredentials block"),
        (dict(video="s3://media-in/clip.mp4", output="s3://no-such-out-bucket/x.mp4"), "bucket does not exist"),
        (dict(video="s3://media-in/clip.mp4", settings={"output_storage": "s3-bucket/no-such-block"}), "no block"),
    ],
)
async def test_s3_problems_fail_before_any_post(prefect_server, sandbox, s3, clips, arguments, message):
    s3.create_bucket(Bucket="media-in")
    s3.upload_file(str(clips["small"]), "media-in", "clip.mp4")
    s3.put_object(Bucket="media-in", Key="notes.txt", Body=b"not a video at all", ContentType="text/plain")
    s3.put_object(Bucket="media-in", Key="empty.mp4", Body=b"")
    with pytest.raises(InvalidInputError, match=message):
        await video_to_video(prompt="x", credentials=credentials(sandbox), **arguments)
    assert sandbox.ledger() == []


async def test_s3_input_on_a_versioned_bucket_is_fetched_at_the_checked_version(s3, clips):
    """Replaced after the check: the API is still handed exactly the bytes that were checked (and
    that the request's fingerprint, and so its exactly-once record, names)."""
    import httpx

    from prefect_aimlapi_video.storage.sources import inspect_video

    s3.create_bucket(Bucket="pinned")
    s3.put_bucket_versioning(Bucket="pinned", VersioningConfiguration={"Status": "Enabled"})
    s3.upload_file(str(clips["small"]), "pinned", "in/clip.mp4", ExtraArgs={"ContentType": "video/mp4"})
    source = await inspect_video("s3://pinned/in/clip.mp4")
    assert source.version_id and source.identity.endswith(f"#{source.version_id}")
    s3.upload_file(str(clips["odd"]), "pinned", "in/clip.mp4", ExtraArgs={"ContentType": "video/mp4"})

    url = await source.video_url()
    assert f"versionId={source.version_id}" in url
    fetched = httpx.get(url, timeout=10).content
    assert hashlib.sha256(fetched).hexdigest() == hashlib.sha256(clips["small"].read_bytes()).hexdigest()


async def test_s3_input_replaced_since_the_check_on_an_unversioned_bucket_is_refused(s3, clips):
    from prefect_aimlapi_video.storage.sources import inspect_video

    s3.create_bucket(Bucket="unpinned")
    s3.upload_file(str(clips["small"]), "unpinned", "in/clip.mp4", ExtraArgs={"ContentType": "video/mp4"})
    source = await inspect_video("s3://unpinned/in/clip.mp4")
    assert source.version_id is None and source.etag
    assert "Signature" in await source.video_url()  # unchanged: presigned

    s3.upload_file(str(clips["odd"]), "unpinned", "in/clip.mp4", ExtraArgs={"ContentType": "video/mp4"})
    with pytest.raises(InvalidInputError, match=r"changed \(or vanished\) since it was checked.*nothing was sent"):
        await source.video_url()

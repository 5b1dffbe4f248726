"""The S3 -> SQS -> Prefect events bridge against moto's server (S3, SQS, SNS, EventBridge over HTTP)
and a real Prefect server; the emitted events are read back through the Prefect API.

The server persists events in batches (every few seconds), so a test waits for the events it expects;
the bridge's own counts prove what it did not emit.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus
from uuid import NAMESPACE_URL, uuid4, uuid5

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

from prefect_aimlapi_video.deployments.bridge import (
    EVENT_NAME,
    Filters,
    PrefectEventEmitter,
    S3EventBridge,
    SeenStore,
    main,
)
from tests.support.local_services import free_port
from tests.support.prefect_api import eventually

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Queue:
    url: str
    arn: str
    dlq_url: str


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid4().hex[:10]}"


def queue_arn(sqs: Any, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def depth(url: str) -> tuple[int, int]:
    """(visible, in flight) messages."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = boto3.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return int(attributes[names[0]]), int(attributes[names[1]])


@pytest.fixture
def queue(moto_server) -> Iterator[Queue]:
    """A queue whose messages go to a dead-letter queue after two receives."""
    sqs = boto3.client("sqs")
    name = unique("bridge")
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    redrive = json.dumps({"deadLetterTargetArn": queue_arn(sqs, dlq), "maxReceiveCount": "2"})
    url = sqs.create_queue(QueueName=name, Attributes={"RedrivePolicy": redrive})["QueueUrl"]
    yield Queue(url, queue_arn(sqs, url), dlq)
    for each in (url, dlq):
        sqs.delete_queue(QueueUrl=each)


def watched_bucket(s3: Any, queue: Queue) -> str:
    """A bucket that notifies the queue of created and removed objects (moto then sends an s3:TestEvent)."""
    bucket = unique("watch")
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [
        {"QueueArn": queue.arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]},
    ]})
    return bucket


def make_bridge(queue: Queue, store: SeenStore, *, emitter: Any = None, visibility_timeout: int = 30,
                **filters: Any) -> S3EventBridge:
    return S3EventBridge(queue.url, boto3.client("sqs"), boto3.client("s3"), Filters(**filters), store, 1,
                         visibility_timeout=visibility_timeout, emitter=emitter)


def direct_notification(bucket: str, key: str, etag: str, size: int = 1) -> str:
    return json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1", "eventName": "ObjectCreated:Put",
        "eventTime": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(key), "size": size, "eTag": etag}},
    }]})


def etag_of(s3: Any, bucket: str, key: str) -> str:
    return s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


async def emitted(bucket: str) -> list[Any]:
    """The bridge's events about objects of `bucket` that the Prefect server holds."""
    now = datetime.now(timezone.utc)
    event_filter = EventFilter(
        occurred=EventOccurredFilter(since=now - timedelta(hours=1), until=now + timedelta(hours=1)),
        event=EventNameFilter(name=[EVENT_NAME]),
        resource=EventResourceFilter(id_prefix=[f"s3://{bucket}/"]),
    )
    async with get_client() as client:
        return (await client.read_events(filter=event_filter, limit=50)).events


async def events_by_key(bucket: str, expected: set[str]) -> dict[str, Any]:
    found = await eventually(lambda: emitted(bucket), lambda events: {e.resource["s3.key"] for e in events} >= expected)
    assert sorted(e.resource["s3.key"] for e in found) == sorted(expected)  # each exactly once, nothing else
    return {e.resource["s3.key"]: e for e in found}


async def poll_until(bridge: S3EventBridge, done: Any, timeout: float = 20.0) -> Counter[str]:
    """poll_once until done(totals) holds; returns the totals of these polls."""
    totals: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    while not done(totals):
        assert time.monotonic() < deadline, f"gave up waiting; counts so far {dict(totals)}"
        totals.update(await bridge.poll_once())
    return totals


async def drained(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while depth(url) != (0, 0):
        assert time.monotonic() < deadline, f"queue still holds {depth(url)}"
        await asyncio.sleep(0.1)


async def test_uploads_become_exactly_one_event_per_object(prefect_server, s3, queue, tmp_path):
    bucket = watched_bucket(s3, queue)
    store = SeenStore(tmp_path / "seen.sqlite")
    bridge = make_bridge(queue, store, prefix="incoming/", exclude_prefixes=("incoming/renders/",))
    stop = asyncio.Event()
    running = asyncio.create_task(bridge.run(stop))
    clip = b"\x00\x00\x00\x18ftypmp42 stands in for a video"
    metadata = {"aimlapi-prompt": "neon noir", "aimlapi-strength": "0.4", "aimlapi-seed": "7",
                "aimlapi-enable-prompt-expansion": "false"}
    big = tmp_path / "big.mov"
    big.write_bytes(os.urandom(11 * 1024 * 1024))

    s3.put_object(Bucket=bucket, Key="incoming/clip.mp4", Body=clip, Metadata=metadata)
    s3.put_object(Bucket=bucket, Key="incoming/clip.mp4", Body=clip, Metadata=metadata)  # same bytes again
    s3.upload_file(str(big), bucket, "incoming/big.mov",  # multipart: moto notifies Put and CompleteMultipartUpload
                   Config=TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024))
    s3.put_object(Bucket=bucket, Key="outputs/clip.mp4", Body=b"an output elsewhere in the watched bucket")
    s3.put_object(Bucket=bucket, Key="incoming/renders/clip.mp4", Body=b"an output under the excluded prefix")
    s3.put_object(Bucket=bucket, Key="incoming/clip.mp4.json", Body=b"{}")
    s3.put_object(Bucket=bucket, Key="incoming/my clip(v2).mp4", Body=b"spaces and parentheses")
    s3.put_object(Bucket=bucket, Key="incoming/LOUD.MP4", Body=b"upper-case suffix")
    s3.delete_object(Bucket=bucket, Key="incoming/clip.mp4.json")  # ObjectRemoved: nothing to emit
    await drained(queue.url)
    stop.set()
    totals = await asyncio.wait_for(running, 10)
    store.close()

    assert totals == {"received": 11, "emitted": 4, "duplicates": 2, "skipped": 5, "malformed": 0, "failed": 0}
    events = await events_by_key(bucket, {"incoming/clip.mp4", "incoming/big.mov", "incoming/my clip(v2).mp4",
                                          "incoming/LOUD.MP4"})
    event = events["incoming/clip.mp4"]
    etag = etag_of(s3, bucket, "incoming/clip.mp4")
    assert event.id == uuid5(NAMESPACE_URL, f"s3://{bucket}/incoming/clip.mp4#{etag}")
    assert dict(event.resource) == {
        "prefect.resource.id": f"s3://{bucket}/incoming/clip.mp4", "prefect.resource.name": "clip.mp4",
        "s3.bucket": bucket, "s3.key": "incoming/clip.mp4", "s3.size": str(len(clip)), "s3.etag": etag,
        "s3.version-id": "", "s3.event-name": "ObjectCreated:Put",
    }
    assert event.payload == {"overrides": {"prompt": "neon noir", "strength": "0.4", "seed": "7",
                                           "enable_prompt_expansion": "false"}, "source": "s3", "sequencer": ""}
    assert events["incoming/big.mov"].resource["s3.etag"].endswith("-3")
    assert events["incoming/big.mov"].payload["overrides"] == {}
    assert events["incoming/my clip(v2).mp4"].resource.id == f"s3://{bucket}/incoming/my clip(v2).mp4"


async def test_sns_and_eventbridge_deliveries(prefect_server, s3, queue, tmp_path):
    sns, eventbridge = boto3.client("sns"), boto3.client("events")
    plain, raw, bridged, by_hand = (unique(name) for name in ("sns-plain", "sns-raw", "eventbridge", "by-hand"))
    for bucket in (plain, raw, bridged, by_hand):
        s3.create_bucket(Bucket=bucket)
    topics = []
    for bucket, attributes in ((plain, {}), (raw, {"RawMessageDelivery": "true"})):
        topics.append(topic := sns.create_topic(Name=bucket)["TopicArn"])
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue.arn, Attributes=attributes)
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
            "TopicConfigurations": [{"TopicArn": topic, "Events": ["s3:ObjectCreated:*"]}]})
    rule = unique("s3-to-queue")
    eventbridge.put_rule(Name=rule, EventPattern=json.dumps({"source": ["aws.s3"],
                                                             "detail": {"bucket": {"name": [bridged]}}}))
    eventbridge.put_targets(Rule=rule, Targets=[{"Id": "bridge-queue", "Arn": queue.arn}])
    s3.put_bucket_notification_configuration(Bucket=bridged,
                                             NotificationConfiguration={"EventBridgeConfiguration": {}})
    try:
        s3.put_object(Bucket=plain, Key="incoming/via sns.mp4", Body=b"sns plain")
        s3.put_object(Bucket=raw, Key="incoming/via raw+sns.mp4", Body=b"sns raw")
        s3.put_object(Bucket=bridged, Key="incoming/via eventbridge (1).mp4", Body=b"eventbridge")
        # The shapes AWS documents, sent by hand: SNS plain delivery, and an EventBridge event
        s3.put_object(Bucket=by_hand, Key="incoming/hand sns.mp4", Body=b"hand sns")
        s3.put_object(Bucket=by_hand, Key="incoming/hand eb.webm", Body=b"hand eventbridge")
        sqs = boto3.client("sqs")
        sqs.send_message(QueueUrl=queue.url, MessageBody=json.dumps({
            "Type": "Notification", "MessageId": str(uuid4()), "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
            "Subject": "Amazon S3 Notification", "Timestamp": datetime.now(timezone.utc).isoformat(),
            "Message": direct_notification(by_hand, "incoming/hand sns.mp4",
                                           etag_of(s3, by_hand, "incoming/hand sns.mp4")),
        }))
        sqs.send_message(QueueUrl=queue.url, MessageBody=json.dumps({
            "version": "0", "id": str(uuid4()), "detail-type": "Object Created", "source": "aws.s3",
            "account": "123456789012", "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": "us-east-1", "resources": [f"arn:aws:s3:::{by_hand}"],
            "detail": {"version": "0", "bucket": {"name": by_hand}, "object": {
                "key": "incoming/hand eb.webm", "size": 16, "etag": etag_of(s3, by_hand, "incoming/hand eb.webm"),
                "sequencer": "00617F08299329D189"}, "reason": "PutObject"},
        }))

        store = SeenStore(tmp_path / "seen.sqlite")
        bridge = make_bridge(queue, store, prefix="incoming/")
        totals = await poll_until(bridge, lambda counts: counts["emitted"] >= 5)
        await drained(queue.url)
        store.close()
    finally:
        eventbridge.remove_targets(Rule=rule, Ids=["bridge-queue"])
        eventbridge.delete_rule(Name=rule)
        for topic in topics:
            sns.delete_topic(TopicArn=topic)

    assert totals["emitted"] == 5 and totals["malformed"] == totals["failed"] == 0
    sources = {}
    for bucket, keys in ((plain, {"incoming/via sns.mp4"}), (raw, {"incoming/via raw+sns.mp4"}),
                         (bridged, {"incoming/via eventbridge (1).mp4"}),
                         (by_hand, {"incoming/hand sns.mp4", "incoming/hand eb.webm"})):
        for key, event in (await events_by_key(bucket, keys)).items():
            sources[key] = (event.payload["source"], event.resource["s3.event-name"])
    assert sources == {
        "incoming/via sns.mp4": ("sns", "ObjectCreated:Put"),
        "incoming/via raw+sns.mp4": ("s3", "ObjectCreated:Put"),  # raw delivery is the S3 notification itself
        "incoming/via eventbridge (1).mp4": ("eventbridge", "ObjectCreated:ObjectCreated"),  # moto's `reason`
        "incoming/hand sns.mp4": ("sns", "ObjectCreated:Put"),
        "incoming/hand eb.webm": ("eventbridge", "ObjectCreated:Put"),
    }


async def test_malformed_messages_reach_the_dead_letter_queue_while_good_ones_emit(
    prefect_server, s3, queue, tmp_path, caplog
):
    sqs = boto3.client("sqs")
    bucket = unique("by-hand")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="incoming/good.mp4", Body=b"good")
    s3.put_object(Bucket=bucket, Key="incoming/replaced.mp4", Body=b"first bytes")
    first = etag_of(s3, bucket, "incoming/replaced.mp4")
    s3.put_object(Bucket=bucket, Key="incoming/replaced.mp4", Body=b"second bytes")
    second = etag_of(s3, bucket, "incoming/replaced.mp4")
    malformed = {"this is not JSON", json.dumps({"hello": "world"}),
                 # boto3 refuses this bucket name (ParamValidationError): poison, not a traceback per receive
                 direct_notification("not a bucket!", "incoming/poison.mp4", "0" * 32)}
    for body in [
        *sorted(malformed),
        direct_notification(bucket, "incoming/missing.mp4", "0" * 32),  # gone before we looked: skipped
        direct_notification(bucket, "incoming/replaced.mp4", first),  # replaced since: its successor counts
        direct_notification(bucket, "incoming/replaced.mp4", second),
        direct_notification(bucket, "incoming/good.mp4", etag_of(s3, bucket, "incoming/good.mp4")),
    ]:
        sqs.send_message(QueueUrl=queue.url, MessageBody=body)
    store = SeenStore(tmp_path / "seen.sqlite")
    bridge = make_bridge(queue, store, visibility_timeout=1)
    caplog.set_level("INFO", logger="aimlapi.bridge")

    totals = await poll_until(bridge, lambda counts: depth(queue.dlq_url)[0] == len(malformed))
    store.close()

    assert totals == {"received": 10, "emitted": 2, "duplicates": 0, "skipped": 2, "malformed": 6, "failed": 0}
    assert depth(queue.url) == (0, 0)
    dead = sqs.receive_message(QueueUrl=queue.dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    assert {m["Body"] for m in dead} == malformed
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("malformed message")]
    assert sorted(w.split()[2] for w in warnings) == sorted(m["MessageId"] for m in dead)  # once per message
    assert not any(r.exc_info for r in caplog.records if r.name == "aimlapi.bridge")  # no traceback
    events = await events_by_key(bucket, {"incoming/good.mp4", "incoming/replaced.mp4"})
    assert events["incoming/replaced.mp4"].resource["s3.etag"] == second


async def test_an_object_s3_denies_is_skipped_like_a_missing_one_and_its_message_deleted(
    prefect_server, s3, queue, tmp_path, caplog
):
    """With s3:GetObject but no s3:ListBucket (the bridge's minimal policy), S3 answers HeadObject on a
    deleted key with 403, not 404. A bucket policy denying the read makes moto answer 403 the same way
    (moto names HeadObject's action s3:HeadObject, AWS s3:GetObject: the policy denies both)."""
    sqs = boto3.client("sqs")
    bucket = unique("denied")
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Deny", "Principal": "*", "Action": ["s3:GetObject", "s3:HeadObject"],
        "Resource": f"arn:aws:s3:::{bucket}/incoming/denied/*"}]}))
    s3.put_object(Bucket=bucket, Key="incoming/good.mp4", Body=b"good")
    with pytest.raises(ClientError) as denied:  # the premise: moto answers 403, not 404, for the deleted key
        s3.head_object(Bucket=bucket, Key="incoming/denied/deleted.mp4")
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    sqs.send_message(QueueUrl=queue.url, MessageBody=direct_notification(bucket, "incoming/denied/deleted.mp4", "0" * 32))
    sqs.send_message(QueueUrl=queue.url, MessageBody=direct_notification(
        bucket, "incoming/good.mp4", etag_of(s3, bucket, "incoming/good.mp4")))
    store = SeenStore(tmp_path / "seen.sqlite")
    bridge = make_bridge(queue, store, visibility_timeout=1)
    caplog.set_level("DEBUG", logger="aimlapi.bridge")

    totals = await poll_until(bridge, lambda counts: counts["received"] >= 2)
    await drained(queue.url)
    store.close()

    assert totals == {"received": 2, "emitted": 1, "duplicates": 0, "skipped": 1, "malformed": 0, "failed": 0}
    assert depth(queue.dlq_url) == (0, 0)  # deleted, not left to go to the dead-letter queue
    about = [r for r in caplog.records if r.name == "aimlapi.bridge" and "incoming/denied/deleted.mp4" in r.getMessage()]
    assert len(about) == 1 and about[0].exc_info is None  # exactly one line, no traceback
    assert about[0].getMessage().startswith(f"skipped s3://{bucket}/incoming/denied/deleted.mp4 (etag {'0' * 32}): "
                                            "access denied (403)")
    await events_by_key(bucket, {"incoming/good.mp4"})


async def test_emit_failure_keeps_the_message_and_a_later_poll_emits_it_once(prefect_server, s3, queue, tmp_path):
    bucket = watched_bucket(s3, queue)
    key = "incoming/retry me.mp4"
    s3.put_object(Bucket=bucket, Key=key, Body=b"retry", Metadata={"aimlapi-prompt": "again"})
    identity = (bucket, key, etag_of(s3, bucket, key))
    store = SeenStore(tmp_path / "seen.sqlite")
    unreachable = PrefectEventEmitter(f"http://127.0.0.1:{free_port()}/api")

    broken = make_bridge(queue, store, emitter=unreachable, visibility_timeout=1)
    stop = asyncio.Event()
    running = asyncio.create_task(broken.run(stop))
    await asyncio.sleep(3.5)  # fails once, then probes the API (1 s, 2 s later) instead of receiving again
    stop.set()
    failed = await asyncio.wait_for(running, 5)
    assert failed == {"received": 2, "emitted": 0, "duplicates": 0, "skipped": 1, "malformed": 0, "failed": 1}
    assert not store.has(identity)
    assert sum(depth(queue.url)) == 1 and sum(depth(queue.dlq_url)) == 0  # received once: not on its way to the DLQ

    working = make_bridge(queue, store, visibility_timeout=1)
    await working.emitter.emit([])  # run()'s probe before it receives again: a live API accepts it
    totals = await poll_until(working, lambda counts: counts["emitted"] > 0)
    await poll_until(working, lambda counts: counts["received"] == 0 and depth(queue.url) == (0, 0))
    assert totals["emitted"] == 1 and totals["failed"] == 0 and store.has(identity)

    # A crash between emitting and recording: a fresh state file emits again, with the same event id.
    fresh = SeenStore(tmp_path / "fresh.sqlite")
    forgetful = make_bridge(queue, fresh, visibility_timeout=1)
    boto3.client("sqs").send_message(QueueUrl=queue.url, MessageBody=direct_notification(bucket, key, identity[2]))
    s3.put_object(Bucket=bucket, Key="incoming/later.mp4", Body=b"emitted after the re-emit")
    assert (await poll_until(forgetful, lambda counts: counts["emitted"] >= 2))["emitted"] == 2
    store.close()
    fresh.close()

    events = await events_by_key(bucket, {key, "incoming/later.mp4"})  # the re-emit was stored once
    assert events[key].id == uuid5(NAMESPACE_URL, f"s3://{bucket}/{key}#{identity[2]}")
    assert events[key].payload["overrides"] == {"prompt": "again"}


def recorded(state: Path, identity: tuple[str, str, str]) -> bool:
    if not state.exists():
        return False
    store = SeenStore(state)
    try:
        return store.has(identity)
    finally:
        store.close()


def test_command_runs_until_sigterm_and_exits_cleanly(prefect_server, s3, queue, tmp_path):
    bucket = watched_bucket(s3, queue)
    state = tmp_path / "state" / "seen.sqlite"
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect_aimlapi_video.deployments.bridge", "--queue-url", queue.url, "--prefix", "incoming/",
             "--exclude-prefix", "incoming/renders/", "--state-file", str(state), "--wait-seconds", "1"],
            cwd=tmp_path, stdout=out, stderr=err,
        )
        try:
            s3.put_object(Bucket=bucket, Key="incoming/renders/out.mp4", Body=b"an output")
            s3.put_object(Bucket=bucket, Key="incoming/from the command.mp4", Body=b"cli")
            identity = (bucket, "incoming/from the command.mp4", etag_of(s3, bucket, "incoming/from the command.mp4"))
            deadline = time.monotonic() + 30
            while not recorded(state, identity):
                assert process.poll() is None and time.monotonic() < deadline, stderr.read_text()
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0, stderr.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    lines = stdout.read_text().splitlines()
    assert lines[-1] == "s3-events stopped: received=3 emitted=1 duplicates=0 skipped=2 malformed=0 failed=0"
    assert f"emitted s3://{bucket}/incoming/from the command.mp4 etag {identity[2]}" in stderr.read_text()
    assert depth(queue.url) == (0, 0)


def test_command_refuses_a_queue_it_cannot_use(prefect_server, moto_server, capsys):
    missing = f"{moto_server}/123456789012/{unique('no-such-queue')}"
    assert main(["--queue-url", missing]) == 1
    assert capsys.readouterr().err.startswith(f"error: cannot use the queue {missing}")

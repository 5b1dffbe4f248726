"""The bridge's pure parts: notification shapes, what a message may name, filters, overrides, the event
it builds, which errors are the message's own fault, log-safe text, the seen store."""

from __future__ import annotations

import json
import time
from uuid import NAMESPACE_URL, uuid5

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    HTTPClientError,
    ParamValidationError,
    ReadTimeoutError,
    UnsupportedS3ArnError,
)

from prefect_aimlapi_video.deployments.s3_messages import (
    EVENT_NAME,
    Filters,
    MalformedMessage,
    build_event,
    decoded_overrides,
    one_line,
    parse_message,
    printable,
    refused_request,
)
from prefect_aimlapi_video.deployments.seen_store import SeenStore
from prefect_aimlapi_video.storage.s3_requests import overrides_from_metadata

TIME = "2026-01-02T03:04:05.678Z"


def record(key: str, *, event: str = "ObjectCreated:Put", etag: str = "0123abcd", bucket: str = "media",
           **extra: str) -> dict:
    return {
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1", "eventTime": TIME,
        "eventName": event,
        "s3": {"bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": key, "size": 1234, "eTag": etag, **extra}},
    }


def direct(*records: dict) -> str:
    return json.dumps({"Records": list(records)})


def sns(message: str) -> str:
    return json.dumps({"Type": "Notification", "MessageId": "m-1", "TopicArn": "arn:aws:sns:us-east-1:1:t",
                       "Subject": "Amazon S3 Notification", "Message": message, "Timestamp": TIME})


def eventbridge(key: str, *, detail_type: str = "Object Created", **object_fields: object) -> str:
    obj = {"key": key, "size": 77, "etag": "beef-2", "version-id": "v1", "sequencer": "0064", **object_fields}
    return json.dumps({
        "version": "0", "id": "e-1", "detail-type": detail_type, "source": "aws.s3", "account": "1",
        "time": "2026-01-02T03:04:05Z", "region": "us-east-1", "resources": ["arn:aws:s3:::media"],
        "detail": {"version": "0", "bucket": {"name": "media"}, "object": obj, "reason": "CompleteMultipartUpload"},
    })


def test_direct_notification():
    body = direct(record("incoming/clip.mp4", versionId="v7", sequencer="00AB"))
    (obj,) = parse_message(body)
    assert (obj.bucket, obj.key, obj.size, obj.etag) == ("media", "incoming/clip.mp4", 1234, "0123abcd")
    assert (obj.version_id, obj.sequencer, obj.event_name, obj.source) == ("v7", "00AB", "ObjectCreated:Put", "s3")
    assert obj.event_time.isoformat() == "2026-01-02T03:04:05.678000+00:00"
    assert obj.uri == "s3://media/incoming/clip.mp4"


def test_sns_plain_and_raw_delivery():
    inner = direct(record("incoming/clip.mp4"))
    (wrapped,) = parse_message(sns(inner))
    (raw,) = parse_message(inner)  # raw delivery is the S3 notification itself
    assert wrapped.source == "sns" and raw.source == "s3"
    assert wrapped.identity == raw.identity == ("media", "incoming/clip.mp4", "0123abcd")


def test_eventbridge_keys_are_not_url_encoded():
    (obj,) = parse_message(eventbridge("incoming/a+b (1).mp4"))
    assert obj.key == "incoming/a+b (1).mp4" and obj.source == "eventbridge"
    assert (obj.etag, obj.version_id, obj.sequencer, obj.size) == ("beef-2", "v1", "0064", 77)
    assert obj.event_name == "ObjectCreated:CompleteMultipartUpload"


def test_eventbridge_as_moto_sends_it():
    (obj,) = parse_message(eventbridge("k.mp4", etag=None, eTag="cafe"))
    assert obj.etag == "cafe"


def test_url_encoded_keys_are_decoded():
    (obj,) = parse_message(direct(record("incoming/my+clip%28v2%29.mp4")))
    assert obj.key == "incoming/my clip(v2).mp4"
    (plus,) = parse_message(direct(record("c%2B%2B+notes%3A1.mp4")))
    assert plus.key == "c++ notes:1.mp4"


def test_test_event_and_other_s3_events_report_nothing():
    test_event = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": TIME, "Bucket": "media"})
    assert parse_message(test_event) == []
    assert parse_message(sns(test_event)) == []
    assert parse_message(direct(record("gone.mp4", event="ObjectRemoved:Delete"))) == []
    assert parse_message(eventbridge("gone.mp4", detail_type="Object Deleted")) == []


def test_multiple_records_keep_only_created_ones():
    body = direct(record("a.mp4"), record("b.mp4", event="ObjectRemoved:Delete"), record("c.mov", etag='"q"'))
    assert [(o.key, o.etag) for o in parse_message(body)] == [("a.mp4", "0123abcd"), ("c.mov", "q")]


@pytest.mark.parametrize(
    "body",
    [
        "not json at all",
        "",
        "[1, 2]",
        json.dumps({"hello": "world"}),
        json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put"}]}),
        json.dumps({"Records": [{**record("x.mp4"), "eventSource": "aws:dynamodb"}]}),
        direct({**record("x.mp4"), "eventTime": "yesterday"}),
        sns("this is not JSON"),
        sns(json.dumps({"unknown": True})),
        json.dumps({"source": "aws.s3", "detail-type": "Object Created", "detail": {"bucket": {}}}),
        # what boto3 would refuse to build a request from, or S3 could not hold
        direct(record("x.mp4", bucket="not a bucket!")),
        direct(record("x.mp4", bucket="media/elsewhere")),
        direct(record("x.mp4", bucket="arn:aws:s3:us-east-1:123456789012:accesspoint/another-account")),
        direct(record("x.mp4", bucket="b" * 256)),
        direct(record("x.mp4", etag="e1\r\nX-Injected: 1")),
        direct(record("x.mp4", etag="café")),
        direct(record("x.mp4", etag='""')),
        direct(record("x\ud800.mp4")),  # a lone surrogate: not UTF-8
        eventbridge("incoming/\udc80.mp4"),  # EventBridge keys are not URL-encoded
        direct(record("k" * 1021 + ".mp4")),  # 1025 bytes
        direct(record("é" * 511 + ".mp4")),  # 1026 bytes in UTF-8
        eventbridge("x.mp4", etag="e\n1"),
    ],
)
def test_malformed_messages(body):
    with pytest.raises(MalformedMessage):
        parse_message(body)


def test_what_s3_can_hold_is_accepted():
    legacy = parse_message(direct(record("k.mp4", bucket="Legacy_Bucket.2009")))  # us-east-1 names of old
    longest = parse_message(direct(record("é" * 510 + ".mp4")))  # 1024 bytes
    multipart = parse_message(direct(record("k.mp4", etag='"0123abcd-12"')))
    assert (legacy[0].bucket, len(longest[0].key.encode()), multipart[0].etag) == (
        "Legacy_Bucket.2009", 1024, "0123abcd-12")


@pytest.mark.parametrize("error", [
    ParamValidationError(report="Invalid bucket name"),
    UnsupportedS3ArnError(arn="arn:aws:s3:us-east-1:1:accesspoint/x"),
    UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
    HTTPClientError(error=ValueError("Invalid header value")),
])
def test_errors_of_a_messages_own_making(error):
    assert refused_request(error)


@pytest.mark.parametrize("error", [
    EndpointConnectionError(endpoint_url="https://s3.amazonaws.com"),
    ReadTimeoutError(endpoint_url="https://s3.amazonaws.com"),
    HTTPClientError(error=ConnectionResetError("reset")),
    ClientError({"Error": {"Code": "500"}, "ResponseMetadata": {"HTTPStatusCode": 500}}, "HeadObject"),
    RuntimeError("a bug"),
])
def test_transient_errors_and_bugs_are_not_the_messages_fault(error):
    assert not refused_request(error)


@pytest.mark.parametrize("value", ["=?no-such-charset?b?aW5r?=", "=?utf-8?q?caf=C3?="])
def test_metadata_that_cannot_be_decoded_is_malformed(value):
    (obj,) = parse_message(direct(record("k.mp4")))
    with pytest.raises(MalformedMessage, match="the metadata of s3://media/k.mp4: object metadata cannot be decoded"):
        decoded_overrides(obj, {"aimlapi-prompt": value})
    assert decoded_overrides(obj, {"aimlapi-prompt": "=?utf-8?b?Y2Fmw6kgbm9pcg==?="}) == {"prompt": "café noir"}


def test_text_from_a_message_stays_on_one_log_line():
    assert printable("incoming/café clip.mp4") == "incoming/café clip.mp4"
    assert printable("a\nb\rc\u202ed") == "a\\nb\\rc\\u202ed"  # newline, carriage return, bidi override
    assert one_line(ValueError("two\n  lines\n")) == "two lines"
    long = one_line("x" * 1000)
    assert len(long) == 303 and long.endswith("...")


def test_filters():
    (obj,) = parse_message(direct(record("incoming/Clip.MP4")))
    assert Filters().matches(obj)
    assert Filters(prefix="incoming/", bucket="media").matches(obj)
    assert not Filters(prefix="other/").matches(obj)
    assert not Filters(bucket="elsewhere").matches(obj)
    assert not Filters(exclude_prefixes=("outputs/", "incoming/")).matches(obj)
    assert not Filters(suffixes=(".webm",)).matches(obj)
    assert Filters(suffixes=("",)).matches(obj)
    (sidecar,) = parse_message(direct(record("incoming/clip.mp4.json")))
    assert not Filters().matches(sidecar)


def test_overrides_from_metadata():
    metadata = {"aimlapi-prompt": "neon noir", "Aimlapi-Strength": "0.4", "aimlapi-seed": "7",
                "aimlapi-enable-prompt-expansion": "false", "sha256": "ab"}
    assert overrides_from_metadata(metadata) == {"prompt": "neon noir", "strength": "0.4", "seed": "7",
                                                 "enable_prompt_expansion": "false"}
    assert overrides_from_metadata({"aimlapi-prompt": "=?utf-8?b?Y2Fmw6kgbm9pcg==?="}) == {"prompt": "café noir"}
    assert overrides_from_metadata({}) == {}


def test_event_contract():
    (obj,) = parse_message(direct(record("incoming/my+clip.mp4", etag='"e1"', versionId="v2", sequencer="9")))
    event = build_event(obj, {"prompt": "p"}).model_dump(mode="json")
    assert event["event"] == EVENT_NAME
    assert event["id"] == str(uuid5(NAMESPACE_URL, "s3://media/incoming/my clip.mp4#e1"))
    assert event["occurred"].startswith("2026-01-02T03:04:05.678")
    assert event["resource"] == {
        "prefect.resource.id": "s3://media/incoming/my clip.mp4", "prefect.resource.name": "my clip.mp4",
        "s3.bucket": "media", "s3.key": "incoming/my clip.mp4", "s3.size": "1234", "s3.etag": "e1",
        "s3.version-id": "v2", "s3.event-name": "ObjectCreated:Put",
    }
    assert event["payload"] == {"overrides": {"prompt": "p"}, "source": "s3", "sequencer": "9"}


def test_seen_store_survives_restarts_and_prunes(tmp_path):
    path = tmp_path / "state" / "seen.sqlite"
    store = SeenStore(path, max_age_days=7)
    store.add(("b", "k.mp4", "e1"), "id-1")
    assert store.has(("b", "k.mp4", "e1")) and not store.has(("b", "k.mp4", "e2"))
    store.close()

    reopened = SeenStore(path, max_age_days=7)
    assert reopened.has(("b", "k.mp4", "e1"))
    reopened.add(("b", "new.mp4", "e3"), "id-3")
    assert reopened.prune(now=time.time() + 6 * 86400) == 0
    assert reopened.prune(now=time.time() + 8 * 86400) == 2
    assert not reopened.has(("b", "k.mp4", "e1"))
    reopened.close()

"""The bridge's pure parts: notification shapes, filters, overrides, the event it builds, the seen store."""

from __future__ import annotations

import json
import time
from uuid import NAMESPACE_URL, uuid5

import pytest

from prefect_aimlapi_video.deployments.s3_messages import (
    EVENT_NAME,
    Filters,
    MalformedMessage,
    build_event,
    parse_message,
)
from prefect_aimlapi_video.deployments.seen_store import SeenStore
from prefect_aimlapi_video.flows.s3_requests import overrides_from_metadata

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
    ],
)
def test_malformed_messages(body):
    with pytest.raises(MalformedMessage):
        parse_message(body)


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

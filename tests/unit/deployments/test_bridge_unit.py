"""deployments.bridge with fakes for SQS, S3 and the event emitter: what each message leads to (emit
then delete; duplicates, filtered, vanished and access-denied objects deleted without an event;
malformed and poison messages and failures left in the queue, each logged on one line), the run loop's probe of the Prefect API after a failure, the
command's argument limits and its refusals to start. Message parsing itself is tested in
test_s3_messages_unit.py."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    HTTPClientError,
    ParamValidationError,
    UnsupportedS3ArnError,
)
from prefect.settings import PREFECT_API_URL, temporary_settings

from prefect_aimlapi_video.deployments import bridge as bridge_module
from prefect_aimlapi_video.deployments import receive_loop
from prefect_aimlapi_video.deployments.bridge import S3EventBridge, build_parser, main
from prefect_aimlapi_video.deployments.event_emitter import EmitError
from prefect_aimlapi_video.deployments.s3_messages import Filters
from prefect_aimlapi_video.deployments.seen_store import SeenStore

QUEUE = "https://sqs.test/123/watched"
NOTHING = {"received": 0, "emitted": 0, "duplicates": 0, "skipped": 0, "malformed": 0, "failed": 0}


def counts(**changed: int) -> dict[str, int]:
    return {**NOTHING, **changed}


def record(key: str, etag: str = "e1", *, bucket: str = "media", event: str = "ObjectCreated:Put") -> dict:
    return {"eventSource": "aws:s3", "eventName": event, "eventTime": "2026-01-02T03:04:05Z",
            "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 10, "eTag": etag}}}


def message(handle: str, *records: dict, body: str | None = None) -> dict:
    return {"MessageId": f"id-{handle}", "ReceiptHandle": handle,
            "Body": body if body is not None else json.dumps({"Records": list(records)})}


def client_error(status: int, operation: str = "HeadObject") -> ClientError:
    response = {"Error": {"Code": str(status), "Message": "no"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, operation)


class FakeSQS:
    """Hands out the given receives in turn (a list of messages, or an exception to raise); then none."""

    def __init__(self, log: list, *receives: list[dict] | Exception, on_receive: Any = None,
                 delete_error: Exception | None = None) -> None:
        self.log, self.receives, self.on_receive, self.delete_error = log, list(receives), on_receive, delete_error
        self.received_with: list[dict] = []

    def receive_message(self, **kwargs: Any) -> dict:
        self.received_with.append(kwargs)
        self.log.append(("receive",))
        if self.on_receive:
            self.on_receive(len(self.received_with))
        batch = self.receives.pop(0) if self.receives else []
        if isinstance(batch, Exception):
            raise batch
        return {"Messages": batch} if batch else {}

    def delete_message(self, QueueUrl: str, ReceiptHandle: str) -> None:
        assert QueueUrl == QUEUE
        if self.delete_error:
            raise self.delete_error
        self.log.append(("delete", ReceiptHandle))


class FakeS3:
    """head_object with If-Match, as S3 answers it: 404 for a missing key, 412 when the etag moved on;
    `errors`: a status to answer, or an exception to raise, for a key."""

    def __init__(self, objects: dict[str, tuple[str, dict]], errors: dict[str, int | Exception] | None = None) -> None:
        self.objects, self.errors = objects, errors or {}
        self.heads: list[tuple[str, str, str]] = []

    def head_object(self, Bucket: str, Key: str, IfMatch: str) -> dict:
        self.heads.append((Bucket, Key, IfMatch))
        if Key in self.errors:
            error = self.errors[Key]
            raise error if isinstance(error, Exception) else client_error(error)
        if Key not in self.objects:
            raise client_error(404)
        etag, metadata = self.objects[Key]
        if IfMatch != f'"{etag}"':
            raise client_error(412)
        return {"ETag": f'"{etag}"', "Metadata": metadata}


class FakeEmitter:
    """Records each batch by key; raises EmitError while `failures` lasts."""

    def __init__(self, log: list, failures: int = 0) -> None:
        self.log, self.failures = log, failures
        self.events: list = []

    async def emit(self, events: Sequence) -> None:
        self.log.append(("emit", [event.resource["s3.key"] for event in events]))
        if self.failures:
            self.failures -= 1
            raise EmitError("POST /api/events failed: 503")
        self.events.extend(events)


@pytest.fixture
def store(tmp_path):
    seen = SeenStore(tmp_path / "seen.sqlite")
    yield seen
    seen.close()


def make_bridge(sqs: FakeSQS, s3: FakeS3, store: SeenStore, emitter: FakeEmitter, **filters: Any) -> S3EventBridge:
    return S3EventBridge(QUEUE, sqs, s3, Filters(**filters), store, 3, visibility_timeout=45, max_messages=7,
                         emitter=emitter)


async def test_a_new_object_is_emitted_with_its_metadata_then_recorded_and_only_then_its_message_deleted(store):
    log: list = []
    sqs = FakeSQS(log, [message("rh-1", record("incoming/clip.mp4", '"e1"'))])
    s3 = FakeS3({"incoming/clip.mp4": ("e1", {"aimlapi-prompt": "ink wash", "other": "x"})})
    emitter = FakeEmitter(log)
    bridge = make_bridge(sqs, s3, store, emitter)

    assert await bridge.poll_once() == counts(received=1, emitted=1)
    assert log == [("receive",), ("emit", ["incoming/clip.mp4"]), ("delete", "rh-1")]
    assert sqs.received_with == [{"QueueUrl": QUEUE, "MaxNumberOfMessages": 7, "WaitTimeSeconds": 3,
                                  "VisibilityTimeout": 45}]
    assert s3.heads == [("media", "incoming/clip.mp4", '"e1"')]  # only the notified bytes
    (event,) = emitter.events
    assert event.payload["overrides"] == {"prompt": "ink wash"}
    assert store.has(("media", "incoming/clip.mp4", "e1"))


async def test_repeats_of_an_object_are_duplicates_that_are_deleted_without_a_second_event(store):
    log: list = []
    first = [
        message("rh-a", record("a.mp4")),
        message("rh-a-again", record("a.mp4")),  # the same object in a second message of the same receive
        message("rh-b", record("b.mp4", "e2"), record("b.mp4", "e2")),  # twice within one message
    ]
    sqs = FakeSQS(log, first, [message("rh-a-later", record("a.mp4"))])
    s3 = FakeS3({"a.mp4": ("e1", {}), "b.mp4": ("e2", {})})
    emitter = FakeEmitter(log)
    bridge = make_bridge(sqs, s3, store, emitter)

    assert await bridge.poll_once() == counts(received=3, emitted=2, duplicates=2)
    assert await bridge.poll_once() == counts(received=1, duplicates=1)  # a later redelivery
    assert [entry for entry in log if entry[0] == "emit"] == [("emit", ["a.mp4"]), ("emit", ["b.mp4"])]
    assert [entry[1] for entry in log if entry[0] == "delete"] == ["rh-a", "rh-a-again", "rh-b", "rh-a-later"]
    assert [key for _, key, _ in s3.heads] == ["a.mp4", "b.mp4"]  # S3 is not asked about known objects
    assert bridge.totals == counts(received=4, emitted=2, duplicates=3)


async def test_new_bytes_at_a_key_already_emitted_are_a_new_object(store):
    log: list = []
    store.add(("media", "clip.mp4", "old"), "event-1")
    sqs = FakeSQS(log, [message("rh-1", record("clip.mp4", "new"))])
    bridge = make_bridge(sqs, FakeS3({"clip.mp4": ("new", {})}), store, FakeEmitter(log))

    assert await bridge.poll_once() == counts(received=1, emitted=1)
    assert store.has(("media", "clip.mp4", "new"))


async def test_a_malformed_message_stays_for_the_dead_letter_queue_and_is_reported_once(store, caplog):
    log: list = []
    long_body = "not json " * 40
    bad = message("rh-bad", body=long_body)
    good = message("rh-good", record("incoming/ok.mp4"))
    sqs = FakeSQS(log, [bad, good], [bad])  # the queue hands the malformed one out again
    bridge = make_bridge(sqs, FakeS3({"incoming/ok.mp4": ("e1", {})}), store, FakeEmitter(log))
    caplog.set_level(logging.WARNING, logger="aimlapi.bridge")

    assert await bridge.poll_once() == counts(received=2, emitted=1, malformed=1)
    assert await bridge.poll_once() == counts(received=1, malformed=1)
    assert [entry[1] for entry in log if entry[0] == "delete"] == ["rh-good"]  # never deleted by the bridge
    (warning,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("malformed message")]
    assert "id-rh-bad" in warning
    assert f"... ({len(long_body)} chars)" in warning and long_body not in warning  # a preview, not the whole body


async def test_objects_filtered_out_vanished_or_replaced_and_messages_about_nothing_are_deleted_unemitted(store):
    log: list = []
    test_event = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "media"})
    sqs = FakeSQS(log, [
        message("rh-outputs", record("outputs/render.mp4")),  # under the excluded prefix
        message("rh-text", record("incoming/notes.txt")),  # not a video suffix
        message("rh-other-bucket", record("incoming/x.mp4", bucket="elsewhere")),
        message("rh-test", body=test_event),
        message("rh-removed", record("incoming/y.mp4", event="ObjectRemoved:Delete")),
        message("rh-gone", record("incoming/gone.mp4")),  # 404 on head_object
        message("rh-replaced", record("incoming/replaced.mp4", "old")),  # 412: newer bytes brought their own event
    ])
    s3 = FakeS3({"incoming/replaced.mp4": ("new", {})})
    emitter = FakeEmitter(log)
    bridge = make_bridge(sqs, s3, store, emitter, exclude_prefixes=("outputs/",), bucket="media")

    assert await bridge.poll_once() == counts(received=7, skipped=7)
    assert [entry for entry in log if entry[0] == "emit"] == []  # not even an empty batch
    assert [entry[1] for entry in log if entry[0] == "delete"] == [
        "rh-outputs", "rh-text", "rh-other-bucket", "rh-test", "rh-removed", "rh-gone", "rh-replaced"]
    assert [key for _, key, _ in s3.heads] == ["incoming/gone.mp4", "incoming/replaced.mp4"]
    assert not store.has(("media", "incoming/replaced.mp4", "old"))


def bridge_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "aimlapi.bridge"]


@pytest.mark.parametrize("error", [client_error(500), client_error(503), EndpointConnectionError(endpoint_url="x")],
                         ids=["500", "503", "unreachable"])
async def test_an_s3_failure_keeps_that_message_queued_while_the_rest_of_the_receive_proceeds(store, caplog, error):
    log: list = []
    sqs = FakeSQS(log, [message("rh-flaky", record("flaky.mp4")), message("rh-ok", record("ok.mp4"))])
    s3 = FakeS3({"ok.mp4": ("e1", {}), "flaky.mp4": ("e1", {})}, errors={"flaky.mp4": error})
    bridge = make_bridge(sqs, s3, store, FakeEmitter(log))
    caplog.set_level(logging.INFO, logger="aimlapi.bridge")

    assert await bridge.poll_once() == counts(received=2, emitted=1, failed=1)
    assert [entry for entry in log if entry[0] != "receive"] == [("emit", ["ok.mp4"]), ("delete", "rh-ok")]
    assert not store.has(("media", "flaky.mp4", "e1"))
    (warning,) = [r for r in bridge_lines(caplog) if r.levelno >= logging.WARNING]
    assert warning.getMessage().startswith("message id-rh-flaky failed; it stays in the queue: ")
    assert warning.exc_info is None and "\n" not in warning.getMessage()  # transient: one line, no traceback


async def test_a_403_on_head_object_is_an_object_gone_skipped_and_its_message_deleted_with_one_line(store, caplog):
    # With s3:GetObject but no s3:ListBucket (the bridge's minimal policy), S3 answers 403 for a deleted key.
    log: list = []
    sqs = FakeSQS(log, [message("rh-denied", record("incoming/deleted.mp4")), message("rh-ok", record("ok.mp4"))])
    s3 = FakeS3({"ok.mp4": ("e1", {})}, errors={"incoming/deleted.mp4": 403})
    bridge = make_bridge(sqs, s3, store, FakeEmitter(log))
    caplog.set_level(logging.DEBUG, logger="aimlapi.bridge")

    assert await bridge.poll_once() == counts(received=2, emitted=1, skipped=1)
    assert [entry for entry in log if entry[0] != "receive"] == [
        ("delete", "rh-denied"), ("emit", ["ok.mp4"]), ("delete", "rh-ok")]
    assert not store.has(("media", "incoming/deleted.mp4", "e1"))
    about = [r for r in bridge_lines(caplog) if "incoming/deleted.mp4" in r.getMessage()]
    assert len(about) == 1 and about[0].exc_info is None and "\n" not in about[0].getMessage()
    assert about[0].getMessage().startswith("skipped s3://media/incoming/deleted.mp4 (etag e1): access denied (403)")
    assert all(r.exc_info is None for r in bridge_lines(caplog))


@pytest.mark.parametrize("error", [
    ParamValidationError(report='Invalid bucket name "media": Bucket name must match the regex\nor be an ARN'),
    UnsupportedS3ArnError(arn="arn:aws:s3:us-east-1:1:accesspoint/elsewhere"),
    UnicodeEncodeError("utf-8", "k\ud800", 1, 2, "surrogates not allowed"),
    HTTPClientError(error=ValueError("Invalid header value b'\"e1\\r\\nX-Evil: 1\"'")),
], ids=["ParamValidationError", "UnsupportedS3ArnError", "UnicodeEncodeError", "invalid header value"])
async def test_a_message_boto3_refuses_to_build_a_request_from_is_poison_for_the_dead_letter_queue(
    store, caplog, error
):
    log: list = []
    poison = message("rh-poison", record("incoming/poison.mp4"))
    good = message("rh-good", record("incoming/ok.mp4"))
    sqs = FakeSQS(log, [poison, good], [poison], [poison])  # the queue hands it out until its redrive policy acts
    s3 = FakeS3({"incoming/ok.mp4": ("e1", {})}, errors={"incoming/poison.mp4": error})
    bridge = make_bridge(sqs, s3, store, FakeEmitter(log))
    caplog.set_level(logging.DEBUG, logger="aimlapi.bridge")

    assert await bridge.poll_once() == counts(received=2, emitted=1, malformed=1)
    assert await bridge.poll_once() == counts(received=1, malformed=1)
    assert await bridge.poll_once() == counts(received=1, malformed=1)
    assert [entry[1] for entry in log if entry[0] == "delete"] == ["rh-good"]  # left for the dead-letter queue
    assert all(r.exc_info is None for r in bridge_lines(caplog))  # never a traceback
    (line,) = [r.getMessage() for r in bridge_lines(caplog) if r.levelno >= logging.WARNING]  # once, not per receive
    assert line.startswith("malformed message id-rh-poison left for the dead-letter queue: boto3 refused a request "
                           f"for s3://media/incoming/poison.mp4: {type(error).__name__}")
    assert "\n" not in line and "\r" not in line


async def test_metadata_that_cannot_be_decoded_makes_the_message_poison_not_a_traceback_per_receive(store, caplog):
    # Whoever uploads writes the metadata: an RFC 2047 word in a charset Python does not know.
    log: list = []
    bad = message("rh-bad-metadata", record("incoming/odd.mp4"))
    sqs = FakeSQS(log, [bad], [bad])
    s3 = FakeS3({"incoming/odd.mp4": ("e1", {"aimlapi-prompt": "=?no-such-charset?b?aW5r?="})})
    bridge = make_bridge(sqs, s3, store, FakeEmitter(log))
    caplog.set_level(logging.DEBUG, logger="aimlapi.bridge")

    assert await bridge.poll_once() == counts(received=1, malformed=1)
    assert await bridge.poll_once() == counts(received=1, malformed=1)
    assert [entry for entry in log if entry[0] != "receive"] == []  # not emitted, not deleted
    assert all(r.exc_info is None for r in bridge_lines(caplog))
    (line,) = [r.getMessage() for r in bridge_lines(caplog) if r.levelno >= logging.WARNING]
    assert "the metadata of s3://media/incoming/odd.mp4: object metadata cannot be decoded (LookupError" in line


async def test_a_message_naming_what_s3_could_not_hold_is_malformed_before_any_request(store, caplog):
    log: list = []
    sqs = FakeSQS(log, [
        message("rh-bucket", record("incoming/a.mp4", bucket="not a bucket!")),
        message("rh-arn", record("incoming/a.mp4", bucket="arn:aws:s3:us-east-1:123456789012:accesspoint/other")),
        message("rh-etag", record("incoming/a.mp4", etag="e1\r\nX-Injected: 1")),
        message("rh-key", body=json.dumps({"Records": [record("incoming/\ud800.mp4")]})),
    ])
    s3 = FakeS3({})
    bridge = make_bridge(sqs, s3, store, FakeEmitter(log))
    caplog.set_level(logging.DEBUG, logger="aimlapi.bridge")

    assert await bridge.poll_once() == counts(received=4, malformed=4)
    assert s3.heads == [] and [entry for entry in log if entry[0] != "receive"] == []
    lines = [r.getMessage() for r in bridge_lines(caplog)]
    assert len(lines) == 4 and all(line.startswith("malformed message id-rh-") and "\n" not in line for line in lines)
    assert all(r.exc_info is None for r in bridge_lines(caplog))


async def test_a_key_with_a_newline_is_logged_on_one_line(store, caplog):
    log: list = []
    sqs = FakeSQS(log, [message("rh-1", record("incoming/two%0Alines.mp4"))])
    bridge = make_bridge(sqs, FakeS3({}), store, FakeEmitter(log))
    caplog.set_level(logging.DEBUG, logger="aimlapi.bridge")

    assert await bridge.poll_once() == counts(received=1, skipped=1)
    (line,) = [r.getMessage() for r in bridge_lines(caplog)]
    assert line == "skipped s3://media/incoming/two\\nlines.mp4 (etag e1): the object is gone"


async def test_events_the_prefect_api_refuses_leave_the_message_queued_and_unrecorded_until_a_later_poll(store):
    log: list = []
    two = message("rh-two", record("a.mp4"), record("b.mp4"))
    sqs = FakeSQS(log, [two], [two])  # redelivered after the visibility timeout
    emitter = FakeEmitter(log, failures=1)
    bridge = make_bridge(sqs, FakeS3({"a.mp4": ("e1", {}), "b.mp4": ("e1", {})}), store, emitter)

    assert await bridge.poll_once() == counts(received=1, failed=2)
    assert not store.has(("media", "a.mp4", "e1")) and not store.has(("media", "b.mp4", "e1"))
    assert ("delete", "rh-two") not in log

    assert await bridge.poll_once() == counts(received=1, emitted=2)
    assert log[-2:] == [("emit", ["a.mp4", "b.mp4"]), ("delete", "rh-two")]  # one batch per message
    assert store.has(("media", "a.mp4", "e1")) and store.has(("media", "b.mp4", "e1"))


async def test_a_message_that_could_not_be_deleted_comes_back_as_a_duplicate(store, caplog):
    log: list = []
    sqs = FakeSQS(log, [message("rh-1", record("clip.mp4"))], [message("rh-2", record("clip.mp4"))],
                  delete_error=client_error(500, "DeleteMessage"))
    emitter = FakeEmitter(log)
    bridge = make_bridge(sqs, FakeS3({"clip.mp4": ("e1", {})}), store, emitter)

    assert await bridge.poll_once() == counts(received=1, emitted=1)  # the delete failure is not raised
    assert any(r.getMessage().startswith("could not delete message id-rh-1") for r in caplog.records)
    assert await bridge.poll_once() == counts(received=1, duplicates=1)
    assert len(emitter.events) == 1


async def test_after_a_failure_run_probes_the_api_with_an_empty_batch_before_receiving_again(store, monkeypatch):
    monkeypatch.setattr(receive_loop, "MAX_BACKOFF_SECONDS", 0.0)  # no waiting between attempts
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def stop_on_second_receive(number: int) -> None:
        if number == 2:
            loop.call_soon_threadsafe(stop.set)  # stop arrives while this receive's batch is in hand

    log: list = []
    sqs = FakeSQS(log, client_error(500, "ReceiveMessage"), [message("rh-1", record("clip.mp4"))],
                  on_receive=stop_on_second_receive)
    emitter = FakeEmitter(log, failures=1)  # the API is down for the first probe
    bridge = make_bridge(sqs, FakeS3({"clip.mp4": ("e1", {})}), store, emitter)

    totals = await asyncio.wait_for(bridge.run(stop), 10)

    assert log == [("receive",), ("emit", []), ("emit", []), ("receive",), ("emit", ["clip.mp4"]), ("delete", "rh-1")]
    assert totals == counts(received=1, emitted=1)  # a failed receive is no message


def test_max_messages_is_held_to_the_sqs_limit_and_the_wait_to_20_seconds(capsys):
    parser = build_parser()
    assert parser.parse_args(["--queue-url", "q", "--max-messages", "10"]).max_messages == 10
    assert parser.parse_args(["--queue-url", "q", "--wait-seconds", "20"]).wait_seconds == 20
    for bad in (["--max-messages", "0"], ["--max-messages", "11"], ["--wait-seconds", "21"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["--queue-url", "q", *bad])
    assert "between 1 and 10" in capsys.readouterr().err


def test_the_command_refuses_to_start_without_a_prefect_api_or_a_usable_queue(monkeypatch, capsys):
    asked: list = []

    async def unusable_credentials(block_name):
        asked.append(block_name)
        raise ValueError("Unable to find block document named missing\n  for block type aws-credentials")

    monkeypatch.setattr(bridge_module, "_aws_clients", unusable_credentials)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["--queue-url", "https://sqs.test/q"]) == 2
    assert "PREFECT_API_URL" in capsys.readouterr().err and asked == []  # events to a temporary server would be lost

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert main(["--queue-url", "https://sqs.test/q", "--aws-credentials", "missing"]) == 1
    error = capsys.readouterr().err
    assert asked == ["missing"]
    assert error == ("error: cannot use the queue https://sqs.test/q: Unable to find block document named missing "
                     "for block type aws-credentials\n")

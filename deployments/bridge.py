"""The storage-event bridge: S3 "object created" notifications on an SQS queue -> Prefect events.

Prefect's open-source server has events and deployment triggers but nothing that listens to S3,
so this long-polls SQS and emits one `aimlapi.s3.object.created` event per new object; a
deployment trigger on that event starts a `video_to_video` run. It accepts notifications sent
directly by S3, through SNS (plain or raw delivery) and through EventBridge.

Delivery is at-least-once end to end: an SQS message is deleted only after its events were
accepted by the Prefect API, and a repeat (redelivery, the two notifications of a multipart
upload, the same bytes uploaded again) is recognised by (bucket, key, etag) in a small SQLite
file. Event ids are derived from that identity, so a re-emit after a crash carries the same id
(the server stores an event id once and its triggers ignore ids they have seen).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import unquote_plus
from uuid import NAMESPACE_URL, UUID, uuid5

import httpx
from botocore.exceptions import BotoCoreError, ClientError
from prefect.events import Event

from prefect_aimlapi_video.flows.inputs import VIDEO_SUFFIXES
from prefect_aimlapi_video.flows.s3_requests import object_idempotency_key, overrides_from_metadata
from pydantic import BaseModel, ConfigDict, Field, field_validator

EVENT_NAME = "aimlapi.s3.object.created"
COUNTS = ("received", "emitted", "duplicates", "skipped", "malformed", "failed")
EVENTBRIDGE_REASONS = {"PutObject": "Put", "POST Object": "Post", "CopyObject": "Copy",
                       "CompleteMultipartUpload": "CompleteMultipartUpload"}
MAX_BACKOFF_SECONDS = 30.0
PRUNE_EVERY_SECONDS = 3600.0
PREVIEW_CHARS = 120

logger = logging.getLogger("aimlapi.bridge")
Identity = tuple[str, str, str]  # (bucket, key, etag): the same bytes at the same key are one object


class MalformedMessage(Exception):
    """A queue message that is not an S3 notification in any shape we know."""


class EmitError(Exception):
    """The Prefect API did not accept the events (network error or non-2xx answer)."""


class ObjectCreated(BaseModel):
    """One new object, whichever way its notification arrived."""

    model_config = ConfigDict(frozen=True)

    bucket: str = Field(min_length=1)
    key: str = Field(min_length=1)
    size: int = Field(ge=0)
    etag: str = Field(min_length=1)
    version_id: str = ""
    sequencer: str = ""
    event_name: str
    event_time: datetime
    source: Literal["s3", "sns", "eventbridge"]

    @field_validator("etag")
    @classmethod
    def _unquoted(cls, value: str) -> str:
        return value.strip('"')

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def identity(self) -> Identity:
        return (self.bucket, self.key, self.etag)

    @property
    def event_id(self) -> UUID:
        """Deterministic, so that a re-emit after a crash is recognised downstream as the same event."""
        return uuid5(NAMESPACE_URL, object_idempotency_key(self.uri, self.etag))


def _json(text: Any, what: str) -> Any:
    if not isinstance(text, str):
        raise MalformedMessage(f"{what} is not a string")
    try:
        return json.loads(text)
    except ValueError:
        raise MalformedMessage(f"{what} is not JSON") from None


def parse_message(body: str) -> list[ObjectCreated]:
    """The objects created that one SQS message reports ([] for a TestEvent or other S3 events).

    Raises MalformedMessage for anything that is not a direct, SNS-wrapped or EventBridge S3 notification.
    SNS raw delivery is byte-for-byte the direct S3 notification, so it reports source "s3".
    """
    document = _json(body, "the message body")
    if isinstance(document, dict) and document.get("Type") == "Notification" and "Message" in document:
        return _parse_notification(_json(document["Message"], "the SNS Message"), "sns")
    return _parse_notification(document, "s3")


def _parse_notification(document: Any, source: Literal["s3", "sns"]) -> list[ObjectCreated]:
    if not isinstance(document, dict):
        raise MalformedMessage("not a JSON object")
    if document.get("Event") == "s3:TestEvent":
        return []
    try:
        if isinstance(document.get("Records"), list):
            return [obj for record in document["Records"] if (obj := _from_record(record, source))]
        if document.get("source") == "aws.s3" and isinstance(document.get("detail"), dict):
            return _from_eventbridge(document)
    except (KeyError, TypeError, AttributeError, ValueError) as error:  # pydantic's ValidationError is a ValueError
        raise MalformedMessage(f"unexpected S3 notification content ({type(error).__name__}: {error})") from None
    raise MalformedMessage("not an S3 notification (direct, SNS or EventBridge)")


def _from_record(record: dict[str, Any], source: Literal["s3", "sns"]) -> ObjectCreated | None:
    if record["eventSource"] != "aws:s3":
        raise ValueError(f"eventSource {record['eventSource']!r}")
    if not record["eventName"].startswith("ObjectCreated:"):
        return None
    s3 = record["s3"]
    obj = s3["object"]
    return ObjectCreated(
        bucket=s3["bucket"]["name"], key=unquote_plus(obj["key"]), size=obj["size"], etag=obj["eTag"],
        version_id=obj.get("versionId") or "", sequencer=obj.get("sequencer") or "",
        event_name=record["eventName"], event_time=record["eventTime"], source=source,
    )


def _from_eventbridge(document: dict[str, Any]) -> list[ObjectCreated]:
    """EventBridge keys are not URL-encoded; AWS spells the etag `etag`, moto `eTag`."""
    if document["detail-type"] != "Object Created":
        return []
    detail = document["detail"]
    obj = detail["object"]
    reason = str(detail.get("reason") or "")
    return [ObjectCreated(
        bucket=detail["bucket"]["name"], key=obj["key"], size=obj["size"], etag=obj.get("etag") or obj["eTag"],
        version_id=obj.get("version-id") or "", sequencer=obj.get("sequencer") or "",
        event_name=f"ObjectCreated:{EVENTBRIDGE_REASONS.get(reason, reason)}", event_time=document["time"],
        source="eventbridge",
    )]


def build_event(obj: ObjectCreated, overrides: Mapping[str, str]) -> Event:
    return Event(
        id=obj.event_id, occurred=obj.event_time, event=EVENT_NAME,
        resource={
            "prefect.resource.id": obj.uri, "prefect.resource.name": obj.key.rsplit("/", 1)[-1],
            "s3.bucket": obj.bucket, "s3.key": obj.key, "s3.size": str(obj.size), "s3.etag": obj.etag,
            "s3.version-id": obj.version_id, "s3.event-name": obj.event_name,
        },
        payload={"overrides": dict(overrides), "source": obj.source, "sequencer": obj.sequencer},
    )


@dataclass(frozen=True)
class Filters:
    """Which objects start a generation. Exclude the outputs prefix when outputs land in a watched bucket."""

    prefix: str = ""
    suffixes: tuple[str, ...] = VIDEO_SUFFIXES  # case-insensitive; ("",) accepts any key
    exclude_prefixes: tuple[str, ...] = ()
    bucket: str | None = None

    def matches(self, obj: ObjectCreated) -> bool:
        return (
            (self.bucket is None or obj.bucket == self.bucket)
            and obj.key.startswith(self.prefix)
            and not obj.key.startswith(self.exclude_prefixes)
            and obj.key.lower().endswith(tuple(suffix.lower() for suffix in self.suffixes))
        )


class SeenStore:
    """The identities already emitted, in SQLite so that de-duplication survives restarts."""

    def __init__(self, path: Path | str, max_age_days: float = 7.0) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.max_age_seconds = max_age_days * 86400
        self._db = sqlite3.connect(path, isolation_level=None)  # autocommit: a recorded identity is durable
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen (bucket TEXT NOT NULL, key TEXT NOT NULL, etag TEXT NOT NULL, "
            "event_id TEXT NOT NULL, seen_at REAL NOT NULL, PRIMARY KEY (bucket, key, etag))"
        )

    def has(self, identity: Identity) -> bool:
        query = "SELECT 1 FROM seen WHERE bucket = ? AND key = ? AND etag = ?"
        return self._db.execute(query, identity).fetchone() is not None

    def add(self, identity: Identity, event_id: UUID | str) -> None:
        self._db.execute("INSERT OR REPLACE INTO seen VALUES (?, ?, ?, ?, ?)", (*identity, str(event_id), time.time()))

    def prune(self, now: float | None = None) -> int:
        """Forget identities older than max_age_days (the queue's redeliveries are long over by then)."""
        cutoff = (time.time() if now is None else now) - self.max_age_seconds
        return self._db.execute("DELETE FROM seen WHERE seen_at < ?", (cutoff,)).rowcount

    def close(self) -> None:
        self._db.close()


class Emitter(Protocol):
    """Where events go; raises EmitError when they were not accepted."""

    async def emit(self, events: Sequence[Event]) -> None: ...


class PrefectEventEmitter:
    """POST /api/events on the configured Prefect API (or `api_url`); only a 2xx answer counts as emitted."""

    def __init__(self, api_url: str | None = None) -> None:
        self.api_url = api_url

    def _client(self) -> Any:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        if self.api_url is None:
            return get_client()
        with temporary_settings({PREFECT_API_URL: self.api_url}):
            return get_client()

    async def emit(self, events: Sequence[Event]) -> None:
        try:
            async with self._client() as client:
                response = await client.request("POST", "/events", json=[e.model_dump(mode="json") for e in events])
                response.raise_for_status()
        except (httpx.HTTPError, OSError) as error:
            raise EmitError(f"POST /api/events failed: {error}") from error


class S3EventBridge:
    """Long-polls one SQS queue and turns each new matching object into one Prefect event."""

    def __init__(
        self, queue_url: str, sqs: Any, s3: Any, filters: Filters, store: SeenStore, wait_seconds: int = 1, *,
        visibility_timeout: int = 30, max_messages: int = 10, emitter: Emitter | None = None,
    ) -> None:
        self.queue_url, self.sqs, self.s3, self.filters, self.store = queue_url, sqs, s3, filters, store
        self.wait_seconds, self.visibility_timeout, self.max_messages = wait_seconds, visibility_timeout, max_messages
        self.emitter: Emitter = emitter or PrefectEventEmitter()
        self.totals: Counter[str] = Counter(dict.fromkeys(COUNTS, 0))
        self._reported: set[str] = set()  # malformed message ids already logged

    async def run(self, stop: asyncio.Event) -> dict[str, int]:
        """Poll until `stop` is set, finishing the batch in hand; back off while anything fails."""
        failures, next_prune = 0, 0.0
        while not stop.is_set():
            if failures:
                try:
                    await asyncio.wait_for(stop.wait(), min(MAX_BACKOFF_SECONDS, 2.0 ** (failures - 1)))
                    break
                except TimeoutError:
                    pass
                if not await self._api_accepts_events():
                    failures += 1
                    continue
            if time.monotonic() >= next_prune:
                if pruned := self.store.prune():
                    logger.info("forgot %d identities older than the de-duplication window", pruned)
                next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
            try:
                failed = (await self.poll_once())["failed"]
            except (BotoCoreError, ClientError) as error:
                logger.warning("receiving from %s failed: %s", self.queue_url, error)
                failed = 1
            failures = failures + 1 if failed else 0
        return dict(self.totals)

    async def _api_accepts_events(self) -> bool:
        """Probe with an empty batch before receiving again: while the Prefect API is down, receiving
        would use up good messages' receive counts and push them to the dead-letter queue."""
        try:
            await self.emitter.emit([])
        except EmitError as error:
            logger.warning("waiting for the Prefect API: %s", error)
            return False
        return True

    async def poll_once(self) -> dict[str, int]:
        """One receive and the handling of every message in it; returns this poll's counts."""
        response = await asyncio.to_thread(
            self.sqs.receive_message, QueueUrl=self.queue_url, MaxNumberOfMessages=self.max_messages,
            WaitTimeSeconds=self.wait_seconds, VisibilityTimeout=self.visibility_timeout,
        )
        counts: Counter[str] = Counter(dict.fromkeys(COUNTS, 0))
        for message in response.get("Messages", []):
            counts["received"] += 1
            try:
                done = await self._handle(message, counts)
            except Exception:  # S3 unreachable, a bug...: the message stays queued and comes back
                logger.exception("message %s failed; it stays in the queue", message.get("MessageId"))
                counts["failed"] += 1
                continue
            if done:
                try:
                    await asyncio.to_thread(
                        self.sqs.delete_message, QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
                    )
                except (BotoCoreError, ClientError) as error:  # it comes back and is then a duplicate
                    logger.warning("could not delete message %s: %s", message.get("MessageId"), error)
        self.totals.update(counts)
        return dict(counts)

    async def _handle(self, message: dict[str, Any], counts: Counter[str]) -> bool:
        """Emit what the message reports; True when it can be deleted."""
        try:
            records = parse_message(message.get("Body", ""))
        except MalformedMessage as error:
            counts["malformed"] += 1
            self._report_malformed(message, error)
            return False
        if not records:
            counts["skipped"] += 1
            return True
        pending: dict[Identity, ObjectCreated] = {}
        for obj in records:
            if not self.filters.matches(obj):
                counts["skipped"] += 1
            elif obj.identity in pending or self.store.has(obj.identity):
                counts["duplicates"] += 1
                logger.debug("already emitted %s (etag %s)", obj.uri, obj.etag)
            else:
                pending[obj.identity] = obj
        emitting: list[tuple[ObjectCreated, Event]] = []
        for obj in pending.values():
            metadata = await self._current_metadata(obj)
            if metadata is None:
                counts["skipped"] += 1
            else:
                emitting.append((obj, build_event(obj, overrides_from_metadata(metadata))))
        if not emitting:
            return True
        try:
            await self.emitter.emit([event for _, event in emitting])
        except EmitError as error:
            counts["failed"] += len(emitting)
            logger.warning("message %s stays in the queue: %s", message.get("MessageId"), error)
            return False
        for obj, event in emitting:
            self.store.add(obj.identity, event.id)
            logger.info("emitted %s etag %s event %s", obj.uri, obj.etag, event.id)
        counts["emitted"] += len(emitting)
        return True

    async def _current_metadata(self, obj: ObjectCreated) -> dict[str, str] | None:
        """The object's user metadata, or None when it is gone or was replaced by newer bytes since.

        If-Match on the notified etag: a run must restyle the bytes this event names, and the
        newer upload brings its own notification.
        """
        try:
            head = await asyncio.to_thread(self.s3.head_object, Bucket=obj.bucket, Key=obj.key, IfMatch=f'"{obj.etag}"')
        except ClientError as error:
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status not in (404, 412):
                raise
            logger.info("skipped %s (etag %s): %s", obj.uri, obj.etag,
                        "the object is gone" if status == 404 else "replaced by a newer upload")
            return None
        return head.get("Metadata", {})

    def _report_malformed(self, message: dict[str, Any], error: MalformedMessage) -> None:
        """Log once per message id; the queue's redrive policy moves the message to its dead-letter queue."""
        message_id = str(message.get("MessageId"))
        if message_id in self._reported:
            return
        if len(self._reported) > 10_000:
            self._reported.clear()
        self._reported.add(message_id)
        body = str(message.get("Body", ""))
        preview = body[:PREVIEW_CHARS] + (f"... ({len(body)} chars)" if len(body) > PREVIEW_CHARS else "")
        logger.warning("malformed message %s left for the dead-letter queue: %s; body starts %r",
                       message_id, error, preview)


def default_state_file() -> Path:
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()) / "aimlapi" / "s3-bridge.sqlite"


def _max_messages(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 10:
        raise argparse.ArgumentTypeError("must be between 1 and 10 (an SQS limit)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aimlapi-video s3-events",
        description="Turn S3 'object created' notifications on an SQS queue into Prefect events "
                    f"({EVENT_NAME}) that deployment triggers can start video_to_video runs from.",
    )
    parser.add_argument("--queue-url", required=True, help="the SQS queue S3 (or SNS, EventBridge) notifies")
    parser.add_argument("--bucket", default=None, help="only objects in this bucket")
    parser.add_argument("--prefix", default="", help="only keys starting with this")
    parser.add_argument("--suffix", action="append", dest="suffixes", default=None,
                        help=f"key suffix, case-insensitive, repeatable (default: {' '.join(VIDEO_SUFFIXES)})")
    parser.add_argument("--exclude-prefix", action="append", dest="exclude_prefixes", default=[],
                        help="keys under this never start a run (e.g. where outputs are written); repeatable")
    parser.add_argument("--wait-seconds", type=int, default=1, choices=range(21), metavar="0-20",
                        help="SQS long-poll wait; a message ends the wait early")
    parser.add_argument("--visibility-timeout", type=int, default=30,
                        help="seconds a received message stays hidden before it is redelivered")
    parser.add_argument("--max-messages", type=_max_messages, default=10, help="messages per receive, 1-10")
    parser.add_argument("--aws-credentials", default=None,
                        help="prefect-aws AwsCredentials block name (default: boto3's credential chain)")
    parser.add_argument("--state-file", type=Path, default=None,
                        help="SQLite file of emitted objects (default: $PREFECT_HOME/aimlapi/s3-bridge.sqlite)")
    parser.add_argument("--dedupe-days", type=float, default=7.0, help="how long an emitted object is remembered")
    return parser


def _configure_logging() -> None:
    """INFO lines through Prefect's console logging (or straight to stderr if a custom config has none)."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()
    logger.setLevel(logging.INFO)
    if not logger.hasHandlers():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


async def _aws_clients(block_name: str | None) -> tuple[Any, Any]:
    from prefect_aws import AwsCredentials

    credentials = await AwsCredentials.aload(block_name) if block_name else AwsCredentials()
    return credentials.get_client("sqs"), credentials.get_s3_client()


async def _serve(args: argparse.Namespace) -> int:
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print("error: set PREFECT_API_URL to your Prefect server's API; events sent to a temporary server "
              "would be lost.", file=sys.stderr)
        return 2
    try:
        sqs, s3 = await _aws_clients(args.aws_credentials)
        attributes = (await asyncio.to_thread(
            sqs.get_queue_attributes, QueueUrl=args.queue_url, AttributeNames=["RedrivePolicy"]
        )).get("Attributes", {})
    except (BotoCoreError, ClientError, ValueError) as error:
        print(f"error: cannot use the queue {args.queue_url}: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    if "RedrivePolicy" not in attributes:
        logger.warning("the queue has no dead-letter queue (RedrivePolicy): a malformed message will come back forever")
    filters = Filters(args.prefix, tuple(args.suffixes or VIDEO_SUFFIXES), tuple(args.exclude_prefixes), args.bucket)
    if not filters.prefix and not filters.exclude_prefixes:
        logger.warning("watching whole buckets without --exclude-prefix: outputs written there would start new runs")
    store = SeenStore(args.state_file or default_state_file(), args.dedupe_days)
    bridge = S3EventBridge(
        args.queue_url, sqs, s3, filters, store, args.wait_seconds,
        visibility_timeout=args.visibility_timeout, max_messages=args.max_messages,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    logger.info("listening on %s for %s", args.queue_url, filters)
    try:
        totals = await bridge.run(stop)
    finally:
        store.close()
    print("s3-events stopped: " + " ".join(f"{name}={totals[name]}" for name in COUNTS))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`aimlapi-video s3-events ...`: runs until SIGINT/SIGTERM, then exits 0 with a one-line summary."""
    args = build_parser().parse_args(argv)
    _configure_logging()
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())

"""The bridge's receive loop: one SQS queue long-polled, each new matching object one Prefect event.

`S3EventBridge` receives, reads each message (`s3_messages`), drops what `Filters` excludes and what
`SeenStore` already emitted, checks the object is still the notified bytes (HEAD with If-Match),
emits through an `Emitter` and only then deletes the message. The command that builds it from
arguments and AWS credentials is `bridge`.

Delivery is at-least-once end to end: an SQS message is deleted only after its events were
accepted by the Prefect API, and a repeat (redelivery, the two notifications of a multipart
upload, the same bytes uploaded again) is recognised by (bucket, key, etag) in a small SQLite
file. Event ids are derived from that identity, so a re-emit after a crash carries the same id
(the server stores an event id once and its triggers ignore ids they have seen).

A message is written by others, and what its content alone causes fails the same way on every
receive: a message we cannot read, one boto3 refuses to build a request from, or an object whose
metadata cannot be decoded is poison. It is logged once (one line, no traceback) and left for the
queue's redrive policy, which moves it to the dead-letter queue. An object S3 answers 403 for is
skipped like a missing one: to credentials with s3:GetObject but no s3:ListBucket (all the bridge
needs), S3 answers 403 for a deleted key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from prefect.events import Event

from prefect_aimlapi_video.deployments.event_emitter import EmitError, Emitter, PrefectEventEmitter
from prefect_aimlapi_video.deployments.s3_messages import (
    Filters,
    Identity,
    MalformedMessage,
    ObjectCreated,
    build_event,
    decoded_overrides,
    one_line,
    parse_message,
    printable,
    refused_request,
)
from prefect_aimlapi_video.deployments.seen_store import SeenStore

__all__ = ["COUNTS", "S3EventBridge"]

COUNTS = ("received", "emitted", "duplicates", "skipped", "malformed", "failed")
MAX_BACKOFF_SECONDS = 30.0
PRUNE_EVERY_SECONDS = 3600.0
PREVIEW_CHARS = 120

logger = logging.getLogger("aimlapi.bridge")  # one logger for the whole bridge: its command logs here too


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
            except (BotoCoreError, ClientError) as error:  # S3 unreachable, throttled...: it comes back
                logger.warning("message %s failed; it stays in the queue: %s", message.get("MessageId"),
                               one_line(error))
                counts["failed"] += 1
                continue
            except Exception:  # a bug: worth its traceback; the message stays queued and comes back
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
            return self._poison(message, error, counts)
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
            try:
                metadata = await self._current_metadata(obj)
                overrides = None if metadata is None else decoded_overrides(obj, metadata)
            except MalformedMessage as error:  # nothing of this message is emitted: it goes to the DLQ whole
                return self._poison(message, error, counts)
            if overrides is None:
                counts["skipped"] += 1
            else:
                emitting.append((obj, build_event(obj, overrides)))
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
            logger.info("emitted %s etag %s event %s", printable(obj.uri), obj.etag, event.id)
        counts["emitted"] += len(emitting)
        return True

    async def _current_metadata(self, obj: ObjectCreated) -> dict[str, str] | None:
        """The object's user metadata, or None when it is gone or was replaced by newer bytes since.

        If-Match on the notified etag: a run must restyle the bytes this event names, and the
        newer upload brings its own notification. 403 counts as gone: S3 answers 403 instead of 404
        for a missing key to a caller without s3:ListBucket (the bridge's minimal policy), and a
        403 on an object that is there would be the same on every receive. Raises MalformedMessage
        when boto3 refuses to build the request from the message's bucket, key or etag.
        """
        try:
            head = await asyncio.to_thread(self.s3.head_object, Bucket=obj.bucket, Key=obj.key, IfMatch=f'"{obj.etag}"')
        except ClientError as error:
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 403:
                logger.warning("skipped %s (etag %s): access denied (403): S3 answers 403 for a deleted object "
                               "when the bridge may not list the bucket; if it exists, the bridge needs "
                               "s3:GetObject on it", printable(obj.uri), obj.etag)
                return None
            if status not in (404, 412):
                raise
            logger.info("skipped %s (etag %s): %s", printable(obj.uri), obj.etag,
                        "the object is gone" if status == 404 else "replaced by a newer upload")
            return None
        except Exception as error:
            if refused_request(error):
                raise MalformedMessage(f"boto3 refused a request for {printable(obj.uri)}: "
                                       f"{type(error).__name__}: {error}") from None
            raise
        return head.get("Metadata", {})

    def _poison(self, message: dict[str, Any], error: MalformedMessage, counts: Counter[str]) -> bool:
        """Count and report a message that fails by its content alone; False: it is not deleted."""
        counts["malformed"] += 1
        self._report_malformed(message, error)
        return False

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
                       message_id, one_line(error), preview)

"""S3 "object created" notifications, in every shape they reach an SQS queue, as Prefect events.

Direct from S3, through SNS (plain or raw delivery) and through EventBridge: `parse_message` reads
them all into `ObjectCreated`; `Filters` decides which objects start a generation; `build_event`
makes the `aimlapi.s3.object.created` event a deployment trigger matches. No I/O here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import unquote_plus
from uuid import NAMESPACE_URL, UUID, uuid5

from prefect.events import Event
from pydantic import BaseModel, ConfigDict, Field, field_validator

from prefect_aimlapi_video.flows.s3_requests import object_idempotency_key
from prefect_aimlapi_video.flows.sources import VIDEO_SUFFIXES

EVENT_NAME = "aimlapi.s3.object.created"
EVENTBRIDGE_REASONS = {"PutObject": "Put", "POST Object": "Post", "CopyObject": "Copy",
                       "CompleteMultipartUpload": "CompleteMultipartUpload"}
Identity = tuple[str, str, str]  # (bucket, key, etag): the same bytes at the same key are one object


class MalformedMessage(Exception):
    """A queue message that is not an S3 notification in any shape we know."""


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

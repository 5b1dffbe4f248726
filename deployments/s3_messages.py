"""S3 "object created" notifications, in every shape they reach an SQS queue, as Prefect events.

Direct from S3, through SNS (plain or raw delivery) and through EventBridge: `parse_message` reads
them all into `ObjectCreated`; `Filters` decides which objects start a generation; `build_event`
makes the `aimlapi.s3.object.created` event a deployment trigger matches. No I/O here.

All of a message is written by others (a key, by anyone who may upload), so what boto3 would refuse
to build a request from is refused here as malformed, before any I/O: a bucket name that is not
one (an access point ARN included: a notification never names one), a key that is not UTF-8 or is
longer than S3 allows, an etag that cannot be an HTTP header value. `refused_request` tells what
boto3 raised for a message's content from what may pass, should anything slip through.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import unquote_plus
from uuid import NAMESPACE_URL, UUID, uuid5

from botocore.exceptions import (
    HTTPClientError,
    ParamValidationError,
    UnsupportedS3AccesspointConfigurationError,
    UnsupportedS3ArnError,
)
from botocore.exceptions import ValidationError as BotoValidationError
from prefect.events import Event
from pydantic import BaseModel, ConfigDict, Field, field_validator

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.storage.s3_requests import object_idempotency_key, overrides_from_metadata
from prefect_aimlapi_video.storage.sources import VIDEO_SUFFIXES

EVENT_NAME = "aimlapi.s3.object.created"
EVENTBRIDGE_REASONS = {"PutObject": "Put", "POST Object": "Post", "CopyObject": "Copy",
                       "CompleteMultipartUpload": "CompleteMultipartUpload"}
Identity = tuple[str, str, str]  # (bucket, key, etag): the same bytes at the same key are one object
BUCKET_NAME = re.compile(r"[A-Za-z0-9._-]{1,255}")  # what botocore accepts as a name (legacy ones included)
ETAG = re.compile(r"[!#-~]+")  # visible ASCII without '"': it is sent in an If-Match header
MAX_KEY_BYTES = 1024  # S3's limit, in UTF-8
ERROR_CHARS = 300  # of an error's text in a log line
# What boto3 raises while building a request from a message's content (a bucket name or key it
# refuses, text it cannot encode): the same message fails the same way on every receive.
REFUSED_REQUEST = (ParamValidationError, BotoValidationError, UnsupportedS3ArnError,
                   UnsupportedS3AccesspointConfigurationError, UnicodeError)


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

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not BUCKET_NAME.fullmatch(value):
            raise ValueError("not an S3 bucket name")
        return value

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError("the key is not valid UTF-8") from None
        if size > MAX_KEY_BYTES:
            raise ValueError(f"the key is {size} bytes, more than S3's {MAX_KEY_BYTES}")
        return value

    @field_validator("etag")
    @classmethod
    def _unquoted(cls, value: str) -> str:
        value = value.strip('"')
        if not ETAG.fullmatch(value):
            raise ValueError("not an etag (visible ASCII)")
        return value

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


def decoded_overrides(obj: ObjectCreated, metadata: Mapping[str, str]) -> dict[str, str]:
    """The flow parameters an object's metadata sets; MalformedMessage when a value cannot be decoded
    (whoever uploads writes it: an RFC 2047 word in an unknown charset, bytes that are not UTF-8)."""
    try:
        return overrides_from_metadata(metadata)
    except InvalidInputError as error:
        raise MalformedMessage(f"the metadata of {printable(obj.uri)}: {error}") from None


def refused_request(error: BaseException) -> bool:
    """True for an error boto3 raised while building a request from a message's content.

    botocore wraps what http.client refuses (a header value or URL with a control character) in
    HTTPClientError; its other causes (a dropped connection...) are transient.
    """
    if isinstance(error, REFUSED_REQUEST):
        return True
    return isinstance(error, HTTPClientError) and isinstance(error.kwargs.get("error"), ValueError)


def printable(text: str) -> str:
    """Text from a message made safe for one log line (a key may hold a newline or a bidi control)."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def one_line(error: BaseException | str) -> str:
    """An error's text for a log line: whitespace collapsed, printable, at most ERROR_CHARS."""
    text = printable(" ".join(str(error).split()))
    return text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS] + "..."

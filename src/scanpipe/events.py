"""S3 event notifications: the one module that builds and parses them, for both forms.

The embedded form publishes, for every object written to the input store, a
message in the JSON shape Amazon S3 sends to SQS; the cloud form receives the
real ones. Parsing accepts what reaches a queue in practice:

- direct S3 notifications (``Records[]``, eventVersion 2.x; unknown fields are
  ignored; keys are form-URL-encoded, so ``+`` is a space);
- ``s3:TestEvent``, sent once when a notification is configured (skipped);
- the SNS envelope (``Type: Notification``, the S3 JSON in ``Message``);
- EventBridge ``Object Created`` events (keys are not URL-encoded there).

Each message yields a list of :class:`ObjectEvent` or :class:`Skipped`; a body
that is none of these raises :class:`~scanpipe.errors.PermanentError`.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from scanpipe.errors import PermanentError

#: Region written into events the embedded form publishes.
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class ObjectEvent:
    """An object was created; the worker processes it."""

    bucket: str
    key: str  # decoded
    size: int | None
    etag: str | None
    version_id: str | None
    sequencer: str | None
    event_time: float | None  # seconds since the epoch
    event_name: str

    def to_json(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "key": self.key,
            "size": self.size,
            "etag": self.etag,
            "version_id": self.version_id,
            "sequencer": self.sequencer,
        }


@dataclass(frozen=True)
class Skipped:
    """A record that asks for no work, and why."""

    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"skipped": self.reason}


Parsed = ObjectEvent | Skipped


# -- building ------------------------------------------------------------------

_sequence = itertools.count()
_sequence_lock = threading.Lock()


def next_sequencer() -> str:
    """An S3-style sequencer: uppercase hex that sorts in order of writes.

    Nanoseconds since the epoch, plus a per-process counter so two writes in
    the same nanosecond still differ; comparable as S3's are (pad, then compare).
    """
    with _sequence_lock:
        count = next(_sequence)
    return f"{time.time_ns():016X}{os.getpid() % 0x10000:04X}{count % 0x10000:04X}"


def encode_key(key: str) -> str:
    """Encode a key the way S3 writes it into notifications (space -> ``+``)."""
    return quote_plus(key, safe="/")


def object_created_event(
    *,
    bucket: str,
    key: str,
    size: int,
    etag: str,
    sequencer: str | None = None,
    event_time: float | None = None,
    region: str = DEFAULT_REGION,
    event_name: str = "ObjectCreated:Put",
) -> dict[str, Any]:
    """Build an S3 event notification for one created object, as S3 sends it."""
    when = datetime.fromtimestamp(event_time or time.time(), tz=UTC)
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": region,
                "eventTime": when.isoformat(timespec="milliseconds").replace(
                    "+00:00", "Z"
                ),
                "eventName": event_name,
                "userIdentity": {"principalId": "scanpipe"},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "scanpipe-inbox",
                    "bucket": {
                        "name": bucket,
                        "ownerIdentity": {"principalId": "scanpipe"},
                        "arn": f"arn:aws:s3:::{bucket}",
                    },
                    "object": {
                        "key": encode_key(key),
                        "size": size,
                        "eTag": etag,
                        "sequencer": sequencer or next_sequencer(),
                    },
                },
            }
        ]
    }


# -- parsing -------------------------------------------------------------------


def parse_message(body: str) -> list[Parsed]:
    """Parse one queue message body into the objects it announces.

    Raises:
        PermanentError: the body is not JSON, or is JSON of no known event
            shape; reason ``malformed_event``.
    """
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _malformed(f"the body is not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise _malformed(f"the body is a JSON {type(doc).__name__}")
    return _parse_document(doc, depth=0)


def _parse_document(doc: dict[str, Any], depth: int) -> list[Parsed]:
    if doc.get("Type") == "Notification" and "Message" in doc:
        return _parse_sns(doc, depth)
    if doc.get("Event") == "s3:TestEvent":
        return [Skipped("s3:TestEvent (sent when a notification is configured)")]
    if "Records" in doc:
        records = doc["Records"]
        if not isinstance(records, list):
            raise _malformed("'Records' is not a list")
        return [_parse_record(record) for record in records]
    if doc.get("source") == "aws.s3" and "detail-type" in doc:
        return [_parse_eventbridge(doc)]
    raise _malformed(
        "it has none of 'Records', 'Event', an SNS 'Message' or an "
        "EventBridge 'detail-type'"
    )


def _parse_sns(doc: dict[str, Any], depth: int) -> list[Parsed]:
    if depth > 0:
        raise _malformed("an SNS envelope is nested inside another")
    inner = doc["Message"]
    if not isinstance(inner, str):
        raise _malformed("the SNS 'Message' is not a string")
    try:
        inner_doc = json.loads(inner)
    except json.JSONDecodeError as exc:
        raise _malformed("the SNS 'Message' is not JSON") from exc
    if not isinstance(inner_doc, dict):
        raise _malformed("the SNS 'Message' is not a JSON object")
    return _parse_document(inner_doc, depth + 1)


def _parse_record(record: Any) -> Parsed:
    if not isinstance(record, dict):
        raise _malformed("a record in 'Records' is not an object")
    version = str(record.get("eventVersion", ""))
    if version.split(".")[0] != "2":
        raise _malformed(f"eventVersion is {version!r}, expected major version 2")
    name = str(record.get("eventName", ""))
    if not name.startswith("ObjectCreated:") and not name.startswith(
        "s3:ObjectCreated:"
    ):
        return Skipped(f"event {name or '(none)'} is not ObjectCreated")
    try:
        s3 = record["s3"]
        bucket = s3["bucket"]["name"]
        obj = s3["object"]
        key = unquote_plus(obj["key"])
    except (KeyError, TypeError) as exc:
        raise _malformed(f"a record lacks {exc}") from exc
    return ObjectEvent(
        bucket=str(bucket),
        key=key,
        size=_int_or_none(obj.get("size")),
        etag=_etag_or_none(obj.get("eTag")),
        version_id=obj.get("versionId"),
        sequencer=obj.get("sequencer"),
        event_time=_parse_time(record.get("eventTime")),
        event_name=name,
    )


def _parse_eventbridge(doc: dict[str, Any]) -> Parsed:
    detail_type = str(doc.get("detail-type"))
    if detail_type != "Object Created":
        return Skipped(f"EventBridge event {detail_type!r} is not Object Created")
    try:
        detail = doc["detail"]
        bucket = detail["bucket"]["name"]
        obj = detail["object"]
        key = obj["key"]
    except (KeyError, TypeError) as exc:
        raise _malformed(f"the EventBridge detail lacks {exc}") from exc
    return ObjectEvent(
        bucket=str(bucket),
        key=str(key),
        size=_int_or_none(obj.get("size")),
        etag=_etag_or_none(obj.get("etag")),
        version_id=obj.get("version-id"),
        sequencer=obj.get("sequencer"),
        event_time=_parse_time(doc.get("time")),
        event_name="ObjectCreated:" + str(detail.get("reason", "Put")),
    )


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _etag_or_none(value: Any) -> str | None:
    return str(value).strip('"') if value else None


def _malformed(found: str) -> PermanentError:
    return PermanentError(
        "Expected an S3 event notification (direct, through SNS or EventBridge), "
        f"but {found}.",
        reason="malformed_event",
    )


class QueueNotifier:
    """A store put-listener that sends an S3 event for every object written.

    This is what an S3 bucket notification to SQS does in the cloud form; the
    embedded form attaches it to the input store, so the worker cannot tell
    the two apart.
    """

    def __init__(self, queue: Any, region: str = DEFAULT_REGION) -> None:
        self._queue = queue
        self._region = region

    def __call__(self, store: Any, info: Any) -> None:
        event = object_created_event(
            bucket=store.bucket,
            key=store.prefix + info.key,
            size=info.size,
            etag=info.etag,
            region=self._region,
        )
        self._queue.send(json.dumps(event))

"""S3 event notifications: what the embedded form publishes and what any form parses."""

from __future__ import annotations

import json

import pytest

from scanpipe.errors import PermanentError
from scanpipe.events import (
    ObjectEvent,
    Skipped,
    object_created_event,
    parse_message,
)


def make_record(key: str = "scans/a.nii.gz", name: str = "ObjectCreated:Put") -> dict:
    return object_created_event(
        bucket="in", key=key, size=10, etag="abc", event_name=name
    )["Records"][0]


def test_published_events_have_the_shape_s3_sends() -> None:
    doc = object_created_event(
        bucket="in", key="a b/c+d.nii.gz", size=42, etag="0cc1", sequencer="00AB"
    )

    (record,) = doc["Records"]
    assert record["eventSource"] == "aws:s3"
    assert record["eventName"] == "ObjectCreated:Put"
    assert record["eventVersion"].startswith("2.")
    assert record["eventTime"].endswith("Z")
    assert record["s3"]["bucket"]["name"] == "in"
    assert record["s3"]["object"] == {
        "key": "a+b/c%2Bd.nii.gz",
        "size": 42,
        "eTag": "0cc1",
        "sequencer": "00AB",
    }


@pytest.mark.parametrize(
    "key",
    [
        "plain.nii.gz",
        "a b.nii.gz",
        "a+b.nii.gz",
        "100%.nii",
        "dir/sub/ü頭.nii.gz",
        "~!@$&*()=:;,?",
    ],
    ids=["plain", "space", "plus", "percent", "unicode-nested", "punctuation"],
)
def test_keys_round_trip_through_url_encoding(key: str) -> None:
    body = json.dumps(object_created_event(bucket="b", key=key, size=1, etag="e"))

    (event,) = parse_message(body)

    assert isinstance(event, ObjectEvent)
    assert event.key == key


def test_sequencers_increase_with_each_write() -> None:
    sequencers = [
        object_created_event(bucket="b", key="k", size=1, etag="e")["Records"][0]["s3"][
            "object"
        ]["sequencer"]
        for _ in range(50)
    ]

    assert sequencers == sorted(sequencers)
    assert len(set(sequencers)) == 50


def test_a_real_s3_notification_is_parsed_and_unknown_fields_ignored() -> None:
    record = make_record("my+photo%281%29.nii.gz")
    record["s3"]["object"]["key"] = "my+photo%281%29.nii.gz"
    record["s3"]["object"]["versionId"] = "v1"
    record["glacierEventData"] = {"future": "field"}
    record["eventVersion"] = "2.3"

    (event,) = parse_message(json.dumps({"Records": [record]}))

    assert event == ObjectEvent(
        bucket="in",
        key="my photo(1).nii.gz",
        size=10,
        etag="abc",
        version_id="v1",
        sequencer=record["s3"]["object"]["sequencer"],
        event_time=event.event_time,
        event_name="ObjectCreated:Put",
    )
    assert event.event_time is not None


def test_several_records_in_one_message_yield_several_events() -> None:
    body = json.dumps({"Records": [make_record("a"), make_record("b")]})

    assert [e.key for e in parse_message(body) if isinstance(e, ObjectEvent)] == [
        "a",
        "b",
    ]


def test_the_s3_test_event_is_skipped() -> None:
    body = json.dumps(
        {
            "Service": "Amazon S3",
            "Event": "s3:TestEvent",
            "Time": "2026-01-01T00:00:00.000Z",
            "Bucket": "in",
        }
    )

    (item,) = parse_message(body)

    assert isinstance(item, Skipped)
    assert "TestEvent" in item.reason


@pytest.mark.parametrize(
    "name",
    ["ObjectRemoved:Delete", "ObjectRestore:Completed", "LifecycleExpiration:Delete"],
)
def test_events_other_than_object_created_are_skipped_with_a_reason(name: str) -> None:
    (item,) = parse_message(json.dumps({"Records": [make_record(name=name)]}))

    assert isinstance(item, Skipped)
    assert name in item.reason


def test_the_sns_envelope_is_unwrapped() -> None:
    inner = json.dumps({"Records": [make_record("via sns.nii.gz")]})
    body = json.dumps({"Type": "Notification", "MessageId": "m", "Message": inner})

    (event,) = parse_message(body)

    assert isinstance(event, ObjectEvent)
    assert event.key == "via sns.nii.gz"


def test_eventbridge_object_created_is_parsed_without_url_decoding() -> None:
    body = json.dumps(
        {
            "version": "0",
            "detail-type": "Object Created",
            "source": "aws.s3",
            "time": "2026-01-01T00:00:00Z",
            "detail": {
                "bucket": {"name": "in"},
                "object": {
                    "key": "raw/a+b.nii.gz",
                    "size": 5,
                    "etag": "e1",
                    "version-id": "v",
                    "sequencer": "01",
                },
                "reason": "PutObject",
            },
        }
    )

    (event,) = parse_message(body)

    assert isinstance(event, ObjectEvent)
    assert (event.bucket, event.key, event.size, event.version_id) == (
        "in",
        "raw/a+b.nii.gz",
        5,
        "v",
    )


MALFORMED = {
    "not-json": "this is not json",
    "json-list": "[1, 2]",
    "unknown-shape": '{"hello": "world"}',
    "records-not-list": '{"Records": {}}',
    "record-without-s3": json.dumps(
        {"Records": [{"eventVersion": "2.1", "eventName": "ObjectCreated:Put"}]}
    ),
    "old-version": json.dumps(
        {"Records": [{"eventVersion": "1.0", "eventName": "ObjectCreated:Put"}]}
    ),
    "sns-not-json": '{"Type": "Notification", "Message": "nope"}',
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_messages_are_permanent_failures_that_say_what_was_expected(
    body: str,
) -> None:
    with pytest.raises(
        PermanentError, match="Expected an S3 event notification"
    ) as caught:
        parse_message(body)

    assert caught.value.reason == "malformed_event"

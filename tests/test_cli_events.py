"""`scanpipe events inspect`: what the worker makes of a message, as JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from scanpipe.events import object_created_event


def inspect(source: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scanpipe", "events", "inspect", source],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def s3_record(key: str, name: str = "ObjectCreated:Put") -> dict[str, object]:
    body = object_created_event(
        bucket="scans-in", key=key, size=123, etag="abc", event_name=name
    )
    record: dict[str, object] = body["Records"][0]
    return record


def test_each_record_of_a_message_is_one_line_with_the_decoded_key(
    tmp_path: Path,
) -> None:
    message = {
        "Records": [s3_record("ct/jaw scan+1%.nii.gz"), s3_record("ct/ünï.nii.gz")]
    }
    path = tmp_path / "message.json"
    path.write_text(json.dumps(message, indent=2))

    result = inspect(str(path))

    assert result.returncode == 0, result.stderr
    found = lines(result)
    assert [line["key"] for line in found] == [
        "ct/jaw scan+1%.nii.gz",
        "ct/ünï.nii.gz",
    ]
    assert found[0]["bucket"] == "scans-in"
    assert found[0]["size"] == 123
    assert found[0]["etag"] == "abc"
    assert set(found[0]) >= {"bucket", "key", "size", "etag", "version_id", "sequencer"}


def test_stdin_test_events_and_deletes_are_skipped_with_a_reason() -> None:
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}
    delete = {"Records": [s3_record("a.nii.gz", name="ObjectRemoved:Delete")]}
    sns = {"Type": "Notification", "Message": json.dumps(test_event)}
    stdin = "\n".join(json.dumps(doc) for doc in (test_event, delete, sns))

    result = inspect("-", stdin=stdin)

    assert result.returncode == 0, result.stderr
    found = lines(result)
    assert [line["message"] for line in found] == [1, 2, 3]
    assert all("skipped" in line for line in found)
    assert "TestEvent" in str(found[0]["skipped"])
    assert "ObjectRemoved" in str(found[1]["skipped"])


def test_a_receive_message_response_is_read_message_by_message(
    tmp_path: Path,
) -> None:
    bodies = [json.dumps({"Records": [s3_record(f"k{i}.nii.gz")]}) for i in range(2)]
    response = {
        "Messages": [{"MessageId": str(i), "Body": b} for i, b in enumerate(bodies)]
    }
    path = tmp_path / "received.json"
    path.write_text(json.dumps(response))

    result = inspect(str(path))

    assert result.returncode == 0, result.stderr
    assert [line["key"] for line in lines(result)] == ["k0.nii.gz", "k1.nii.gz"]


def test_a_malformed_message_is_reported_and_the_rest_still_printed() -> None:
    good = json.dumps({"Records": [s3_record("ok.nii.gz")]})
    stdin = "\n".join(["not json at all", good, '{"Records": "nope"}'])

    result = inspect("-", stdin=stdin)

    assert result.returncode == 1
    found = lines(result)
    assert found[0]["reason"] == "malformed_event"
    assert "not JSON" in str(found[0]["error"])
    assert found[1]["key"] == "ok.nii.gz"
    assert "'Records' is not a list" in str(found[2]["error"])
    assert "2 message(s)" in result.stderr


def test_empty_input_is_an_error_that_says_what_was_expected() -> None:
    result = inspect("-", stdin="  \n")

    assert result.returncode == 1
    assert "Expected at least one message" in result.stderr

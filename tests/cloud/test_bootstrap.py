"""`bootstrap` builds the cloud form's resources, converges when repeated, and
the notification it sets up delivers S3 events to the queue."""

from __future__ import annotations

import json
from typing import Any

import pytest

from scanpipe.cloud.bootstrap import NOTIFICATION_ID, bootstrap
from scanpipe.cloud.clients import make_client
from scanpipe.errors import ConfigError
from scanpipe.events import ObjectEvent, Skipped, parse_message
from tests.aws import make_name


def make_stack(**options: Any) -> dict[str, Any]:
    return bootstrap(
        make_name("input"), make_name("output"), make_name("scans"), **options
    )


def make_events(queue_url: str) -> list[ObjectEvent | Skipped]:
    """Everything the queue holds now, parsed, deleting as it goes."""
    sqs = make_client("sqs")
    events: list[ObjectEvent | Skipped] = []
    while True:
        response = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        messages = response.get("Messages", [])
        if not messages:
            return events
        for message in messages:
            events.extend(parse_message(message["Body"]))
            sqs.delete_message(
                QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"]
            )


def queue_attributes(url: str) -> dict[str, str]:
    response = make_client("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["All"]
    )
    return dict(response["Attributes"])


def test_bootstrap_creates_buckets_queues_policy_and_notification(
    aws_env: dict[str, str],
) -> None:
    stack = make_stack(
        prefix="ct/", suffix=".nii.gz", max_receive_count=5, visibility_timeout=90
    )

    s3 = make_client("s3")
    for bucket in (stack["input_bucket"], stack["output_bucket"]):
        s3.head_bucket(Bucket=bucket)
        [rule] = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert stack["input_url"] == f"s3://{stack['input_bucket']}"
    assert stack["region"] == "us-east-1"

    queue = queue_attributes(stack["queue_url"])
    assert queue["VisibilityTimeout"] == "90"
    assert json.loads(queue["RedrivePolicy"]) == {
        "deadLetterTargetArn": stack["dead_letter_queue_arn"],
        "maxReceiveCount": 5,
    }
    [statement] = json.loads(queue["Policy"])["Statement"]
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Resource"] == stack["queue_arn"]
    assert statement["Condition"]["ArnEquals"] == {
        "aws:SourceArn": f"arn:aws:s3:::{stack['input_bucket']}"
    }
    dlq = queue_attributes(stack["dead_letter_queue_url"])
    assert dlq["MessageRetentionPeriod"] == str(14 * 24 * 3600)
    assert "RedrivePolicy" not in dlq

    notification = s3.get_bucket_notification_configuration(
        Bucket=stack["input_bucket"]
    )
    [ours] = notification["QueueConfigurations"]
    assert ours["Id"] == NOTIFICATION_ID
    assert ours["QueueArn"] == stack["queue_arn"]
    assert ours["Events"] == ["s3:ObjectCreated:*"]
    rules = {
        r["Name"].lower(): r["Value"] for r in ours["Filter"]["Key"]["FilterRules"]
    }
    assert rules == {"prefix": "ct/", "suffix": ".nii.gz"}


def test_uploads_that_match_the_filter_reach_the_queue_as_s3_events(
    aws_env: dict[str, str],
) -> None:
    stack = make_stack(prefix="ct/", suffix=".nii.gz")
    s3 = make_client("s3")
    keys = ["ct/a b+c%d.nii.gz", "ct/deeper/ü.nii.gz", "mr/x.nii.gz", "ct/notes.txt"]
    for key in keys:
        s3.put_object(Bucket=stack["input_bucket"], Key=key, Body=b"scan")

    events = make_events(stack["queue_url"])

    created = sorted(e.key for e in events if isinstance(e, ObjectEvent))
    assert created == ["ct/a b+c%d.nii.gz", "ct/deeper/ü.nii.gz"]
    assert {e.bucket for e in events if isinstance(e, ObjectEvent)} == {
        stack["input_bucket"]
    }
    # S3 announces a new notification with a test event, which is skipped.
    assert all(isinstance(e, ObjectEvent | Skipped) for e in events)


def test_bootstrap_again_converges_and_keeps_other_notifications(
    aws_env: dict[str, str],
) -> None:
    names = (make_name("input"), make_name("output"), make_name("scans"))
    first = bootstrap(*names, max_receive_count=3, visibility_timeout=60)
    sqs = make_client("sqs")
    other_queue = sqs.create_queue(QueueName=make_name("other"))["QueueUrl"]
    other_arn = queue_attributes(other_queue)["QueueArn"]
    s3 = make_client("s3")
    config = s3.get_bucket_notification_configuration(Bucket=names[0])
    config.pop("ResponseMetadata")
    config["QueueConfigurations"].append(
        {
            "Id": "someone-else",
            "QueueArn": other_arn,
            "Events": ["s3:ObjectRemoved:*"],
        }
    )
    s3.put_bucket_notification_configuration(
        Bucket=names[0], NotificationConfiguration=config
    )

    second = bootstrap(*names, max_receive_count=7, visibility_timeout=120)

    assert second == first
    queue = queue_attributes(second["queue_url"])
    assert queue["VisibilityTimeout"] == "120"
    assert json.loads(queue["RedrivePolicy"])["maxReceiveCount"] == 7
    notification = s3.get_bucket_notification_configuration(Bucket=names[0])
    ids = sorted(c["Id"] for c in notification["QueueConfigurations"])
    assert ids == sorted([NOTIFICATION_ID, "someone-else"])


@pytest.mark.parametrize(
    ("arguments", "options", "mentioned"),
    [
        (("same-bucket", "same-bucket", "scans"), {}, "different input and output"),
        (("Bad_Bucket", "output-x", "scans"), {}, "bucket name"),
        (("input-x", "output-x", "bad name"), {}, "queue name"),
        (("input-x", "output-x", "scans"), {"max_receive_count": 0}, "1 to 1000"),
        (("input-x", "output-x", "scans"), {"visibility_timeout": -1}, "0 to 43200"),
    ],
    ids=["same-bucket", "bucket-name", "queue-name", "receive-count", "visibility"],
)
def test_bootstrap_rejects_invalid_settings_before_creating_anything(
    aws_env: dict[str, str],
    arguments: tuple[str, str, str],
    options: dict[str, int],
    mentioned: str,
) -> None:
    with pytest.raises(ConfigError, match=mentioned):
        bootstrap(*arguments, **options)

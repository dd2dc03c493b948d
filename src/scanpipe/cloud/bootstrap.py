"""Create the cloud form's buckets, queues and notification on any S3/SQS endpoint.

``bootstrap("scans-in", "scans-out", "scans")`` makes, or brings up to date:

- the input and output buckets, each with a lifecycle rule that aborts
  multipart uploads left incomplete for a day (their parts are invisible
  but billed);
- the dead-letter queue ``<queue>-dlq``, keeping messages 14 days;
- the queue, with its visibility timeout, a redrive policy to the
  dead-letter queue after ``max_receive_count`` receives, and a queue
  policy that lets S3 send messages only on behalf of the input bucket
  (``aws:SourceArn``) in this account (``aws:SourceAccount``);
- the input bucket's notification: ``s3:ObjectCreated:*`` to the queue,
  optionally filtered by key prefix and suffix. Other notifications of the
  bucket are kept; ours is replaced by its id.

Running it again converges on the same state, so it is safe to repeat. It is
meant for development, tests and demos against moto, LocalStack or MinIO
plus an SQS server. Production infrastructure comes from Terraform, which
must describe the same resources with the same settings; when one changes,
change the other.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from scanpipe.cloud import DEFAULT_MAX_RECEIVE_COUNT, DEFAULT_VISIBILITY_TIMEOUT
from scanpipe.cloud.clients import error_code, make_client, translate, translated
from scanpipe.errors import ConfigError
from scanpipe.queue.base import MAX_VISIBILITY_SECONDS
from scanpipe.storage.s3 import check_bucket_name

log = logging.getLogger(__name__)

#: Id of the bucket notification this module owns on the input bucket.
NOTIFICATION_ID = "scanpipe-object-created"
#: The longest SQS keeps a message: dead letters wait this long for a person.
DLQ_RETENTION_SECONDS = 14 * 24 * 3600
#: Suffix of the dead-letter queue's name, as in the embedded form.
DLQ_SUFFIX = "-dlq"

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_-]{1,76}")


@dataclass(frozen=True)
class QueuePair:
    """A queue and its dead-letter queue."""

    queue_url: str
    queue_arn: str
    dead_letter_queue_url: str
    dead_letter_queue_arn: str


def bootstrap(
    input_bucket: str,
    output_bucket: str,
    queue_name: str,
    *,
    prefix: str | None = None,
    suffix: str | None = None,
    max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT,
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT,
) -> dict[str, Any]:
    """Create (or update) everything the cloud form needs; see the module docstring.

    Args:
        input_bucket: where scans are uploaded; its notification feeds the queue.
        output_bucket: where workers write masks and provenance records.
        queue_name: the queue; its dead-letter queue is ``<name>-dlq``.
        prefix: notify only for keys that start with this.
        suffix: notify only for keys that end with this (e.g. ``.nii.gz``).
        max_receive_count: receives before SQS moves a message to the
            dead-letter queue (1 to 1000).
        visibility_timeout: seconds a received message stays hidden.

    Returns:
        The URLs and ARNs created, ready for ``scanpipe worker``:
        ``queue_url``, ``queue_arn``, ``dead_letter_queue_url``,
        ``dead_letter_queue_arn``, ``input_bucket``, ``output_bucket``,
        ``input_url``, ``output_url``, ``region``.

    Raises:
        ConfigError: a name or setting is invalid, or the endpoint refuses.
        TransientError: the endpoint is unreachable or busy.
    """
    check_bucket_name(input_bucket)
    check_bucket_name(output_bucket)
    if input_bucket == output_bucket:
        raise ConfigError(
            "Expected different input and output buckets, found both named "
            f"{input_bucket!r}: every mask written would be a new input."
        )
    if not 1 <= max_receive_count <= 1000:
        raise ConfigError(
            f"max_receive_count must be from 1 to 1000 (SQS's limits); found "
            f"{max_receive_count}."
        )

    s3 = make_client("s3")
    sqs = make_client("sqs")
    region = str(sqs.meta.region_name)
    for bucket in (input_bucket, output_bucket):
        create_bucket(s3, bucket, region)
    queues = create_queue(
        sqs,
        queue_name,
        visibility_timeout=visibility_timeout,
        max_receive_count=max_receive_count,
    )
    allow_bucket_to_send(sqs, queues, input_bucket)
    notify_queue(s3, input_bucket, queues.queue_arn, prefix=prefix, suffix=suffix)
    log.info(
        "cloud stack ready input=%s output=%s queue=%s",
        input_bucket,
        output_bucket,
        queues.queue_url,
    )
    return {
        **asdict(queues),
        "input_bucket": input_bucket,
        "output_bucket": output_bucket,
        "input_url": f"s3://{input_bucket}",
        "output_url": f"s3://{output_bucket}",
        "region": region,
    }


def create_bucket(s3: Any, bucket: str, region: str) -> None:
    """Create ``bucket`` unless this account already owns it."""
    where = f"s3://{bucket}"
    request: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        # us-east-1 is the one region that refuses an explicit constraint.
        request["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**request)
        log.info("bucket created bucket=%s", bucket)
    except ClientError as exc:
        if error_code(exc) == "BucketAlreadyExists":
            raise ConfigError(
                f"Expected to create or own the bucket {bucket!r}, found it owned "
                "by another account: bucket names are global, pick another."
            ) from exc
        if error_code(exc) != "BucketAlreadyOwnedByYou":
            raise translate(exc, "create the bucket", where) from exc
    except BotoCoreError as exc:
        raise translate(exc, "create the bucket", where) from exc

    with translated("set the bucket's lifecycle", where):
        s3.put_bucket_lifecycle_configuration(
            Bucket=bucket,
            LifecycleConfiguration={
                "Rules": [
                    {
                        "ID": "abort-incomplete-multipart-uploads",
                        "Status": "Enabled",
                        "Filter": {"Prefix": ""},
                        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                    }
                ]
            },
        )


def create_queue(
    sqs: Any,
    name: str,
    *,
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT,
    max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT,
) -> QueuePair:
    """Create or update a queue and its dead-letter queue ``<name>-dlq``.

    With ``max_receive_count`` 0 the queue gets no redrive policy (SQS then
    never dead-letters it by itself, and it has no dead-letter queue to send
    to); the dead-letter queue is still created.
    """
    if not _QUEUE_NAME.fullmatch(name):
        raise ConfigError(
            "Expected a queue name of 1 to 76 letters, digits, '-' or '_' (SQS "
            f"allows 80, including {DLQ_SUFFIX!r}), found {name!r}."
        )
    if not 0 <= visibility_timeout <= MAX_VISIBILITY_SECONDS:
        raise ConfigError(
            f"visibility_timeout must be from 0 to {MAX_VISIBILITY_SECONDS} "
            f"seconds; found {visibility_timeout}."
        )

    dlq_url, dlq_arn = _queue(
        sqs, name + DLQ_SUFFIX, {"MessageRetentionPeriod": str(DLQ_RETENTION_SECONDS)}
    )
    attributes = {"VisibilityTimeout": str(int(visibility_timeout))}
    if max_receive_count:
        attributes["RedrivePolicy"] = json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count}
        )
    url, arn = _queue(sqs, name, attributes)
    if not max_receive_count:
        with translated("remove the redrive policy", url):
            current = sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["RedrivePolicy"]
            ).get("Attributes", {})
            if current.get("RedrivePolicy"):
                sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": ""})
    return QueuePair(url, arn, dlq_url, dlq_arn)


def _queue(sqs: Any, name: str, attributes: dict[str, str]) -> tuple[str, str]:
    # CreateQueue with a name alone returns an existing queue whatever its
    # attributes; setting them afterwards makes a repeated run converge.
    with translated(f"create the queue {name!r}", str(sqs.meta.endpoint_url)):
        url = str(sqs.create_queue(QueueName=name)["QueueUrl"])
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
    return url, str(arn)


def allow_bucket_to_send(sqs: Any, queues: QueuePair, bucket: str) -> None:
    """Set the queue policy: S3 may send, for ``bucket`` in this account only."""
    account = queues.queue_arn.split(":")[4]
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AllowS3ObjectCreatedEvents",
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queues.queue_arn,
                "Condition": {
                    "ArnEquals": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"},
                    "StringEquals": {"aws:SourceAccount": account},
                },
            }
        ],
    }
    with translated("set the queue policy", queues.queue_url):
        sqs.set_queue_attributes(
            QueueUrl=queues.queue_url, Attributes={"Policy": json.dumps(policy)}
        )


def notify_queue(
    s3: Any,
    bucket: str,
    queue_arn: str,
    *,
    prefix: str | None = None,
    suffix: str | None = None,
) -> None:
    """Send ``bucket``'s ObjectCreated events to the queue, keeping other targets."""
    where = f"s3://{bucket}"
    with translated("read the bucket's notifications", where):
        current = s3.get_bucket_notification_configuration(Bucket=bucket)
    current.pop("ResponseMetadata", None)

    ours: dict[str, Any] = {
        "Id": NOTIFICATION_ID,
        "QueueArn": queue_arn,
        "Events": ["s3:ObjectCreated:*"],
    }
    rules = [
        {"Name": name, "Value": value}
        for name, value in (("prefix", prefix), ("suffix", suffix))
        if value
    ]
    if rules:
        ours["Filter"] = {"Key": {"FilterRules": rules}}
    others = [
        entry
        for entry in current.get("QueueConfigurations", [])
        if entry.get("Id") != NOTIFICATION_ID
    ]
    current["QueueConfigurations"] = [*others, ours]

    # S3 checks that it may send to the queue (the policy set above) and
    # then sends an s3:TestEvent, which workers skip.
    with translated("set the bucket's notification", where):
        s3.put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration=current
        )

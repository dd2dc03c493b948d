"""Amazon SQS (or any SQS-compatible server) behind the queue contract.

``SqsQueue("https://sqs.eu-west-1.amazonaws.com/123456789012/scans")`` opens a
standard queue by its URL. The queue's own attributes decide its behaviour:
``VisibilityTimeout`` is the default hold of a receive, and the
``RedrivePolicy`` names the dead-letter queue and ``maxReceiveCount``; both
are read once, when the queue is opened. A queue URL on another host
(``http://127.0.0.1:5000/123456789012/scans``, a VPC endpoint) is also its
endpoint, unless ``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_SQS`` says
otherwise; see :mod:`scanpipe.cloud.clients` for credentials and retries.

Where SQS differs from the embedded queue, this backend does as SQS does:

* a message reaches the dead-letter queue through the redrive policy with
  no reason attribute; ``peek`` on a dead-letter queue opened through
  :meth:`SqsQueue.dead_letter_queue` fills in ``max_receive_count`` and its
  detail for such messages, which is the only way they get there;
* SQS cannot read a message without receiving it, so ``peek`` receives
  (holding the messages briefly, so it sees each once) and releases them
  at once. That counts as a receive: the receive count it reports is the
  count before the peek, but the next consumer sees one more. Peek at
  dead-letter queues, which have no redrive policy; on a queue that has
  one, a peek brings a message one receive closer to it;
* SQS accepts a receipt handle from before a redelivery, and the delete of
  an already deleted message; neither raises
  :class:`~scanpipe.errors.ReceiptHandleInvalid`. A handle SQS refuses
  (unknown, or a message no longer in flight) does;
* ``redrive`` moves messages one by one (send, then delete: a crash in
  between leaves a duplicate, never a loss), because StartMessageMoveTask
  is not offered by every SQS-compatible server; messages get new ids;
* timeouts and delays are whole seconds in SQS; fractions are rounded up.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from scanpipe.cloud.clients import (
    custom_endpoint,
    error_code,
    make_client,
    translate,
    translated,
)
from scanpipe.errors import ConfigError, ReceiptHandleInvalid
from scanpipe.queue.base import (
    DETAIL_ATTRIBUTE,
    MAX_BATCH,
    MAX_DELAY_SECONDS,
    MAX_VISIBILITY_SECONDS,
    MAX_WAIT_SECONDS,
    REASON_ATTRIBUTE,
    Message,
    Queue,
    QueueDepth,
)

log = logging.getLogger(__name__)

#: Hosts of AWS's own SQS endpoints; the first group is the region.
AWS_SQS_HOST = re.compile(
    r"(?:sqs\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?)"
    r"|(?:([a-z0-9-]+)\.queue\.amazonaws\.com(?:\.cn)?)"
)
#: ``/<account>/<queue name>``, the path of every SQS queue URL.
QUEUE_PATH = re.compile(r"/([^/]+)/([A-Za-z0-9_-]{1,80}(?:\.fifo)?)")

#: SQS allows at most 10 message attributes.
MAX_ATTRIBUTES = 10
#: How long ``peek`` hides the messages it has seen, so that it sees each
#: once; it releases them when done, and a crashed peek only delays them.
PEEK_HOLD_SECONDS = 30
#: ``peek`` and ``redrive`` long-poll for this long: a long poll asks every
#: SQS server, where a short poll samples a few and may miss messages, so an
#: empty answer means the queue has nothing visible left.
_DRAIN_WAIT_SECONDS = 1

#: Codes of a receipt handle SQS no longer accepts (query and JSON protocol).
_STALE_CODES = frozenset(
    {"ReceiptHandleIsInvalid", "InvalidReceiptHandle", "MessageNotInflight"}
    | {"AWS.SimpleQueueService.MessageNotInflight"}
)
_MISSING_QUEUE_CODES = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
)


class SqsQueue(Queue):
    """A standard SQS queue, opened by URL; see the module docstring.

    ::

        queue = SqsQueue("https://sqs.eu-west-1.amazonaws.com/123456789012/scans")
        for message in queue.receive(10, wait_seconds=20):
            ...
            queue.delete(message.receipt_handle)
    """

    def __init__(
        self,
        url: str,
        *,
        client: Any = None,
        _source_max_receive_count: int | None = None,
    ) -> None:
        self.url = url
        self.account, self.name, region, endpoint = parse_queue_url(url)
        self._owns_client = client is None
        self._client = (
            make_client("sqs", region=region, endpoint_url=endpoint)
            if client is None
            else client
        )
        # Set when this is the dead-letter queue of a queue we opened: the
        # redrive policy that fills it then tells why its messages are here.
        self._source_max_receive_count = _source_max_receive_count
        self._dlq: SqsQueue | None = None

        attributes = self._attributes("All", action="open the queue")
        self.arn = attributes.get("QueueArn", "")
        self.visibility_timeout = float(attributes.get("VisibilityTimeout", 30))
        self._dlq_arn: str | None = None
        self.max_receive_count = 0
        policy = attributes.get("RedrivePolicy")
        if policy:
            redrive = json.loads(policy)
            self._dlq_arn = str(redrive["deadLetterTargetArn"])
            self.max_receive_count = int(redrive["maxReceiveCount"])

    def __repr__(self) -> str:
        return f"SqsQueue({self.url!r})"

    # -- messages ------------------------------------------------------------

    def send(
        self,
        body: str,
        *,
        delay_seconds: float = 0,
        attributes: dict[str, str] | None = None,
    ) -> str:
        if not isinstance(body, str) or not body:
            found = repr(body) if isinstance(body, str) else type(body).__name__
            raise ConfigError(
                f"A message body must be a non-empty string; found {found}."
            )
        delay = _whole_seconds("delay_seconds", delay_seconds, MAX_DELAY_SECONDS)
        request: dict[str, Any] = {
            "QueueUrl": self.url,
            "MessageBody": body,
            "DelaySeconds": delay,
        }
        if attributes:
            request["MessageAttributes"] = _encode_attributes(attributes)
        with translated("send a message", self.url):
            response = self._client.send_message(**request)
        log.debug("message sent queue=%s id=%s", self.name, response["MessageId"])
        return str(response["MessageId"])

    def receive(
        self,
        max_messages: int = 1,
        *,
        wait_seconds: float = 0,
        visibility_timeout: float | None = None,
    ) -> list[Message]:
        if isinstance(max_messages, bool) or not isinstance(max_messages, int):
            raise ConfigError(
                f"max_messages must be a whole number; found {max_messages!r}."
            )
        if not 1 <= max_messages <= MAX_BATCH:
            raise ConfigError(
                f"max_messages must be from 1 to {MAX_BATCH}; found {max_messages}."
            )
        wait = _whole_seconds("wait_seconds", wait_seconds, MAX_WAIT_SECONDS)
        timeout = _whole_seconds(
            "visibility_timeout",
            self.visibility_timeout
            if visibility_timeout is None
            else visibility_timeout,
            MAX_VISIBILITY_SECONDS,
        )
        return self._receive(max_messages, wait, timeout)

    def _receive(self, max_messages: int, wait: int, timeout: int) -> list[Message]:
        with translated("receive messages", self.url):
            response = self._client.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=max_messages,
                WaitTimeSeconds=wait,
                VisibilityTimeout=timeout,
                MessageAttributeNames=["All"],
                # AttributeNames, not its newer alias MessageSystemAttributeNames,
                # which the oldest botocore releases we accept do not know.
                AttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            )
        return [_message(raw) for raw in response.get("Messages", [])]

    def change_visibility(self, receipt_handle: str, timeout_seconds: float) -> None:
        timeout = _whole_seconds(
            "timeout_seconds", timeout_seconds, MAX_VISIBILITY_SECONDS
        )
        self._check_handle(receipt_handle)
        try:
            self._client.change_message_visibility(
                QueueUrl=self.url,
                ReceiptHandle=receipt_handle,
                VisibilityTimeout=timeout,
            )
        except ClientError as exc:
            if _is_stale(exc):
                raise self._stale("change the visibility of", exc) from exc
            raise translate(exc, "change a message's visibility", self.url) from exc
        except BotoCoreError as exc:
            raise translate(exc, "change a message's visibility", self.url) from exc

    def delete(self, receipt_handle: str) -> None:
        self._check_handle(receipt_handle)
        try:
            self._client.delete_message(QueueUrl=self.url, ReceiptHandle=receipt_handle)
        except ClientError as exc:
            if _is_stale(exc):
                raise self._stale("delete", exc) from exc
            raise translate(exc, "delete a message", self.url) from exc
        except BotoCoreError as exc:
            raise translate(exc, "delete a message", self.url) from exc

    def _check_handle(self, receipt_handle: str) -> None:
        # SQS answers an empty handle with a generic parameter error; peek
        # hands out empty handles that must act on nothing, cleanly.
        if not isinstance(receipt_handle, str) or not receipt_handle:
            raise ReceiptHandleInvalid(
                f"Expected a receipt handle returned by receive on queue "
                f"'{self.name}', found {receipt_handle!r}: it is stale or was "
                "never one."
            )

    def _stale(self, action: str, exc: ClientError) -> ReceiptHandleInvalid:
        return ReceiptHandleInvalid(
            f"Could not {action} a message in queue '{self.name}': the receipt "
            f"handle is stale (the message was deleted, redelivered or is no "
            f"longer in flight); SQS answered {error_code(exc)}."
        )

    # -- queue state ---------------------------------------------------------

    def depth(self) -> QueueDepth:
        attributes = self._attributes(
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
            action="count messages",
        )
        return QueueDepth(
            visible=int(attributes.get("ApproximateNumberOfMessages", 0)),
            in_flight=int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
            delayed=int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
        )

    def dead_letter_queue(self) -> SqsQueue | None:
        if self._dlq_arn is None:
            return None
        if self._dlq is None:
            self._dlq = SqsQueue(
                self._dead_letter_queue_url(self._dlq_arn),
                client=self._client,
                _source_max_receive_count=self.max_receive_count,
            )
        return self._dlq

    def _dead_letter_queue_url(self, arn: str) -> str:
        parts = arn.split(":")
        if len(parts) != 6 or parts[2] != "sqs":
            raise ConfigError(
                f"Expected the redrive policy of {self.url} to name an SQS queue "
                f"ARN (arn:aws:sqs:region:account:name), found {arn!r}."
            )
        account, name = parts[4], parts[5]
        with translated("find the dead-letter queue", self.url):
            response = self._client.get_queue_url(
                QueueName=name, QueueOwnerAWSAccountId=account
            )
        return str(response["QueueUrl"])

    def redrive(self, max_messages: int | None = None) -> int:
        dlq = self.dead_letter_queue()
        if dlq is None:
            return 0
        if max_messages is not None and max_messages < 0:
            raise ConfigError(f"max_messages must be 0 or more; found {max_messages}.")

        moved = 0
        while max_messages is None or moved < max_messages:
            wanted = MAX_BATCH if max_messages is None else max_messages - moved
            messages = dlq._receive(
                min(wanted, MAX_BATCH), _DRAIN_WAIT_SECONDS, PEEK_HOLD_SECONDS
            )
            if not messages:
                break
            for message in messages:
                kept = {
                    name: value
                    for name, value in message.attributes.items()
                    if name not in (REASON_ATTRIBUTE, DETAIL_ATTRIBUTE)
                }
                self.send(message.body, attributes=kept)
                try:
                    dlq.delete(message.receipt_handle)
                except ReceiptHandleInvalid:
                    log.warning("redrive left a copy id=%s", message.message_id)
                moved += 1

        if moved:
            log.info("dead letters redriven queue=%s count=%d", self.name, moved)
        return moved

    def peek(self, max_messages: int = 100) -> list[Message]:
        if max_messages < 0:
            raise ConfigError(f"max_messages must be 0 or more; found {max_messages}.")
        seen: dict[str, Message] = {}
        handles: list[str] = []
        try:
            while len(seen) < max_messages:
                wanted = min(MAX_BATCH, max_messages - len(seen))
                batch = self._receive(wanted, _DRAIN_WAIT_SECONDS, PEEK_HOLD_SECONDS)
                handles.extend(message.receipt_handle for message in batch)
                fresh = [m for m in batch if m.message_id not in seen]
                if not fresh:
                    break
                for message in fresh:
                    seen[message.message_id] = self._peeked(message)
        finally:
            self._release_all(handles)
        return sorted(seen.values(), key=lambda m: m.sent_at)

    def _peeked(self, message: Message) -> Message:
        attributes = dict(message.attributes)
        if (
            self._source_max_receive_count
            and REASON_ATTRIBUTE not in attributes
            and DETAIL_ATTRIBUTE not in attributes
        ):
            # Only the redrive policy moves a message here without a reason,
            # and it does so once it was received maxReceiveCount times.
            count = self._source_max_receive_count
            attributes[REASON_ATTRIBUTE] = "max_receive_count"
            attributes[DETAIL_ATTRIBUTE] = (
                f"received {count} times, maxReceiveCount is {count}"
            )
        return Message(
            message_id=message.message_id,
            receipt_handle="",
            body=message.body,
            receive_count=max(0, message.receive_count - 1),
            sent_at=message.sent_at,
            attributes=attributes,
        )

    def _release_all(self, handles: list[str]) -> None:
        for start in range(0, len(handles), MAX_BATCH):
            entries = [
                {"Id": str(n), "ReceiptHandle": handle, "VisibilityTimeout": 0}
                for n, handle in enumerate(handles[start : start + MAX_BATCH])
            ]
            try:
                response = self._client.change_message_visibility_batch(
                    QueueUrl=self.url, Entries=entries
                )
            except (BotoCoreError, ClientError) as exc:
                log.warning(
                    "peek could not release messages queue=%s count=%d "
                    "visible_again_in=%d error=%s",
                    self.name,
                    len(entries),
                    PEEK_HOLD_SECONDS,
                    type(exc).__name__,
                )
                continue
            if response.get("Failed"):
                log.debug(
                    "peek release skipped messages queue=%s count=%d",
                    self.name,
                    len(response["Failed"]),
                )

    def _attributes(self, *names: str, action: str) -> dict[str, str]:
        try:
            response = self._client.get_queue_attributes(
                QueueUrl=self.url, AttributeNames=list(names)
            )
        except ClientError as exc:
            if error_code(exc) in _MISSING_QUEUE_CODES:
                raise ConfigError(
                    f"Expected an SQS queue at {self.url}, found none: check the "
                    "URL, the region and the endpoint (AWS_ENDPOINT_URL)."
                ) from exc
            raise translate(exc, action, self.url) from exc
        except BotoCoreError as exc:
            raise translate(exc, action, self.url) from exc
        return dict(response.get("Attributes", {}))

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


def parse_queue_url(url: str) -> tuple[str, str, str | None, str | None]:
    """Split a queue URL into account, name, region and endpoint.

    The region is the one an AWS host names (None elsewhere: the environment
    decides); the endpoint is the URL's origin for hosts other than AWS's,
    unless the environment sets one.

    Raises:
        ConfigError: not a queue URL, or a FIFO queue.
    """
    parts = urlsplit(url)
    match = QUEUE_PATH.fullmatch(parts.path)
    shaped = parts.scheme in ("http", "https") and parts.hostname
    if not shaped or match is None or parts.query or parts.fragment:
        raise ConfigError(
            "Expected an SQS queue URL such as https://sqs.<region>.amazonaws.com/"
            f"<account>/<name>, found {url!r}."
        )
    account, name = match.groups()
    if name.endswith(".fifo"):
        raise ConfigError(
            f"Expected a standard SQS queue, found the FIFO queue {name!r}: S3 "
            "event notifications cannot be sent to FIFO queues."
        )
    host = AWS_SQS_HOST.fullmatch(parts.hostname or "")
    if host is not None:
        return account, name, host.group(1) or host.group(2), None
    endpoint = None if custom_endpoint("sqs") else f"{parts.scheme}://{parts.netloc}"
    return account, name, None, endpoint


def _message(raw: dict[str, Any]) -> Message:
    system = raw.get("Attributes", {})
    attributes = {
        name: str(value["StringValue"])
        for name, value in raw.get("MessageAttributes", {}).items()
        if "StringValue" in value
    }
    return Message(
        message_id=str(raw["MessageId"]),
        receipt_handle=str(raw["ReceiptHandle"]),
        body=str(raw.get("Body", "")),
        receive_count=int(system.get("ApproximateReceiveCount", 1)),
        sent_at=int(system.get("SentTimestamp", time.time() * 1000)) / 1000.0,
        attributes=attributes,
    )


def _encode_attributes(attributes: dict[str, str]) -> dict[str, dict[str, str]]:
    if len(attributes) > MAX_ATTRIBUTES:
        raise ConfigError(
            f"SQS allows at most {MAX_ATTRIBUTES} message attributes; found "
            f"{len(attributes)}."
        )
    encoded = {}
    for name, value in attributes.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ConfigError(
                "Message attributes must map strings to strings; found "
                f"{type(name).__name__} -> {type(value).__name__} for {name!r}."
            )
        encoded[name] = {"DataType": "String", "StringValue": value}
    return encoded


def _is_stale(exc: ClientError) -> bool:
    code = error_code(exc)
    if code in _STALE_CODES:
        return True
    message = str(exc.response.get("Error", {}).get("Message", ""))
    return code == "InvalidParameterValue" and "ReceiptHandle" in message


def _whole_seconds(parameter: str, value: float, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{parameter} must be a number of seconds; found {value!r}.")
    if not 0 <= value <= limit:
        raise ConfigError(
            f"{parameter} must be from 0 to {limit:g} seconds; found {value!r}."
        )
    return math.ceil(value)

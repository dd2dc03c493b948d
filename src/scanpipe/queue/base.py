"""The message queue contract, with Amazon SQS semantics, that every backend fills in.

A message received is invisible to other consumers for its visibility timeout;
the consumer deletes it with the receipt handle of that receive when done, or
lets it reappear. Each receive increments its receive count; past the queue's
``max_receive_count`` the message moves to the dead-letter queue instead of
being delivered again (SQS's redrive policy). Counts are approximate, as SQS's
are, and are what the autoscaler scales on.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

#: SQS limits, which every backend enforces so code moves between them unchanged.
MAX_BATCH = 10
MAX_WAIT_SECONDS = 20
MAX_VISIBILITY_SECONDS = 12 * 3600
MAX_DELAY_SECONDS = 900

#: Message attribute that carries why a message was dead-lettered.
REASON_ATTRIBUTE = "scanpipe_reason"
#: Message attribute with the human-readable detail of that reason.
DETAIL_ATTRIBUTE = "scanpipe_detail"


@dataclass(frozen=True)
class Message:
    """One received message and the handle to act on this receive of it."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    sent_at: float  # seconds since the epoch
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueDepth:
    """Approximate counts, as SQS's ApproximateNumberOfMessages* attributes."""

    visible: int
    in_flight: int
    delayed: int = 0


class Queue(abc.ABC):
    """A queue with SQS semantics; see the module docstring."""

    #: The location this queue was opened from.
    url: str
    #: Default visibility timeout applied by ``receive``.
    visibility_timeout: float
    #: Receives after which a message moves to the dead-letter queue (0: never).
    max_receive_count: int

    @abc.abstractmethod
    def send(
        self,
        body: str,
        *,
        delay_seconds: float = 0,
        attributes: dict[str, str] | None = None,
    ) -> str:
        """Enqueue one message and return its message id."""

    @abc.abstractmethod
    def receive(
        self,
        max_messages: int = 1,
        *,
        wait_seconds: float = 0,
        visibility_timeout: float | None = None,
    ) -> list[Message]:
        """Receive up to ``max_messages`` (1-10) messages.

        With ``wait_seconds`` > 0 (at most 20), long-poll: return as soon as a
        message is available, or an empty list when the wait ends. Waiting
        must not busy-loop.
        """

    @abc.abstractmethod
    def change_visibility(self, receipt_handle: str, timeout_seconds: float) -> None:
        """Extend the visibility of a received message, or release it with 0.

        Raises:
            ReceiptHandleInvalid: the handle is stale (deleted, or redelivered).
        """

    @abc.abstractmethod
    def delete(self, receipt_handle: str) -> None:
        """Delete a received message.

        Raises:
            ReceiptHandleInvalid: the handle is stale (deleted, or redelivered).
        """

    @abc.abstractmethod
    def depth(self) -> QueueDepth:
        """Approximate visible, in-flight and delayed counts."""

    @abc.abstractmethod
    def dead_letter_queue(self) -> Queue | None:
        """The dead-letter queue of this queue, or None when it has none."""

    @abc.abstractmethod
    def redrive(self, max_messages: int | None = None) -> int:
        """Move messages from this queue's dead-letter queue back onto it.

        Returns the number moved. Reason attributes are dropped on the way, and
        receive counts start again from zero, as SQS's redrive does.
        """

    @abc.abstractmethod
    def peek(self, max_messages: int = 100) -> list[Message]:
        """Read messages without receiving them (no visibility change).

        Used to list dead letters; the receipt handles it returns act on nothing.
        """

    def dead_letter(self, message: Message, *, reason: str, detail: str) -> None:
        """Move a received message to the dead-letter queue at once, with its reason.

        Used for permanent failures, which retrying cannot fix, so the message
        does not wait for ``max_receive_count`` receives.
        """
        dlq = self.dead_letter_queue()
        if dlq is None:
            # Without a dead-letter queue the only safe choice is to keep it.
            return
        attributes = dict(message.attributes)
        attributes[REASON_ATTRIBUTE] = reason
        attributes[DETAIL_ATTRIBUTE] = detail[:1000]
        dlq.send(message.body, attributes=attributes)
        self.delete(message.receipt_handle)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the queue is unusable afterwards."""

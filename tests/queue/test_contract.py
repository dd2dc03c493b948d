"""The queue contract, with SQS semantics, that every backend must keep.

These tests use only the ``Queue`` interface; conftest.py runs each of them
once per backend. Time-based behaviour uses one-second timeouts and long
polls, and asserts what was received, never how long it took.
"""

from __future__ import annotations

import threading
import time

import pytest

from scanpipe.errors import ConfigError, ReceiptHandleInvalid
from scanpipe.queue import Message, Queue, QueueDepth
from scanpipe.queue.base import DETAIL_ATTRIBUTE, REASON_ATTRIBUTE

from .conftest import MakeQueue


def make_received(queue: Queue, **receive_options: float) -> Message:
    """Receive exactly one message, long-polling so a slow backend can deliver."""
    messages = queue.receive(1, wait_seconds=5, **receive_options)
    assert len(messages) == 1, f"expected one message, received {messages!r}"
    return messages[0]


def make_released(queue: Queue, times: int) -> Message:
    """Receive the only message ``times`` times, releasing it after each."""
    message = make_received(queue)
    for _ in range(times - 1):
        queue.change_visibility(message.receipt_handle, 0)
        message = make_received(queue)
    return message


def test_a_sent_message_is_received_and_deleted(make_queue: MakeQueue) -> None:
    queue = make_queue()
    message_id = queue.send('{"key": "in/a.nii.gz"}')

    message = make_received(queue)
    assert message.message_id == message_id
    assert message.body == '{"key": "in/a.nii.gz"}'
    assert message.receive_count == 1
    assert message.sent_at == pytest.approx(time.time(), abs=60)

    queue.delete(message.receipt_handle)
    assert queue.receive(1) == []
    assert queue.depth() == QueueDepth(visible=0, in_flight=0, delayed=0)


def test_a_batch_receive_returns_at_most_ten_distinct_messages(
    make_queue: MakeQueue,
) -> None:
    queue = make_queue()
    sent = {queue.send(f"scan {n}") for n in range(15)}

    received: list[Message] = []
    while batch := queue.receive(10, wait_seconds=1):
        assert 1 <= len(batch) <= 10
        received.extend(batch)

    assert sorted(m.message_id for m in received) == sorted(sent)


@pytest.mark.parametrize(
    ("options", "mentioned"),
    [
        ({"max_messages": 0}, "max_messages"),
        ({"max_messages": 11}, "max_messages"),
        ({"wait_seconds": 21}, "wait_seconds"),
        ({"wait_seconds": -1}, "wait_seconds"),
    ],
    ids=["zero-messages", "eleven-messages", "wait-over-20s", "negative-wait"],
)
def test_receive_rejects_options_outside_the_sqs_limits(
    make_queue: MakeQueue, options: dict[str, int], mentioned: str
) -> None:
    queue = make_queue()
    with pytest.raises(ConfigError, match=mentioned):
        queue.receive(**options)


def test_a_long_poll_returns_a_message_sent_during_the_wait(
    make_queue: MakeQueue,
) -> None:
    queue = make_queue()
    sender = threading.Timer(0.3, queue.send, args=("late scan",))
    sender.start()
    try:
        messages = queue.receive(1, wait_seconds=10)
    finally:
        sender.join()

    assert [m.body for m in messages] == ["late scan"]


def test_an_empty_long_poll_waits_and_returns_nothing(make_queue: MakeQueue) -> None:
    queue = make_queue()

    started = time.monotonic()
    assert queue.receive(1, wait_seconds=1) == []
    assert time.monotonic() - started >= 0.5


def test_a_received_message_is_hidden_until_its_visibility_timeout_ends(
    make_queue: MakeQueue,
) -> None:
    queue = make_queue(visibility_timeout=1)
    queue.send("scan")
    first = make_received(queue)

    assert queue.receive(1) == []
    again = make_received(queue)
    assert again.message_id == first.message_id
    assert again.receive_count == 2


def test_a_receive_can_override_the_visibility_timeout(make_queue: MakeQueue) -> None:
    queue = make_queue(visibility_timeout=300)
    queue.send("scan")
    first = make_received(queue, visibility_timeout=1)

    again = make_received(queue)
    assert again.message_id == first.message_id


def test_change_visibility_extends_the_hold_on_a_message(
    make_queue: MakeQueue,
) -> None:
    queue = make_queue(visibility_timeout=1)
    queue.send("scan")
    message = make_received(queue)

    queue.change_visibility(message.receipt_handle, 30)
    # Well past the original one second: still held by us.
    assert queue.receive(1, wait_seconds=2) == []
    queue.delete(message.receipt_handle)


def test_change_visibility_to_zero_releases_a_message_at_once(
    make_queue: MakeQueue,
) -> None:
    queue = make_queue(visibility_timeout=300)
    queue.send("scan")
    message = make_received(queue)

    queue.change_visibility(message.receipt_handle, 0)
    again = make_received(queue)
    assert again.message_id == message.message_id
    assert again.receipt_handle != message.receipt_handle


def test_a_handle_from_before_a_redelivery_is_stale(make_queue: MakeQueue) -> None:
    queue = make_queue()
    queue.send("scan")
    first = make_received(queue)
    queue.change_visibility(first.receipt_handle, 0)
    second = make_received(queue)

    with pytest.raises(ReceiptHandleInvalid, match="stale"):
        queue.delete(first.receipt_handle)
    with pytest.raises(ReceiptHandleInvalid, match="stale"):
        queue.change_visibility(first.receipt_handle, 30)
    queue.delete(second.receipt_handle)


def test_a_handle_of_a_deleted_message_is_stale(make_queue: MakeQueue) -> None:
    queue = make_queue()
    queue.send("scan")
    message = make_received(queue)
    queue.delete(message.receipt_handle)

    with pytest.raises(ReceiptHandleInvalid, match="stale"):
        queue.delete(message.receipt_handle)
    with pytest.raises(ReceiptHandleInvalid, match="stale"):
        queue.change_visibility(message.receipt_handle, 30)


def test_every_receive_increments_the_receive_count(make_queue: MakeQueue) -> None:
    queue = make_queue(max_receive_count=0)
    queue.send("scan")

    counts = []
    for _ in range(4):
        message = make_received(queue)
        counts.append(message.receive_count)
        queue.change_visibility(message.receipt_handle, 0)

    assert counts == [1, 2, 3, 4]


def test_depth_counts_visible_in_flight_and_delayed_messages(
    make_queue: MakeQueue,
) -> None:
    queue = make_queue()
    for n in range(3):
        queue.send(f"scan {n}")
    queue.send("later", delay_seconds=600)
    make_received(queue)

    assert queue.depth() == QueueDepth(visible=2, in_flight=1, delayed=1)


def test_a_delayed_message_is_received_only_after_its_delay(
    make_queue: MakeQueue,
) -> None:
    queue = make_queue()
    message_id = queue.send("scan", delay_seconds=1)

    assert queue.receive(1) == []
    assert make_received(queue).message_id == message_id


def test_a_message_moves_to_the_dead_letter_queue_after_max_receive_count(
    make_queue: MakeQueue,
) -> None:
    queue = make_queue(max_receive_count=2)
    message_id = queue.send("poison", attributes={"tenant": "a"})
    last = make_released(queue, times=2)
    queue.change_visibility(last.receipt_handle, 0)

    assert queue.receive(1, wait_seconds=1) == []
    dlq = queue.dead_letter_queue()
    assert dlq is not None
    [dead] = dlq.peek()
    assert dead.message_id == message_id
    assert dead.body == "poison"
    assert dead.attributes["tenant"] == "a"
    # SQS's own redrive adds no attributes; a missing reason means this one.
    assert dead.attributes.get(REASON_ATTRIBUTE, "max_receive_count") == (
        "max_receive_count"
    )
    assert queue.depth().visible == 0


def test_dead_letter_moves_a_message_at_once_with_its_reason(
    make_queue: MakeQueue,
) -> None:
    queue = make_queue()
    queue.send("not a scan", attributes={"tenant": "b"})
    message = make_received(queue)

    queue.dead_letter(message, reason="not_nifti", detail="The file is not NIfTI.")

    assert queue.depth() == QueueDepth(visible=0, in_flight=0, delayed=0)
    dlq = queue.dead_letter_queue()
    assert dlq is not None
    [dead] = dlq.peek()
    assert dead.body == "not a scan"
    assert dead.attributes == {
        "tenant": "b",
        REASON_ATTRIBUTE: "not_nifti",
        DETAIL_ATTRIBUTE: "The file is not NIfTI.",
    }


def test_a_dead_letter_queue_has_no_dead_letter_queue(make_queue: MakeQueue) -> None:
    dlq = make_queue().dead_letter_queue()
    assert dlq is not None
    assert dlq.dead_letter_queue() is None


def test_peek_lists_messages_without_receiving_them(make_queue: MakeQueue) -> None:
    queue = make_queue()
    queue.send("scan")

    assert [m.body for m in queue.peek()] == ["scan"]
    assert make_received(queue).receive_count == 1


def test_redrive_moves_dead_letters_back_as_new(make_queue: MakeQueue) -> None:
    queue = make_queue(max_receive_count=1)
    queue.send("retry me", attributes={"tenant": "c"})
    first = make_received(queue)
    queue.change_visibility(first.receipt_handle, 0)
    assert queue.receive(1, wait_seconds=1) == []

    assert queue.redrive() == 1

    dlq = queue.dead_letter_queue()
    assert dlq is not None
    assert dlq.peek() == []
    again = make_received(queue)
    assert again.body == "retry me"
    assert again.receive_count == 1
    assert again.attributes == {"tenant": "c"}


def test_redrive_moves_at_most_max_messages(make_queue: MakeQueue) -> None:
    queue = make_queue()
    for n in range(3):
        queue.send(f"scan {n}")
        queue.dead_letter(make_received(queue), reason="test", detail="Sent there.")

    assert queue.redrive(max_messages=2) == 2
    assert queue.redrive() == 1
    assert queue.redrive() == 0


@pytest.mark.parametrize(
    "attributes",
    [
        {},
        {"tenant": "hospital-7", "priority": "high"},
        {"note": "Zürich – 東京 ✓"},
    ],
    ids=["none", "two", "unicode"],
)
def test_attributes_round_trip(make_queue: MakeQueue, attributes: dict) -> None:
    queue = make_queue()
    queue.send("scan", attributes=attributes)

    assert make_received(queue).attributes == attributes


@pytest.mark.parametrize(
    "body",
    [
        '{"key": "in/ct-001.nii.gz"}',
        "Ünïcödé – 患者 🩻",
        "line one\nline two\ttabbed",
        "x" * 200_000,
    ],
    ids=["json", "unicode", "control-characters", "200-kb"],
)
def test_bodies_round_trip_unchanged(make_queue: MakeQueue, body: str) -> None:
    queue = make_queue()
    queue.send(body)

    assert make_received(queue).body == body

"""The heartbeat keeps a long scan's message from being delivered twice."""

from __future__ import annotations

import time
from pathlib import Path

from scanpipe.queue import open_queue
from scanpipe.worker.heartbeat import Heartbeat


def test_a_message_stays_hidden_past_its_timeout_while_the_heartbeat_runs(
    tmp_path: Path,
) -> None:
    queue = open_queue(f"sqlite://{tmp_path}/q.db?visibility_timeout=1")
    queue.send("scan")
    (message,) = queue.receive(1)

    with Heartbeat(queue, message.receipt_handle, visibility_timeout=1) as beat:
        time.sleep(2.5)
        assert queue.receive(1) == [], "redelivered while the heartbeat ran"
    assert not beat.lost

    (again,) = queue.receive(1, wait_seconds=3)
    assert again.message_id == message.message_id
    assert again.receive_count == 2
    queue.close()


def test_the_heartbeat_notices_when_the_message_went_to_someone_else(
    tmp_path: Path,
) -> None:
    queue = open_queue(f"sqlite://{tmp_path}/q.db?visibility_timeout=1")
    queue.send("scan")
    (message,) = queue.receive(1)
    queue.change_visibility(message.receipt_handle, 0)
    queue.receive(1)  # another worker takes it; the old handle is stale

    with Heartbeat(queue, message.receipt_handle, visibility_timeout=0.3) as beat:
        time.sleep(0.5)

    assert beat.lost
    queue.close()

"""An embedded pipeline (queue, stores, threshold model) for worker tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from scanpipe.events import QueueNotifier, object_created_event
from scanpipe.ledger import Ledger
from scanpipe.models import load_segmenter
from scanpipe.queue import open_queue
from scanpipe.queue.base import Queue
from scanpipe.storage.local import LocalStore
from scanpipe.worker.loop import Worker, WorkerSettings


@dataclass
class Pipeline:
    queue: Queue
    inbox: LocalStore
    outbox: LocalStore
    ledger: Ledger
    worker: Worker

    def receive_one(self) -> object:
        messages = self.queue.receive(1, wait_seconds=2)
        assert len(messages) == 1, "expected one message on the queue"
        return messages[0]

    def send_event(self, key: str, *, bucket: str | None = None) -> None:
        event = object_created_event(
            bucket=bucket or self.inbox.bucket, key=key, size=1, etag="e"
        )
        self.queue.send(json.dumps(event))

    def dead_letters(self) -> list[tuple[str, str]]:
        dlq = self.queue.dead_letter_queue()
        assert dlq is not None
        return [
            (m.attributes["scanpipe_reason"], m.attributes["scanpipe_detail"])
            for m in dlq.peek()
        ]


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    queue = open_queue(f"sqlite://{tmp_path}/queue.db?visibility_timeout=5")
    inbox = LocalStore(tmp_path / "input", bucket="input")
    inbox.add_put_listener(QueueNotifier(queue))
    outbox = LocalStore(tmp_path / "outbox")
    ledger = Ledger(tmp_path / "ledger.db")
    worker = Worker(
        queue=queue,
        input_store=inbox,
        output_store=outbox,
        segmenter=load_segmenter("threshold"),
        settings=WorkerSettings(
            worker_id="w1", wait_seconds=0, retry_base_seconds=0.2, scratch_dir=tmp_path
        ),
        ledger=ledger,
    )
    yield Pipeline(queue, inbox, outbox, ledger, worker)
    queue.close()
    ledger.close()

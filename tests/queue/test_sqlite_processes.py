"""The embedded queue shared by real processes, some of them killed with SIGKILL.

Producers and consumers are separate Python processes running the small
scripts below; they report on stdout, one flushed line per event, what they
did. "sent" and "deleted" are printed once the call has returned, "deleting"
just before the call, so the reports bound what a killed process may have
done, and the assertions hold the queue's contents afterwards against them.
Also here: ``open_queue`` URL parsing.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scanpipe.errors import ConfigError, ReceiptHandleInvalid
from scanpipe.queue import Queue, QueueDepth, SqliteQueue, open_queue
from scanpipe.queue.base import DETAIL_ATTRIBUTE, REASON_ATTRIBUTE

OpenQueue = Callable[[str], Queue]

PRODUCER = """
import sys
from scanpipe.queue import open_queue

queue = open_queue(sys.argv[1])
n = 0
while True:
    message_id = queue.send(f"scan {n}", attributes={"n": str(n)})
    print("sent", message_id, flush=True)
    n += 1
"""

# "deleting" comes before the call, "deleted" after it returned: a consumer
# killed in between may or may not have deleted the message.
CONSUMER = """
import sys
from scanpipe.queue import open_queue

queue = open_queue(sys.argv[1])
drain = sys.argv[2] == "drain"
while True:
    messages = queue.receive(10, wait_seconds=0.5)
    if drain and not messages:
        break
    for message in messages:
        print("deleting", message.message_id, flush=True)
        queue.delete(message.receipt_handle)
        print("deleted", message.message_id, flush=True)
"""

HOLDER = """
import sys, time
from scanpipe.queue import open_queue

queue = open_queue(sys.argv[1])
[message] = queue.receive(1, wait_seconds=10)
print(message.message_id, message.receipt_handle, message.receive_count, flush=True)
time.sleep(120)
"""


@pytest.fixture
def opened() -> Iterator[OpenQueue]:
    """``open_queue`` for the test process, closing what it opened afterwards."""
    queues: list[Queue] = []

    def open_and_keep(url: str) -> Queue:
        queues.append(open_queue(url))
        return queues[-1]

    yield open_and_keep
    for queue in queues:
        queue.close()


def make_process(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        text=True,
    )


def make_reports(output: str) -> dict[str, list[str]]:
    """Group ``verb id`` lines by verb; a line cut short by a kill is ignored."""
    reports: dict[str, list[str]] = {"sent": [], "deleting": [], "deleted": []}
    for line in output.split("\n")[:-1]:
        verb, message_id = line.split()
        reports[verb].append(message_id)
    return reports


def make_url(path: Path, **settings: float) -> str:
    query = "&".join(f"{key}={value}" for key, value in settings.items())
    return f"sqlite://{path}" + (f"?{query}" if query else "")


@pytest.mark.slow
def test_concurrent_consumers_process_every_message_exactly_once(
    tmp_path: Path, opened: OpenQueue
) -> None:
    url = make_url(tmp_path / "queue.db", visibility_timeout=120)
    queue = opened(url)
    sent = {queue.send(f"scan {n}") for n in range(300)}

    consumers = [make_process(CONSUMER, url, "drain") for _ in range(3)]
    deleted: list[str] = []
    for consumer in consumers:
        output, _ = consumer.communicate(timeout=60)
        assert consumer.returncode == 0
        deleted.extend(make_reports(output)["deleted"])

    assert len(deleted) == len(set(deleted)), "a message was processed twice"
    assert set(deleted) == sent
    assert queue.depth() == QueueDepth(visible=0, in_flight=0, delayed=0)


@pytest.mark.slow
def test_sigkill_at_random_points_loses_and_corrupts_nothing(
    tmp_path: Path, opened: OpenQueue
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    path = tmp_path / "queue.db"
    url = make_url(path, visibility_timeout=1, max_receive_count=3)
    reports: dict[str, set[str]] = {"sent": set(), "deleting": set(), "deleted": set()}

    for _ in range(20):
        processes = [make_process(PRODUCER, url) for _ in range(2)]
        processes += [make_process(CONSUMER, url, "forever") for _ in range(2)]
        rng.shuffle(processes)
        started = time.monotonic()
        for process in processes:
            kill_at = started + rng.uniform(0.05, 0.6)
            time.sleep(max(0.0, kill_at - time.monotonic()))
            process.send_signal(signal.SIGKILL)
        for process in processes:
            output, _ = process.communicate(timeout=30)
            assert process.returncode == -signal.SIGKILL
            for verb, ids in make_reports(output).items():
                reports[verb].update(ids)

    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        connection.close()

    queue = opened(url)
    dlq = queue.dead_letter_queue()
    assert dlq is not None
    stored = {m.message_id for m in queue.peek(10**6) + dlq.peek(10**6)}
    assert reports["sent"], f"no producer got as far as one send (seed={seed})"
    lost = reports["sent"] - stored - reports["deleting"]
    assert not lost, f"{len(lost)} sent messages vanished (seed={seed})"
    assert not reports["deleted"] & stored, f"deleted messages came back (seed={seed})"

    # The queue still works after the abuse.
    message_id = queue.send("after")
    assert message_id in {m.message_id for m in queue.peek(10**6)}


@pytest.mark.slow
def test_a_message_held_by_a_killed_consumer_is_redelivered(
    tmp_path: Path, opened: OpenQueue
) -> None:
    url = make_url(tmp_path / "queue.db", visibility_timeout=1)
    queue = opened(url)
    message_id = queue.send("scan")

    with make_process(HOLDER, url) as holder:
        assert holder.stdout is not None
        held_id, held_handle, held_count = holder.stdout.readline().split()
        holder.send_signal(signal.SIGKILL)

    assert (held_id, held_count) == (message_id, "1")
    [again] = queue.receive(1, wait_seconds=10)
    assert again.message_id == message_id
    assert again.receive_count == 2
    with pytest.raises(ReceiptHandleInvalid, match="received again"):
        queue.delete(held_handle)
    queue.delete(again.receipt_handle)


def test_a_dead_letter_says_how_often_it_was_received(
    tmp_path: Path, opened: OpenQueue
) -> None:
    queue = opened(make_url(tmp_path / "queue.db", max_receive_count=2))
    queue.send("poison")
    for _ in range(2):
        [message] = queue.receive(1)
        queue.change_visibility(message.receipt_handle, 0)

    assert queue.receive(1) == []
    dlq = queue.dead_letter_queue()
    assert dlq is not None
    [dead] = dlq.peek()
    assert dead.receive_count == 2
    assert dead.attributes == {
        REASON_ATTRIBUTE: "max_receive_count",
        DETAIL_ATTRIBUTE: "received 2 times, maxReceiveCount is 2",
    }


@pytest.mark.parametrize(
    ("query", "name", "visibility_timeout", "max_receive_count"),
    [
        ("", "scans", 30.0, 3),
        ("?name=ct-batch", "ct-batch", 30.0, 3),
        ("?visibility_timeout=2.5&max_receive_count=0", "scans", 2.5, 0),
    ],
    ids=["defaults", "name", "timeouts"],
)
def test_open_queue_reads_sqlite_urls(
    tmp_path: Path,
    opened: OpenQueue,
    query: str,
    name: str,
    visibility_timeout: float,
    max_receive_count: int,
) -> None:
    url = f"sqlite://{tmp_path}/queue.db{query}"
    queue = opened(url)

    assert isinstance(queue, SqliteQueue)
    assert (queue.name, queue.url) == (name, url)
    assert queue.visibility_timeout == visibility_timeout
    assert queue.max_receive_count == max_receive_count
    assert (tmp_path / "queue.db").exists()


@pytest.mark.parametrize("filename", ["queue.db", "queue.sqlite"], ids=["db", "sqlite"])
def test_open_queue_reads_plain_paths(
    tmp_path: Path, opened: OpenQueue, filename: str
) -> None:
    queue = opened(str(tmp_path / filename))

    assert isinstance(queue, SqliteQueue)
    assert queue.name == "scans"
    assert (tmp_path / filename).exists()


@pytest.mark.parametrize(
    ("url", "mentioned"),
    [
        ("redis://localhost/0", "sqlite:///"),
        ("{tmp}/queue.txt", r"\.db or \.sqlite"),
        ("sqlite://queue.db", "absolute path"),
        ("sqlite://{tmp}/queue.db?colour=blue", "colour"),
        ("sqlite://{tmp}/queue.db?name=a&name=b", "twice"),
        ("sqlite://{tmp}/queue.db?visibility_timeout=soon", "visibility_timeout.*soon"),
        ("sqlite://{tmp}/queue.db?visibility_timeout=-5", "visibility_timeout.*-5"),
        ("sqlite://{tmp}/queue.db?visibility_timeout=nan", "visibility_timeout"),
        ("sqlite://{tmp}/queue.db?visibility_timeout=99999", "visibility_timeout"),
        ("sqlite://{tmp}/queue.db?max_receive_count=-1", "max_receive_count.*-1"),
        ("sqlite://{tmp}/queue.db?max_receive_count=2.5", "max_receive_count.*2.5"),
        ("sqlite://{tmp}/queue.db?name=", "queue name"),
        ("sqlite://{tmp}/queue.db?name=bad%20name", "queue name"),
        ("sqlite://{tmp}/missing/queue.db", "folder exists"),
        (
            "https://sqs.eu-west-1.amazonaws.com/123456789012/scans.fifo",
            "FIFO",
        ),
    ],
    ids=[
        "other-scheme",
        "plain-path-suffix",
        "relative-sqlite-url",
        "unknown-parameter",
        "repeated-parameter",
        "non-numeric-timeout",
        "negative-timeout",
        "nan-timeout",
        "timeout-over-12h",
        "negative-receive-count",
        "fractional-receive-count",
        "empty-name",
        "invalid-name",
        "missing-folder",
        "sqs-fifo",
    ],
)
def test_open_queue_rejects_what_it_cannot_open(
    tmp_path: Path, url: str, mentioned: str
) -> None:
    with pytest.raises(ConfigError, match=mentioned):
        open_queue(url.format(tmp=tmp_path))

"""Throughput of the embedded queue: messages carried from send to delete per second.

Producer processes send ``--messages`` messages between them, one ``send`` call
per message. Consumer processes ``receive`` in batches of up to ``--batch``
(long-polling) and ``delete`` every message on its own, as a worker does. The
clock starts once every process has opened the queue and stops when the last
consumer has deleted its last message, so the figure counts each message once,
after all three of its operations (send, its share of a receive, delete):

    messages/s = messages / seconds

Usage::

    python bench/queue_throughput.py                  # 2 producers, 2 consumers
    python bench/queue_throughput.py --messages 50000 --json
    python bench/queue_throughput.py --synchronous NORMAL

``--synchronous`` reproduces the comparison behind the queue's synchronous
modes (see ``scanpipe.queue.sqlite``): ``sends`` is the queue as shipped (FULL
for sends, NORMAL for the rest); ``FULL`` and ``NORMAL`` use one mode for all.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier
from pathlib import Path

from scanpipe.queue import sqlite as sqlite_queue


def open_bench_queue(path: str, synchronous: str) -> sqlite_queue.SqliteQueue:
    if synchronous != "sends":
        sqlite_queue.SYNCHRONOUS = synchronous
        sqlite_queue.DURABLE_SYNCHRONOUS = synchronous
    return sqlite_queue.SqliteQueue(path, name="bench", visibility_timeout=60)


def produce(path: str, synchronous: str, count: int, start: Barrier) -> None:
    queue = open_bench_queue(path, synchronous)
    start.wait()
    for n in range(count):
        queue.send(f'{{"key": "in/scan-{n:06d}.nii.gz"}}')
    queue.close()


def consume(
    path: str,
    synchronous: str,
    total: int,
    batch: int,
    deleted: Synchronized[int],
    start: Barrier,
) -> None:
    queue = open_bench_queue(path, synchronous)
    start.wait()
    while deleted.value < total:
        messages = queue.receive(batch, wait_seconds=0.2)
        for message in messages:
            queue.delete(message.receipt_handle)
        with deleted.get_lock():
            deleted.value += len(messages)
    queue.close()


def run(args: argparse.Namespace, folder: Path) -> dict[str, object]:
    path = str(folder / "queue.db")
    # Create the file and schema before the clock starts.
    open_bench_queue(path, args.synchronous).close()

    context = multiprocessing.get_context("spawn")
    start = context.Barrier(args.producers + args.consumers + 1)
    deleted = context.Value("i", 0)
    shares = [args.messages // args.producers] * args.producers
    shares[0] += args.messages - sum(shares)
    processes = [
        context.Process(target=produce, args=(path, args.synchronous, share, start))
        for share in shares
    ]
    processes += [
        context.Process(
            target=consume,
            args=(path, args.synchronous, args.messages, args.batch, deleted, start),
        )
        for _ in range(args.consumers)
    ]
    for process in processes:
        process.start()

    start.wait()
    started = time.perf_counter()
    for process in processes:
        process.join()
    seconds = time.perf_counter() - started

    failed = [p.exitcode for p in processes if p.exitcode != 0]
    if failed:
        raise SystemExit(f"error: benchmark processes failed with exit codes {failed}")
    return {
        "messages": args.messages,
        "producers": args.producers,
        "consumers": args.consumers,
        "batch": args.batch,
        "synchronous": args.synchronous,
        "seconds": round(seconds, 3),
        "messages_per_second": round(args.messages / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=10, help="receive batch, 1-10")
    parser.add_argument(
        "--synchronous",
        choices=["sends", "FULL", "NORMAL"],
        default="sends",
        help="SQLite synchronous mode (default: FULL for sends only, as shipped)",
    )
    parser.add_argument("--folder", type=Path, help="where to put the queue file")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()

    if args.folder is not None:
        result = run(args, args.folder)
    else:
        with tempfile.TemporaryDirectory(prefix="queue-bench-") as folder:
            result = run(args, Path(folder))

    if args.json:
        print(json.dumps(result))
        return
    width = max(len(key) for key in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()

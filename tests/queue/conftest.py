"""Queue backends for the contract suite: every contract test runs on each one.

``make_queue`` opens a fresh, empty queue on the backend under test. Anything
specific to a backend (files, servers, credentials) stays inside this fixture,
so test_contract.py speaks only the ``Queue`` interface and a new backend joins
by adding one parameter here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scanpipe.queue import Queue, SqliteQueue

MakeQueue = Callable[..., Queue]

BACKENDS = ["sqlite", "sqs"]

#: Contract tests whose behaviour SQS does not have, with what SQS does
#: instead. They run on SQS as strict expected failures: if SQS (or moto)
#: ever behaves as the contract says, the suite reports it.
SQS_DIFFERENCES = {
    "test_a_handle_from_before_a_redelivery_is_stale": (
        "SQS accepts a delete with a receipt handle from before a redelivery "
        "(moto a visibility change too) instead of raising ReceiptHandleInvalid"
    ),
    "test_a_handle_of_a_deleted_message_is_stale": (
        "SQS accepts a second delete with the same receipt handle"
    ),
    "test_peek_lists_messages_without_receiving_them": (
        "SQS cannot read without receiving: peek counts as one receive, so the "
        "next consumer sees receive_count 2"
    ),
}


def make_sqs_queue(
    name: str, *, visibility_timeout: float, max_receive_count: int
) -> Queue:
    """A new SQS queue and its dead-letter queue on the test endpoint."""
    from scanpipe.cloud.bootstrap import create_queue
    from scanpipe.cloud.clients import make_client
    from scanpipe.queue.sqs import SqsQueue
    from tests.aws import make_name

    queues = create_queue(
        make_client("sqs"),
        make_name(name),
        visibility_timeout=int(visibility_timeout),
        max_receive_count=max_receive_count,
    )
    return SqsQueue(queues.queue_url)


def make_sqlite_queue(
    folder: Path, name: str, *, visibility_timeout: float, max_receive_count: int
) -> Queue:
    # All queues of a test share one file, as queues and their dead-letter
    # queues do in production.
    return SqliteQueue(
        folder / "queue.db",
        name=name,
        visibility_timeout=visibility_timeout,
        max_receive_count=max_receive_count,
    )


@pytest.fixture(params=BACKENDS)
def make_queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeQueue]:
    """A factory: ``make_queue(visibility_timeout=30, max_receive_count=3)``."""
    backend = request.param
    if backend == "sqs":
        request.getfixturevalue("aws_env")
        difference = SQS_DIFFERENCES.get(request.node.originalname)
        if difference:
            request.node.add_marker(pytest.mark.xfail(reason=difference, strict=True))
    opened: list[Queue] = []
    numbers = itertools.count()

    def make(*, visibility_timeout: float = 30, max_receive_count: int = 3) -> Queue:
        name = f"contract-{next(numbers)}"
        if backend == "sqlite":
            queue = make_sqlite_queue(
                tmp_path,
                name,
                visibility_timeout=visibility_timeout,
                max_receive_count=max_receive_count,
            )
        elif backend == "sqs":
            queue = make_sqs_queue(
                name,
                visibility_timeout=visibility_timeout,
                max_receive_count=max_receive_count,
            )
        else:
            raise AssertionError(f"no queue factory for backend {backend!r}")
        opened.append(queue)
        return queue

    yield make
    for queue in opened:
        queue.close()

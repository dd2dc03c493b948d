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

BACKENDS = ["sqlite"]


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
        else:
            raise AssertionError(f"no queue factory for backend {backend!r}")
        opened.append(queue)
        return queue

    yield make
    for queue in opened:
        queue.close()

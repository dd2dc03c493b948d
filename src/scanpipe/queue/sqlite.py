"""The embedded queue: SQS semantics on one SQLite file shared by many processes.

This is the default queue when no cloud is involved: producers and workers on
one machine open the same file, each process with its own connection. The
file is in WAL mode, so readers never block the single writer, and every state
change is one SQLite transaction, so a process killed at any point (SIGKILL
included) leaves each message either before or after the change, never half
way. ``receive`` takes the write lock up front (``BEGIN IMMEDIATE``), so two
consumers can never be handed the same message.

One file holds any number of named queues. A queue named ``N`` comes with its
dead-letter queue ``N-dlq`` in the same file; names ending in ``-dlq`` are
therefore reserved for dead-letter queues, which have no dead-letter queue of
their own.

Where SQS leaves a choice open, this backend decides as follows:

* a message moved to the dead-letter queue after ``max_receive_count``
  receives, and back by ``redrive``, keeps its message id and its original
  ``sent_at`` (SQS keeps the original enqueue time too, but may hand out new
  ids on redrive, so callers should not rely on the id surviving);
* ``dead_letter`` (from the base class) sends a copy and then deletes the
  original: a process killed in between leaves the message in both queues,
  a duplicate rather than a loss;
* in the dead-letter queue a message keeps the receive count it reached, so
  ``peek`` shows how often it was tried; ``redrive`` resets it to zero;
* a receipt handle acts on its message until the message is received again,
  even after its visibility timeout has run out; ``change_visibility`` then
  fails, as SQS's does for a message no longer in flight.

Visibility deadlines are wall-clock seconds (``time.time()``), the one clock
that all processes sharing the file agree on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from scanpipe.errors import ConfigError, ReceiptHandleInvalid, TransientError
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

#: Suffix that names a queue's dead-letter queue.
DLQ_SUFFIX = "-dlq"

#: SQS queue names: letters, digits, ``-`` and ``_``, at most 80 characters.
_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,80}")

#: How long a transaction waits for another process's write lock before the
#: operation fails as transient; writes hold it for well under a millisecond.
_BUSY_TIMEOUT_SECONDS = 15.0

#: SQLite synchronous modes. In WAL mode NORMAL already survives any process
#: crash, SIGKILL included: a commit is in the WAL file (in the OS page cache)
#: when it returns. FULL also fsyncs the WAL at every commit, so the commit
#: survives a power cut or kernel panic too. Only sends need that: a send that
#: returned is a promise to the producer. Losing a receive or a delete to a
#: power cut only redelivers a message, which SQS's at-least-once delivery
#: allows anyway, and the WAL is replayed in order, so a durable send also
#: makes everything committed before it durable. Measured with
#: bench/queue_throughput.py (2 producers, 2 consumers, batches of 10, ext4 on
#: a shared virtual disk, 2 cores), in messages/s: FULL everywhere 1,000-1,600,
#: FULL for sends only 1,400-2,400, NORMAL everywhere 4,100-6,100. Sends are
#: then bound by one fsync each, taken under the write lock.
DURABLE_SYNCHRONOUS = "FULL"
SYNCHRONOUS = "NORMAL"

#: Long polling checks the file at growing intervals up to this cap, so an idle
#: consumer costs a cheap indexed read 20 times a second and never spins.
_POLL_FIRST_SECONDS = 0.005
_POLL_MAX_SECONDS = 0.05

#: Rows moved per transaction by ``redrive``, so a huge dead-letter queue does
#: not hold the write lock for long.
_REDRIVE_CHUNK = 500

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    dead_letter_queue TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    attributes TEXT NOT NULL,
    sent_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt_handle TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_visibility ON messages (queue, visible_at);
COMMIT;
"""

_COLUMNS = "seq, message_id, body, attributes, sent_at, receive_count"


class _Database:
    """One process's connection to a queue file, shared by the queues on it.

    The connection is guarded by a lock so that threads (a worker and its
    heartbeat) can share a queue object, and reopened after ``fork``, because
    an SQLite connection must never be used by two processes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._synchronous = SYNCHRONOUS
        self._conn: sqlite3.Connection | None = self._connect()

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=_BUSY_TIMEOUT_SECONDS,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise ConfigError(
                f"Expected a queue database that can be opened at {self.path}, "
                f"found: {exc}. Check that its folder exists and is writable."
            ) from exc

        try:
            mode = self._enable_wal(conn)
            if mode != "wal":
                log.warning(
                    "queue database not in WAL mode path=%s mode=%s", self.path, mode
                )
            conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")
            self._synchronous = SYNCHRONOUS
            conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            conn.close()
            raise ConfigError(
                f"Expected {self.path} to be a scanpipe queue database (SQLite), "
                f"found that it cannot be used: {exc}."
            ) from exc
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> str:
        # Switching a new file to WAL needs an exclusive lock, which SQLite
        # does not wait for; several processes creating the file at once retry.
        deadline = time.monotonic() + _BUSY_TIMEOUT_SECONDS
        while True:
            try:
                row = conn.execute("PRAGMA journal_mode = WAL").fetchone()
                return str(row[0]).lower()
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ConfigError(
                f"Expected an open queue, found that its database {self.path} "
                "was closed; open the queue again to use it."
            )
        return self._conn

    def _after_fork(self) -> None:
        # A connection or lock inherited through fork belongs to the parent:
        # SQLite forbids sharing one between processes.
        if self._pid != os.getpid() and self._conn is not None:
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self._conn = self._connect()

    @contextlib.contextmanager
    def transaction(
        self, action: str, *, durable: bool = False
    ) -> Iterator[sqlite3.Connection]:
        """Run the block as one write transaction, translating SQLite errors.

        A ``durable`` transaction is on disk, not only in the OS's cache, when
        the block returns.
        """
        self._after_fork()
        with self._translated(action), self._lock:
            conn = self._connection()
            # Producers and consumers mostly stay in their own mode, so the
            # pragma runs only when a process switches between the two.
            wanted = DURABLE_SYNCHRONOUS if durable else SYNCHRONOUS
            if wanted != self._synchronous:
                conn.execute(f"PRAGMA synchronous = {wanted}")
                self._synchronous = wanted
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise

    @contextlib.contextmanager
    def reading(self, action: str) -> Iterator[sqlite3.Connection]:
        """Run single-statement reads, which need no explicit transaction."""
        self._after_fork()
        with self._translated(action), self._lock:
            yield self._connection()

    @contextlib.contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise TransientError(
                f"Could not {action} in queue database {self.path}: expected it "
                f"to be available, found: {exc}."
            ) from exc
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"Could not {action} in queue database {self.path}: expected a "
                f"sound SQLite file, found: {exc}."
            ) from exc

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None


class SqliteQueue(Queue):
    """A queue with SQS semantics in an SQLite file; see the module docstring.

    ::

        queue = SqliteQueue("/var/lib/scanpipe/queue.db", name="scans")
        queue.send('{"key": "in/a.nii.gz"}')
        for message in queue.receive(10, wait_seconds=20):
            ...
            queue.delete(message.receipt_handle)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str = "scans",
        visibility_timeout: float = 30,
        max_receive_count: int = 3,
        url: str | None = None,
        _database: _Database | None = None,
    ) -> None:
        _check_name(name)
        _check_seconds("visibility_timeout", visibility_timeout, MAX_VISIBILITY_SECONDS)
        if isinstance(max_receive_count, bool) or not isinstance(
            max_receive_count, int
        ):
            raise ConfigError(
                "max_receive_count must be a whole number; "
                f"found {max_receive_count!r}."
            )
        if max_receive_count < 0:
            raise ConfigError(
                "max_receive_count must be 0 (never dead-letter) or more; "
                f"found {max_receive_count}."
            )

        self.name = name
        self.path = Path(path)
        if url is None:
            url = f"sqlite://{self.path.absolute()}?name={name}"
        self.url = url
        self.visibility_timeout = float(visibility_timeout)
        self._dlq_name = None if name.endswith(DLQ_SUFFIX) else name + DLQ_SUFFIX
        if self._dlq_name is not None:
            _check_name(self._dlq_name)
        # A dead-letter queue has nowhere to move messages to.
        self.max_receive_count = max_receive_count if self._dlq_name else 0
        self._dlq: SqliteQueue | None = None

        self._owns_database = _database is None
        self._db = _database if _database is not None else _Database(self.path)
        if self._owns_database:
            self._register()

    def __repr__(self) -> str:
        return f"SqliteQueue({str(self.path)!r}, name={self.name!r})"

    def _register(self) -> None:
        names = [(self.name, self._dlq_name)]
        if self._dlq_name is not None:
            names.append((self._dlq_name, None))
        now = time.time()
        with self._db.transaction("register the queue") as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO queues (name, dead_letter_queue, created_at) "
                "VALUES (?, ?, ?)",
                [(name, dlq, now) for name, dlq in names],
            )

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
        _check_seconds("delay_seconds", delay_seconds, MAX_DELAY_SECONDS)
        encoded = _encode_attributes(attributes or {})

        message_id = str(uuid.uuid4())
        now = time.time()
        with self._db.transaction("send a message", durable=True) as conn:
            conn.execute(
                "INSERT INTO messages (queue, message_id, body, attributes, sent_at, "
                "visible_at) VALUES (?, ?, ?, ?, ?, ?)",
                (self.name, message_id, body, encoded, now, now + delay_seconds),
            )
        log.debug("message sent queue=%s id=%s", self.name, message_id)
        return message_id

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
        _check_seconds("wait_seconds", wait_seconds, MAX_WAIT_SECONDS)
        timeout = (
            self.visibility_timeout
            if visibility_timeout is None
            else visibility_timeout
        )
        _check_seconds("visibility_timeout", timeout, MAX_VISIBILITY_SECONDS)

        messages = self._receive_now(max_messages, timeout)
        if messages or wait_seconds <= 0:
            return messages

        deadline = time.monotonic() + wait_seconds
        interval = _POLL_FIRST_SECONDS
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            due_in = self._seconds_until_visible()
            if due_in is not None and due_in <= 0:
                messages = self._receive_now(max_messages, timeout)
                if messages:
                    return messages
                # Another consumer was quicker; wait before looking again.
                due_in = None
            pause = min(interval, remaining)
            if due_in is not None:
                pause = min(pause, due_in)
            time.sleep(pause)
            interval = min(interval * 2, _POLL_MAX_SECONDS)

    def _seconds_until_visible(self) -> float | None:
        """Seconds until the next message becomes visible (<= 0: one is now)."""
        with self._db.reading("look for visible messages") as conn:
            row = conn.execute(
                "SELECT MIN(visible_at) FROM messages WHERE queue = ?", (self.name,)
            ).fetchone()
        return None if row[0] is None else row[0] - time.time()

    def _receive_now(self, max_messages: int, timeout: float) -> list[Message]:
        received: list[Message] = []
        dead_lettered: list[tuple[str, int]] = []
        seen: set[int] = set()
        with self._db.transaction("receive messages") as conn:
            now = time.time()
            # Rows moved to the dead-letter queue do not fill the batch, so
            # look again until it is full or nothing visible is left. With a
            # zero visibility timeout a received row stays visible; ``seen``
            # keeps it from being handed out twice in one batch.
            while len(received) < max_messages:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM messages WHERE queue = ? AND "
                    "visible_at <= ? ORDER BY visible_at, seq LIMIT ?",
                    (self.name, now, max_messages - len(received) + len(seen)),
                ).fetchall()
                fresh = [row for row in rows if row[0] not in seen]
                if not fresh:
                    break
                for seq, message_id, body, attributes, sent_at, count in fresh:
                    seen.add(seq)
                    if len(received) == max_messages:
                        break
                    if self.max_receive_count and count >= self.max_receive_count:
                        self._move_to_dead_letter_queue(
                            conn, seq, attributes, count, now
                        )
                        dead_lettered.append((message_id, count))
                        continue
                    handle = f"{message_id}.{secrets.token_urlsafe(16)}"
                    conn.execute(
                        "UPDATE messages SET receive_count = receive_count + 1, "
                        "receipt_handle = ?, visible_at = ? WHERE seq = ?",
                        (handle, now + timeout, seq),
                    )
                    received.append(
                        Message(
                            message_id=message_id,
                            receipt_handle=handle,
                            body=body,
                            receive_count=count + 1,
                            sent_at=sent_at,
                            attributes=json.loads(attributes),
                        )
                    )

        for message_id, count in dead_lettered:
            log.info(
                "message dead-lettered queue=%s id=%s reason=max_receive_count "
                "receive_count=%d",
                self.name,
                message_id,
                count,
            )
        return received

    def _move_to_dead_letter_queue(
        self,
        conn: sqlite3.Connection,
        seq: int,
        attributes: str,
        count: int,
        now: float,
    ) -> None:
        moved = json.loads(attributes)
        moved[REASON_ATTRIBUTE] = "max_receive_count"
        moved[DETAIL_ATTRIBUTE] = (
            f"received {count} times, maxReceiveCount is {self.max_receive_count}"
        )
        conn.execute(
            "UPDATE messages SET queue = ?, attributes = ?, receipt_handle = NULL, "
            "visible_at = ? WHERE seq = ?",
            (self._dlq_name, _encode_attributes(moved), now, seq),
        )

    def change_visibility(self, receipt_handle: str, timeout_seconds: float) -> None:
        _check_seconds("timeout_seconds", timeout_seconds, MAX_VISIBILITY_SECONDS)
        message_id = self._message_id_of(receipt_handle)
        with self._db.transaction("change a message's visibility") as conn:
            now = time.time()
            row = conn.execute(
                "SELECT seq, receipt_handle, visible_at FROM messages "
                "WHERE message_id = ? AND queue = ?",
                (message_id, self.name),
            ).fetchone()
            self._check_current(message_id, receipt_handle, row)
            if row[2] <= now:
                raise ReceiptHandleInvalid(
                    f"Cannot change the visibility of message {message_id} in queue "
                    f"'{self.name}': expected it in flight, found that its visibility "
                    "timeout has run out, so other consumers may receive it."
                )
            conn.execute(
                "UPDATE messages SET visible_at = ? WHERE seq = ?",
                (now + timeout_seconds, row[0]),
            )

    def delete(self, receipt_handle: str) -> None:
        message_id = self._message_id_of(receipt_handle)
        with self._db.transaction("delete a message") as conn:
            deleted = conn.execute(
                "DELETE FROM messages WHERE message_id = ? AND queue = ? "
                "AND receipt_handle = ?",
                (message_id, self.name, receipt_handle),
            ).rowcount
            if not deleted:
                row = conn.execute(
                    "SELECT seq, receipt_handle, visible_at FROM messages "
                    "WHERE message_id = ? AND queue = ?",
                    (message_id, self.name),
                ).fetchone()
                self._check_current(message_id, receipt_handle, row)
        log.debug("message deleted queue=%s id=%s", self.name, message_id)

    def _message_id_of(self, receipt_handle: str) -> str:
        message_id, _, token = str(receipt_handle).partition(".")
        if not token or len(message_id) != 36:
            shown = repr(receipt_handle)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise ReceiptHandleInvalid(
                f"Expected a receipt handle returned by receive on queue "
                f"'{self.name}', found {shown}."
            )
        return message_id

    def _check_current(
        self, message_id: str, receipt_handle: str, row: tuple | None
    ) -> None:
        if row is None:
            raise ReceiptHandleInvalid(
                f"The receipt handle for message {message_id} is stale: expected the "
                f"message in queue '{self.name}', found it gone (deleted, or moved "
                "to the dead-letter queue)."
            )
        if row[1] != receipt_handle:
            raise ReceiptHandleInvalid(
                f"The receipt handle for message {message_id} is stale: the message "
                f"was received again from queue '{self.name}' since, and only the "
                "newest receipt handle acts on it."
            )

    def depth(self) -> QueueDepth:
        with self._db.reading("count messages") as conn:
            now = time.time()
            visible, in_flight, delayed = conn.execute(
                "SELECT COALESCE(SUM(visible_at <= :now), 0), "
                "COALESCE(SUM(visible_at > :now AND receipt_handle IS NOT NULL), 0), "
                "COALESCE(SUM(visible_at > :now AND receipt_handle IS NULL), 0) "
                "FROM messages WHERE queue = :queue",
                {"now": now, "queue": self.name},
            ).fetchone()
        return QueueDepth(visible=visible, in_flight=in_flight, delayed=delayed)

    def dead_letter_queue(self) -> SqliteQueue | None:
        if self._dlq_name is None:
            return None
        if self._dlq is None:
            self._dlq = SqliteQueue(
                self.path,
                name=self._dlq_name,
                visibility_timeout=self.visibility_timeout,
                max_receive_count=0,
                _database=self._db,
            )
        return self._dlq

    def redrive(self, max_messages: int | None = None) -> int:
        if self._dlq_name is None:
            return 0
        if max_messages is not None and max_messages < 0:
            raise ConfigError(f"max_messages must be 0 or more; found {max_messages}.")

        moved = 0
        while max_messages is None or moved < max_messages:
            chunk = _REDRIVE_CHUNK
            if max_messages is not None:
                chunk = min(chunk, max_messages - moved)
            with self._db.transaction("redrive dead letters") as conn:
                now = time.time()
                rows = conn.execute(
                    "SELECT seq, attributes FROM messages WHERE queue = ? "
                    "ORDER BY seq LIMIT ?",
                    (self._dlq_name, chunk),
                ).fetchall()
                for seq, attributes in rows:
                    kept = json.loads(attributes)
                    kept.pop(REASON_ATTRIBUTE, None)
                    kept.pop(DETAIL_ATTRIBUTE, None)
                    conn.execute(
                        "UPDATE messages SET queue = ?, attributes = ?, "
                        "receive_count = 0, receipt_handle = NULL, visible_at = ? "
                        "WHERE seq = ?",
                        (self.name, _encode_attributes(kept), now, seq),
                    )
            moved += len(rows)
            if len(rows) < chunk:
                break

        if moved:
            log.info("dead letters redriven queue=%s count=%d", self.name, moved)
        return moved

    def peek(self, max_messages: int = 100) -> list[Message]:
        if max_messages < 0:
            raise ConfigError(f"max_messages must be 0 or more; found {max_messages}.")
        with self._db.reading("list messages") as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE queue = ? ORDER BY seq LIMIT ?",
                (self.name, max_messages),
            ).fetchall()
        # An empty receipt handle: deleting or extending it fails cleanly.
        return [
            Message(
                message_id=message_id,
                receipt_handle="",
                body=body,
                receive_count=count,
                sent_at=sent_at,
                attributes=json.loads(attributes),
            )
            for _, message_id, body, attributes, sent_at, count in rows
        ]

    def close(self) -> None:
        if self._owns_database:
            self._db.close()


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            "A queue name must be 1 to 80 letters, digits, '-' or '_' (as in SQS), "
            f"including the '{DLQ_SUFFIX}' of its dead-letter queue; found {name!r}."
        )


def _check_seconds(parameter: str, value: float, limit: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{parameter} must be a number of seconds; found {value!r}.")
    if not 0 <= value <= limit:
        raise ConfigError(
            f"{parameter} must be from 0 to {limit:g} seconds; found {value!r}."
        )


def _encode_attributes(attributes: dict[str, str]) -> str:
    for key, value in attributes.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(
                "Message attributes must map strings to strings; found "
                f"{type(key).__name__} -> {type(value).__name__} for {key!r}."
            )
    return json.dumps(attributes, ensure_ascii=False, sort_keys=True)

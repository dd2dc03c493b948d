"""The ledger: a SQLite record of every scan, worker lifetime and scaling event.

It is the raw material of the bill: the cost model computes per-scan cost from
worker lifetimes (started, model loaded, busy intervals, stopped) and the
stage timings of each scan. Every process of a run opens the same file (WAL
mode, short transactions), so workers, the supervisor and ``scanpipe status``
can share it. Times are seconds since the epoch.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Stages of one scan, in order; their seconds add up to ``total``.
STAGES = ("queue_wait", "download", "validate", "inference", "postprocess", "upload")

#: Outcomes a scan record can end with.
OUTCOMES = ("done", "duplicate", "dead_letter", "retry", "released", "skipped")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scans (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    input_key TEXT NOT NULL,
    etag TEXT,
    size_bytes INTEGER,
    voxels INTEGER,
    model_id TEXT,
    worker_id TEXT,
    attempts INTEGER,
    outcome TEXT NOT NULL,
    reason TEXT,
    detail TEXT,
    output_key TEXT,
    event_time REAL,
    received_at REAL,
    finished_at REAL NOT NULL,
    seconds TEXT NOT NULL,
    total_seconds REAL,
    end_to_end_seconds REAL
);
CREATE INDEX IF NOT EXISTS scans_finished ON scans (finished_at);
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY,
    pid INTEGER,
    model_id TEXT,
    started_at REAL NOT NULL,
    model_loaded_at REAL,
    stopped_at REAL,
    stop_reason TEXT
);
CREATE TABLE IF NOT EXISTS busy (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    worker_id TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL
);
CREATE TABLE IF NOT EXISTS scaling_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    from_replicas INTEGER NOT NULL,
    to_replicas INTEGER NOT NULL,
    metric INTEGER,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    at REAL NOT NULL,
    visible INTEGER NOT NULL,
    in_flight INTEGER NOT NULL,
    dead_letters INTEGER NOT NULL,
    workers_desired INTEGER NOT NULL,
    workers_running INTEGER NOT NULL,
    workers_busy INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_at ON samples (at);
CREATE TABLE IF NOT EXISTS settlements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    window_start REAL NOT NULL,
    window_end REAL NOT NULL,
    priced_as TEXT NOT NULL,
    total_usd REAL NOT NULL,
    settled_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS scan_costs (
    scan_id INTEGER PRIMARY KEY REFERENCES scans (id),
    settlement_id INTEGER NOT NULL REFERENCES settlements (id),
    busy_seconds REAL NOT NULL,
    compute_usd REAL NOT NULL,
    cold_start_usd REAL NOT NULL,
    cooldown_tail_usd REAL NOT NULL,
    baseline_usd REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    worker_id TEXT PRIMARY KEY,
    cpu_core_seconds REAL,
    ram_byte_seconds REAL,
    peak_rss_bytes INTEGER,
    gpu_busy_seconds REAL,
    sampled_at REAL NOT NULL
);
"""


@dataclass
class ScanRecord:
    """What one attempt at one scan left behind."""

    input_key: str
    outcome: str
    finished_at: float
    etag: str | None = None
    size_bytes: int | None = None
    voxels: int | None = None
    model_id: str | None = None
    worker_id: str | None = None
    attempts: int | None = None
    reason: str | None = None
    detail: str | None = None
    output_key: str | None = None
    event_time: float | None = None
    received_at: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float | None = None
    end_to_end_seconds: float | None = None
    #: The ledger's row id; None until the record is read back.
    scan_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WorkerLifetime:
    worker_id: str
    pid: int | None
    model_id: str | None
    started_at: float
    model_loaded_at: float | None
    stopped_at: float | None
    stop_reason: str | None
    busy: tuple[tuple[float, float | None], ...]


@dataclass(frozen=True)
class ScanCostRow:
    """The settled cost of one scan record, in USD."""

    scan_id: int
    busy_seconds: float
    compute_usd: float
    cold_start_usd: float
    cooldown_tail_usd: float
    baseline_usd: float


@dataclass(frozen=True)
class WorkerUsage:
    """What one worker process used over its lifetime; None where unmeasured.

    ``cpu_core_seconds``: user + system CPU seconds. ``ram_byte_seconds``: the
    resident set size integrated over time. ``gpu_busy_seconds``: NVML's
    utilisation integrated over time (a GPU busy half the time for an hour
    gives 1800).
    """

    worker_id: str
    cpu_core_seconds: float | None = None
    ram_byte_seconds: float | None = None
    peak_rss_bytes: int | None = None
    gpu_busy_seconds: float | None = None


@dataclass(frozen=True)
class Sample:
    """The queue and the workers at one autoscaler tick: the timeline's points."""

    at: float
    visible: int
    in_flight: int
    dead_letters: int
    workers_desired: int
    workers_running: int
    workers_busy: int


@dataclass(frozen=True)
class ScalingRecord:
    at: float
    from_replicas: int
    to_replicas: int
    metric: int | None
    reason: str


class Ledger:
    """The ledger file of one run directory (or of one cloud worker)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by a worker's threads (scan loop, signal
        # handling), serialised by a lock.
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # -- workers -------------------------------------------------------------

    def worker_started(
        self, worker_id: str, *, pid: int, at: float | None = None
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO workers (worker_id, pid, started_at) "
                "VALUES (?, ?, ?)",
                (worker_id, pid, at or time.time()),
            )

    def model_loaded(
        self, worker_id: str, model_id: str, at: float | None = None
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE workers SET model_loaded_at = ?, model_id = ? "
                "WHERE worker_id = ?",
                (at or time.time(), model_id, worker_id),
            )

    def worker_stopped(
        self, worker_id: str, reason: str, at: float | None = None
    ) -> None:
        when = at or time.time()
        with self._tx() as conn:
            conn.execute(
                "UPDATE workers SET stopped_at = ?, stop_reason = ? "
                "WHERE worker_id = ? AND stopped_at IS NULL",
                (when, reason, worker_id),
            )
            # A worker killed mid-scan never closed its busy interval.
            conn.execute(
                "UPDATE busy SET ended_at = ? WHERE worker_id = ? AND ended_at IS NULL",
                (when, worker_id),
            )

    def busy_started(self, worker_id: str, at: float | None = None) -> int:
        with self._tx() as conn:
            cursor = conn.execute(
                "INSERT INTO busy (worker_id, started_at) VALUES (?, ?)",
                (worker_id, at or time.time()),
            )
            return int(cursor.lastrowid or 0)

    def busy_ended(self, busy_id: int, at: float | None = None) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE busy SET ended_at = ? WHERE id = ? AND ended_at IS NULL",
                (at or time.time(), busy_id),
            )

    def is_busy(self, worker_id: str) -> bool:
        rows = self._query(
            "SELECT 1 FROM busy WHERE worker_id = ? AND ended_at IS NULL LIMIT 1",
            (worker_id,),
        )
        return bool(rows)

    def record_usage(self, usage: WorkerUsage, at: float | None = None) -> None:
        """Store a worker's usage so far; later samples replace earlier ones."""
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO usage (worker_id, cpu_core_seconds, "
                "ram_byte_seconds, peak_rss_bytes, gpu_busy_seconds, sampled_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    usage.worker_id,
                    usage.cpu_core_seconds,
                    usage.ram_byte_seconds,
                    usage.peak_rss_bytes,
                    usage.gpu_busy_seconds,
                    at or time.time(),
                ),
            )

    def usage(self) -> dict[str, WorkerUsage]:
        """Every worker's recorded usage, by worker id."""
        rows = self._query(
            "SELECT worker_id, cpu_core_seconds, ram_byte_seconds, peak_rss_bytes, "
            "gpu_busy_seconds FROM usage"
        )
        return {row[0]: WorkerUsage(*row) for row in rows}

    def workers(self) -> list[WorkerLifetime]:
        busy: dict[str, list[tuple[float, float | None]]] = {}
        for worker_id, start, end in self._query(
            "SELECT worker_id, started_at, ended_at FROM busy ORDER BY started_at"
        ):
            busy.setdefault(worker_id, []).append((start, end))
        rows = self._query(
            "SELECT worker_id, pid, model_id, started_at, model_loaded_at, "
            "stopped_at, stop_reason FROM workers ORDER BY started_at"
        )
        return [
            WorkerLifetime(
                worker_id=row[0],
                pid=row[1],
                model_id=row[2],
                started_at=row[3],
                model_loaded_at=row[4],
                stopped_at=row[5],
                stop_reason=row[6],
                busy=tuple(busy.get(row[0], ())),
            )
            for row in rows
        ]

    # -- scans ---------------------------------------------------------------

    def record_scan(self, record: ScanRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO scans (input_key, etag, size_bytes, voxels, model_id, "
                "worker_id, attempts, outcome, reason, detail, output_key, event_time, "
                "received_at, finished_at, seconds, total_seconds, end_to_end_seconds) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.input_key,
                    record.etag,
                    record.size_bytes,
                    record.voxels,
                    record.model_id,
                    record.worker_id,
                    record.attempts,
                    record.outcome,
                    record.reason,
                    record.detail,
                    record.output_key,
                    record.event_time,
                    record.received_at,
                    record.finished_at,
                    json.dumps(record.seconds),
                    record.total_seconds,
                    record.end_to_end_seconds,
                ),
            )

    def scans(self, *, since: float | None = None) -> list[ScanRecord]:
        columns = [
            "input_key",
            "outcome",
            "finished_at",
            "etag",
            "size_bytes",
            "voxels",
            "model_id",
            "worker_id",
            "attempts",
            "reason",
            "detail",
            "output_key",
            "event_time",
            "received_at",
            "seconds",
            "total_seconds",
            "end_to_end_seconds",
            "id AS scan_id",
        ]
        rows = self._query(
            f"SELECT {', '.join(columns)} FROM scans WHERE finished_at >= ? "
            "ORDER BY finished_at",
            (since or 0.0,),
        )
        # "id AS scan_id" is read back as scan_id.
        names = [column.rpartition(" ")[2] for column in columns]
        records = []
        for row in rows:
            fields: dict[str, Any] = dict(zip(names, row, strict=True))
            fields["seconds"] = json.loads(fields["seconds"])
            records.append(ScanRecord(**fields))
        return records

    # -- costs ---------------------------------------------------------------

    def record_settlement(
        self,
        *,
        window_start: float,
        window_end: float,
        priced_as: str,
        costs: Sequence[ScanCostRow],
    ) -> int:
        """Store the final cost of each scan of a settled window; its id."""
        total = sum(
            c.compute_usd + c.cold_start_usd + c.cooldown_tail_usd + c.baseline_usd
            for c in costs
        )
        with self._tx() as conn:
            cursor = conn.execute(
                "INSERT INTO settlements (window_start, window_end, priced_as, "
                "total_usd, settled_at) VALUES (?, ?, ?, ?, ?)",
                (window_start, window_end, priced_as, total, time.time()),
            )
            settlement_id = int(cursor.lastrowid or 0)
            conn.executemany(
                "INSERT OR REPLACE INTO scan_costs (scan_id, settlement_id, "
                "busy_seconds, compute_usd, cold_start_usd, cooldown_tail_usd, "
                "baseline_usd) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        c.scan_id,
                        settlement_id,
                        c.busy_seconds,
                        c.compute_usd,
                        c.cold_start_usd,
                        c.cooldown_tail_usd,
                        c.baseline_usd,
                    )
                    for c in costs
                ],
            )
        return settlement_id

    def settled_until(self) -> float | None:
        """The end of the last settled window, if any was settled."""
        rows = self._query("SELECT MAX(window_end) FROM settlements")
        return None if rows[0][0] is None else float(rows[0][0])

    def scan_costs(self) -> dict[int, ScanCostRow]:
        """The settled cost of every scan that has one, by scan id."""
        rows = self._query(
            "SELECT scan_id, busy_seconds, compute_usd, cold_start_usd, "
            "cooldown_tail_usd, baseline_usd FROM scan_costs"
        )
        return {row[0]: ScanCostRow(*row) for row in rows}

    # -- scaling -------------------------------------------------------------

    def record_scaling(
        self,
        *,
        at: float,
        from_replicas: int,
        to_replicas: int,
        metric: int | None,
        reason: str,
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO scaling_events (at, from_replicas, to_replicas, metric, "
                "reason) VALUES (?, ?, ?, ?, ?)",
                (at, from_replicas, to_replicas, metric, reason),
            )

    def scaling_events(self) -> list[ScalingRecord]:
        rows = self._query(
            "SELECT at, from_replicas, to_replicas, metric, reason "
            "FROM scaling_events ORDER BY at, id"
        )
        return [ScalingRecord(*row) for row in rows]

    # -- timeline ------------------------------------------------------------

    def record_sample(self, sample: Sample) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO samples (at, visible, in_flight, dead_letters, "
                "workers_desired, workers_running, workers_busy) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    sample.at,
                    sample.visible,
                    sample.in_flight,
                    sample.dead_letters,
                    sample.workers_desired,
                    sample.workers_running,
                    sample.workers_busy,
                ),
            )

    def samples(self, *, since: float | None = None) -> list[Sample]:
        rows = self._query(
            "SELECT at, visible, in_flight, dead_letters, workers_desired, "
            "workers_running, workers_busy FROM samples WHERE at >= ? ORDER BY at",
            (since or 0.0,),
        )
        return [Sample(*row) for row in rows]

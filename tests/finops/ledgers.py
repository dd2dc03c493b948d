"""Ledger contents for cost tests: hand-made lifetimes and seeded random ones."""

from __future__ import annotations

import random
from dataclasses import dataclass

from scanpipe.ledger import ScanRecord, WorkerLifetime

#: A plausible epoch time; the ledger reads 0.0 as "now".
T0 = 1_700_000_000.0


def make_worker(
    worker_id: str,
    started_at: float,
    stopped_at: float | None,
    busy: tuple[tuple[float, float | None], ...] = (),
    model_loaded_at: float | None = None,
) -> WorkerLifetime:
    return WorkerLifetime(
        worker_id=worker_id,
        pid=1,
        model_id="threshold",
        started_at=started_at,
        model_loaded_at=model_loaded_at,
        stopped_at=stopped_at,
        stop_reason=None if stopped_at is None else "done",
        busy=busy,
    )


def make_scan(
    key: str,
    worker_id: str | None,
    finished_at: float,
    total_seconds: float | None = None,
    *,
    outcome: str = "done",
    event_time: float | None = None,
) -> ScanRecord:
    return ScanRecord(
        input_key=key,
        outcome=outcome,
        finished_at=finished_at,
        etag=f"etag-{key}",
        worker_id=worker_id,
        total_seconds=total_seconds,
        event_time=event_time,
        end_to_end_seconds=None if event_time is None else finished_at - event_time,
    )


@dataclass(frozen=True)
class GeneratedLedger:
    workers: list[WorkerLifetime]
    scans: list[ScanRecord]
    end: float


def generate_ledger(seed: int) -> GeneratedLedger:
    """A random but consistent ledger: workers whose busy intervals never
    overlap, scans that finish inside their interval, and the awkward cases
    mixed in: workers that never worked, busy intervals holding no scan or
    several, open lifetimes and open intervals, scans of unknown workers."""
    rng = random.Random(seed)
    workers: list[WorkerLifetime] = []
    scans: list[ScanRecord] = []
    end = T0
    for number in range(rng.randint(0, 4)):
        worker_id = f"w{number}"
        clock = T0 + rng.uniform(0, 600)
        started = clock
        loaded = clock + rng.uniform(1, 120)
        clock = loaded + rng.uniform(0, 60)
        busy: list[tuple[float, float | None]] = []
        for _ in range(rng.choice([0, 0, 1, 2, 5, 12])):
            start, length = clock, rng.uniform(0.01, 90)
            busy.append((start, start + length))
            for scan_number in range(rng.choice([0, 1, 1, 1, 2, 3])):
                finished = start + length * rng.uniform(0.5, 1.0)
                scans.append(
                    make_scan(
                        f"{worker_id}-{len(busy)}-{scan_number}",
                        worker_id,
                        finished,
                        rng.choice([None, 0.0, rng.uniform(0.01, length)]),
                        outcome=rng.choice(["done", "done", "duplicate", "retry"]),
                    )
                )
            clock = start + length + rng.uniform(0, 120)
        stopped: float | None = clock + rng.uniform(0, 300)
        if rng.random() < 0.15:
            stopped = None
            if busy and rng.random() < 0.5:
                busy[-1] = (busy[-1][0], None)
        workers.append(make_worker(worker_id, started, stopped, tuple(busy), loaded))
        end = max(end, clock if stopped is None else stopped)
    for number in range(rng.choice([0, 0, 1, 2])):
        scans.append(make_scan(f"ghost-{number}", "ghost", T0 + rng.uniform(0, 900)))
    rng.shuffle(scans)
    return GeneratedLedger(workers, scans, max(end, T0 + 900) + rng.uniform(0, 600))


def lifetime_seconds(worker: WorkerLifetime, start: float, end: float) -> float:
    """Seconds of a worker's lifetime inside [start, end], computed directly."""
    stop = worker.stopped_at if worker.stopped_at is not None else end
    return max(0.0, min(stop, end) - max(worker.started_at, start))

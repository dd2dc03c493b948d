"""What each scan cost: its own work, and its share of what the work needed.

Cluster cost tools stop at pods; this module goes down to the scans a worker
pod served. Every second of every worker's lifetime inside the window, and
every second of the always-on baseline, lands on exactly one scan row, so the
rows of a window add up to the window's total.

How a worker's lifetime is cut (each piece clipped to the window):

``compute``
    The busy intervals that hold a scan of the window (a busy interval is one
    queue message; a scan belongs to the latest interval that began before it
    finished). When one message held several scans, they split its seconds in
    proportion to their own ``total_seconds``.
``cold_start``
    From the worker's start to its first busy interval: booting, loading the
    model, and the first wait for a message. The worker paid it to serve all
    its scans, so it is shared among them.
``cooldown_tail``
    Everything else after the first busy interval: the waits between
    messages, busy intervals that held no scan of the window (skipped events,
    a scan still running), and the tail from the last scan to the stop. It is
    the price of staying warm, the same thing the cooldown period buys, so it
    is shared among the worker's scans too.
``baseline``
    The always-on part (the CPU node and the control plane) for the whole
    window, shared among all the scans of the window.

Sharing rule: every share follows busy seconds. A worker's cold start and
tail go to its scans in the window in proportion to their compute seconds; the
baseline goes to all scans of the window the same way. A 40-second inference
carries more of the overhead than a duplicate that was skipped in 10 ms, as a
proportional (OpenCost "weighted") share of shared costs does. When all the
weights are zero the shares are equal.

Workers that served no scan of the window (a scale-up that others drained the
queue for, or the tail of a worker whose scans finished before the window)
still cost money in the window; their cold start and tail are pooled and
shared among all the window's scans, in the same categories and by the same
weights as the baseline. A window without any scan has nobody to charge; its
cost is reported as ``unattributed_usd``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from scanpipe.errors import ConfigError
from scanpipe.ledger import ScanRecord, WorkerLifetime

#: A scan finished this long after its busy interval ended still belongs to
#: it: the record's clock and the ledger's are read a moment apart.
_FINISH_SLACK_SECONDS = 1.0


class HourlyRates(Protocol):
    """The two prices the model needs; :class:`~scanpipe.finops.catalog.Pricing`
    and :class:`Rates` both provide them."""

    @property
    def worker_usd_per_hour(self) -> float: ...

    @property
    def baseline_usd_per_hour(self) -> float: ...


@dataclass(frozen=True)
class Rates:
    """Plain hourly rates, e.g. derived from measured OpenCost costs."""

    worker_usd_per_hour: float
    baseline_usd_per_hour: float


@dataclass(frozen=True)
class Window:
    """A period of time in seconds since the epoch, start <= end."""

    start: float
    end: float

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ConfigError(
                f"A cost window must end after it starts; found start "
                f"{self.start} and end {self.end}."
            )

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def hours(self) -> float:
        return self.seconds / 3600.0

    def overlap_seconds(self, start: float, end: float) -> float:
        """How many seconds of [start, end] fall inside the window."""
        return max(0.0, min(end, self.end) - max(start, self.start))

    def holds(self, at: float) -> bool:
        return self.start <= at <= self.end


@dataclass(frozen=True)
class CostBreakdown:
    """Cost in USD split by what it paid for."""

    compute_usd: float = 0.0
    cold_start_usd: float = 0.0
    cooldown_tail_usd: float = 0.0
    baseline_usd: float = 0.0

    @property
    def total_usd(self) -> float:
        return (
            self.compute_usd
            + self.cold_start_usd
            + self.cooldown_tail_usd
            + self.baseline_usd
        )

    def to_json(self) -> dict[str, float]:
        return {
            "compute": self.compute_usd,
            "cold_start": self.cold_start_usd,
            "cooldown_tail": self.cooldown_tail_usd,
            "baseline": self.baseline_usd,
        }


@dataclass(frozen=True)
class ScanCost:
    """What one scan record (one attempt at one scan) cost."""

    input_key: str
    outcome: str
    worker_id: str | None
    finished_at: float
    busy_seconds: float
    compute_usd: float
    cold_start_usd: float
    cooldown_tail_usd: float
    baseline_usd: float
    #: The scan's ledger row and its mask key, where known.
    scan_id: int | None = None
    output_key: str | None = None

    @property
    def total_usd(self) -> float:
        return (
            self.compute_usd
            + self.cold_start_usd
            + self.cooldown_tail_usd
            + self.baseline_usd
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "input_key": self.input_key,
            "outcome": self.outcome,
            "worker_id": self.worker_id,
            "finished_at": self.finished_at,
            "busy_seconds": self.busy_seconds,
            "compute_usd": self.compute_usd,
            "cold_start_usd": self.cold_start_usd,
            "cooldown_tail_usd": self.cooldown_tail_usd,
            "baseline_usd": self.baseline_usd,
            "total_usd": self.total_usd,
        }


@dataclass(frozen=True)
class WorkerSeconds:
    """Worker seconds inside the window, by the same cut as the costs."""

    compute_seconds: float = 0.0
    cold_start_seconds: float = 0.0
    cooldown_tail_seconds: float = 0.0

    @property
    def total_seconds(self) -> float:
        return (
            self.compute_seconds + self.cold_start_seconds + self.cooldown_tail_seconds
        )


@dataclass(frozen=True)
class CostReport:
    """The per-scan rows of a window and the window's totals.

    ``totals.total_usd`` is what the window cost. The rows add up to it,
    except ``unattributed_usd``, which is non-zero only when the window holds
    no scan at all.
    """

    window: Window
    rows: tuple[ScanCost, ...]
    totals: CostBreakdown
    worker_seconds: WorkerSeconds
    unattributed_usd: float
    rates: Rates

    @property
    def total_usd(self) -> float:
        return self.totals.total_usd

    @property
    def rows_total_usd(self) -> float:
        return sum(row.total_usd for row in self.rows)


@dataclass
class _Row:
    """A scan row while costs are being added to it."""

    scan: ScanRecord
    busy_seconds: float = 0.0
    costs: dict[str, float] = field(
        default_factory=lambda: {
            "compute": 0.0,
            "cold_start": 0.0,
            "cooldown_tail": 0.0,
            "baseline": 0.0,
        }
    )

    def freeze(self) -> ScanCost:
        return ScanCost(
            input_key=self.scan.input_key,
            outcome=self.scan.outcome,
            worker_id=self.scan.worker_id,
            finished_at=self.scan.finished_at,
            busy_seconds=self.busy_seconds,
            compute_usd=self.costs["compute"],
            cold_start_usd=self.costs["cold_start"],
            cooldown_tail_usd=self.costs["cooldown_tail"],
            baseline_usd=self.costs["baseline"],
            scan_id=self.scan.scan_id,
            output_key=self.scan.output_key,
        )


@dataclass(frozen=True)
class _WorkerCut:
    """One worker's in-window seconds: compute per row, cold start, tail."""

    compute_by_row: dict[int, float]
    cold_start_seconds: float
    cooldown_tail_seconds: float


def cost_scans(
    scans: Iterable[ScanRecord],
    workers: Iterable[WorkerLifetime],
    window: Window,
    pricing: HourlyRates,
) -> CostReport:
    """Cost every scan that finished inside ``window``.

    Args:
        scans: scan records, e.g. ``ledger.scans()``; those that finished
            outside the window are left out.
        workers: worker lifetimes, e.g. ``ledger.workers()``; a worker still
            running counts until the window's end.
        window: the period to cost.
        pricing: the hourly price of one worker and of the baseline.

    Returns:
        The per-scan rows, in the order the scans finished, and the totals.
    """
    rates = Rates(pricing.worker_usd_per_hour, pricing.baseline_usd_per_hour)
    worker_usd_per_second = rates.worker_usd_per_hour / 3600.0
    rows = [_Row(scan) for scan in scans if window.holds(scan.finished_at)]
    rows.sort(key=lambda row: row.scan.finished_at)

    seconds, pooled = _charge_workers(rows, workers, window, worker_usd_per_second)

    baseline_usd = rates.baseline_usd_per_hour * window.hours
    everyone = list(range(len(rows)))
    if everyone:
        _share(rows, everyone, {**pooled, "baseline": baseline_usd})

    totals = CostBreakdown(
        compute_usd=seconds["compute"] * worker_usd_per_second,
        cold_start_usd=seconds["cold_start"] * worker_usd_per_second,
        cooldown_tail_usd=seconds["cooldown_tail"] * worker_usd_per_second,
        baseline_usd=baseline_usd,
    )
    return CostReport(
        window=window,
        rows=tuple(row.freeze() for row in rows),
        totals=totals,
        worker_seconds=WorkerSeconds(
            compute_seconds=seconds["compute"],
            cold_start_seconds=seconds["cold_start"],
            cooldown_tail_seconds=seconds["cooldown_tail"],
        ),
        unattributed_usd=0.0 if rows else totals.total_usd,
        rates=rates,
    )


def _charge_workers(
    rows: list[_Row],
    workers: Iterable[WorkerLifetime],
    window: Window,
    worker_usd_per_second: float,
) -> tuple[dict[str, float], dict[str, float]]:
    """Charge each worker's compute, cold start and tail to its own scans.

    Returns the worker seconds by category, and the overheads of workers that
    served no scan of the window, in USD, for the caller to share out.
    """
    by_worker: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        if row.scan.worker_id is not None:
            by_worker.setdefault(row.scan.worker_id, []).append(index)

    pooled = {"cold_start": 0.0, "cooldown_tail": 0.0}
    seconds = {"compute": 0.0, "cold_start": 0.0, "cooldown_tail": 0.0}
    for worker in workers:
        mine = by_worker.get(worker.worker_id, [])
        cut = _cut_worker(worker, rows, mine, window)
        for index, busy in cut.compute_by_row.items():
            rows[index].busy_seconds += busy
            rows[index].costs["compute"] += busy * worker_usd_per_second
        seconds["compute"] += sum(cut.compute_by_row.values())
        seconds["cold_start"] += cut.cold_start_seconds
        seconds["cooldown_tail"] += cut.cooldown_tail_seconds

        overheads = {
            "cold_start": cut.cold_start_seconds * worker_usd_per_second,
            "cooldown_tail": cut.cooldown_tail_seconds * worker_usd_per_second,
        }
        if mine:
            _share(rows, mine, overheads)
        else:
            for category, usd in overheads.items():
                pooled[category] += usd
    return seconds, pooled


def _share(rows: list[_Row], indexes: Sequence[int], costs: dict[str, float]) -> None:
    """Add each cost to the rows at ``indexes`` in proportion to busy seconds."""
    weights = [rows[i].busy_seconds for i in indexes]
    total = sum(weights)
    fractions = (
        [w / total for w in weights]
        if total > 0
        else [1.0 / len(indexes)] * len(indexes)
    )
    for index, fraction in zip(indexes, fractions, strict=True):
        for category, usd in costs.items():
            rows[index].costs[category] += usd * fraction


def worker_interval(worker: WorkerLifetime, window: Window) -> tuple[float, float]:
    """A worker's lifetime as (start, end); a running worker ends with the
    window, and a stop recorded before the start is read as the start."""
    end = worker.stopped_at if worker.stopped_at is not None else window.end
    return worker.started_at, max(worker.started_at, end)


def _busy_intervals(
    worker: WorkerLifetime, life: tuple[float, float]
) -> list[tuple[float, float]]:
    """The worker's busy intervals, closed and clipped to its lifetime."""
    start, end = life
    intervals = []
    for busy_start, busy_end in worker.busy:
        closed_end = busy_end if busy_end is not None else end
        low, high = max(start, busy_start), min(end, closed_end)
        if high > low:
            intervals.append((low, high))
    intervals.sort()
    return intervals


def _cut_worker(
    worker: WorkerLifetime, rows: list[_Row], mine: list[int], window: Window
) -> _WorkerCut:
    life = worker_interval(worker, window)
    intervals = _busy_intervals(worker, life)
    starts = [low for low, _ in intervals]

    # Each scan of this worker goes to the latest interval that began before
    # it finished, if it finished within that interval.
    held: dict[int, list[int]] = {}
    for index in mine:
        finished_at = rows[index].scan.finished_at
        position = bisect.bisect_right(starts, finished_at) - 1
        if position < 0:
            continue
        if finished_at <= intervals[position][1] + _FINISH_SLACK_SECONDS:
            held.setdefault(position, []).append(index)

    compute_by_row: dict[int, float] = {}
    for position, indexes in held.items():
        low, high = intervals[position]
        busy = window.overlap_seconds(low, high)
        weights = [max(0.0, rows[i].scan.total_seconds or 0.0) for i in indexes]
        total = sum(weights)
        for i, weight in zip(indexes, weights, strict=True):
            fraction = weight / total if total > 0 else 1.0 / len(indexes)
            compute_by_row[i] = compute_by_row.get(i, 0.0) + busy * fraction

    first_busy = starts[0] if starts else life[1]
    cold = window.overlap_seconds(life[0], first_busy)
    in_window = window.overlap_seconds(*life)
    # Overlapping busy rows in a damaged ledger could make this negative;
    # the tail is then nothing, and the totals still match the rows.
    tail = max(0.0, in_window - cold - sum(compute_by_row.values()))
    return _WorkerCut(compute_by_row, cold, tail)

"""What a run did, computed from its ledger and queue: the demo's closing summary
and ``scanpipe status``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from scanpipe.ledger import Ledger
from scanpipe.queue.base import Queue


@dataclass(frozen=True)
class RunSummary:
    scans_done: int
    scans_failed: int
    duplicates: int
    p50_seconds: float | None
    p95_seconds: float | None
    mean_inference_seconds: float | None
    peak_workers: int
    scaling_events: list[dict[str, Any]]
    dead_letters: int
    visible: int
    in_flight: int
    workers: int
    wall_seconds: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation, or None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(
    ledger: Ledger, queue: Queue, *, since: float | None = None
) -> RunSummary:
    """Summarise the scans finished since ``since`` and the queue as it is now."""
    scans = ledger.scans(since=since)
    done = [s for s in scans if s.outcome == "done"]
    done_keys = {(s.input_key, s.etag) for s in done}
    failed_keys = {
        (s.input_key, s.etag) for s in scans if s.outcome == "dead_letter"
    } - done_keys
    latencies = [s.end_to_end_seconds for s in done if s.end_to_end_seconds is not None]
    inference = [s.seconds.get("inference", 0.0) for s in done]
    events = [e for e in ledger.scaling_events() if since is None or e.at >= since]
    workers = [
        w
        for w in ledger.workers()
        if w.stopped_at is None and (since is None or w.started_at >= since)
    ]
    depth = queue.depth()
    dlq = queue.dead_letter_queue()
    dead = 0
    if dlq is not None:
        dlq_depth = dlq.depth()
        dead = dlq_depth.visible + dlq_depth.in_flight + dlq_depth.delayed
    starts = [s.event_time for s in scans if s.event_time is not None]
    ends = [s.finished_at for s in scans]
    return RunSummary(
        scans_done=len(done_keys),
        scans_failed=len(failed_keys),
        duplicates=sum(1 for s in scans if s.outcome == "duplicate"),
        p50_seconds=percentile(latencies, 50),
        p95_seconds=percentile(latencies, 95),
        mean_inference_seconds=sum(inference) / len(inference) if inference else None,
        peak_workers=max((e.to_replicas for e in events), default=0),
        scaling_events=[
            {
                "at": e.at,
                "from": e.from_replicas,
                "to": e.to_replicas,
                "metric": e.metric,
                "reason": e.reason,
            }
            for e in events
        ],
        dead_letters=dead,
        visible=depth.visible,
        in_flight=depth.in_flight,
        workers=len(workers),
        wall_seconds=(max(ends) - min(starts)) if starts and ends else None,
    )

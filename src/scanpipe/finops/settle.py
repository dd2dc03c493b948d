"""Settling the bill: each scan's final cost, stored in the ledger and its record.

A scan's cost is not known when its mask is written: its share of the
cooldown tail depends on how long its worker stays up afterwards, and its
share of the baseline on how many other scans the same window holds. So the
cost is settled once the workers that served a window have all stopped (the
embedded stack does it each time it is back at zero workers): the window runs
from the end of the previous settlement, or the first activity, to the last
activity; every scan that finished in it gets its row in the ledger's
``scan_costs``, and each done scan's provenance record gets a ``cost``
section. The settled rows of a window add up to that window's total.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scanpipe.errors import ScanpipeError
from scanpipe.finops.catalog import Pricing
from scanpipe.finops.per_scan import CostReport, ScanCost, Window, cost_scans
from scanpipe.finops.report import report_window
from scanpipe.ledger import Ledger, ScanCostRow
from scanpipe.storage.base import ObjectStore
from scanpipe.worker.outputs import provenance_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settlement:
    """One settled window: its id in the ledger and its costs."""

    settlement_id: int
    costs: CostReport


def settle(
    ledger: Ledger,
    pricing: Pricing,
    *,
    output_store: ObjectStore | None = None,
    now: float | None = None,
) -> Settlement | None:
    """Settle every scan finished since the last settlement.

    Returns None, settling nothing, while a worker is still running (its
    tail is not over) or when no scan finished since the last settlement.
    With ``output_store``, each done scan's provenance record there gets
    its ``cost`` section.
    """
    now = time.time() if now is None else now
    workers = ledger.workers()
    if any(worker.stopped_at is None for worker in workers):
        return None
    after = ledger.settled_until()
    scans = [
        s for s in ledger.scans(since=after) if after is None or s.finished_at > after
    ]
    if not scans:
        return None
    # Only the workers that lived after the last settlement count.
    recent = [w for w in workers if after is None or (w.stopped_at or now) > after]
    full = report_window(scans, recent, since=None, now=now)
    window = Window(full.start if after is None else max(full.start, after), full.end)
    costs = cost_scans(scans, recent, window, pricing)
    rows = [_row(cost) for cost in costs.rows if cost.scan_id is not None]
    settlement_id = ledger.record_settlement(
        window_start=window.start,
        window_end=window.end,
        priced_as=pricing.describe(),
        costs=rows,
    )
    log.info(
        "costs settled window_seconds=%.1f scans=%d total_usd=%.6f",
        window.end - window.start,
        len(rows),
        costs.total_usd,
    )
    if output_store is not None:
        annotate_records(output_store, costs.rows, pricing)
    return Settlement(settlement_id, costs)


def cost_section(cost: ScanCost, pricing: Pricing) -> dict[str, Any]:
    """The ``cost`` section of a provenance record."""
    return {
        "total_usd": cost.total_usd,
        "breakdown_usd": {
            "compute": cost.compute_usd,
            "cold_start": cost.cold_start_usd,
            "cooldown_tail": cost.cooldown_tail_usd,
            "baseline": cost.baseline_usd,
        },
        "busy_seconds": cost.busy_seconds,
        "priced_as": pricing.describe(),
    }


def annotate_records(
    store: ObjectStore, costs: Sequence[ScanCost], pricing: Pricing
) -> int:
    """Add the ``cost`` section to the provenance record of each done scan.

    A record that is missing or unreadable is logged and skipped: the ledger
    holds the cost either way. Returns how many records were updated.
    """
    updated = 0
    for cost in costs:
        if cost.outcome != "done" or not cost.output_key:
            continue
        key = provenance_key(cost.output_key)
        try:
            record = json.loads(store.get_bytes(key))
            record["cost"] = cost_section(cost, pricing)
            store.put_bytes(key, json.dumps(record, indent=2).encode())
        except (ScanpipeError, OSError, ValueError) as exc:
            log.warning("cost not added to record key=%s error=%s", key, exc)
            continue
        updated += 1
    return updated


def _row(cost: ScanCost) -> ScanCostRow:
    assert cost.scan_id is not None
    return ScanCostRow(
        scan_id=cost.scan_id,
        busy_seconds=cost.busy_seconds,
        compute_usd=cost.compute_usd,
        cold_start_usd=cost.cold_start_usd,
        cooldown_tail_usd=cost.cooldown_tail_usd,
        baseline_usd=cost.baseline_usd,
    )

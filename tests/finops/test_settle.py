"""Settling: each scan's final cost lands in the ledger and in its provenance
record once its workers have stopped, and the settled rows add up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scanpipe.finops.catalog import Pricing
from scanpipe.finops.report import build_report
from scanpipe.finops.settle import settle
from scanpipe.ledger import Ledger, ScanRecord
from scanpipe.storage.local import LocalStore
from scanpipe.worker.outputs import provenance_key
from tests.finops.ledgers import T0


def run_worker(
    ledger: Ledger,
    store: LocalStore,
    worker_id: str,
    start: float,
    scans: list[tuple[str, float, float]],
    stop: float | None,
) -> None:
    """A worker that started at ``start``, did ``(key, begin, end)`` scans, and
    stopped at ``stop`` (None: still running)."""
    ledger.worker_started(worker_id, pid=1, at=start)
    for key, begin, end in scans:
        busy = ledger.busy_started(worker_id, at=begin)
        ledger.busy_ended(busy, at=end)
        mask = f"{key}.m.mask.nii.gz"
        store.put_bytes(
            provenance_key(mask), json.dumps({"input": {"key": key}}).encode()
        )
        ledger.record_scan(
            ScanRecord(
                input_key=key,
                outcome="done",
                finished_at=end,
                worker_id=worker_id,
                output_key=mask,
                received_at=begin,
                total_seconds=end - begin,
                end_to_end_seconds=end - begin,
            )
        )
    if stop is not None:
        ledger.worker_stopped(worker_id, "idle", at=stop)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.db")


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "outbox", bucket="output")


def test_nothing_is_settled_while_a_worker_runs(
    ledger: Ledger, store: LocalStore
) -> None:
    run_worker(ledger, store, "w1", T0, [("a", T0 + 10, T0 + 40)], stop=None)

    assert settle(ledger, Pricing(), output_store=store, now=T0 + 60) is None
    assert ledger.scan_costs() == {}


def test_settled_rows_are_the_report_of_the_window(
    ledger: Ledger, store: LocalStore
) -> None:
    run_worker(
        ledger,
        store,
        "w1",
        T0,
        [("a", T0 + 10, T0 + 40), ("b", T0 + 45, T0 + 100)],
        stop=T0 + 130,
    )
    run_worker(ledger, store, "w2", T0 + 5, [("c", T0 + 20, T0 + 50)], stop=T0 + 80)

    settlement = settle(ledger, Pricing(), output_store=store, now=T0 + 200)

    assert settlement is not None
    report = build_report(ledger, pricing=Pricing(), now=T0 + 200)
    costs = ledger.scan_costs()
    assert len(costs) == 3
    settled_total = sum(
        c.compute_usd + c.cold_start_usd + c.cooldown_tail_usd + c.baseline_usd
        for c in costs.values()
    )
    assert settled_total == pytest.approx(report["cost_usd"], rel=0.01)
    # Each provenance record carries its own row of the bill.
    by_key = {row["input_key"]: row for row in report["scan_costs"]}
    for key in ("a", "b", "c"):
        record = json.loads(store.get_bytes(provenance_key(f"{key}.m.mask.nii.gz")))
        assert record["input"] == {"key": key}, "the record keeps what it said"
        assert record["cost"]["total_usd"] == pytest.approx(by_key[key]["total_usd"])
        assert set(record["cost"]["breakdown_usd"]) == {
            "compute",
            "cold_start",
            "cooldown_tail",
            "baseline",
        }


def test_each_scan_is_settled_once_and_later_windows_add_up(
    ledger: Ledger, store: LocalStore
) -> None:
    pricing = Pricing()
    run_worker(ledger, store, "w1", T0, [("a", T0 + 10, T0 + 40)], stop=T0 + 70)
    first = settle(ledger, pricing, output_store=store, now=T0 + 100)
    assert settle(ledger, pricing, output_store=store, now=T0 + 150) is None

    run_worker(
        ledger, store, "w2", T0 + 1000, [("b", T0 + 1010, T0 + 1030)], stop=T0 + 1060
    )
    second = settle(ledger, pricing, output_store=store, now=T0 + 1100)

    assert first is not None and second is not None
    assert first.costs.window.end <= second.costs.window.start
    assert len(ledger.scan_costs()) == 2
    # The second window holds only the second worker's life: no cost twice.
    assert second.costs.worker_seconds.total_seconds == pytest.approx(60.0)


def test_a_missing_record_is_skipped_and_the_ledger_still_settled(
    ledger: Ledger, store: LocalStore
) -> None:
    run_worker(ledger, store, "w1", T0, [("a", T0 + 10, T0 + 40)], stop=T0 + 70)
    store.delete(provenance_key("a.m.mask.nii.gz"))

    assert settle(ledger, Pricing(), output_store=store, now=T0 + 100) is not None
    assert len(ledger.scan_costs()) == 1

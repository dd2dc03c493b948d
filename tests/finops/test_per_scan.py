"""Per-scan cost: the cut of a worker's lifetime, the shares, and the rule
that the scans of a window add up to what the window cost."""

from __future__ import annotations

import pytest

from scanpipe.errors import ConfigError
from scanpipe.finops.catalog import Pricing
from scanpipe.finops.per_scan import Rates, Window, cost_scans
from tests.finops.ledgers import (
    T0,
    generate_ledger,
    lifetime_seconds,
    make_scan,
    make_worker,
)

#: 0.001 USD per worker second and 0.0001 per baseline second: round numbers.
RATES = Rates(worker_usd_per_hour=3.6, baseline_usd_per_hour=0.36)
HOUR = Window(T0, T0 + 3600)


def make_two_scan_worker() -> list:
    """Started at 0, model loaded at 60, scans A (100-130) and B (150-160),
    stopped at 200: 100 s of cold start, 40 s of compute, 60 s of tail."""
    return [
        make_worker(
            "w1",
            T0,
            T0 + 200,
            busy=((T0 + 100, T0 + 130), (T0 + 150, T0 + 160)),
            model_loaded_at=T0 + 60,
        )
    ]


def by_key(report) -> dict:
    return {row.input_key: row for row in report.rows}


def test_hand_computed_worker_with_two_scans() -> None:
    scans = [make_scan("a", "w1", T0 + 129, 29.0), make_scan("b", "w1", T0 + 160, 9.0)]

    report = cost_scans(scans, make_two_scan_worker(), HOUR, RATES)

    a, b = by_key(report)["a"], by_key(report)["b"]
    assert (a.busy_seconds, b.busy_seconds) == (30.0, 10.0)
    assert (a.compute_usd, b.compute_usd) == pytest.approx((0.030, 0.010))
    # Cold start (100 s) and tail (20 s between + 40 s after) follow busy
    # seconds, 3:1.
    assert (a.cold_start_usd, b.cold_start_usd) == pytest.approx((0.075, 0.025))
    assert (a.cooldown_tail_usd, b.cooldown_tail_usd) == pytest.approx((0.045, 0.015))
    assert (a.baseline_usd, b.baseline_usd) == pytest.approx((0.27, 0.09))
    assert report.totals.to_json() == pytest.approx(
        {"compute": 0.04, "cold_start": 0.1, "cooldown_tail": 0.06, "baseline": 0.36}
    )
    assert report.total_usd == pytest.approx(0.56)
    assert report.rows_total_usd == pytest.approx(0.56)


def test_scans_of_one_message_split_it_by_their_own_seconds() -> None:
    workers = [make_worker("w1", T0, T0 + 50, busy=((T0 + 10, T0 + 50),))]
    scans = [make_scan("a", "w1", T0 + 40, 30.0), make_scan("b", "w1", T0 + 49, 10.0)]

    rows = by_key(cost_scans(scans, workers, HOUR, RATES))

    assert (rows["a"].busy_seconds, rows["b"].busy_seconds) == (30.0, 10.0)


def test_scans_of_one_message_without_seconds_split_it_equally() -> None:
    workers = [make_worker("w1", T0, T0 + 50, busy=((T0 + 10, T0 + 50),))]
    scans = [make_scan("a", "w1", T0 + 40), make_scan("b", "w1", T0 + 49, 0.0)]

    rows = by_key(cost_scans(scans, workers, HOUR, RATES))

    assert (rows["a"].busy_seconds, rows["b"].busy_seconds) == (20.0, 20.0)


def test_worker_that_served_no_scan_is_shared_by_all_scans_as_cold_start() -> None:
    workers = [
        *make_two_scan_worker(),
        make_worker("w2", T0 + 1000, T0 + 1100, model_loaded_at=T0 + 1050),
    ]
    scans = [make_scan("a", "w1", T0 + 129, 29.0), make_scan("b", "w1", T0 + 160, 9.0)]

    report = cost_scans(scans, workers, HOUR, RATES)

    rows = by_key(report)
    # w2's 100 s (0.1 USD) lands on A and B by busy seconds, 3:1.
    assert rows["a"].cold_start_usd == pytest.approx(0.075 + 0.075)
    assert rows["b"].cold_start_usd == pytest.approx(0.025 + 0.025)
    assert report.totals.cold_start_usd == pytest.approx(0.2)
    assert report.rows_total_usd == pytest.approx(report.total_usd)


def test_scan_of_an_unknown_worker_has_no_compute_and_no_weight() -> None:
    scans = [
        make_scan("a", "w1", T0 + 129, 29.0),
        make_scan("ghost", "gone", T0 + 140, 5.0),
    ]

    rows = by_key(cost_scans(scans, make_two_scan_worker(), HOUR, RATES))

    assert rows["ghost"].total_usd == 0.0
    assert rows["a"].total_usd == pytest.approx(0.56)


def test_window_clips_the_lifetime_and_the_busy_interval() -> None:
    window = Window(T0 + 120, T0 + 3600)
    scans = [make_scan("a", "w1", T0 + 129, 29.0), make_scan("b", "w1", T0 + 160, 9.0)]

    report = cost_scans(scans, make_two_scan_worker(), window, RATES)

    rows = by_key(report)
    assert rows["a"].busy_seconds == pytest.approx(10.0)
    assert report.totals.cold_start_usd == 0.0
    assert report.worker_seconds.total_seconds == pytest.approx(80.0)
    assert report.rows_total_usd == pytest.approx(report.total_usd)


def test_scans_outside_the_window_are_left_out() -> None:
    scans = [make_scan("late", "w1", T0 + 4000, 1.0)]

    report = cost_scans(scans, make_two_scan_worker(), HOUR, RATES)

    assert report.rows == ()
    assert report.unattributed_usd == pytest.approx(report.total_usd)
    assert report.total_usd == pytest.approx(0.2 + 0.36)


def test_running_worker_costs_until_the_window_ends() -> None:
    workers = [make_worker("w1", T0, None, busy=((T0 + 10, None),))]
    scans = [make_scan("a", "w1", T0 + 20, 10.0)]

    report = cost_scans(scans, workers, HOUR, RATES)

    assert report.worker_seconds.total_seconds == pytest.approx(3600.0)
    assert by_key(report)["a"].busy_seconds == pytest.approx(3590.0)


def test_idle_window_without_scans_is_unattributed() -> None:
    workers = [make_worker("w1", T0, T0 + 300, model_loaded_at=T0 + 60)]

    report = cost_scans([], workers, HOUR, RATES)

    assert report.rows == ()
    assert report.totals.cold_start_usd == pytest.approx(0.3)
    assert report.unattributed_usd == pytest.approx(0.3 + 0.36)


def test_catalog_pricing_is_a_g5_worker_and_a_t3_baseline() -> None:
    scans = [make_scan("a", "w1", T0 + 129, 29.0)]

    report = cost_scans(scans, make_two_scan_worker(), HOUR, Pricing())

    assert report.rates == Rates(1.006, 0.0832 + 0.10)
    assert report.total_usd == pytest.approx(200 / 3600 * 1.006 + 0.1832)


def test_window_must_not_end_before_it_starts() -> None:
    with pytest.raises(ConfigError, match="must end after it starts"):
        Window(T0 + 10, T0)


@pytest.mark.parametrize("seed", range(300))
def test_scans_of_a_window_add_up_to_what_the_window_cost(seed: int) -> None:
    ledger = generate_ledger(seed)
    window = Window(T0 + (seed % 5) * 60, ledger.end - (seed % 3) * 30)

    report = cost_scans(ledger.scans, ledger.workers, window, RATES)

    # The window's bill, computed directly from the lifetimes.
    bill_usd = (
        sum(lifetime_seconds(w, window.start, window.end) for w in ledger.workers)
        / 1000
        + window.seconds / 10000
    )
    assert report.total_usd == pytest.approx(bill_usd, rel=1e-9, abs=1e-12)
    if report.rows:
        assert report.unattributed_usd == 0.0
        assert report.rows_total_usd == pytest.approx(bill_usd, rel=0.01)
    else:
        assert report.unattributed_usd == pytest.approx(bill_usd)
    assert all(row.total_usd >= 0 for row in report.rows)

"""The report on a ledger written with the real Ledger class: its fields, the
projection arithmetic, usage-based efficiency, OpenCost as the price source,
and the command body behind ``scanpipe report``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanpipe.errors import ConfigError
from scanpipe.finops.catalog import DEFAULT_CATALOG, Pricing, split_node_price
from scanpipe.finops.opencost import OpenCostClient, format_window
from scanpipe.finops.per_scan import Window, cost_scans
from scanpipe.finops.report import (
    HOURS_PER_MONTH,
    WorkerUsage,
    build_report,
    cost_rate_usd_per_hour,
    parse_since,
    project_monthly_usd,
    report_command_output,
    report_window,
)
from scanpipe.ledger import Ledger, ScanRecord
from tests.finops.conftest import OpenCostServer
from tests.finops.ledgers import T0

GIB = 1024**3
WORKER_USD_PER_HOUR = 1.006
BASELINE_USD_PER_HOUR = 0.0832 + 0.10
#: The run below: w1 lives 200 s, w2 160 s; the window is 300 s.
WORKER_SECONDS = 360.0
WINDOW_HOURS = 300 / 3600


def make_busy_scan(
    ledger: Ledger,
    worker_id: str,
    busy: tuple[float, float],
    key: str,
    *,
    outcome: str = "done",
    arrived: float | None = None,
    total_seconds: float | None = None,
) -> None:
    """One message: a busy interval holding one scan record."""
    busy_id = ledger.busy_started(worker_id, at=T0 + busy[0])
    ledger.busy_ended(busy_id, at=T0 + busy[1])
    finished = T0 + busy[1] - 0.5
    ledger.record_scan(
        ScanRecord(
            input_key=key,
            outcome=outcome,
            finished_at=finished,
            etag=f"etag-{key}",
            worker_id=worker_id,
            event_time=None if arrived is None else T0 + arrived,
            received_at=T0 + busy[0],
            total_seconds=total_seconds,
            end_to_end_seconds=None if arrived is None else finished - T0 - arrived,
        )
    )


def make_run(ledger: Ledger) -> Ledger:
    """Two workers scaled from zero and back.

    w1: started 0, model loaded 60, scans a (100-130) and b (150-160), stopped
    200. w2: started 140, loaded 170, scan c (180-240), a duplicate (250-252)
    and a dead letter (260-261), stopped 300. Compute 103 s, cold start
    100 + 40 s, tail 60 + 57 s.
    """
    ledger.worker_started("w1", pid=11, at=T0)
    ledger.model_loaded("w1", "threshold", at=T0 + 60)
    make_busy_scan(ledger, "w1", (100, 130), "a", arrived=90, total_seconds=29)
    make_busy_scan(ledger, "w1", (150, 160), "b", arrived=95, total_seconds=9)
    ledger.worker_stopped("w1", "idle", at=T0 + 200)

    ledger.worker_started("w2", pid=12, at=T0 + 140)
    ledger.model_loaded("w2", "threshold", at=T0 + 170)
    make_busy_scan(ledger, "w2", (180, 240), "c", arrived=100, total_seconds=59)
    make_busy_scan(ledger, "w2", (250, 252), "a", outcome="duplicate")
    make_busy_scan(ledger, "w2", (260, 261), "e", outcome="dead_letter")
    ledger.worker_stopped("w2", "idle", at=T0 + 300)
    return ledger


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    ledger = make_run(Ledger(tmp_path / "ledger.db"))
    ledger.close()
    yield tmp_path


@pytest.fixture
def ledger(run_dir: Path) -> Iterator[Ledger]:
    opened = Ledger(run_dir / "ledger.db")
    yield opened
    opened.close()


def test_business_fields(ledger: Ledger) -> None:
    report = build_report(ledger, now=T0 + 3600)

    cost_usd = (
        WORKER_SECONDS / 3600 * WORKER_USD_PER_HOUR
        + WINDOW_HOURS * BASELINE_USD_PER_HOUR
    )
    assert report["scans"] == 3
    assert report["scans_failed"] == 1
    assert report["scan_attempts"] == 5
    # End to end: a 39.5 s, b 64.5 s, c 139.5 s.
    assert report["p50_seconds"] == pytest.approx(64.5)
    assert report["p95_seconds"] == pytest.approx(64.5 + 0.9 * 75)
    assert report["cost_usd"] == pytest.approx(cost_usd)
    assert report["cost_per_scan_usd"] == pytest.approx(cost_usd / 3)
    assert report["cost_per_hour_usd"] == pytest.approx(cost_usd / WINDOW_HOURS)
    per_second = WORKER_USD_PER_HOUR / 3600
    assert report["cost_breakdown_usd"] == pytest.approx(
        {
            "compute": 103 * per_second,
            "cold_start": 140 * per_second,
            "cooldown_tail": 117 * per_second,
            "baseline": WINDOW_HOURS * BASELINE_USD_PER_HOUR,
        }
    )
    assert sum(report["cost_per_scan_breakdown_usd"].values()) == pytest.approx(
        cost_usd / 3
    )
    assert report["unattributed_usd"] == 0.0
    assert report["window"] == {
        "start": "2023-11-14T22:13:20+00:00",
        "end": "2023-11-14T22:18:20+00:00",
        "hours": pytest.approx(WINDOW_HOURS),
    }
    assert report["pricing_source"] == "catalog"
    assert report["instance_type"] == "g5.xlarge"
    assert report["opencost"] is None
    json.dumps(report)


def test_efficiency_is_null_until_usage_is_recorded(ledger: Ledger) -> None:
    report = build_report(ledger, now=T0 + 3600)

    assert report["cpu_efficiency"] is None
    assert report["ram_efficiency"] is None
    assert report["gpu_utilisation"] is None
    assert report["node_utilisation"] == {"cpu": None, "ram": None}
    # Worker time without a scan: 140 s cold start + 117 s tail of 360 s.
    assert report["idle_share"] == pytest.approx(257 / 360)
    # A worker pod that requests the whole node leaves OpenCost no idle.
    assert report["allocation"]["idle_usd"] == pytest.approx(0.0, abs=1e-12)


def test_monthly_projection_keeps_the_baseline_fixed(ledger: Ledger) -> None:
    report = build_report(ledger, now=T0 + 3600)

    variable_per_hour = WORKER_SECONDS / 3600 * WORKER_USD_PER_HOUR / WINDOW_HOURS
    assert report["scans_per_hour"] == pytest.approx(3 / WINDOW_HOURS)
    assert report["monthly_projection_usd"] == pytest.approx(
        {
            "current": 730 * (BASELINE_USD_PER_HOUR + variable_per_hour),
            "x10": 730 * (BASELINE_USD_PER_HOUR + 10 * variable_per_hour),
        }
    )


@pytest.mark.parametrize(
    ("variable_usd", "hours", "baseline", "factor", "expected"),
    [
        pytest.param(1.0, 1.0, 0.0, 1.0, 730.0, id="variable-only"),
        pytest.param(0.0, 2.0, 0.5, 10.0, 365.0, id="baseline-does-not-scale"),
        pytest.param(2.0, 4.0, 0.1, 10.0, 730 * (0.1 + 5.0), id="ten-times"),
        pytest.param(1.0, 0.0, 0.1, 1.0, None, id="no-window-no-rate"),
    ],
)
def test_projection_arithmetic(
    variable_usd: float,
    hours: float,
    baseline: float,
    factor: float,
    expected: float | None,
) -> None:
    result = project_monthly_usd(
        variable_usd=variable_usd,
        window_hours=hours,
        baseline_usd_per_hour=baseline,
        volume_factor=factor,
    )

    assert result == (None if expected is None else pytest.approx(expected))
    assert HOURS_PER_MONTH == 730.0


@pytest.mark.parametrize(
    ("workers", "expected"),
    [
        pytest.param(0, BASELINE_USD_PER_HOUR, id="scaled-to-zero-pays-baseline"),
        pytest.param(2, 2 * 1.006 + BASELINE_USD_PER_HOUR, id="two-workers"),
    ],
)
def test_cost_rate_is_workers_times_node_price_plus_baseline(
    workers: int, expected: float
) -> None:
    assert cost_rate_usd_per_hour(workers) == pytest.approx(expected)


def test_cost_rate_takes_the_report_options() -> None:
    pricing = Pricing(instance_type="g4dn.xlarge")

    assert cost_rate_usd_per_hour(1, pricing=pricing, now=T0) == pytest.approx(
        0.526 + BASELINE_USD_PER_HOUR
    )


def test_usage_gives_efficiency_utilisation_and_opencost_idle(ledger: Ledger) -> None:
    # Each worker averaged 1 core, 4 GiB, and kept its GPU busy while it had
    # a message; the pod asks for 2 of 4 cores and 8 of 16 GiB.
    usage = {
        "w1": WorkerUsage("w1", 200.0, 4 * GIB * 200.0, None, 40.0),
        "w2": WorkerUsage("w2", 160.0, 4 * GIB * 160.0, None, 63.0),
    }
    pricing = Pricing(worker_cpu_request_cores=2, worker_ram_request_gib=8)

    report = build_report(ledger, pricing=pricing, usage=usage, now=T0 + 3600)

    assert report["cpu_efficiency"] == pytest.approx(0.5)
    assert report["ram_efficiency"] == pytest.approx(0.5)
    assert report["node_utilisation"] == pytest.approx({"cpu": 0.25, "ram": 0.25})
    assert report["gpu_utilisation"] == pytest.approx(103 / 360)
    # Unrequested: 2 cores and 8 GiB of each node for 0.1 h.
    prices = split_node_price(DEFAULT_CATALOG.instance("g5.xlarge"))
    idle_usd = 0.1 * (
        2 * prices.cpu_usd_per_core_hour + 8 * prices.ram_usd_per_gib_hour
    )
    assert report["allocation"]["idle_usd"] == pytest.approx(idle_usd)
    assert report["allocation"]["idle_share"] == pytest.approx(idle_usd / 0.1006)


def test_since_starts_the_window_and_runs_it_to_now(ledger: Ledger) -> None:
    report = build_report(ledger, since=T0 + 145, now=T0 + 3600)

    assert report["window"]["hours"] == pytest.approx((3600 - 145) / 3600)
    assert report["scans"] == 2  # b and c; a finished before
    assert report["scan_attempts"] == 4


def test_per_scan_rows_of_the_report_window_reconcile(ledger: Ledger) -> None:
    report = build_report(ledger, now=T0 + 3600)
    window = Window(T0, T0 + 300)

    costs = cost_scans(ledger.scans(), ledger.workers(), window, Pricing())

    assert costs.rows_total_usd == pytest.approx(report["cost_usd"], rel=0.01)


def test_empty_ledger_reports_nothing_rather_than_failing(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    try:
        report = build_report(ledger, now=T0)
    finally:
        ledger.close()

    assert report["scans"] == 0
    assert report["cost_usd"] == 0.0
    assert report["cost_per_scan_usd"] is None
    assert report["cost_per_hour_usd"] is None
    assert report["monthly_projection_usd"] == {"current": None, "x10": None}


def test_window_may_not_start_in_the_future() -> None:
    with pytest.raises(ConfigError, match="must not be in the future"):
        report_window([], [], since=T0 + 10, now=T0)


def test_opencost_prices_replace_the_catalog(
    ledger: Ledger, opencost_api: OpenCostServer
) -> None:
    client = OpenCostClient(opencost_api.url("ok"))

    report = build_report(ledger, opencost=client, now=T0 + 3600)

    measured_usd, workload_usd, idle_usd = 0.686802, 0.492327, 0.144025
    assert report["pricing_source"] == "opencost"
    assert report["opencost"]["workload"] == "scanpipe"
    assert report["cost_usd"] == pytest.approx(measured_usd + 0.10 * WINDOW_HOURS)
    assert report["rates_usd_per_hour"]["worker"] == pytest.approx(workload_usd / 0.1)
    assert report["cpu_efficiency"] == pytest.approx(1.19 / 3.5)
    assert report["ram_efficiency"] == pytest.approx(0.55)
    assert report["allocation"]["idle_share"] == pytest.approx(idle_usd / measured_usd)
    assert report["gpu_utilisation"] is None
    window = opencost_api.paths[0].split("window=")[1].split("&")[0]
    assert window.replace("%3A", ":").replace("%2C", ",") == format_window(T0, T0 + 300)


def test_opencost_without_the_workload_names_what_it_found(
    ledger: Ledger, opencost_api: OpenCostServer
) -> None:
    client = OpenCostClient(opencost_api.url("ok"), workload="inference")

    with pytest.raises(
        ConfigError, match=r"no allocation named 'inference'.*Found: __idle__, kube"
    ):
        build_report(ledger, opencost=client, now=T0 + 3600)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("90s", T0 - 90, id="seconds"),
        pytest.param("30m", T0 - 1800, id="minutes"),
        pytest.param("1h", T0 - 3600, id="hour"),
        pytest.param("1.5h", T0 - 5400, id="fractional"),
        pytest.param("1h30m", T0 - 5400, id="compound"),
        pytest.param("2d", T0 - 172800, id="days"),
        pytest.param("1w", T0 - 604800, id="week"),
        pytest.param("2023-11-14T22:13:20Z", T0, id="iso-utc"),
        pytest.param("2023-11-14T23:13:20+01:00", T0, id="iso-offset"),
        pytest.param("2023-11-14T22:13:20", T0, id="iso-naive-is-utc"),
        pytest.param("2023-11-14", T0 - 80000, id="date"),
    ],
)
def test_parse_since(text: str, expected: float) -> None:
    assert parse_since(text, now=T0) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["yesterday", "1y", "h1", "-1h", ""])
def test_parse_since_says_what_it_accepts(text: str) -> None:
    with pytest.raises(ConfigError, match=r"ISO 8601 time .* or a duration such"):
        parse_since(text, now=T0)


def test_command_output_is_text_and_the_same_json(run_dir: Path) -> None:
    text, doc = report_command_output(run_dir, now=T0 + 3600)

    assert doc["scans"] == 3
    assert "business" in text and "efficiency" in text
    assert f"${doc['cost_usd']:,.4f}" in text
    assert "cold start" in text and "cooldown tail" in text
    assert "CPU efficiency    not measured" in text
    assert "at 10x" in text


def test_command_output_prices_another_instance_type(run_dir: Path) -> None:
    _, doc = report_command_output(
        run_dir, instance_type="g4dn.xlarge", since="1h", now=T0 + 3600
    )

    assert doc["instance_type"] == "g4dn.xlarge"
    assert doc["rates_usd_per_hour"]["worker"] == 0.526
    assert doc["window"]["hours"] == pytest.approx(1.0)


def test_command_output_reads_a_prices_file_with_spot(
    run_dir: Path, tmp_path: Path
) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('[instances."g5.xlarge"]\nspot_usd_per_hour = 0.4\n')

    _, doc = report_command_output(
        run_dir, prices_file=prices, use_spot=True, now=T0 + 3600
    )

    assert doc["rates_usd_per_hour"]["worker"] == 0.4
    assert "spot" in doc["pricing"]


def test_command_output_with_opencost(
    run_dir: Path, opencost_api: OpenCostServer
) -> None:
    text, doc = report_command_output(
        run_dir, opencost_url=opencost_api.url("ok"), now=T0 + 3600
    )

    assert doc["pricing_source"] == "opencost"
    assert "prices      opencost" in text


def test_command_refuses_a_directory_without_a_ledger(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"No ledger at .*ledger\.db"):
        report_command_output(tmp_path / "not-a-run")

    assert not (tmp_path / "not-a-run").exists()

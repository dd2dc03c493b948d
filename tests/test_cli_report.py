"""`scanpipe report` after a real run: the fields users script against, and a
bill whose per-scan rows add up to its total."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scanpipe", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "SCANPIPE_LOG_LEVEL": "WARNING"},
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("report") / "run"
    result = run_cli(
        "demo",
        "--scans",
        "3",
        "--shape",
        "48",
        "48",
        "32",
        "--cooldown",
        "1",
        "--model",
        "threshold",
        "--dir",
        str(run_dir),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    return run_dir, json.loads(result.stdout)


def test_json_has_the_business_and_efficiency_fields(
    demo_run: tuple[Path, dict],
) -> None:
    run_dir, _ = demo_run
    result = run_cli("report", "--dir", str(run_dir), "--json")

    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["scans"] == 3
    assert 0 < doc["p50_seconds"] <= doc["p95_seconds"]
    assert set(doc["cost_breakdown_usd"]) == {
        "compute",
        "cold_start",
        "cooldown_tail",
        "baseline",
    }
    assert all(v >= 0 for v in doc["cost_breakdown_usd"].values())
    assert doc["cost_usd"] > 0
    assert math.isclose(doc["cost_per_scan_usd"], doc["cost_usd"] / 3)
    assert doc["cost_per_hour_usd"] > 0
    # The stack measured its worker processes: efficiency is a number.
    for field in ("cpu_efficiency", "ram_efficiency", "idle_share"):
        assert 0 < doc[field] <= 1, field


def test_the_demo_bill_is_the_report_of_its_run_directory(
    demo_run: tuple[Path, dict],
) -> None:
    run_dir, demo = demo_run
    doc = json.loads(run_cli("report", "--dir", str(run_dir), "--json").stdout)

    assert demo["cost"]["window"] == doc["window"]
    assert demo["cost"]["cost_usd"] == pytest.approx(doc["cost_usd"])
    assert demo["cost"]["cost_breakdown_usd"] == pytest.approx(
        doc["cost_breakdown_usd"]
    )


def test_per_scan_costs_add_up_to_the_total(demo_run: tuple[Path, dict]) -> None:
    run_dir, _ = demo_run
    doc = json.loads(run_cli("report", "--dir", str(run_dir), "--json").stdout)

    rows = doc["scan_costs"]
    assert len([r for r in rows if r["outcome"] == "done"]) == 3
    total = sum(row["total_usd"] for row in rows)
    assert total == pytest.approx(doc["cost_usd"], rel=0.01)
    breakdown = sum(doc["cost_breakdown_usd"].values())
    assert breakdown == pytest.approx(doc["cost_usd"], rel=1e-9)


def test_demo_ends_with_the_same_bill(demo_run: tuple[Path, dict]) -> None:
    _, demo_doc = demo_run

    cost = demo_doc["cost"]
    assert cost["scans"] == 3
    assert cost["cost_usd"] > 0
    assert cost["instance_type"] == "g5.xlarge"


def test_another_instance_type_changes_the_price_not_the_scans(
    demo_run: tuple[Path, dict],
) -> None:
    run_dir, _ = demo_run
    g5 = json.loads(run_cli("report", "--dir", str(run_dir), "--json").stdout)
    t3 = json.loads(
        run_cli(
            "report", "--dir", str(run_dir), "--json", "--instance-type", "t3.medium"
        ).stdout
    )

    assert t3["scans"] == g5["scans"]
    assert t3["cost_breakdown_usd"]["compute"] < g5["cost_breakdown_usd"]["compute"]
    assert t3["cost_breakdown_usd"]["baseline"] == pytest.approx(
        g5["cost_breakdown_usd"]["baseline"]
    )


def test_text_report_names_both_views(demo_run: tuple[Path, dict]) -> None:
    run_dir, _ = demo_run
    result = run_cli("report", "--dir", str(run_dir))

    assert result.returncode == 0, result.stderr
    assert "business" in result.stdout and "efficiency" in result.stdout
    assert "cost per scan" in result.stdout


def test_bad_options_say_what_was_expected(tmp_path: Path, demo_run) -> None:
    run_dir, _ = demo_run
    no_ledger = run_cli("report", "--dir", str(tmp_path), "--json")
    assert no_ledger.returncode == 1
    assert "No ledger" in no_ledger.stderr

    bad_since = run_cli("report", "--dir", str(run_dir), "--since", "yesterday")
    assert bad_since.returncode == 1
    assert "--since expects" in bad_since.stderr

    unknown = run_cli("report", "--dir", str(run_dir), "--instance-type", "x9.huge")
    assert unknown.returncode == 1
    assert "x9.huge" in unknown.stderr

    opencost = run_cli("report", "--dir", str(run_dir), "--opencost", "ftp://x")
    assert opencost.returncode == 1
    assert "http(s) URL" in opencost.stderr


def test_each_provenance_record_carries_its_settled_cost(
    demo_run: tuple[Path, dict],
) -> None:
    run_dir, _ = demo_run
    doc = json.loads(run_cli("report", "--dir", str(run_dir), "--json").stdout)

    records = [
        json.loads(path.read_text()) for path in (run_dir / "outbox").glob("*.json")
    ]
    assert len(records) == 3
    total = sum(record["cost"]["total_usd"] for record in records)
    assert total == pytest.approx(doc["cost_usd"], rel=0.01)
    for record in records:
        assert record["cost"]["priced_as"].startswith("g5.xlarge")

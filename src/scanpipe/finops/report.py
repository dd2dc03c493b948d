"""The report: what a run cost, per scan and per month, and how well it used
what it paid for. This is the body of ``scanpipe report``.

Two views of one window:

* **Business**: scans done, P50/P95 end-to-end seconds, the cost, the cost per
  scan split into compute, cold start, cooldown tail and baseline (see
  :mod:`scanpipe.finops.per_scan`), the cost per hour, and a monthly
  projection.
* **Efficiency**: CPU and RAM efficiency, GPU and node utilisation, and the
  idle shares (see :mod:`scanpipe.finops.efficiency`).

The projection model: the window's scans per hour, kept up for 730 hours a
month. The variable cost (everything except the baseline: compute, cold
starts, tails) grows in proportion to the volume; the baseline is fixed. At 10x
the volume that is ``730 * (baseline_per_hour + 10 * variable_per_hour)``. It
overstates the cost of cold starts at high volume, when workers stay warm, so
it errs on the expensive side.

Usage (CPU seconds, RAM byte-seconds, GPU busy seconds) comes from the
ledger, where the embedded stack records what its worker processes used; a
caller may pass its own as ``usage``. Where none was recorded the efficiency
numbers are None: nothing is estimated in its place.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scanpipe.errors import ConfigError
from scanpipe.finops.catalog import Pricing, load_catalog
from scanpipe.finops.efficiency import WorkerUsage, efficiency_view
from scanpipe.finops.opencost import AllocationSet, OpenCostClient
from scanpipe.finops.per_scan import CostReport, Rates, Window, cost_scans
from scanpipe.ledger import Ledger, ScanRecord, WorkerLifetime
from scanpipe.summary import percentile

log = logging.getLogger(__name__)

#: Hours in the average month (8760 / 12), as cloud price pages use.
HOURS_PER_MONTH = 730.0

__all__ = [
    "HOURS_PER_MONTH",
    "WorkerUsage",
    "build_report",
    "cost_rate_usd_per_hour",
    "format_report",
    "measured_rates",
    "parse_since",
    "project_monthly_usd",
    "report_command_output",
    "report_window",
]


def report_window(
    scans: Sequence[ScanRecord],
    workers: Sequence[WorkerLifetime],
    *,
    since: float | None,
    now: float,
) -> Window:
    """The period a report covers.

    With ``since``: from ``since`` to ``now``, because the baseline of a
    cluster runs whether or not the ledger saw work. Without: from the first
    activity in the ledger to the last (or to ``now`` while a worker runs),
    since the embedded stack records no start and stop of its own.
    """
    if since is not None:
        if since > now:
            raise ConfigError(
                f"The report's start must not be in the future; found "
                f"{_iso(since)}, after now ({_iso(now)})."
            )
        return Window(since, now)
    starts = [w.started_at for w in workers]
    starts += [s.event_time or s.received_at or s.finished_at for s in scans]
    if not starts:
        return Window(now, now)
    ends = [s.finished_at for s in scans] + [w.started_at for w in workers]
    for worker in workers:
        ends += [end for _, end in worker.busy if end is not None]
        if worker.stopped_at is None:
            ends.append(now)
        else:
            ends.append(worker.stopped_at)
    return Window(min(starts), max(max(ends), min(starts)))


def project_monthly_usd(
    *,
    variable_usd: float,
    window_hours: float,
    baseline_usd_per_hour: float,
    volume_factor: float = 1.0,
) -> float | None:
    """A month of the window's volume times ``volume_factor``.

    The variable cost per hour scales with the volume; the baseline does not.
    None for a window of no length, which has no rate to project.
    """
    if window_hours <= 0:
        return None
    variable_usd_per_hour = variable_usd / window_hours
    return HOURS_PER_MONTH * (
        baseline_usd_per_hour + volume_factor * variable_usd_per_hour
    )


def build_report(
    ledger: Ledger,
    *,
    since: float | None = None,
    pricing: Pricing | None = None,
    opencost: OpenCostClient | None = None,
    usage: Mapping[str, WorkerUsage] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The report of the scans finished since ``since``, as one JSON object.

    Args:
        ledger: the run's ledger.
        since: seconds since the epoch; None for everything in the ledger.
        pricing: catalog pricing; the built-in catalog with g5.xlarge workers
            when None.
        opencost: when given, worker and baseline costs come from the
            cluster's measured allocations instead of the catalog.
        usage: per-worker resource usage by worker id; the ledger's when None.
        now: the current time, for tests; ``time.time()`` when None.
    """
    pricing = pricing or Pricing()
    now = time.time() if now is None else now
    scans = ledger.scans(since=since)
    workers = ledger.workers()
    if usage is None:
        usage = ledger.usage() or None
    window = report_window(scans, workers, since=since, now=now)

    costs = cost_scans(scans, workers, window, pricing)
    measured: AllocationSet | None = None
    client_workload = "" if opencost is None else opencost.workload
    if opencost is not None:
        measured = opencost.allocation(window.start, window.end)
        rates = measured_rates(measured, opencost, costs, pricing)
        costs = cost_scans(scans, workers, window, rates)

    in_window = [s for s in scans if window.holds(s.finished_at)]
    doc = _business_view(in_window, costs)
    measured_for = None if measured is None else (measured, client_workload)
    doc.update(efficiency_view(workers, window, costs, pricing, usage, measured_for))
    doc.update(
        {
            "window": {
                "start": _iso(window.start),
                "end": _iso(window.end),
                "hours": window.hours,
            },
            "scan_costs": [row.to_json() for row in costs.rows],
            "pricing_source": "catalog" if measured is None else "opencost",
            "pricing": pricing.describe(),
            "instance_type": pricing.instance_type,
            "rates_usd_per_hour": {
                "worker": costs.rates.worker_usd_per_hour,
                "baseline": costs.rates.baseline_usd_per_hour,
            },
            "opencost": None
            if opencost is None
            else {
                "url": opencost.url,
                "workload": opencost.workload,
                "aggregate": opencost.aggregate,
            },
        }
    )
    return doc


def cost_rate_usd_per_hour(
    workers_running: int,
    *,
    pricing: Pricing | None = None,
    opencost: OpenCostClient | None = None,
    usage: Mapping[str, WorkerUsage] | None = None,
    now: float | None = None,
) -> float:
    """What the run costs per hour with ``workers_running`` workers up.

    The catalog rate: one worker node per worker plus the baseline. It takes
    the same keyword options as :func:`build_report` so a caller can pass one
    set to both; OpenCost measures windows, not instants, so ``opencost``
    (like ``usage`` and ``now``) does not change the rate.
    """
    del opencost, usage, now
    pricing = pricing or Pricing()
    return (
        max(0, workers_running) * pricing.worker_usd_per_hour
        + pricing.baseline_usd_per_hour
    )


def measured_rates(
    measured: AllocationSet,
    client: OpenCostClient,
    catalog_costs: CostReport,
    pricing: Pricing,
) -> Rates:
    """Hourly rates that reproduce OpenCost's measured costs on the ledger.

    The worker rate spreads the workload's measured cost over the worker
    hours the ledger saw; the baseline rate spreads every other allocation of
    the set (other namespaces and ``__idle__``) over the window, plus the
    control plane, which OpenCost does not see. The per-scan split stays the
    ledger's; only the prices change.
    """
    workload = measured.allocations.get(client.workload)
    worker_hours = catalog_costs.worker_seconds.total_seconds / 3600.0
    if workload is None and worker_hours > 0:
        raise ConfigError(
            f"OpenCost at {client.url} has no allocation named "
            f"{client.workload!r} under aggregate={client.aggregate}; the "
            f"ledger has {worker_hours:.2f} worker hours in the window. Found: "
            f"{', '.join(measured.names()) or 'nothing'}."
        )
    workload_usd = workload.total_cost_usd if workload else 0.0
    other_usd = measured.total_usd - workload_usd
    if worker_hours <= 0:
        # Nobody to charge the workload's cost to by the hour; it is kept in
        # the window's total through the baseline.
        other_usd, worker_rate = other_usd + workload_usd, 0.0
    else:
        worker_rate = workload_usd / worker_hours
    hours = catalog_costs.window.hours
    control_plane = (
        pricing.catalog.control_plane_usd_per_hour if pricing.control_plane else 0.0
    )
    baseline_rate = (other_usd / hours if hours > 0 else 0.0) + control_plane
    return Rates(worker_usd_per_hour=worker_rate, baseline_usd_per_hour=baseline_rate)


def _business_view(scans: Sequence[ScanRecord], costs: CostReport) -> dict[str, Any]:
    done = [s for s in scans if s.outcome == "done"]
    done_keys = {(s.input_key, s.etag) for s in done}
    failed_keys = {
        (s.input_key, s.etag) for s in scans if s.outcome == "dead_letter"
    } - done_keys
    latencies = [s.end_to_end_seconds for s in done if s.end_to_end_seconds is not None]
    count = len(done_keys)
    totals = costs.totals
    hours = costs.window.hours
    variable_usd = totals.total_usd - totals.baseline_usd

    def projection(factor: float) -> float | None:
        return project_monthly_usd(
            variable_usd=variable_usd,
            window_hours=hours,
            baseline_usd_per_hour=costs.rates.baseline_usd_per_hour,
            volume_factor=factor,
        )

    return {
        "scans": count,
        "scans_failed": len(failed_keys),
        "scan_attempts": len(costs.rows),
        "p50_seconds": percentile(latencies, 50),
        "p95_seconds": percentile(latencies, 95),
        "cost_usd": totals.total_usd,
        "cost_per_scan_usd": totals.total_usd / count if count else None,
        "cost_per_hour_usd": totals.total_usd / hours if hours > 0 else None,
        "cost_breakdown_usd": totals.to_json(),
        "cost_per_scan_breakdown_usd": (
            {k: v / count for k, v in totals.to_json().items()} if count else None
        ),
        "unattributed_usd": costs.unattributed_usd,
        "scans_per_hour": count / hours if hours > 0 else None,
        "monthly_projection_usd": {"current": projection(1.0), "x10": projection(10.0)},
        "worker_hours": {
            "compute": costs.worker_seconds.compute_seconds / 3600.0,
            "cold_start": costs.worker_seconds.cold_start_seconds / 3600.0,
            "cooldown_tail": costs.worker_seconds.cooldown_tail_seconds / 3600.0,
        },
    }


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


# -- the command -----------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, *, now: float) -> float:
    """``--since`` as seconds since the epoch.

    Accepts a duration back from ``now`` (``30m``, ``1h``, ``2d``, ``1h30m``;
    units s, m, h, d, w) or an ISO 8601 time (``2024-05-01T10:00:00Z``; a time
    without a zone is read as UTC).
    """
    value = text.strip()
    if _DURATION.fullmatch(value):
        seconds = sum(
            float(amount) * _UNIT_SECONDS[unit]
            for amount, unit in _DURATION_PART.findall(value)
        )
        return now - seconds
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"--since expects an ISO 8601 time such as 2024-05-01T10:00:00Z or "
            f"a duration such as 30m, 1h or 2d; found {text!r}."
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def report_command_output(
    run_dir: Path,
    *,
    since: str | None = None,
    opencost_url: str | None = None,
    opencost_workload: str = "scanpipe",
    opencost_aggregate: str = "namespace",
    instance_type: str = "g5.xlarge",
    prices_file: Path | None = None,
    use_spot: bool = False,
    now: float | None = None,
) -> tuple[str, dict[str, Any]]:
    """Everything ``scanpipe report`` prints: (text for a person, JSON doc).

    Raises ConfigError when the run directory has no ledger or an option is
    invalid, and the OpenCost client's errors as they are.
    """
    ledger_path = Path(run_dir) / "ledger.db"
    if not ledger_path.is_file():
        raise ConfigError(
            f"No ledger at {ledger_path}; expected a run directory that "
            f"'scanpipe up' or 'scanpipe demo' has used."
        )
    now = time.time() if now is None else now
    pricing = Pricing(
        catalog=load_catalog(prices_file),
        instance_type=instance_type,
        use_spot=use_spot,
    )
    client = (
        None
        if opencost_url is None
        else OpenCostClient(
            opencost_url, workload=opencost_workload, aggregate=opencost_aggregate
        )
    )
    start = None if since is None else parse_since(since, now=now)
    ledger = Ledger(ledger_path)
    try:
        doc = build_report(
            ledger, since=start, pricing=pricing, opencost=client, now=now
        )
    finally:
        ledger.close()
    return format_report(doc), doc


def format_report(doc: Mapping[str, Any]) -> str:
    """The report as text: the business view, then the efficiency view."""
    window = doc["window"]
    projection = doc["monthly_projection_usd"]
    per_scan = doc["cost_per_scan_breakdown_usd"] or {}
    node = doc["node_utilisation"]
    lines = [
        f"window      {window['start']} to {window['end']} ({window['hours']:.2f} h)",
        f"prices      {doc['pricing_source']}: {doc['pricing']}",
        "",
        "business",
        f"  scans             {doc['scans']} done, {doc['scans_failed']} failed"
        f"  (P50 {_seconds(doc['p50_seconds'])}, "
        f"P95 {_seconds(doc['p95_seconds'])} end to end)",
        f"  cost              {_usd(doc['cost_usd'])}"
        f"  ({_usd(doc['cost_per_hour_usd'])} per hour)",
        f"  cost per scan     {_usd(doc['cost_per_scan_usd'])}",
    ]
    for key, label in (
        ("compute", "compute"),
        ("cold_start", "cold start"),
        ("cooldown_tail", "cooldown tail"),
        ("baseline", "baseline"),
    ):
        lines.append(f"    {label:<16}{_usd(per_scan.get(key))}")
    lines += [
        f"  per month         {_usd(projection['current'])} at this volume, "
        f"{_usd(projection['x10'])} at 10x",
        "",
        "efficiency",
        f"  CPU efficiency    {_percent(doc['cpu_efficiency'])}  (used / requested)",
        f"  RAM efficiency    {_percent(doc['ram_efficiency'])}  (used / requested)",
        f"  GPU utilisation   {_percent(doc['gpu_utilisation'])}",
        f"  node utilisation  CPU {_percent(node['cpu'])}, "
        f"RAM {_percent(node['ram'])}  (used / allocatable)",
        f"  idle share        {_percent(doc['idle_share'])}"
        "  (worker time with no scan)",
    ]
    if doc["unattributed_usd"]:
        lines.append(
            f"  no scan finished in the window; {_usd(doc['unattributed_usd'])} "
            "is charged to none"
        )
    return "\n".join(lines)


def _usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:,.4f}" if abs(value) < 1 else f"${value:,.2f}"


def _percent(value: float | None) -> str:
    return "not measured" if value is None else f"{100 * value:.1f} %"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"

"""The cost model: what a run cost, per scan, by OpenCost's definitions.

Pure functions over the ledger, except where prices are read from a file or
from OpenCost::

    catalog      instance prices and shapes; a node's price split per resource
    allocation   OpenCost's allocation, idle, efficiency and utilisation
    per_scan     each scan's compute, cold start, cooldown tail and baseline
    efficiency   efficiency, utilisation and the two idle shares of a window
    opencost     measured allocation costs from a cluster's OpenCost API
    report       the business and efficiency report of ``scanpipe report``

Example::

    from scanpipe.finops import Pricing, build_report
    from scanpipe.ledger import Ledger

    report = build_report(Ledger("runs/demo/ledger.db"), pricing=Pricing())
    print(report["cost_per_scan_usd"], report["cost_breakdown_usd"])
"""

from scanpipe.finops.allocation import (
    AllocationCost,
    ResourceAmounts,
    allocation_cost_usd,
    efficiency,
    idle_cost_usd,
    idle_share,
    total_efficiency,
    utilisation,
)
from scanpipe.finops.catalog import (
    DEFAULT_CATALOG,
    Catalog,
    InstanceType,
    Pricing,
    ResourcePrices,
    load_catalog,
    split_node_price,
)
from scanpipe.finops.efficiency import WorkerUsage
from scanpipe.finops.opencost import Allocation, AllocationSet, OpenCostClient
from scanpipe.finops.per_scan import (
    CostBreakdown,
    CostReport,
    Rates,
    ScanCost,
    Window,
    cost_scans,
)
from scanpipe.finops.report import (
    HOURS_PER_MONTH,
    build_report,
    cost_rate_usd_per_hour,
    format_report,
    parse_since,
    project_monthly_usd,
    report_command_output,
)

__all__ = [
    "DEFAULT_CATALOG",
    "HOURS_PER_MONTH",
    "Allocation",
    "AllocationCost",
    "AllocationSet",
    "Catalog",
    "CostBreakdown",
    "CostReport",
    "InstanceType",
    "OpenCostClient",
    "Pricing",
    "Rates",
    "ResourceAmounts",
    "ResourcePrices",
    "ScanCost",
    "Window",
    "WorkerUsage",
    "allocation_cost_usd",
    "build_report",
    "cost_rate_usd_per_hour",
    "cost_scans",
    "efficiency",
    "format_report",
    "idle_cost_usd",
    "idle_share",
    "load_catalog",
    "parse_since",
    "project_monthly_usd",
    "report_command_output",
    "split_node_price",
    "total_efficiency",
    "utilisation",
]

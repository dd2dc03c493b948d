"""The efficiency view of the report: how well the run used what it paid for.

Four numbers, each with one definition (see :mod:`scanpipe.finops.allocation`):
CPU and RAM efficiency (usage / request), GPU utilisation and node
utilisation (usage / allocatable), plus two idle shares that are not the same
thing. ``idle_share`` is scanpipe's: the share of worker cost paid while the
worker held no scan (its cold start and tail). ``allocation.idle_share`` is
OpenCost's: node cost minus what pods requested or used. A warm worker
waiting for work is idle in the first sense and fully allocated in the second.

Usage comes from the workers (:class:`WorkerUsage`); where it was not
recorded the numbers are None, never estimated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scanpipe.finops.allocation import (
    ResourceAmounts,
    allocation_cost_usd,
    efficiency,
    idle_cost_usd,
    idle_share,
    utilisation,
)
from scanpipe.finops.catalog import Pricing, split_node_price
from scanpipe.finops.opencost import AllocationSet
from scanpipe.finops.per_scan import CostReport, Window, worker_interval
from scanpipe.ledger import WorkerLifetime, WorkerUsage

_GIB = 1024.0**3


def efficiency_view(
    workers: Sequence[WorkerLifetime],
    window: Window,
    costs: CostReport,
    pricing: Pricing,
    usage: Mapping[str, WorkerUsage] | None,
    opencost: tuple[AllocationSet, str] | None,
) -> dict[str, Any]:
    """The efficiency fields of the report.

    Args:
        workers: every worker lifetime; those overlapping ``window`` count.
        window: the report's window.
        costs: the window's per-scan costs, for scanpipe's idle share.
        pricing: the worker instance and its requests.
        usage: recorded usage by worker id.
        opencost: the measured allocation set and the workload's name, when
            OpenCost is the price source; usage and pricing are then unused.
    """
    totals = costs.totals
    worker_usd = totals.total_usd - totals.baseline_usd
    idle = totals.cold_start_usd + totals.cooldown_tail_usd
    doc: dict[str, Any] = {"idle_share": idle / worker_usd if worker_usd > 0 else None}
    active = [w for w in workers if window.overlap_seconds(*worker_interval(w, window))]
    if opencost is None:
        doc.update(_usage_efficiency(active, window, pricing, usage or {}))
    else:
        doc.update(_measured_efficiency(*opencost))
    return doc


@dataclass
class _Sums:
    """Resource-seconds summed over the workers that reported a usage."""

    used: float = 0.0
    requested: float = 0.0
    allocatable: float = 0.0
    reported: bool = False

    def add(
        self, used: float | None, request: float, offered: float, life: float
    ) -> None:
        if used is None:
            return
        self.used += used
        self.requested += request * life
        self.allocatable += offered * life
        self.reported = True

    def efficiency(self) -> float | None:
        return efficiency(self.used, self.requested) if self.reported else None

    def utilisation(self) -> float | None:
        return utilisation(self.used, self.allocatable) if self.reported else None


def _usage_efficiency(
    workers: Sequence[WorkerLifetime],
    window: Window,
    pricing: Pricing,
    usage: Mapping[str, WorkerUsage],
) -> dict[str, Any]:
    # Usage is recorded per lifetime, so the ratios are over the whole
    # lifetimes of the workers that overlap the window.
    node = pricing.worker_instance
    cpu_request, ram_request_gib, gpus = pricing.worker_requests
    prices = split_node_price(node, use_spot=pricing.use_spot)
    cpu, ram, gpu = _Sums(), _Sums(), _Sums()
    node_usd = allocated_usd = 0.0
    for worker in workers:
        start, end = worker_interval(worker, window)
        life = end - start
        used = usage.get(worker.worker_id) or WorkerUsage(worker.worker_id)
        ram_gib_seconds = _scaled(used.ram_byte_seconds, 1 / _GIB)
        cpu.add(used.cpu_core_seconds, cpu_request, node.vcpus, life)
        ram.add(ram_gib_seconds, ram_request_gib, node.memory_gib, life)
        gpu.add(used.gpu_busy_seconds, gpus, gpus, life)

        hours = window.overlap_seconds(start, end) / 3600.0
        average = ResourceAmounts(
            cpu_cores=_scaled(used.cpu_core_seconds, 1 / life if life else 0.0),
            ram_gib=_scaled(ram_gib_seconds, 1 / life if life else 0.0),
        )
        request = ResourceAmounts(cpu_request, ram_request_gib, gpus)
        node_usd += node.hourly_usd(use_spot=pricing.use_spot) * hours
        allocated_usd += allocation_cost_usd(
            request=request, usage=average, hours=hours, prices=prices
        ).total_usd
    return {
        "cpu_efficiency": cpu.efficiency(),
        "ram_efficiency": ram.efficiency(),
        "gpu_utilisation": gpu.utilisation() if gpus else None,
        "node_utilisation": {"cpu": cpu.utilisation(), "ram": ram.utilisation()},
        "allocation": {
            "scope": "worker nodes",
            "allocated_usd": allocated_usd,
            "idle_usd": idle_cost_usd(node_usd, allocated_usd),
            "idle_share": idle_share(node_usd, allocated_usd),
        },
    }


def _measured_efficiency(measured: AllocationSet, workload_name: str) -> dict[str, Any]:
    workload = measured.allocations.get(workload_name)
    cpu_eff = ram_eff = None
    if workload is not None:
        cpu_eff = efficiency(
            workload.cpu_core_usage_average, workload.cpu_core_request_average or 0.0
        )
        ram_eff = efficiency(
            workload.ram_byte_usage_average, workload.ram_byte_request_average or 0.0
        )
        cpu_eff = workload.cpu_efficiency if cpu_eff is None else cpu_eff
        ram_eff = workload.ram_efficiency if ram_eff is None else ram_eff
    total = measured.total_usd
    return {
        "cpu_efficiency": cpu_eff,
        "ram_efficiency": ram_eff,
        # The allocation API reports neither GPU usage nor node allocatable.
        "gpu_utilisation": None,
        "node_utilisation": {"cpu": None, "ram": None},
        "allocation": {
            "scope": "cluster",
            "allocated_usd": total - measured.idle_usd,
            "idle_usd": measured.idle_usd,
            "idle_share": measured.idle_usd / total if total > 0 else None,
        },
    }


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor

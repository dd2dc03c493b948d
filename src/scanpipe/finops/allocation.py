"""OpenCost's cost allocation definitions, as small pure functions.

These follow the OpenCost specification
(https://github.com/opencost/opencost/blob/develop/spec/opencost-specv01.md)
and the fields of its ``/allocation`` API
(https://opencost.io/docs/integrations/api):

* A workload's **allocation cost** is, for each resource, the larger of what
  it requested and what it used, times the hours, times that resource's price
  (CPU per core-hour, RAM per GiB-hour, GPU per GPU-hour), summed. A pod that
  requests a core and uses a tenth of one pays for the core; a pod that
  requests nothing and uses two pays for two.
* **Idle cost** is what the nodes cost minus what was allocated on them: the
  capacity nobody requested or used.
* **Efficiency** is usage divided by request, per resource: how much of what
  a workload reserved it actually used.
* **Utilisation** is usage divided by allocatable: how much of what a node
  offers was used.

Efficiency and utilisation are different numbers. A worker that requests 2 of
a node's 4 cores and uses 1 has 50 % CPU efficiency and leaves the node 25 %
utilised; a dashboard that shows one under the other's name misleads. They are
separate functions here so that each number has one definition.
"""

from __future__ import annotations

from dataclasses import dataclass

from scanpipe.finops.catalog import ResourcePrices


@dataclass(frozen=True)
class ResourceAmounts:
    """Average amounts of each resource over a period (requested, used, or
    offered); None where a usage was not measured."""

    cpu_cores: float | None = None
    ram_gib: float | None = None
    gpus: float | None = None


@dataclass(frozen=True)
class AllocationCost:
    """A workload's allocation cost over a period, per resource."""

    cpu_usd: float
    ram_usd: float
    gpu_usd: float

    @property
    def total_usd(self) -> float:
        return self.cpu_usd + self.ram_usd + self.gpu_usd


def allocated_amount(request: float | None, usage: float | None) -> float:
    """What a workload is charged for: max(request, usage).

    An unmeasured usage (None) charges the request alone; GPUs are usually
    charged this way, since Kubernetes cannot share one below a whole device.
    No request counts as a request of zero.
    """
    requested = request or 0.0
    return requested if usage is None else max(requested, usage)


def allocation_cost_usd(
    *,
    request: ResourceAmounts,
    usage: ResourceAmounts | None,
    hours: float,
    prices: ResourcePrices,
) -> AllocationCost:
    """The allocation cost of one workload that ran for ``hours``.

    Args:
        request: the average amounts the workload requested.
        usage: the average amounts it used; None (or a None field) where
            unmeasured, which charges the request.
        hours: how long it ran.
        prices: the node's price split per resource (see
            :func:`scanpipe.finops.catalog.split_node_price`).
    """
    used = usage or ResourceAmounts()
    cpu = allocated_amount(request.cpu_cores, used.cpu_cores)
    ram = allocated_amount(request.ram_gib, used.ram_gib)
    gpu = allocated_amount(request.gpus, used.gpus)
    return AllocationCost(
        cpu_usd=cpu * hours * prices.cpu_usd_per_core_hour,
        ram_usd=ram * hours * prices.ram_usd_per_gib_hour,
        gpu_usd=gpu * hours * prices.gpu_usd_per_gpu_hour,
    )


def idle_cost_usd(node_cost_usd: float, allocated_usd: float) -> float:
    """Node cost minus allocated cost, never below zero.

    Usage above request can allocate more than a node's price share on paper;
    OpenCost then reports no idle rather than a negative one.
    """
    return max(0.0, node_cost_usd - allocated_usd)


def idle_share(node_cost_usd: float, allocated_usd: float) -> float | None:
    """Idle cost as a fraction of node cost; None when the nodes cost nothing."""
    if node_cost_usd <= 0:
        return None
    return idle_cost_usd(node_cost_usd, allocated_usd) / node_cost_usd


def efficiency(usage: float | None, request: float) -> float | None:
    """Usage / request for one resource; None when either is unknown or the
    request is zero (a workload that reserved nothing has no efficiency)."""
    if usage is None or request <= 0:
        return None
    return usage / request


def utilisation(usage: float | None, allocatable: float) -> float | None:
    """Usage / allocatable for one resource of a node (or a set of nodes);
    None when usage is unmeasured or the node offers none of it."""
    if usage is None or allocatable <= 0:
        return None
    return usage / allocatable


def total_efficiency(
    *,
    cpu_usage_cores: float,
    cpu_request_cores: float,
    ram_usage_gib: float,
    ram_request_gib: float,
    prices: ResourcePrices,
) -> float | None:
    """CPU and RAM efficiency together, each weighted by what it costs.

    This is OpenCost's ``totalEfficiency``: the cost of what was used over the
    cost of what was requested. A cheap resource left idle moves it little.
    """
    requested_usd = (
        cpu_request_cores * prices.cpu_usd_per_core_hour
        + ram_request_gib * prices.ram_usd_per_gib_hour
    )
    if requested_usd <= 0:
        return None
    used_usd = (
        cpu_usage_cores * prices.cpu_usd_per_core_hour
        + ram_usage_gib * prices.ram_usd_per_gib_hour
    )
    return used_usd / requested_usd

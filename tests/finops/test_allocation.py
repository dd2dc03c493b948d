"""OpenCost's definitions on examples worked out by hand."""

from __future__ import annotations

import pytest

from scanpipe.finops.allocation import (
    ResourceAmounts,
    allocated_amount,
    allocation_cost_usd,
    efficiency,
    idle_cost_usd,
    idle_share,
    total_efficiency,
    utilisation,
)
from scanpipe.finops.catalog import ResourcePrices

#: Round prices: 0.04 per core-hour, 0.005 per GiB-hour, 0.80 per GPU-hour.
PRICES = ResourcePrices(0.04, 0.005, 0.80)


@pytest.mark.parametrize(
    ("request_amount", "usage", "charged"),
    [
        pytest.param(1.0, 0.1, 1.0, id="under-request-pays-request"),
        pytest.param(1.0, 2.5, 2.5, id="over-request-pays-usage"),
        pytest.param(0.0, 2.0, 2.0, id="no-request-pays-usage"),
        pytest.param(1.0, None, 1.0, id="unmeasured-pays-request"),
        pytest.param(None, None, 0.0, id="nothing-pays-nothing"),
    ],
)
def test_allocated_amount_is_max_of_request_and_usage(
    request_amount: float | None, usage: float | None, charged: float
) -> None:
    assert allocated_amount(request_amount, usage) == charged


def test_allocation_cost_of_a_worker_pod_over_two_hours() -> None:
    # Requests 2 cores, 8 GiB, 1 GPU; uses 0.5 cores and 10 GiB on average.
    # CPU: max(2, 0.5) * 2 h * 0.04 = 0.16; RAM: max(8, 10) * 2 * 0.005 = 0.10;
    # GPU: 1 * 2 * 0.80 = 1.60 (GPU usage unmeasured).
    cost = allocation_cost_usd(
        request=ResourceAmounts(cpu_cores=2, ram_gib=8, gpus=1),
        usage=ResourceAmounts(cpu_cores=0.5, ram_gib=10),
        hours=2,
        prices=PRICES,
    )

    assert (cost.cpu_usd, cost.ram_usd, cost.gpu_usd) == pytest.approx(
        (0.16, 0.10, 1.60)
    )
    assert cost.total_usd == pytest.approx(1.86)


def test_allocation_without_usage_is_priced_on_requests() -> None:
    cost = allocation_cost_usd(
        request=ResourceAmounts(cpu_cores=1, ram_gib=4),
        usage=None,
        hours=10,
        prices=PRICES,
    )

    assert cost.total_usd == pytest.approx(10 * (0.04 + 4 * 0.005))


def test_idle_is_node_cost_minus_allocated_and_never_negative() -> None:
    # A 4-core 16-GiB 1-GPU node at these prices costs 0.16 + 0.08 + 0.80.
    node_usd = 2 * (4 * 0.04 + 16 * 0.005 + 0.80)

    assert idle_cost_usd(node_usd, 1.86) == pytest.approx(0.22)
    assert idle_share(node_usd, 1.86) == pytest.approx(0.22 / 2.08)
    assert idle_cost_usd(1.0, 1.5) == 0.0
    assert idle_share(0.0, 0.0) is None


def test_efficiency_and_utilisation_are_different_numbers() -> None:
    # A worker requests 2 of a node's 4 cores and uses 1.
    assert efficiency(1.0, 2.0) == 0.5
    assert utilisation(1.0, 4.0) == 0.25


@pytest.mark.parametrize(
    ("usage", "request_amount"),
    [
        pytest.param(None, 2.0, id="unmeasured"),
        pytest.param(1.0, 0.0, id="nothing-requested"),
    ],
)
def test_efficiency_is_unknown_rather_than_invented(
    usage: float | None, request_amount: float
) -> None:
    assert efficiency(usage, request_amount) is None
    assert utilisation(usage, request_amount) is None


def test_total_efficiency_weighs_cpu_and_ram_by_their_price() -> None:
    # Used: 0.5 * 0.04 + 2 * 0.005 = 0.03; requested: 2 * 0.04 + 8 * 0.005 = 0.12.
    result = total_efficiency(
        cpu_usage_cores=0.5,
        cpu_request_cores=2,
        ram_usage_gib=2,
        ram_request_gib=8,
        prices=PRICES,
    )

    assert result == pytest.approx(0.25)

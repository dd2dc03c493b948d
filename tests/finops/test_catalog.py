"""The price catalog: built-in prices and shapes, OpenCost's split of a node's
price, pricing a run, and the user's prices file with its error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scanpipe.errors import ConfigError
from scanpipe.finops.catalog import (
    DEFAULT_CATALOG,
    InstanceType,
    Pricing,
    load_catalog,
    split_node_price,
)


@pytest.mark.parametrize(
    ("name", "price_usd_per_hour", "vcpus", "memory_gib", "gpus"),
    [
        pytest.param("g5.xlarge", 1.006, 4, 16, 1, id="g5.xlarge"),
        pytest.param("g4dn.xlarge", 0.526, 4, 16, 1, id="g4dn.xlarge"),
        pytest.param("g6.xlarge", 0.8048, 4, 16, 1, id="g6.xlarge"),
        pytest.param("g6e.xlarge", 1.861, 4, 32, 1, id="g6e.xlarge"),
        pytest.param("p3.2xlarge", 3.06, 8, 61, 1, id="p3.2xlarge"),
        pytest.param("t3.medium", 0.0416, 2, 4, 0, id="t3.medium"),
        pytest.param("t3.large", 0.0832, 2, 8, 0, id="t3.large"),
        pytest.param("m5.large", 0.096, 2, 8, 0, id="m5.large"),
    ],
)
def test_built_in_instance_types(
    name: str, price_usd_per_hour: float, vcpus: int, memory_gib: float, gpus: int
) -> None:
    instance = DEFAULT_CATALOG.instance(name)

    assert instance.price_usd_per_hour == price_usd_per_hour
    assert (instance.vcpus, instance.memory_gib, instance.gpus) == (
        vcpus,
        memory_gib,
        gpus,
    )


def test_built_in_prices_that_are_not_instances() -> None:
    assert DEFAULT_CATALOG.control_plane_usd_per_hour == 0.10
    assert DEFAULT_CATALOG.nat_gateway_usd_per_hour == 0.045
    assert DEFAULT_CATALOG.nat_gateway_usd_per_gb == 0.045
    assert DEFAULT_CATALOG.region == "us-east-1"


def test_unknown_instance_type_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"no instance type 'g5\.48xlarge'.*g4dn"):
        DEFAULT_CATALOG.instance("g5.48xlarge")


@pytest.mark.parametrize("name", sorted(DEFAULT_CATALOG.instances))
def test_split_parts_add_up_to_the_node_price(name: str) -> None:
    node = DEFAULT_CATALOG.instance(name)

    prices = split_node_price(node)

    total = (
        prices.cpu_usd_per_core_hour * node.vcpus
        + prices.ram_usd_per_gib_hour * node.memory_gib
        + prices.gpu_usd_per_gpu_hour * node.gpus
    )
    assert total == pytest.approx(node.price_usd_per_hour)


def test_split_keeps_opencost_default_ratios() -> None:
    prices = split_node_price(DEFAULT_CATALOG.instance("g5.xlarge"))

    # 0.031611 / 0.004237 and 0.95 / 0.004237 in OpenCost's default.json.
    ram = prices.ram_usd_per_gib_hour
    assert prices.cpu_usd_per_core_hour / ram == pytest.approx(7.4607, rel=1e-4)
    assert prices.gpu_usd_per_gpu_hour / ram == pytest.approx(224.22, rel=1e-4)
    # By hand: 1.006 / (4 * 7.4607 + 16 + 224.22) = 0.0037251 per GiB-hour.
    assert ram == pytest.approx(0.0037251, rel=1e-4)


def test_split_of_a_spot_node_uses_the_spot_price() -> None:
    node = InstanceType("t3.large", 0.0832, 2, 8, spot_usd_per_hour=0.025)

    on_demand, spot = split_node_price(node), split_node_price(node, use_spot=True)

    assert spot.cpu_usd_per_core_hour / on_demand.cpu_usd_per_core_hour == (
        pytest.approx(0.025 / 0.0832)
    )


def test_default_pricing_is_a_g5_worker_with_a_t3_baseline_and_control_plane() -> None:
    pricing = Pricing()

    assert pricing.worker_usd_per_hour == 1.006
    assert pricing.baseline_usd_per_hour == pytest.approx(0.0832 + 0.10)
    assert pricing.worker_requests == (4.0, 16.0, 1)


def test_pricing_options_change_the_baseline() -> None:
    pricing = Pricing(
        baseline_instance_types=("t3.medium", "t3.medium"),
        control_plane=False,
        nat_gateway=True,
    )

    assert pricing.baseline_usd_per_hour == pytest.approx(2 * 0.0416 + 0.045)


def test_spot_without_a_spot_price_is_refused_when_pricing_is_built() -> None:
    with pytest.raises(ConfigError, match=r"no spot_usd_per_hour for g5\.xlarge"):
        Pricing(use_spot=True)


def make_prices_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_no_prices_file_is_the_built_in_catalog() -> None:
    assert load_catalog(None) is DEFAULT_CATALOG


def test_toml_file_changes_prices_adds_spot_and_instance_types(tmp_path: Path) -> None:
    path = make_prices_file(
        tmp_path,
        "prices.toml",
        """
        control_plane_usd_per_hour = 0.0
        [instances."g5.xlarge"]
        spot_usd_per_hour = 0.4
        [instances."g5.2xlarge"]
        price_usd_per_hour = 1.212
        vcpus = 8
        memory_gib = 32
        gpus = 1
        """,
    )

    catalog = load_catalog(path)
    pricing = Pricing(catalog=catalog, instance_type="g5.xlarge", use_spot=True)

    assert catalog.source == str(path)
    assert catalog.control_plane_usd_per_hour == 0.0
    assert catalog.instance("g5.xlarge").price_usd_per_hour == 1.006
    assert pricing.worker_usd_per_hour == 0.4
    assert catalog.instance("g5.2xlarge").vcpus == 8
    assert DEFAULT_CATALOG.instance("g5.xlarge").spot_usd_per_hour is None


def test_json_file_is_read_the_same_way(tmp_path: Path) -> None:
    document = {"instances": {"t3.large": {"price_usd_per_hour": 0.09}}}
    path = make_prices_file(tmp_path, "prices.json", json.dumps(document))

    assert load_catalog(path).instance("t3.large").price_usd_per_hour == 0.09


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        pytest.param(
            "p.toml",
            '[instances."g5.xlarge"]\nprice_usd_per_hour = "cheap"\n',
            r"instances\.g5\.xlarge\.price_usd_per_hour must be a number of zero "
            r"or more; found the string 'cheap'",
            id="price-is-text",
        ),
        pytest.param(
            "p.json",
            '{"control_plane_usd_per_hour": -1}',
            r"control_plane_usd_per_hour must be a number of zero or more; "
            r"found the number -1",
            id="negative-price",
        ),
        pytest.param(
            "p.toml",
            '[instances."g5.xlarge"]\nvcpus = 2.5\n',
            r"instances\.g5\.xlarge\.vcpus must be a whole number of 1 or more; "
            r"found the number 2\.5",
            id="fractional-vcpus",
        ),
        pytest.param(
            "p.json",
            '{"instances": {"t3.large": {"gpus": true}}}',
            r"instances\.t3\.large\.gpus must be a whole number of 0 or more; "
            r"found the boolean true",
            id="boolean-gpus",
        ),
        pytest.param(
            "p.toml",
            "control_plane_usd_per_hr = 0.1\n",
            r"unknown field 'control_plane_usd_per_hr' at the top level; "
            r"expected one of: .*control_plane_usd_per_hour",
            id="misspelt-field",
        ),
        pytest.param(
            "p.toml",
            '[instances."g5.xlarge"]\nspot = 0.3\n',
            r"unknown field 'spot' at instances\.g5\.xlarge",
            id="misspelt-instance-field",
        ),
        pytest.param(
            "p.toml",
            '[instances."x1.custom"]\nprice_usd_per_hour = 2.0\n',
            r"instances\.x1\.custom is not in the built-in catalog, so it needs "
            r"price_usd_per_hour, vcpus, memory_gib; found no vcpus, memory_gib",
            id="new-instance-incomplete",
        ),
        pytest.param(
            "p.json",
            '{"instances": ["g5.xlarge"]}',
            r"instances must be a table of instance types; found a list",
            id="instances-not-a-table",
        ),
        pytest.param(
            "p.json",
            "[1, 2]",
            r"expected a table of settings at the top level, found a list",
            id="top-level-list",
        ),
        pytest.param(
            "p.json",
            '{"instances": {',
            r"is not valid JSON",
            id="broken-json",
        ),
        pytest.param(
            "p.toml",
            "instances = [",
            r"is not valid TOML",
            id="broken-toml",
        ),
        pytest.param(
            "p.yaml",
            "instances: {}",
            r"expected a \.json or \.toml file, found the suffix '\.yaml'",
            id="yaml",
        ),
    ],
)
def test_prices_file_errors_name_the_file_the_field_and_what_was_found(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = make_prices_file(tmp_path, name, text)

    with pytest.raises(ConfigError, match=message) as caught:
        load_catalog(path)

    assert str(path) in str(caught.value)


def test_missing_prices_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"

    with pytest.raises(ConfigError, match=rf"Prices file {path} cannot be read"):
        load_catalog(path)

"""The price catalog: what an instance type costs per hour and what it holds.

The built-in catalog holds AWS on-demand list prices in us-east-1 (Linux, USD
per hour) for the instance types a scan pipeline is likely to run on, with
their vCPU, memory and GPU counts, plus the EKS control plane and the NAT
gateway. A user file (JSON or TOML) can change any price, add spot prices and
add instance types::

    # prices.toml
    control_plane_usd_per_hour = 0.10

    [instances."g5.xlarge"]
    spot_usd_per_hour = 0.45

    [instances."g5.2xlarge"]
    price_usd_per_hour = 1.212
    vcpus = 8
    memory_gib = 32
    gpus = 1

:class:`Pricing` turns a catalog into the two hourly rates the per-scan cost
model needs: one worker node (the configured instance type, default
g5.xlarge) and the always-on baseline (a t3.large node and the control plane).

AWS publishes one price per instance; OpenCost needs a price per CPU core, per
GiB of RAM and per GPU to price a pod's requests. :func:`split_node_price`
splits a node's total the way OpenCost does when a provider gives only a
total: in proportion to OpenCost's default per-resource prices, which are GCP
us-central1 list prices (configs/default.json). See
https://github.com/opencost/opencost/blob/develop/configs/default.json and
the node pricing in
https://github.com/opencost/opencost/blob/develop/pkg/costmodel/costmodel.go
"""

from __future__ import annotations

import json
import logging
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

from scanpipe.errors import ConfigError

log = logging.getLogger(__name__)

#: OpenCost's default hourly prices. Only their ratios matter here: they set
#: how a node's total price is divided between its cores, GiB and GPUs.
OPENCOST_DEFAULT_CPU_USD_PER_CORE_HOUR = 0.031611
OPENCOST_DEFAULT_RAM_USD_PER_GIB_HOUR = 0.004237
OPENCOST_DEFAULT_GPU_USD_PER_GPU_HOUR = 0.95

#: The instance type a worker is priced as when none is configured.
DEFAULT_INSTANCE_TYPE = "g5.xlarge"

#: The always-on node of the case study's cluster (system pods, KEDA, the
#: monitoring stack), priced with every window whether scans ran or not.
DEFAULT_BASELINE_INSTANCE_TYPES = ("t3.large",)


@dataclass(frozen=True)
class InstanceType:
    """One instance type: its hourly price and the resources it provides."""

    name: str
    price_usd_per_hour: float
    vcpus: int
    memory_gib: float
    gpus: int = 0
    gpu_model: str | None = None
    spot_usd_per_hour: float | None = None

    def hourly_usd(self, *, use_spot: bool = False) -> float:
        """The price per hour, on demand or (``use_spot``) at the spot price."""
        if not use_spot:
            return self.price_usd_per_hour
        if self.spot_usd_per_hour is None:
            raise ConfigError(
                f"Spot pricing was asked for, but the catalog has no "
                f"spot_usd_per_hour for {self.name}; add it to a prices file "
                f"or price the worker on demand."
            )
        return self.spot_usd_per_hour


def _instances(*items: InstanceType) -> Mapping[str, InstanceType]:
    return MappingProxyType({item.name: item for item in items})


@dataclass(frozen=True)
class Catalog:
    """Instance types by name, and the prices that are not instances."""

    instances: Mapping[str, InstanceType]
    control_plane_usd_per_hour: float = 0.10
    nat_gateway_usd_per_hour: float = 0.045
    nat_gateway_usd_per_gb: float = 0.045
    region: str = "us-east-1"
    source: str = "built-in"

    def instance(self, name: str) -> InstanceType:
        """The instance type called ``name``; ConfigError names the known ones."""
        try:
            return self.instances[name]
        except KeyError:
            known = ", ".join(sorted(self.instances))
            raise ConfigError(
                f"The price catalog ({self.source}) has no instance type "
                f"{name!r}; expected one of: {known}. Add it to a prices file "
                f"with price_usd_per_hour, vcpus and memory_gib."
            ) from None


DEFAULT_CATALOG = Catalog(
    instances=_instances(
        InstanceType("g5.xlarge", 1.006, 4, 16, 1, "NVIDIA A10G"),
        InstanceType("g4dn.xlarge", 0.526, 4, 16, 1, "NVIDIA T4"),
        InstanceType("g6.xlarge", 0.8048, 4, 16, 1, "NVIDIA L4"),
        InstanceType("g6e.xlarge", 1.861, 4, 32, 1, "NVIDIA L40S"),
        InstanceType("p3.2xlarge", 3.06, 8, 61, 1, "NVIDIA V100"),
        InstanceType("t3.medium", 0.0416, 2, 4),
        InstanceType("t3.large", 0.0832, 2, 8),
        InstanceType("m5.large", 0.096, 2, 8),
    )
)


@dataclass(frozen=True)
class ResourcePrices:
    """A node's hourly price split per resource, as OpenCost prices requests."""

    cpu_usd_per_core_hour: float
    ram_usd_per_gib_hour: float
    gpu_usd_per_gpu_hour: float


def split_node_price(
    instance: InstanceType, *, use_spot: bool = False
) -> ResourcePrices:
    """Split a node's total hourly price into CPU, RAM and GPU prices.

    OpenCost's rule: weigh each resource by its default price relative to one
    GiB of RAM (a core weighs about 7.46 GiB, a GPU about 224 GiB), find the
    price of one "GiB-equivalent" by dividing the node's price by the node's
    total weight, and scale back up. The parts add up to the node's price.
    For a g5.xlarge at 1.006 USD/h that is about 0.028 per core, 0.0037 per
    GiB and 0.835 per GPU: the GPU carries 83 % of the price.
    """
    cpu_weight = (
        OPENCOST_DEFAULT_CPU_USD_PER_CORE_HOUR / OPENCOST_DEFAULT_RAM_USD_PER_GIB_HOUR
    )
    gpu_weight = (
        OPENCOST_DEFAULT_GPU_USD_PER_GPU_HOUR / OPENCOST_DEFAULT_RAM_USD_PER_GIB_HOUR
    )
    total_weight = (
        instance.vcpus * cpu_weight + instance.memory_gib + instance.gpus * gpu_weight
    )
    if total_weight <= 0:
        return ResourcePrices(0.0, 0.0, 0.0)
    ram_price = instance.hourly_usd(use_spot=use_spot) / total_weight
    return ResourcePrices(
        cpu_usd_per_core_hour=ram_price * cpu_weight,
        ram_usd_per_gib_hour=ram_price,
        gpu_usd_per_gpu_hour=ram_price * gpu_weight,
    )


@dataclass(frozen=True)
class Pricing:
    """How a run is priced: which instance a worker is and what is always on.

    In the embedded form each local worker process stands for one node of
    ``instance_type``, so a user sees what the same run would cost in the
    cloud. ``use_spot`` prices the worker nodes at their spot price (GPU node
    groups are the ones worth running on spot); the baseline stays on demand.
    Worker requests default to the whole node, as one worker pod per GPU node
    asks for.
    """

    catalog: Catalog = DEFAULT_CATALOG
    instance_type: str = DEFAULT_INSTANCE_TYPE
    baseline_instance_types: tuple[str, ...] = DEFAULT_BASELINE_INSTANCE_TYPES
    control_plane: bool = True
    nat_gateway: bool = False
    use_spot: bool = False
    worker_cpu_request_cores: float | None = None
    worker_ram_request_gib: float | None = None

    def __post_init__(self) -> None:
        # Fail when the pricing is built, not halfway through a report.
        self.worker_instance.hourly_usd(use_spot=self.use_spot)
        for name in self.baseline_instance_types:
            self.catalog.instance(name)

    @property
    def worker_instance(self) -> InstanceType:
        return self.catalog.instance(self.instance_type)

    @property
    def worker_usd_per_hour(self) -> float:
        return self.worker_instance.hourly_usd(use_spot=self.use_spot)

    @property
    def baseline_usd_per_hour(self) -> float:
        nodes = sum(
            self.catalog.instance(name).price_usd_per_hour
            for name in self.baseline_instance_types
        )
        control_plane = self.catalog.control_plane_usd_per_hour
        nat = self.catalog.nat_gateway_usd_per_hour
        return (
            nodes
            + (control_plane if self.control_plane else 0.0)
            + (nat if self.nat_gateway else 0.0)
        )

    @property
    def worker_requests(self) -> tuple[float, float, int]:
        """The worker pod's requests: (CPU cores, RAM GiB, GPUs)."""
        node = self.worker_instance
        cpu = self.worker_cpu_request_cores
        ram = self.worker_ram_request_gib
        return (
            float(node.vcpus) if cpu is None else cpu,
            float(node.memory_gib) if ram is None else ram,
            node.gpus,
        )

    def describe(self) -> str:
        """One line saying what the rates stand for, for the text report."""
        how = "spot" if self.use_spot else "on demand"
        always_on = list(self.baseline_instance_types)
        if self.control_plane:
            always_on.append("EKS control plane")
        if self.nat_gateway:
            always_on.append("NAT gateway")
        return f"{self.instance_type} {how} per worker + {' + '.join(always_on)}"


# -- the user's prices file ----------------------------------------------------

_TOP_FIELDS = {
    "region",
    "control_plane_usd_per_hour",
    "nat_gateway_usd_per_hour",
    "nat_gateway_usd_per_gb",
    "instances",
}
_INSTANCE_FIELDS = {
    "price_usd_per_hour",
    "spot_usd_per_hour",
    "vcpus",
    "memory_gib",
    "gpus",
    "gpu_model",
}
_NEW_INSTANCE_NEEDS = ("price_usd_per_hour", "vcpus", "memory_gib")


def load_catalog(path: Path | str | None = None) -> Catalog:
    """The built-in catalog, changed by the prices file at ``path`` if given.

    The file is JSON (``.json``) or TOML (``.toml``). Raises ConfigError naming
    the file and the field when the file is missing, does not parse, or holds
    a value of the wrong kind.
    """
    if path is None:
        return DEFAULT_CATALOG
    path = Path(path)
    document = _read_prices_file(path)
    catalog = apply_overrides(DEFAULT_CATALOG, document, source=str(path))
    log.info("price catalog loaded path=%s instances=%d", path, len(catalog.instances))
    return catalog


def _read_prices_file(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise ConfigError(
            f"Prices file {path}: expected a .json or .toml file, "
            f"found the suffix {suffix or '(none)'!r}."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"Prices file {path} cannot be read: {exc.strerror or exc}."
        ) from exc
    try:
        document = json.loads(text) if suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if suffix == ".json" else "TOML"
        raise ConfigError(f"Prices file {path} is not valid {kind}: {exc}.") from exc
    if not isinstance(document, dict):
        raise ConfigError(
            f"Prices file {path}: expected a table of settings at the top "
            f"level, found {_kind(document)}."
        )
    return document


def apply_overrides(
    base: Catalog, document: Mapping[str, Any], *, source: str
) -> Catalog:
    """A copy of ``base`` with the settings of a parsed prices file applied.

    Fields of a known instance type are replaced one by one; a new instance
    type needs at least a price, vCPUs and memory.
    """
    check = _Checker(source)
    check.known_fields(document, _TOP_FIELDS, where="the top level")
    instances = dict(base.instances)
    overrides = document.get("instances", {})
    if not isinstance(overrides, Mapping):
        check.fail("instances", "a table of instance types", overrides)
    for name, fields in overrides.items():
        instances[name] = _override_instance(check, instances.get(name), name, fields)
    return Catalog(
        instances=MappingProxyType(instances),
        control_plane_usd_per_hour=check.price(
            document, "control_plane_usd_per_hour", base.control_plane_usd_per_hour
        ),
        nat_gateway_usd_per_hour=check.price(
            document, "nat_gateway_usd_per_hour", base.nat_gateway_usd_per_hour
        ),
        nat_gateway_usd_per_gb=check.price(
            document, "nat_gateway_usd_per_gb", base.nat_gateway_usd_per_gb
        ),
        region=check.text(document, "region", base.region) or base.region,
        source=source,
    )


def _override_instance(
    check: _Checker, known: InstanceType | None, name: str, fields: Any
) -> InstanceType:
    where = f"instances.{name}"
    if not isinstance(fields, Mapping):
        check.fail(where, "a table of instance fields", fields)
    check.known_fields(fields, _INSTANCE_FIELDS, where=where)
    if known is None:
        missing = [key for key in _NEW_INSTANCE_NEEDS if key not in fields]
        if missing:
            raise ConfigError(
                f"Prices file {check.source}: {where} is not in the built-in "
                f"catalog, so it needs {', '.join(_NEW_INSTANCE_NEEDS)}; "
                f"found no {', '.join(missing)}."
            )
        known = InstanceType(name, 0.0, 0, 0.0)
    spot = check.price(fields, "spot_usd_per_hour", known.spot_usd_per_hour, where)
    return InstanceType(
        name=name,
        price_usd_per_hour=check.price(
            fields, "price_usd_per_hour", known.price_usd_per_hour, where
        ),
        vcpus=check.count(fields, "vcpus", known.vcpus, where, minimum=1),
        memory_gib=check.price(fields, "memory_gib", known.memory_gib, where),
        gpus=check.count(fields, "gpus", known.gpus, where, minimum=0),
        gpu_model=check.text(fields, "gpu_model", known.gpu_model, where),
        spot_usd_per_hour=spot,
    )


class _Checker:
    """Reads typed values out of a parsed prices file, naming what is wrong."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, expected: str, found: Any) -> NoReturn:
        raise ConfigError(
            f"Prices file {self.source}: {where} must be {expected}; "
            f"found {_kind(found)}."
        )

    def known_fields(
        self, table: Mapping[str, Any], allowed: set[str], where: str
    ) -> None:
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ConfigError(
                f"Prices file {self.source}: unknown field {unknown[0]!r} at "
                f"{where}; expected one of: {', '.join(sorted(allowed))}."
            )

    def price(
        self, table: Mapping[str, Any], key: str, default: Any, where: str = ""
    ) -> Any:
        if key not in table:
            return default
        value = table[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            self.fail(_join(where, key), "a number of zero or more", value)
        return float(value)

    def count(
        self, table: Mapping[str, Any], key: str, default: int, where: str, minimum: int
    ) -> int:
        if key not in table:
            return default
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(_join(where, key), f"a whole number of {minimum} or more", value)
        return int(value)

    def text(
        self, table: Mapping[str, Any], key: str, default: str | None, where: str = ""
    ) -> str | None:
        if key not in table:
            return default
        value = table[key]
        if not isinstance(value, str):
            self.fail(_join(where, key), "a string", value)
        return str(value)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    return f"a {type(value).__name__}"

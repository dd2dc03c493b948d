"""A client for OpenCost's ``/allocation`` API: measured costs from a cluster.

On a cluster, OpenCost prices what the pods requested and used from the
provider's own billing, which the catalog only approximates (discounts, spot,
the real node sizes). ``scanpipe report --opencost URL`` asks it::

    GET {url}/allocation?window=2024-05-01T10:00:00Z,2024-05-01T11:00:00Z
        &aggregate=namespace&accumulate=true&includeIdle=true

and reads one allocation set: ``{"code": 200, "data": [{name: allocation}]}``,
where each allocation carries ``totalCost``, ``cpuCost``, ``ramCost``,
``gpuCost``, the request and usage averages and OpenCost's efficiencies, and
``__idle__`` holds the cluster's idle cost (see
https://opencost.io/docs/integrations/api). Only the standard library's
urllib is used, with a timeout on every request.

Errors: an answer that is not OpenCost's (404, not JSON, another shape) is a
ConfigError, since the URL is probably wrong; no answer in time, or a 5xx, is
a TransientError. Every message names the URL and what was expected.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from scanpipe.errors import ConfigError, TransientError

log = logging.getLogger(__name__)

#: The name OpenCost gives the cluster's unallocated cost in a set.
IDLE = "__idle__"

#: Bytes read from a response at most; a namespace-level set is kilobytes.
_MAX_RESPONSE_BYTES = 64 * 1024 * 1024

_COST_FIELDS = {
    "total_cost_usd": "totalCost",
    "cpu_cost_usd": "cpuCost",
    "ram_cost_usd": "ramCost",
    "gpu_cost_usd": "gpuCost",
    "pv_cost_usd": "pvCost",
    "network_cost_usd": "networkCost",
    "load_balancer_cost_usd": "loadBalancerCost",
    "shared_cost_usd": "sharedCost",
    "external_cost_usd": "externalCost",
}
_MEASURE_FIELDS = {
    "minutes": "minutes",
    "cpu_core_request_average": "cpuCoreRequestAverage",
    "cpu_core_usage_average": "cpuCoreUsageAverage",
    "ram_byte_request_average": "ramByteRequestAverage",
    "ram_byte_usage_average": "ramByteUsageAverage",
    "gpu_count": "gpuCount",
    "cpu_efficiency": "cpuEfficiency",
    "ram_efficiency": "ramEfficiency",
    "total_efficiency": "totalEfficiency",
}


@dataclass(frozen=True)
class Allocation:
    """One named allocation of a set: a namespace, a label value, or idle."""

    name: str
    total_cost_usd: float
    start: str | None = None
    end: str | None = None
    cpu_cost_usd: float = 0.0
    ram_cost_usd: float = 0.0
    gpu_cost_usd: float = 0.0
    pv_cost_usd: float = 0.0
    network_cost_usd: float = 0.0
    load_balancer_cost_usd: float = 0.0
    shared_cost_usd: float = 0.0
    external_cost_usd: float = 0.0
    minutes: float | None = None
    cpu_core_request_average: float | None = None
    cpu_core_usage_average: float | None = None
    ram_byte_request_average: float | None = None
    ram_byte_usage_average: float | None = None
    gpu_count: float | None = None
    cpu_efficiency: float | None = None
    ram_efficiency: float | None = None
    total_efficiency: float | None = None


@dataclass(frozen=True)
class AllocationSet:
    """The allocations OpenCost returned for one window."""

    url: str
    window: str
    allocations: Mapping[str, Allocation]

    @property
    def total_usd(self) -> float:
        return sum(a.total_cost_usd for a in self.allocations.values())

    @property
    def idle_usd(self) -> float:
        idle = self.allocations.get(IDLE)
        return idle.total_cost_usd if idle else 0.0

    def names(self) -> list[str]:
        return sorted(self.allocations)


class OpenCostClient:
    """Reads allocation costs from one OpenCost API.

    Args:
        url: the API's base URL, e.g. ``http://localhost:9003`` (a trailing
            ``/allocation`` is accepted too).
        workload: the name of scanpipe's allocation under ``aggregate``: the
            namespace, or the label's value.
        aggregate: ``namespace`` or ``label:<name>``.
        timeout_seconds: how long to wait for an answer.
    """

    def __init__(
        self,
        url: str,
        *,
        workload: str = "scanpipe",
        aggregate: str = "namespace",
        timeout_seconds: float = 10.0,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(
                f"The OpenCost URL must be an http(s) URL such as "
                f"http://localhost:9003; found {url!r}."
            )
        if aggregate != "namespace" and not aggregate.startswith("label:"):
            raise ConfigError(
                f"OpenCost aggregation must be 'namespace' or 'label:<name>'; "
                f"found {aggregate!r}."
            )
        base = url.rstrip("/")
        self.url = base.removesuffix("/allocation")
        self.workload = workload
        self.aggregate = aggregate
        self.timeout_seconds = timeout_seconds

    def allocation_url(self, start: float, end: float) -> str:
        """The request URL for the window [start, end] (seconds since epoch)."""
        params = {
            "window": format_window(start, end),
            "aggregate": self.aggregate,
            "accumulate": "true",
            "includeIdle": "true",
            "shareIdle": "false",
        }
        return f"{self.url}/allocation?{urllib.parse.urlencode(params)}"

    def allocation(self, start: float, end: float) -> AllocationSet:
        """The accumulated allocations of the window [start, end]."""
        url = self.allocation_url(start, end)
        body = self._get(url)
        allocations = parse_allocation_response(body, url=url)
        log.info(
            "opencost allocation read url=%s allocations=%d",
            self.url,
            len(allocations),
        )
        return AllocationSet(
            url=url, window=format_window(start, end), allocations=allocations
        )

    def _get(self, url: str) -> bytes:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        expected = "a JSON allocation set from OpenCost's /allocation API"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as reply:
                return bytes(reply.read(_MAX_RESPONSE_BYTES))
        except urllib.error.HTTPError as exc:
            exc.close()  # the error holds the open response
            message = (
                f"OpenCost at {url} answered HTTP {exc.code} {exc.reason}; "
                f"expected {expected}."
            )
            if exc.code >= 500:
                raise TransientError(message) from exc
            raise ConfigError(
                message + " Is this the OpenCost API (port 9003), not its UI?"
            ) from exc
        except (TimeoutError, urllib.error.URLError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, TimeoutError):
                raise TransientError(
                    f"OpenCost at {url} did not answer within "
                    f"{self.timeout_seconds:g} s; expected {expected}."
                ) from exc
            raise TransientError(
                f"OpenCost at {url} cannot be reached ({reason}); expected {expected}."
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise TransientError(
                f"OpenCost at {url} broke off its answer ({exc!r}); "
                f"expected {expected}."
            ) from exc


def format_window(start: float, end: float) -> str:
    """An OpenCost window of RFC 3339 times, widened to whole seconds."""
    return f"{_rfc3339(math.floor(start))},{_rfc3339(math.ceil(end))}"


def _rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_allocation_response(body: bytes, *, url: str) -> dict[str, Allocation]:
    """The allocations of an accumulated ``/allocation`` response body.

    Raises ConfigError, naming ``url``, when the body is not JSON, reports an
    error code, or does not have OpenCost's shape.
    """
    shape = 'an object {"code": 200, "data": [{name: allocation}]}'
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        start = body[:60].decode("utf-8", "replace")
        raise ConfigError(
            f"OpenCost at {url} returned a body that is not JSON "
            f"(it begins {start!r}); expected {shape}."
        ) from exc
    code = document.get("code", 200) if isinstance(document, dict) else 200
    if code != 200:
        raise ConfigError(
            f"OpenCost at {url} returned code {code} "
            f"({document.get('message', 'no message')}); expected code 200."
        )
    if not isinstance(document, dict) or "data" not in document:
        raise ConfigError(
            f"OpenCost at {url} returned JSON without a 'data' field; expected {shape}."
        )
    sets = document["data"]
    if not isinstance(sets, list) or len(sets) > 1:
        found = f"{len(sets)} sets" if isinstance(sets, list) else "no list"
        raise ConfigError(
            f"OpenCost at {url} returned {found} in 'data'; expected one "
            f"accumulated set (accumulate=true)."
        )
    named = sets[0] if sets else {}
    if named is None:
        return {}
    if not isinstance(named, dict):
        raise ConfigError(
            f"OpenCost at {url} returned a {type(named).__name__} as its "
            f"allocation set; expected {shape}."
        )
    return {name: _allocation(name, fields, url) for name, fields in named.items()}


def _allocation(name: str, fields: Any, url: str) -> Allocation:
    if not isinstance(fields, dict):
        raise ConfigError(
            f"OpenCost at {url} returned allocation {name!r} as a "
            f"{type(fields).__name__}; expected an object with totalCost."
        )
    if "totalCost" not in fields:
        raise ConfigError(
            f"OpenCost at {url} returned allocation {name!r} without "
            f"totalCost; expected OpenCost's allocation fields."
        )
    values: dict[str, Any] = {}
    for ours, theirs in (_COST_FIELDS | _MEASURE_FIELDS).items():
        number = _number(fields.get(theirs), name, theirs, url)
        if number is not None:
            values[ours] = number
    return Allocation(
        name=name,
        start=_text(fields.get("start")),
        end=_text(fields.get("end")),
        **values,
    )


def _number(value: Any, name: str, key: str, url: str) -> float | None:
    # OpenCost writes NaN as null in some versions and leaves fields out in
    # others; both read as unknown.
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(
            f"OpenCost at {url} returned {key} of allocation {name!r} as "
            f"{value!r}; expected a number."
        )
    number = float(value)
    return number if math.isfinite(number) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None

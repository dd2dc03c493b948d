"""The OpenCost client against a real local HTTP server."""

from __future__ import annotations

import json
import socket
import urllib.parse

import pytest

from scanpipe.errors import ConfigError, TransientError
from scanpipe.finops.opencost import (
    IDLE,
    OpenCostClient,
    format_window,
    parse_allocation_response,
)
from tests.finops.conftest import ALLOCATION_JSON, OpenCostServer

#: 2024-05-01T10:00:00Z and an hour later.
START, END = 1714557600.0, 1714561200.0


def test_reads_the_allocation_set(opencost_api: OpenCostServer) -> None:
    client = OpenCostClient(opencost_api.url("ok"))

    measured = client.allocation(START, END)

    assert measured.names() == [
        IDLE,
        "kube-system",
        "monitoring",
        "opencost",
        "scanpipe",
    ]
    scanpipe = measured.allocations["scanpipe"]
    assert scanpipe.total_cost_usd == 0.492327
    assert (scanpipe.cpu_cost_usd, scanpipe.ram_cost_usd, scanpipe.gpu_cost_usd) == (
        0.048636,
        0.026076,
        0.417615,
    )
    assert scanpipe.cpu_core_request_average == 3.5
    assert scanpipe.cpu_core_usage_average == 1.19
    assert scanpipe.ram_byte_request_average == 15032385536
    assert scanpipe.cpu_efficiency == 0.34
    assert (scanpipe.start, scanpipe.end) == (
        "2024-05-01T10:10:00Z",
        "2024-05-01T10:40:00Z",
    )
    assert measured.idle_usd == 0.144025
    assert measured.total_usd == pytest.approx(0.686802)


def test_asks_for_one_accumulated_set_of_the_window(
    opencost_api: OpenCostServer,
) -> None:
    client = OpenCostClient(opencost_api.url("ok") + "/", aggregate="label:app")

    client.allocation(START + 0.4, END - 0.4)

    (path,) = opencost_api.paths
    route, _, query = path.partition("?")
    params = dict(urllib.parse.parse_qsl(query))
    assert route == "/ok/allocation"
    assert params == {
        "window": "2024-05-01T10:00:00Z,2024-05-01T11:00:00Z",
        "aggregate": "label:app",
        "accumulate": "true",
        "includeIdle": "true",
        "shareIdle": "false",
    }


def test_a_url_ending_in_allocation_is_the_same_api() -> None:
    client = OpenCostClient("http://localhost:9003/allocation")

    assert client.url == "http://localhost:9003"


@pytest.mark.parametrize(
    ("behaviour", "error", "message"),
    [
        pytest.param(
            "missing",
            ConfigError,
            r"answered HTTP 404 Not Found; expected a JSON allocation set",
            id="404",
        ),
        pytest.param(
            "broken",
            TransientError,
            r"answered HTTP 500 Internal Server Error; expected a JSON allocation",
            id="500",
        ),
        pytest.param(
            "html",
            ConfigError,
            r"returned a body that is not JSON \(it begins '<!doctype html>",
            id="not-json",
        ),
        pytest.param(
            "refusing",
            ConfigError,
            r"returned code 400 \(error parsing window\); expected code 200",
            id="error-code",
        ),
    ],
)
def test_failures_name_the_url_and_what_was_expected(
    opencost_api: OpenCostServer,
    behaviour: str,
    error: type[Exception],
    message: str,
) -> None:
    client = OpenCostClient(opencost_api.url(behaviour))

    with pytest.raises(error, match=message) as caught:
        client.allocation(START, END)

    assert f"{opencost_api.url(behaviour)}/allocation?window=" in str(caught.value)


def test_a_slow_answer_times_out(opencost_api: OpenCostServer) -> None:
    client = OpenCostClient(opencost_api.url("slow"), timeout_seconds=0.2)

    with pytest.raises(TransientError, match=r"did not answer within 0\.2 s") as caught:
        client.allocation(START, END)

    assert opencost_api.url("slow") in str(caught.value)


def test_nobody_listening_is_transient() -> None:
    # A port that was just free: bind, note it, close.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = OpenCostClient(f"http://127.0.0.1:{port}", timeout_seconds=2)

    with pytest.raises(
        TransientError, match=rf"127\.0\.0\.1:{port}.*cannot be reached"
    ):
        client.allocation(START, END)


def test_an_empty_set_has_no_allocations(opencost_api: OpenCostServer) -> None:
    measured = OpenCostClient(opencost_api.url("empty")).allocation(START, END)

    assert measured.allocations == {}
    assert measured.total_usd == 0.0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("localhost:9003", r"must be an http\(s\) URL", id="no-scheme"),
        pytest.param("ftp://cost", r"must be an http\(s\) URL", id="ftp"),
    ],
)
def test_bad_urls_are_refused_before_any_request(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        OpenCostClient(url)


def test_bad_aggregation_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'namespace' or 'label:<name>'"):
        OpenCostClient("http://localhost:9003", aggregate="pod")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"{}", r"JSON without a 'data' field", id="no-data"),
        pytest.param(
            b'{"code": 200, "data": [{}, {}]}',
            r"returned 2 sets in 'data'; expected one accumulated set",
            id="steps-not-accumulated",
        ),
        pytest.param(
            b'{"code": 200, "data": [{"x": {"cpuCost": 1}}]}',
            r"allocation 'x' without totalCost",
            id="no-total",
        ),
        pytest.param(
            b'{"code": 200, "data": [{"x": {"totalCost": "1.0"}}]}',
            r"returned totalCost of allocation 'x' as '1\.0'; expected a number",
            id="text-cost",
        ),
    ],
)
def test_shape_errors_say_what_opencost_should_have_sent(
    body: bytes, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_allocation_response(body, url="http://cost/allocation")


def test_null_numbers_read_as_unknown() -> None:
    document = json.loads(ALLOCATION_JSON.read_text())
    document["data"][0]["scanpipe"]["cpuEfficiency"] = None

    parsed = parse_allocation_response(json.dumps(document).encode(), url="u")

    assert parsed["scanpipe"].cpu_efficiency is None


def test_window_is_rfc3339_widened_to_whole_seconds() -> None:
    assert format_window(START + 0.5, END + 0.5) == (
        "2024-05-01T10:00:00Z,2024-05-01T11:00:01Z"
    )

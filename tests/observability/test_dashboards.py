"""Every Grafana dashboard query, run by a real Prometheus that scraped a real
embedded stack whose worker processes segmented scans.

The fixture starts the embedded stack with its one /metrics endpoint, starts
Debian's ``prometheus`` scraping it every second, drops phantom scans into the
inbox and waits until Prometheus has seen them done. Each query of
deploy/grafana/*.json is then one test case.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from scanpipe.autoscale import ScalingPolicy
from scanpipe.stack import EmbeddedStack, RunDir, StackSettings
from tests import scans
from tests.integration.conftest import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("prometheus") is None,
        reason="prometheus is not installed (Debian: apt-get install prometheus; "
        "`make test` installs it)",
    ),
]

DASHBOARDS = Path(__file__).parents[2] / "deploy" / "grafana"
SCANS = 8

#: What Grafana puts in place of its variables. The range covers the whole
#: test run, and the rate interval spans many 1 s scrapes.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "15s",
    "$__range_s": "600",
    "$__range": "10m",
}


def dashboard_queries() -> list[Any]:
    cases = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                title = f"{path.stem}: {panel['title']} [{target['refId']}]"
                cases.append(pytest.param(target["expr"], id=title))
    return cases


def substitute(expr: str) -> str:
    # Longest names first: $__range_s before $__range.
    for name, value in sorted(GRAFANA_VARIABLES.items(), key=lambda i: -len(i[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a dashboard variable is left in {expr}"
    return expr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Scraped:
    stack: EmbeddedStack
    prometheus_url: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


def start_prometheus(tmp: Path, target: str) -> tuple[subprocess.Popen[bytes], str]:
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: scanpipe\n"
        "    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    port = free_port()
    log = (tmp / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    tmp = tmp_path_factory.mktemp("prometheus")
    stack = EmbeddedStack(
        RunDir(tmp / "run"),
        StackSettings(
            model="threshold",
            max_workers=2,
            # A long cooldown keeps the workers up while the queries run.
            policy=ScalingPolicy(
                polling_interval_seconds=0.5,
                cooldown_period_seconds=600,
                max_replicas=2,
                target_per_replica=2,
                scale_down_stabilization_seconds=0.0,
            ),
            inbox_settle_seconds=0.3,
            stop_grace_seconds=10,
            metrics_port=0,
        ),
    )
    assert stack.metrics_url is not None
    target = stack.metrics_url.removeprefix("http://").removesuffix("/metrics")
    stop = threading.Event()
    runner = threading.Thread(target=stack.run, args=(stop,), name="stack")
    prometheus, url = start_prometheus(tmp, target)
    scraped = Scraped(stack, url)
    try:
        runner.start()
        wait_until(
            lambda: _ready(scraped, 'up{job="scanpipe"}') == 1.0,
            60,
            "Prometheus to scrape the stack",
        )
        # Made first and dropped together, so the autoscaler sees them at once.
        made = [scans.make_scan(tmp / f"scan-{i}.nii.gz", seed=i) for i in range(SCANS)]
        for scan in made:
            scan.rename(stack.run_dir.inbox / scan.name)
        wait_until(
            lambda: (
                _ready(scraped, 'sum(scanpipe_scans_total{outcome="done"})') == SCANS
            ),
            240,
            f"Prometheus to see {SCANS} scans done",
        )
        # A few more scrapes, so every rate has points after the last scan.
        seen = _ready(scraped, "count_over_time(scanpipe_dead_letter_messages[10m])")
        wait_until(
            lambda: (
                (
                    _ready(
                        scraped, "count_over_time(scanpipe_dead_letter_messages[10m])"
                    )
                    or 0
                )
                >= (seen or 0) + 3
            ),
            60,
            "three more scrapes",
        )
        yield scraped
    finally:
        stop.set()
        if runner.is_alive():
            runner.join(timeout=60)
        stack.close()
        prometheus.terminate()
        prometheus.wait(timeout=30)


def _ready(scraped: Scraped, expr: str) -> float | None:
    try:
        return scraped.scalar(expr)
    except OSError:  # Prometheus still starting
        return None


@pytest.mark.parametrize("expr", dashboard_queries())
def test_every_dashboard_query_returns_data(scraped: Scraped, expr: str) -> None:
    if "scanpipe_gpu_" in expr and not _has_gpu_series(scraped):
        pytest.skip("no GPU here: NVML found none, so workers export no GPU series")

    result = scraped.query(substitute(expr))

    assert result, f"no data for {expr}"
    values = [float(series["value"][1]) for series in result]
    assert any(math.isfinite(v) for v in values), f"only NaN/Inf for {expr}"


def test_the_dashboards_use_the_datasource_variable() -> None:
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


def test_one_endpoint_sums_the_workers_of_the_stack(scraped: Scraped) -> None:
    stack = scraped.stack
    assert stack.metrics_url is not None
    with urllib.request.urlopen(stack.metrics_url, timeout=10) as response:
        text = response.read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    done = [s for s in stack.ledger.scans() if s.outcome == "done"]
    started = [w for w in stack.ledger.workers() if w.model_loaded_at is not None]

    assert samples[("scanpipe_scans_total", (("outcome", "done"),))] == len(done)
    # Each worker process observed its own cold start once: the endpoint's
    # count is the sum over the processes, those that exited included, while
    # the running gauge counts only the processes alive.
    # (A worker stopped before it loaded its model observed none.)
    assert len(started) >= 1
    assert samples[("scanpipe_worker_cold_start_seconds_count", ())] == len(started)
    alive = len(stack.supervisor.running)
    assert alive >= 1
    assert samples[("scanpipe_workers", (("state", "running"),))] == alive
    # One series per label set: no pid or worker label splits the sums.
    assert not any("pid" in dict(labels) for _, labels in samples)
    # And Prometheus scraped them as one target.
    assert scraped.scalar('count(up{job="scanpipe"})') == 1
    assert scraped.scalar("sum(scanpipe_worker_cold_start_seconds_count)") == len(
        started
    )


def _has_gpu_series(scraped: Scraped) -> bool:
    return bool(scraped.query('{__name__=~"scanpipe_gpu_.*"}'))

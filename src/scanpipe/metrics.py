"""Every Prometheus metric scanpipe exports, and the endpoint that serves them.

Usage, in a test or any process that wants them::

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.scans.labels(outcome="done").inc()
    print(generate_latest(registry).decode())

The metrics (``sum`` over processes is what the dashboards show):

=================================== ========= ======================================
name                                type      labels
=================================== ========= ======================================
scanpipe_scans_total                counter   outcome (ledger.OUTCOMES)
scanpipe_stage_seconds              histogram stage (ledger.STAGES)
scanpipe_end_to_end_seconds         histogram -  (object arrival to mask, done only)
scanpipe_queue_messages             gauge     state (visible, in_flight, delayed)
scanpipe_dead_letter_messages       gauge     -
scanpipe_workers                    gauge     state (desired, running, busy)
scanpipe_worker_cold_start_seconds  histogram -  (process start to model loaded)
scanpipe_model_load_seconds         histogram -
scanpipe_cost_usd_total             counter   component (COST_COMPONENTS)
scanpipe_cost_rate_usd_per_hour     gauge     component
scanpipe_cpu_used_cores             gauge     -
scanpipe_cpu_requested_cores        gauge     -
scanpipe_memory_used_bytes          gauge     -  (resident set size)
scanpipe_memory_requested_bytes     gauge     -
scanpipe_gpu_utilization_ratio      gauge     gpu (NVML index; only with a GPU)
scanpipe_gpu_memory_used_bytes      gauge     gpu
scanpipe_gpu_memory_total_bytes     gauge     gpu
=================================== ========= ======================================

Labels take values from closed vocabularies only. Object keys, etags and
image header text never become label values: keys can carry patient names,
and every distinct value would be a new series kept for the retention
period. There is no worker id label either: with scale-to-zero every cold
start is a new worker, so such a label would add a set of series per scale
up, without bound. Processes are added up instead: the embedded stack's
workers write prometheus_client's multiprocess files and its one endpoint
sums them; in a cluster Prometheus labels each pod's series with the pod,
and the dashboards ``sum`` over pods.

Who sets what (see :mod:`scanpipe.telemetry`): a worker process reports its
scans, its busy/running state, its resources, its cold start and its own
cost; the embedded stack reports the queue, the desired worker count and the
always-on baseline cost. In a cluster the queue gauges and the desired count
come from no scanpipe process (KEDA reads the queue itself), so the queue and
desired-worker panels stay empty there unless a queue exporter fills them; the
alerts do not depend on them (see deploy/prometheus/alerts.yaml).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from scanpipe.errors import ConfigError
from scanpipe.ledger import OUTCOMES, STAGES, ScanRecord

log = logging.getLogger(__name__)

#: What the cost of a run is made of; the same split as the cost model's.
COST_COMPONENTS = ("compute", "cold_start", "cooldown_tail", "baseline")
QUEUE_STATES = ("visible", "in_flight", "delayed")
WORKER_STATES = ("desired", "running", "busy")

#: One stage of one scan: milliseconds (validate) to minutes (inference).
STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Object arrival to mask; 600 s, the latency objective, is a boundary.
LATENCY_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600)
#: Process start and model load.
STARTUP_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    """Every scanpipe metric, registered on ``registry``.

    Each label's values are created at zero up front, so that a series exists
    before its first event and ``rate`` sees that event.

    Args:
        registry: Where the metrics register; tests pass a fresh one.
        gpu: Define the GPU gauges; only a process that found a GPU does.
    """

    def __init__(self, registry: CollectorRegistry, *, gpu: bool = False) -> None:
        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            # livesum: the sum over the processes alive now, without a pid
            # label, when the embedded stack's workers write multiprocess files.
            return Gauge(
                name, doc, labels, registry=registry, multiprocess_mode="livesum"
            )

        self.scans = Counter(
            "scanpipe_scans",
            "Scan attempts by how they ended.",
            ["outcome"],
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "scanpipe_stage_seconds",
            "Seconds one scan spent in each stage, queue wait included.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.end_to_end_seconds = Histogram(
            "scanpipe_end_to_end_seconds",
            "Seconds from an object's arrival to its mask, for scans done.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_messages = gauge(
            "scanpipe_queue_messages", "Messages on the queue by state.", ("state",)
        )
        self.dead_letter_messages = gauge(
            "scanpipe_dead_letter_messages", "Messages on the dead-letter queue."
        )
        self.workers = gauge(
            "scanpipe_workers",
            "Workers the autoscaler wants, worker processes running, and busy.",
            ("state",),
        )
        self.cold_start_seconds = Histogram(
            "scanpipe_worker_cold_start_seconds",
            "Seconds from a worker process's start to its model being loaded.",
            buckets=STARTUP_BUCKETS,
            registry=registry,
        )
        self.model_load_seconds = Histogram(
            "scanpipe_model_load_seconds",
            "Seconds a worker took to load its model.",
            buckets=STARTUP_BUCKETS,
            registry=registry,
        )
        self.cost_usd = Counter(
            "scanpipe_cost_usd",
            "Cost in USD at on-demand prices, by component.",
            ["component"],
            registry=registry,
        )
        self.cost_rate_usd_per_hour = gauge(
            "scanpipe_cost_rate_usd_per_hour",
            "What the machines running now cost per hour, by component.",
            ("component",),
        )
        self.cpu_used_cores = gauge(
            "scanpipe_cpu_used_cores", "CPU cores workers use (recent average)."
        )
        self.cpu_requested_cores = gauge(
            "scanpipe_cpu_requested_cores", "CPU cores workers requested."
        )
        self.memory_used_bytes = gauge(
            "scanpipe_memory_used_bytes", "Resident memory of worker processes."
        )
        self.memory_requested_bytes = gauge(
            "scanpipe_memory_requested_bytes", "Memory workers requested."
        )

        self.gpu_utilization_ratio: Gauge | None = None
        self.gpu_memory_used_bytes: Gauge | None = None
        self.gpu_memory_total_bytes: Gauge | None = None
        if gpu:
            # livemax: workers sharing a GPU each read the same device.
            def gpu_gauge(name: str, doc: str) -> Gauge:
                return Gauge(
                    name, doc, ["gpu"], registry=registry, multiprocess_mode="livemax"
                )

            self.gpu_utilization_ratio = gpu_gauge(
                "scanpipe_gpu_utilization_ratio",
                "Share of time the GPU was executing kernels (NVML).",
            )
            self.gpu_memory_used_bytes = gpu_gauge(
                "scanpipe_gpu_memory_used_bytes", "GPU memory in use (NVML)."
            )
            self.gpu_memory_total_bytes = gpu_gauge(
                "scanpipe_gpu_memory_total_bytes", "GPU memory installed (NVML)."
            )

        for outcome in OUTCOMES:
            self.scans.labels(outcome=outcome)
        for stage in STAGES:
            self.stage_seconds.labels(stage=stage)
        for state in QUEUE_STATES:
            self.queue_messages.labels(state=state)
        for state in WORKER_STATES:
            self.workers.labels(state=state)
        for component in COST_COMPONENTS:
            self.cost_usd.labels(component=component)
            self.cost_rate_usd_per_hour.labels(component=component)

    def observe_scan(self, record: ScanRecord) -> None:
        """Count one ledger record; only its outcome and timings are used."""
        if record.outcome not in OUTCOMES:
            log.warning("scan outcome not counted outcome=%s", record.outcome)
            return
        self.scans.labels(outcome=record.outcome).inc()
        for stage, seconds in record.seconds.items():
            if stage in STAGES:
                self.stage_seconds.labels(stage=stage).observe(seconds)
        if record.outcome == "done" and record.end_to_end_seconds is not None:
            self.end_to_end_seconds.observe(record.end_to_end_seconds)


class SummedCollector:
    """Adds up the samples of several collectors that share names and labels,
    as multiprocess mode adds up processes."""

    def __init__(self, *sources: Collector) -> None:
        self._sources = sources

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        totals: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        for source in self._sources:
            for family in source.collect():
                if family.name not in families:
                    families[family.name] = Metric(
                        family.name, family.documentation, family.type
                    )
                    totals[family.name] = {}
                samples = totals[family.name]
                for sample in family.samples:
                    # A creation time is no quantity; multiprocess mode has none.
                    if sample.name.endswith("_created"):
                        continue
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    samples[key] = samples.get(key, 0.0) + sample.value
        for name, family in families.items():
            for (sample_name, labels), value in totals[name].items():
                family.add_sample(sample_name, dict(labels), value)
            yield family


@dataclass
class MetricsServer:
    """A ``/metrics`` endpoint running in a daemon thread."""

    server: Any
    thread: threading.Thread
    address: str

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def serve(registry: CollectorRegistry, address: str, port: int) -> MetricsServer:
    """Serve ``registry`` on ``http://address:port/metrics`` (port 0: any free)."""
    try:
        server, thread = start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"Expected to serve metrics on {address}:{port}, but could not bind "
            f"it: {exc.strerror or exc}. Pass another --metrics-port."
        ) from exc
    served = MetricsServer(server, thread, address)
    log.info("metrics served url=%s", served.url)
    return served

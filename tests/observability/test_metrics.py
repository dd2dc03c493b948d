"""The metrics a worker and the embedded stack export, on fresh registries."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from scanpipe.errors import ConfigError
from scanpipe.finops import Pricing, cost_rate_usd_per_hour
from scanpipe.ledger import OUTCOMES, STAGES, ScanRecord
from scanpipe.metrics import (
    COST_COMPONENTS,
    QUEUE_STATES,
    WORKER_STATES,
    Metrics,
    serve,
)
from scanpipe.queue.base import QueueDepth
from scanpipe.telemetry import (
    CostMeter,
    Nvml,
    ResourceRequests,
    StackTelemetry,
    WorkerTelemetry,
)
from tests import scans
from tests.worker.conftest import Pipeline, pipeline  # noqa: F401 - a fixture

#: Every sample name the dashboards and alerts may use, with a GPU present.
EXPECTED_SAMPLES = {
    "scanpipe_scans_total",
    "scanpipe_stage_seconds_bucket",
    "scanpipe_stage_seconds_count",
    "scanpipe_stage_seconds_sum",
    "scanpipe_end_to_end_seconds_bucket",
    "scanpipe_end_to_end_seconds_count",
    "scanpipe_end_to_end_seconds_sum",
    "scanpipe_queue_messages",
    "scanpipe_dead_letter_messages",
    "scanpipe_workers",
    "scanpipe_worker_cold_start_seconds_bucket",
    "scanpipe_worker_cold_start_seconds_count",
    "scanpipe_worker_cold_start_seconds_sum",
    "scanpipe_model_load_seconds_bucket",
    "scanpipe_model_load_seconds_count",
    "scanpipe_model_load_seconds_sum",
    "scanpipe_cost_usd_total",
    "scanpipe_cost_rate_usd_per_hour",
    "scanpipe_cpu_used_cores",
    "scanpipe_cpu_requested_cores",
    "scanpipe_memory_used_bytes",
    "scanpipe_memory_requested_bytes",
    "scanpipe_gpu_utilization_ratio",
    "scanpipe_gpu_memory_used_bytes",
    "scanpipe_gpu_memory_total_bytes",
}

#: The only values a label may take: closed vocabularies, and bucket bounds.
ALLOWED_LABELS = {
    "outcome": set(OUTCOMES),
    "stage": set(STAGES),
    "state": set(QUEUE_STATES) | set(WORKER_STATES),
    "component": set(COST_COMPONENTS),
    "gpu": {"0", "1"},
}


def samples(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, parsed back from its text."""
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def value(registry: Any, name: str, **labels: str) -> float:
    return samples(registry)[(name, tuple(sorted(labels.items())))]


class FakeNvml:
    """NVML's calls for two GPUs, for machines without one."""

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=[40, 90][handle], memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(used=(handle + 1) << 30, total=24 << 30, free=0)


def make_record(key: str, outcome: str = "done", **fields: Any) -> ScanRecord:
    return ScanRecord(
        input_key=key, outcome=outcome, finished_at=0.0, worker_id="w1", **fields
    )


def test_every_metric_is_defined_with_its_unit_and_exists_before_any_event() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, gpu=True)
    assert metrics.gpu_utilization_ratio is not None
    metrics.gpu_utilization_ratio.labels(gpu="0").set(0.5)
    metrics.gpu_memory_used_bytes.labels(gpu="0").set(1)  # type: ignore[union-attr]
    metrics.gpu_memory_total_bytes.labels(gpu="0").set(2)  # type: ignore[union-attr]

    names = {name for name, _ in samples(registry)}

    assert names == EXPECTED_SAMPLES
    # Each label value exists at zero, so the first event is a visible rate.
    assert value(registry, "scanpipe_scans_total", outcome="dead_letter") == 0
    assert value(registry, "scanpipe_cost_usd_total", component="baseline") == 0


def test_without_a_gpu_there_are_no_gpu_series() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    assert not any(name.startswith("scanpipe_gpu_") for name, _ in samples(registry))


def test_no_object_key_or_patient_text_becomes_a_label(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, gpu=True)
    phi = [s.decode() for s in scans.PHI_STRINGS]
    key = f"patients/{phi[0]}/{phi[1]}.nii.gz"
    metrics.observe_scan(
        make_record(
            key,
            seconds={"download": 0.2, "inference": 3.0},
            end_to_end_seconds=5.0,
            output_key=f"{key}.mask.nii.gz",
            reason="not_nifti",
            detail=f"header text {phi[2]} {phi[3]}",
        )
    )
    metrics.observe_scan(make_record(key, "dead_letter", detail=phi[0]))

    text = generate_latest(registry).decode()
    for secret in [key, *phi, "patients"]:
        assert secret not in text
    for (_, labels), _ in samples(registry).items():
        for name, label_value in labels:
            if name == "le":
                float(label_value)  # a bucket bound, a number
            else:
                assert label_value in ALLOWED_LABELS[name], (name, label_value)
    assert value(registry, "scanpipe_scans_total", outcome="done") == 1
    assert value(registry, "scanpipe_scans_total", outcome="dead_letter") == 1
    assert value(registry, "scanpipe_stage_seconds_count", stage="inference") == 1
    assert value(registry, "scanpipe_end_to_end_seconds_sum") == 5.0


def test_end_to_end_time_counts_only_scans_that_produced_a_mask() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.observe_scan(make_record("a", "done", end_to_end_seconds=7.0))
    metrics.observe_scan(make_record("b", "retry", end_to_end_seconds=99.0))
    metrics.observe_scan(make_record("c", "duplicate", end_to_end_seconds=1.0))
    assert value(registry, "scanpipe_end_to_end_seconds_count") == 1
    assert value(registry, "scanpipe_end_to_end_seconds_bucket", le="10.0") == 1


def test_the_cost_meter_books_each_phase_at_the_node_price() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    now = [100.0]
    meter = CostMeter(
        metrics,
        3.6,  # USD per hour: 0.001 USD per second
        ("cold_start", "compute", "cooldown_tail"),
        clock=lambda: now[0],
    )
    assert value(registry, "scanpipe_cost_rate_usd_per_hour", component="cold_start")

    now[0] += 20
    meter.enter("compute")
    now[0] += 50
    meter.flush()
    now[0] += 10
    meter.enter("cooldown_tail")
    now[0] += 30
    meter.close()

    def cost(component: str) -> float:
        return value(registry, "scanpipe_cost_usd_total", component=component)

    assert cost("cold_start") == pytest.approx(0.020)
    assert cost("compute") == pytest.approx(0.060)
    assert cost("cooldown_tail") == pytest.approx(0.030)
    for component in COST_COMPONENTS:
        rate = value(registry, "scanpipe_cost_rate_usd_per_hour", component=component)
        assert rate == 0, "a closed meter costs nothing per hour"


def test_the_cost_rate_of_a_stack_with_workers_is_the_cost_models_rate(
    tmp_path: Path,
) -> None:
    pricing = Pricing(instance_type="g6.xlarge")
    stack = StackTelemetry(tmp_path / "metrics", pricing=pricing)
    workers = [
        WorkerTelemetry(CollectorRegistry(), pricing=pricing, sample_seconds=3600)
        for _ in range(3)
    ]
    for worker in workers:
        worker.model_loaded(1.0)
    workers[0].busy_started()

    total = sum(
        value(registry, "scanpipe_cost_rate_usd_per_hour", component=component)
        for registry in [stack.registry, *(w.registry for w in workers)]
        for component in COST_COMPONENTS
    )
    assert total == pytest.approx(cost_rate_usd_per_hour(3, pricing=pricing))
    for worker in workers:
        worker.stopped()
    stack.close()


def test_a_worker_reports_its_state_cold_start_and_requests() -> None:
    registry = CollectorRegistry()
    telemetry = WorkerTelemetry(
        registry,
        requests=ResourceRequests(cpu_cores=2, memory_bytes=4 << 30),
        sample_seconds=3600,
    )

    def workers(state: str) -> float:
        return value(registry, "scanpipe_workers", state=state)

    assert (workers("running"), workers("busy")) == (1, 0)
    telemetry.model_loaded(2.5)
    assert value(registry, "scanpipe_model_load_seconds_sum") == 2.5
    # The cold start holds the model load and everything before it.
    assert value(registry, "scanpipe_worker_cold_start_seconds_sum") >= 2.5

    telemetry.busy_started()
    assert workers("busy") == 1
    compute = "scanpipe_cost_rate_usd_per_hour"
    assert value(registry, compute, component="compute") == 1.006
    telemetry.busy_ended()
    assert workers("busy") == 0
    assert value(registry, compute, component="cooldown_tail") == 1.006

    telemetry.sample()
    assert value(registry, "scanpipe_cpu_requested_cores") == 2
    assert value(registry, "scanpipe_memory_requested_bytes") == 4 << 30
    assert value(registry, "scanpipe_memory_used_bytes") > 0
    assert value(registry, "scanpipe_cpu_used_cores") >= 0

    telemetry.stopped()
    assert (workers("running"), workers("busy")) == (0, 0)
    assert value(registry, compute, component="cooldown_tail") == 0


def test_requests_default_to_the_priced_node_and_follow_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pricing = Pricing(instance_type="g6e.xlarge")
    assert ResourceRequests.from_env(pricing) == ResourceRequests(4, 32 << 30)

    monkeypatch.setenv("SCANPIPE_CPU_REQUEST_CORES", "1.5")
    monkeypatch.setenv("SCANPIPE_MEMORY_REQUEST_BYTES", str(6 << 30))
    assert ResourceRequests.from_env(pricing) == ResourceRequests(1.5, 6 << 30)

    monkeypatch.setenv("SCANPIPE_CPU_REQUEST_CORES", "lots")
    with pytest.raises(ConfigError, match="SCANPIPE_CPU_REQUEST_CORES"):
        ResourceRequests.from_env(pricing)


def test_gpu_readings_become_gauges_per_gpu() -> None:
    registry = CollectorRegistry()
    telemetry = WorkerTelemetry(
        registry, gpu=Nvml(FakeNvml(), [0, 1]), sample_seconds=3600
    )
    telemetry.sample()
    assert value(registry, "scanpipe_gpu_utilization_ratio", gpu="1") == 0.9
    assert value(registry, "scanpipe_gpu_memory_used_bytes", gpu="0") == 1 << 30
    assert value(registry, "scanpipe_gpu_memory_total_bytes", gpu="1") == 24 << 30
    telemetry.stopped()


def test_nvml_is_optional() -> None:
    # On a machine without nvidia-ml-py, a driver or a GPU: no readings, and
    # no failure either.
    gpu = Nvml.open()
    if gpu is not None:
        assert all(0 <= r.utilization_ratio <= 1 for r in gpu.read())


def test_the_stack_reports_the_queue_and_desired_workers(tmp_path: Path) -> None:
    stack = StackTelemetry(tmp_path / "metrics")
    stack.observe(QueueDepth(5, 2, 1), dead_letters=3, desired=2)
    registry = stack.registry
    assert value(registry, "scanpipe_queue_messages", state="visible") == 5
    assert value(registry, "scanpipe_queue_messages", state="in_flight") == 2
    assert value(registry, "scanpipe_queue_messages", state="delayed") == 1
    assert value(registry, "scanpipe_dead_letter_messages") == 3
    assert value(registry, "scanpipe_workers", state="desired") == 2
    # A tick whose decision was skipped keeps the last desired count.
    stack.observe(QueueDepth(0, 0, 0), dead_letters=0, desired=None)
    assert value(registry, "scanpipe_workers", state="desired") == 2
    stack.close()


def test_a_worker_loop_counts_what_it_handles(
    pipeline: Pipeline,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    registry = CollectorRegistry()
    pipeline.worker.metrics = WorkerTelemetry(registry, sample_seconds=3600)
    pipeline.inbox.put_file("jaw.nii.gz", scans.make_scan(tmp_path / "jaw.nii.gz"))
    pipeline.inbox.put_file("bad.nii.gz", scans.make_not_nifti(tmp_path / "bad"))

    pipeline.worker.handle(pipeline.receive_one())
    pipeline.worker.handle(pipeline.receive_one())

    assert value(registry, "scanpipe_scans_total", outcome="done") == 1
    assert value(registry, "scanpipe_scans_total", outcome="dead_letter") == 1
    assert value(registry, "scanpipe_end_to_end_seconds_count") == 1
    assert value(registry, "scanpipe_stage_seconds_count", stage="inference") == 1
    assert value(registry, "scanpipe_workers", state="busy") == 0
    assert value(registry, "scanpipe_cost_usd_total", component="compute") > 0


def test_metrics_are_served_over_http_and_a_taken_port_is_a_config_error() -> None:
    registry = CollectorRegistry()
    Metrics(registry).scans.labels(outcome="done").inc()
    server = serve(registry, "127.0.0.1", 0)
    try:
        with urllib.request.urlopen(server.url, timeout=10) as response:
            body = response.read().decode()
        assert 'scanpipe_scans_total{outcome="done"} 1.0' in body

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            with pytest.raises(ConfigError, match="--metrics-port"):
                serve(registry, "127.0.0.1", taken.getsockname()[1])
    finally:
        server.close()

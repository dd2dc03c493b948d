"""The processes behind the metrics: a worker's sampler and cost meter, and
the embedded stack's one endpoint for all its workers.

A worker process (:class:`WorkerTelemetry`) reports its scans, its
busy/running state, its CPU, memory and GPUs, its cold start, and its own
cost as it moves between cold start, compute and the idle cooldown tail. The
embedded stack (:class:`StackTelemetry`) reports the queue, the desired
worker count and the always-on baseline cost, and serves its workers'
multiprocess files added to its own metrics.

Prices come from the cost model's :class:`~scanpipe.finops.Pricing`, the
same rates ``scanpipe report`` uses: a worker process costs what one worker
node costs, the stack costs the always-on baseline, so the sum of
``scanpipe_cost_rate_usd_per_hour`` is
:func:`scanpipe.finops.cost_rate_usd_per_hour` of the workers running.
"""

from __future__ import annotations

import importlib
import logging
import os
import resource
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from scanpipe import config
from scanpipe.errors import ConfigError
from scanpipe.finops.catalog import DEFAULT_CATALOG, Pricing
from scanpipe.ledger import ScanRecord
from scanpipe.metrics import Metrics, MetricsServer, SummedCollector, serve
from scanpipe.queue.base import QueueDepth

log = logging.getLogger(__name__)

#: The cost components a worker moves between; baseline is the stack's.
WORKER_PHASES = ("cold_start", "compute", "cooldown_tail")
#: How often a worker samples its resources and books its running cost.
SAMPLE_SECONDS = 2.0
#: Where ``scanpipe up`` serves its one endpoint by default.
DEFAULT_STACK_PORT = 9108
GIB = 1 << 30


class CostMeter:
    """Books one machine's cost into ``scanpipe_cost_usd_total`` as it runs.

    The machine is in one phase (a cost component) at a time: its rate gauge
    shows its price under that component and 0 under the others it moves
    between, so ``sum(scanpipe_cost_rate_usd_per_hour)`` is what is being
    spent now. ``flush`` books the time since the last booking; call it
    periodically so the counter grows during long phases.
    """

    def __init__(
        self,
        metrics: Metrics,
        usd_per_hour: float,
        phases: tuple[str, ...],
        *,
        started_at: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._usd_per_second = usd_per_hour / 3600.0
        self._usd_per_hour = usd_per_hour
        self._phases = phases
        self._clock = clock
        self._lock = threading.Lock()
        self._since = clock() if started_at is None else started_at
        self._phase: str | None = phases[0]
        self._show_rate()

    def enter(self, phase: str) -> None:
        """Book the current phase up to now and start ``phase``."""
        with self._lock:
            self._book()
            self._phase = phase
            self._show_rate()

    def flush(self) -> None:
        with self._lock:
            self._book()

    def close(self) -> None:
        """Book the last of the current phase; the machine costs nothing now."""
        with self._lock:
            self._book()
            self._phase = None
            self._show_rate()

    def _show_rate(self) -> None:
        for each in self._phases:
            rate = self._usd_per_hour if each == self._phase else 0.0
            self._metrics.cost_rate_usd_per_hour.labels(component=each).set(rate)

    def _book(self) -> None:
        now = self._clock()
        if self._phase is not None and now > self._since:
            cost = (now - self._since) * self._usd_per_second
            self._metrics.cost_usd.labels(component=self._phase).inc(cost)
        self._since = now


@dataclass(frozen=True)
class GpuReading:
    index: int
    utilization_ratio: float
    memory_used_bytes: int
    memory_total_bytes: int


class Nvml:
    """The GPUs this process can see, read through NVML (``nvidia-ml-py``).

    ``open`` returns None without the package, a driver or a GPU; nothing
    else here may fail a worker because a GPU is missing.
    """

    def __init__(self, nvml: Any, handles: list[Any]) -> None:
        self._nvml = nvml
        self._handles = handles

    @classmethod
    def open(cls) -> Nvml | None:
        try:
            # Optional: ``pip install nvidia-ml-py``; the package is pynvml.
            pynvml = importlib.import_module("pynvml")
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:  # NVMLError and its many driver-specific kin
            log.debug("no GPU readings error=%s", exc)
            return None
        if not handles:
            pynvml.nvmlShutdown()
            return None
        log.info("GPU metrics enabled gpus=%d", len(handles))
        return cls(pynvml, handles)

    def read(self) -> list[GpuReading]:
        readings = []
        for index, handle in enumerate(self._handles):
            try:
                rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as exc:  # a GPU that fell off the bus, a reset
                log.debug("GPU reading failed gpu=%d error=%s", index, exc)
                continue
            readings.append(
                GpuReading(index, rates.gpu / 100.0, memory.used, memory.total)
            )
        return readings


@dataclass(frozen=True)
class ResourceRequests:
    """What one worker asked for: the denominators of CPU and RAM efficiency."""

    cpu_cores: float
    memory_bytes: int

    @classmethod
    def from_env(cls, pricing: Pricing) -> ResourceRequests:
        """SCANPIPE_CPU_REQUEST_CORES and SCANPIPE_MEMORY_REQUEST_BYTES; by
        default the worker requests of ``pricing`` (the whole worker node)."""
        cpu_cores, memory_gib, _ = pricing.worker_requests
        return cls(
            _positive("SCANPIPE_CPU_REQUEST_CORES", float, cpu_cores),
            _positive("SCANPIPE_MEMORY_REQUEST_BYTES", int, int(memory_gib * GIB)),
        )


def _positive(name: str, kind: type[float] | type[int], default: float) -> Any:
    text = config.env(name)
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"Expected {name} to be a positive number, got {text!r}.")
    return value


class WorkerTelemetry:
    """One worker process's metrics: its scans, state, resources and cost.

    The worker loop calls ``busy_started``/``busy_ended`` around each message
    and ``scan_recorded`` for each record; a daemon thread samples CPU,
    memory and GPUs and books the running cost every ``sample_seconds``.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        pricing: Pricing | None = None,
        requests: ResourceRequests | None = None,
        gpu: Nvml | None = None,
        sample_seconds: float = SAMPLE_SECONDS,
        started_at: float | None = None,
    ) -> None:
        pricing = pricing or Pricing()
        requests = requests or ResourceRequests.from_env(pricing)
        self.registry = registry
        self.metrics = Metrics(registry, gpu=gpu is not None)
        self.server: MetricsServer | None = None
        self._gpu = gpu
        self._sample_seconds = sample_seconds
        # The cold start counts from the process's start (interpreter and
        # imports included), on the monotonic clock, unless told otherwise.
        if started_at is None:
            started_at = time.monotonic() - _process_age_seconds()
        self._started = started_at
        self._cpu = (self._started, 0.0)

        self.metrics.workers.labels(state="running").set(1)
        self.metrics.cpu_requested_cores.set(requests.cpu_cores)
        self.metrics.memory_requested_bytes.set(requests.memory_bytes)
        self._cost = CostMeter(
            self.metrics,
            pricing.worker_usd_per_hour,
            WORKER_PHASES,
            started_at=self._started,
        )
        self.sample()
        self._stop = threading.Event()
        self._sampler = threading.Thread(
            target=self._sample_loop, name="metrics-sampler", daemon=True
        )
        self._sampler.start()

    def model_loaded(self, load_seconds: float) -> None:
        """The model is ready: cold start ends, the worker waits for work."""
        self.metrics.model_load_seconds.observe(load_seconds)
        cold_start = max(load_seconds, time.monotonic() - self._started)
        self.metrics.cold_start_seconds.observe(cold_start)
        self._cost.enter("cooldown_tail")

    def busy_started(self) -> None:
        self.metrics.workers.labels(state="busy").set(1)
        self._cost.enter("compute")

    def busy_ended(self) -> None:
        self._cost.enter("cooldown_tail")
        self.metrics.workers.labels(state="busy").set(0)

    def scan_recorded(self, record: ScanRecord) -> None:
        self.metrics.observe_scan(record)

    def stopped(self) -> None:
        """The worker is exiting: book the last cost, leave running and busy."""
        self._stop.set()
        self._cost.close()
        self.metrics.workers.labels(state="busy").set(0)
        self.metrics.workers.labels(state="running").set(0)

    def sample(self) -> None:
        """Read CPU, memory and GPUs once, and book the cost so far."""
        now = time.monotonic()
        cpu = sum(os.times()[:2])
        then, cpu_then = self._cpu
        if now > then:
            self.metrics.cpu_used_cores.set((cpu - cpu_then) / (now - then))
        self._cpu = (now, cpu)
        self.metrics.memory_used_bytes.set(_resident_bytes())

        if self._gpu is not None:
            m = self.metrics
            assert m.gpu_utilization_ratio and m.gpu_memory_used_bytes
            assert m.gpu_memory_total_bytes
            for reading in self._gpu.read():
                gpu = str(reading.index)
                m.gpu_utilization_ratio.labels(gpu=gpu).set(reading.utilization_ratio)
                m.gpu_memory_used_bytes.labels(gpu=gpu).set(reading.memory_used_bytes)
                m.gpu_memory_total_bytes.labels(gpu=gpu).set(reading.memory_total_bytes)
        self._cost.flush()

    def _sample_loop(self) -> None:
        while not self._stop.wait(self._sample_seconds):
            try:
                self.sample()
            except Exception:  # a metric must never stop the scans
                log.exception("metrics sample failed")


def start_worker_telemetry(
    address: str, port: int | None, *, pricing: Pricing | None = None
) -> WorkerTelemetry | None:
    """The metrics of a ``scanpipe worker`` process, served if ``port`` is set.

    Under the embedded stack (PROMETHEUS_MULTIPROC_DIR set) the worker writes
    multiprocess files that the stack serves; with neither, metrics are off.
    """
    multiprocess_dir = config.env("PROMETHEUS_MULTIPROC_DIR")
    if port is None and not multiprocess_dir:
        return None
    own = CollectorRegistry()
    telemetry = WorkerTelemetry(own, pricing=pricing, gpu=Nvml.open())
    if port is not None:
        served = own
        if multiprocess_dir:
            served = CollectorRegistry()
            MultiProcessCollector(served, path=multiprocess_dir)
        telemetry.server = serve(served, address, port)
    return telemetry


class StackTelemetry:
    """The embedded stack's metrics, and the one endpoint of all its workers.

    Worker processes started with :meth:`worker_environment` write
    prometheus_client's multiprocess files into ``directory``. The endpoint
    adds them to the stack's own metrics, whose zero-valued series (every
    label value is created up front) make each series exist from the stack's
    start, so ``increase`` counts the first scan of a run too.
    """

    def __init__(self, directory: Path, *, pricing: Pricing | None = None) -> None:
        # Files of an earlier run would be summed with this one's.
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        self.directory = directory
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.pricing = pricing or Pricing()
        self._baseline = CostMeter(
            self.metrics, self.pricing.baseline_usd_per_hour, ("baseline",)
        )
        self.server: MetricsServer | None = None

    def worker_environment(self, environ: dict[str, str]) -> dict[str, str]:
        """``environ`` for a worker process that reports through this stack."""
        env = dict(environ, PROMETHEUS_MULTIPROC_DIR=str(self.directory))
        # The stack serves the workers; a worker must not bind the same port.
        env.pop("SCANPIPE_METRICS_PORT", None)
        env.pop("SCANPIPE_METRICS_ADDRESS", None)
        # Workers price themselves as the stack prices them.
        env["SCANPIPE_INSTANCE_TYPE"] = self.pricing.instance_type
        env["SCANPIPE_SPOT"] = "1" if self.pricing.use_spot else "0"
        if self.pricing.catalog.source != DEFAULT_CATALOG.source:
            env["SCANPIPE_PRICES"] = self.pricing.catalog.source
        return env

    def observe(
        self,
        depth: QueueDepth,
        *,
        dead_letters: int,
        desired: int | None,
        exited_pids: Iterable[int] = (),
    ) -> None:
        """Update the stack's gauges once per autoscaler tick."""
        self.metrics.queue_messages.labels(state="visible").set(depth.visible)
        self.metrics.queue_messages.labels(state="in_flight").set(depth.in_flight)
        self.metrics.queue_messages.labels(state="delayed").set(depth.delayed)
        self.metrics.dead_letter_messages.set(dead_letters)
        if desired is not None:
            self.metrics.workers.labels(state="desired").set(desired)
        for pid in exited_pids:
            # Drops the exited worker's share of running, busy and its
            # resources; its counters stay in the sums.
            mark_process_dead(pid, str(self.directory))
        self._baseline.flush()

    def serve(self, address: str, port: int) -> MetricsServer:
        registry = CollectorRegistry()
        registry.register(
            SummedCollector(
                self.registry,
                MultiProcessCollector(None, path=str(self.directory)),
            )
        )
        self.server = serve(registry, address, port)
        return self.server

    def close(self) -> None:
        self._baseline.close()
        if self.server is not None:
            self.server.close()


def _process_age_seconds() -> float:
    """Seconds since this process started, interpreter start-up included."""
    try:
        stat = Path("/proc/self/stat").read_text()
        # Field 22, counted after the command name, which may hold spaces.
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        started = ticks / os.sysconf("SC_CLK_TCK")
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0  # without /proc, the cold start counts from here


def _resident_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        # Without /proc only the peak is known, in KiB on Linux and bytes on
        # macOS; the peak is the upper bound of what is used now.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak * 1024 if os.uname().sysname == "Linux" else peak

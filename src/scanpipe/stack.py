"""The embedded stack: inbox, queue, autoscaler and workers in one run directory.

This is what ``scanpipe up`` and ``scanpipe demo`` run. It wires the same
parts the cloud form uses (an object store that publishes S3 events, a queue
with SQS semantics, workers started and stopped with KEDA's rules) on one
machine. The run directory::

    DIR/
      inbox/            drop scans here
      input/            the input bucket (objects the inbox watcher moved)
      outbox/           masks and provenance records
      queue.db          the queue and its dead-letter queue
      ledger.db         scans, worker lifetimes, scaling events
      logs/             one log file per worker process
      inbox-rejected/   files whose names cannot be object keys, with reasons
      metrics/          the workers' Prometheus files, served as one endpoint
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanpipe.autoscale import ScalingEvent, ScalingPolicy, Supervisor
from scanpipe.events import QueueNotifier
from scanpipe.finops.catalog import Pricing
from scanpipe.finops.settle import settle
from scanpipe.inbox import InboxWatcher
from scanpipe.ledger import Ledger, Sample
from scanpipe.queue import open_queue
from scanpipe.queue.base import Queue
from scanpipe.storage.local import LocalStore
from scanpipe.telemetry import StackTelemetry
from scanpipe.usage import UsageSampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory."""

    root: Path

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def input(self) -> Path:
        return self.root / "input"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.db"

    @property
    def queue_path(self) -> Path:
        return self.root / "queue.db"

    def queue_url(
        self, *, visibility_timeout: float = 30, max_receive_count: int = 3
    ) -> str:
        return (
            f"sqlite://{self.queue_path.absolute()}?visibility_timeout="
            f"{visibility_timeout:g}&max_receive_count={max_receive_count}"
        )

    def create(self) -> RunDir:
        for path in (self.root, self.inbox, self.input, self.outbox, self.logs):
            path.mkdir(parents=True, exist_ok=True)
        return self


@dataclass
class StackSettings:
    """Everything the embedded stack needs to know; the CLI fills it."""

    model: str = "threshold"
    max_workers: int = 2
    policy: ScalingPolicy = field(
        default_factory=lambda: ScalingPolicy(
            polling_interval_seconds=1.0,
            cooldown_period_seconds=30.0,
            target_per_replica=2,
            max_replicas=2,
            scale_down_stabilization_seconds=5.0,
        )
    )
    visibility_timeout: float = 30.0
    max_receive_count: int = 3
    worker_wait_seconds: float = 1.0
    stop_grace_seconds: float = 30.0
    worker_threads: int | None = None
    max_voxels: int | None = None
    inbox_settle_seconds: float = 1.0
    #: Serve all workers' metrics on one /metrics endpoint at this port
    #: (0: any free port); None serves none and the workers record none.
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"
    #: How the metrics price workers and the baseline; the catalog's
    #: defaults (g5.xlarge workers, a t3.large node) when None.
    pricing: Pricing | None = None


class EmbeddedStack:
    """Runs the embedded pipeline over one run directory until stopped."""

    def __init__(self, run_dir: RunDir, settings: StackSettings) -> None:
        self.run_dir = run_dir.create()
        self.settings = settings
        self.run_token = uuid.uuid4().hex[:6]
        self.queue_url = run_dir.queue_url(
            visibility_timeout=settings.visibility_timeout,
            max_receive_count=settings.max_receive_count,
        )
        self.queue: Queue = open_queue(self.queue_url)
        self.ledger = Ledger(run_dir.ledger_path)
        self.input_store = LocalStore(run_dir.input, bucket="input")
        self.input_store.add_put_listener(QueueNotifier(self.queue))
        self.output_store = LocalStore(run_dir.outbox, bucket="output")
        self._had_workers = False
        self.inbox = InboxWatcher(
            run_dir.inbox,
            self.input_store,
            rejected=run_dir.root / "inbox-rejected",
            settle_seconds=settings.inbox_settle_seconds,
        )
        self.supervisor = Supervisor(
            settings.policy,
            observe=self._observe,
            spawn=self._spawn,
            on_scale=self._on_scale,
            is_busy=lambda worker_id: self.ledger.is_busy(self._worker_id(worker_id)),
            stop_grace_seconds=settings.stop_grace_seconds,
        )
        self._known_workers: set[str] = set()
        self._usage = UsageSampler()
        self._log_files: dict[str, Any] = {}
        self._processes: dict[str, subprocess.Popen[Any]] = {}
        self.telemetry: StackTelemetry | None = None
        if settings.metrics_port is not None:
            self.telemetry = StackTelemetry(run_dir.metrics, pricing=settings.pricing)
            self.telemetry.serve(settings.metrics_address, settings.metrics_port)

    @property
    def metrics_url(self) -> str | None:
        """Where the one /metrics endpoint of this stack is served, if it is."""
        server = self.telemetry.server if self.telemetry else None
        return server.url if server else None

    # -- supervisor hooks ------------------------------------------------------

    def _observe(self) -> tuple[int, int]:
        depth = self.queue.depth()
        return depth.visible, depth.in_flight

    def _worker_id(self, supervisor_id: str) -> str:
        # The supervisor numbers workers from 1 in each run; the run token
        # keeps ids unique in a ledger that outlives runs.
        return f"{supervisor_id}-{self.run_token}"

    def _spawn(self, supervisor_id: str) -> subprocess.Popen[Any]:
        worker_id = self._worker_id(supervisor_id)
        command = worker_command(
            queue_url=self.queue_url,
            input_url=str(self.run_dir.input.absolute()),
            output_url=str(self.run_dir.outbox.absolute()),
            settings=self.settings,
            worker_id=worker_id,
            ledger=self.run_dir.ledger_path,
        )
        env = None
        if self.telemetry is not None:
            env = self.telemetry.worker_environment(dict(os.environ))
        log_file = open(self.run_dir.logs / f"{worker_id}.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        log_file.close()  # the child holds its own descriptor
        self._processes[worker_id] = process
        return process

    def _on_scale(self, event: ScalingEvent) -> None:
        self.ledger.record_scaling(
            at=event.at,
            from_replicas=event.from_replicas,
            to_replicas=event.to_replicas,
            metric=event.metric,
            reason=event.reason,
        )

    # -- running ---------------------------------------------------------------

    def is_idle(self) -> bool:
        """Nothing waiting anywhere and no worker process left."""
        depth = self.queue.depth()
        return (
            self.inbox.pending() == 0
            and depth.visible + depth.in_flight + depth.delayed == 0
            and not self.supervisor.running
            and not self.supervisor.stopping
        )

    def run(
        self,
        stop: threading.Event,
        *,
        until_idle: bool = False,
        on_tick: Callable[[EmbeddedStack], None] | None = None,
    ) -> None:
        """Run until ``stop`` is set, or (``until_idle``) the work is done and
        the workers are back at zero."""
        inbox_thread = threading.Thread(
            target=self.inbox.run, args=(stop,), name="inbox", daemon=True
        )
        inbox_thread.start()
        interval = self.settings.policy.polling_interval_seconds
        try:
            while not stop.is_set():
                decision = self.supervisor.tick()
                self._record_sample(decision.desired if decision else None)
                if on_tick is not None:
                    on_tick(self)
                if until_idle and self.supervisor.events and self.is_idle():
                    break
                stop.wait(interval)
        finally:
            stop.set()
            self.supervisor.shutdown()
            inbox_thread.join()
            self._close_worker_lifetimes()
            self.settle_costs()
            if self.telemetry is not None:
                # The last word: no worker is left running.
                self.telemetry.observe(
                    self.queue.depth(),
                    dead_letters=self._dead_letters(),
                    desired=0,
                    exited_pids=self._exited_pids(),
                )

    def _record_sample(self, desired: int | None) -> None:
        # One point per tick: the timeline of queue depth and workers that
        # the dashboard draws (the 0 -> N -> 0 picture), and what each worker
        # process used so far, for the efficiency view of the bill.
        pids = {self._worker_id(w): pid for w, pid in self.supervisor.pids.items()}
        for usage in self._usage.sample(pids):
            self.ledger.record_usage(usage)
        if self._had_workers and not pids:
            # Back at zero: the cooldown tails are over, the bill is final.
            # Once per return to zero, not on every idle tick.
            self.settle_costs()
        self._had_workers = bool(pids)
        depth = self.queue.depth()
        dead_letters = self._dead_letters()
        running = self.supervisor.running
        if self.telemetry is not None:
            self.telemetry.observe(
                depth,
                dead_letters=dead_letters,
                desired=desired,
                exited_pids=self._exited_pids(),
            )
        self.ledger.record_sample(
            Sample(
                at=time.time(),
                visible=depth.visible,
                in_flight=depth.in_flight,
                dead_letters=dead_letters,
                workers_desired=len(running) if desired is None else desired,
                workers_running=len(running),
                workers_busy=sum(
                    1 for w in running if self.ledger.is_busy(self._worker_id(w))
                ),
            )
        )

    def _dead_letters(self) -> int:
        dlq = self.queue.dead_letter_queue()
        if dlq is None:
            return 0
        dead = dlq.depth()
        return dead.visible + dead.in_flight

    def _exited_pids(self) -> list[int]:
        exited = [w for w, p in self._processes.items() if p.poll() is not None]
        return [self._processes.pop(worker_id).pid for worker_id in exited]

    def _close_worker_lifetimes(self) -> None:
        # Workers killed with SIGKILL never record their own stop; the
        # ledger's lifetime must still end for the cost of idle time.
        for worker in self.ledger.workers():
            if worker.stopped_at is None and worker.worker_id.endswith(self.run_token):
                self.ledger.worker_stopped(worker.worker_id, "killed")

    def settle_costs(self) -> None:
        """Give each scan since the last settlement its final cost, in the
        ledger and in its provenance record (see :mod:`scanpipe.finops.settle`)."""
        settle(
            self.ledger,
            self.settings.pricing or Pricing(),
            output_store=self.output_store,
        )

    def close(self) -> None:
        if self.telemetry is not None:
            self.telemetry.close()
        self.queue.close()
        self.ledger.close()


def worker_command(
    *,
    queue_url: str,
    input_url: str,
    output_url: str,
    settings: StackSettings,
    worker_id: str,
    ledger: Path,
) -> list[str]:
    """The command line of one embedded worker process."""
    command = [
        sys.executable,
        "-m",
        "scanpipe",
        "worker",
        "--queue",
        queue_url,
        "--input",
        input_url,
        "--output",
        output_url,
        "--model",
        settings.model,
        "--worker-id",
        worker_id,
        "--ledger",
        str(ledger),
        "--wait-seconds",
        f"{settings.worker_wait_seconds:g}",
        "--stop-grace",
        f"{settings.stop_grace_seconds:g}",
    ]
    if settings.worker_threads:
        command += ["--threads", str(settings.worker_threads)]
    if settings.max_voxels:
        command += ["--max-voxels", str(settings.max_voxels)]
    return command


def wait_for(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.1
) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()

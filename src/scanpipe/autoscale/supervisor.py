"""Worker processes started and stopped on the decisions of ``policy.decide``.

The supervisor is the embedded stand-in for a Deployment scaled by KEDA: each
tick it reaps workers that exited, observes the queue, asks ``decide`` how
many workers there should be, and starts or stops processes to match.

Usage, with a ``spawn`` that starts ``python -m scanpipe worker ...``::

    supervisor = Supervisor(policy, observe=queue_depth, spawn=start_worker)
    stop = threading.Event()
    supervisor.run(stop)  # until another thread sets ``stop``

Stopping follows Kubernetes pod termination: SIGTERM, so the worker can finish
or release its message, then SIGKILL only once the grace period and a margin
have passed. A worker asked to stop counts as stopping, not running, so it is
neither signalled twice nor counted towards the replicas the policy sees.

A worker that exits without being asked is a crash unless its exit status is
0. It is replaced on the next tick if still wanted; after two or more crashes
in a row, replacements wait an exponential backoff (like Kubernetes'
CrashLoopBackOff) so a broken model or setting cannot fork processes in a
tight loop.
"""

from __future__ import annotations

import itertools
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scanpipe.autoscale.policy import (
    Decision,
    Observation,
    ScalerState,
    ScalingPolicy,
    decide,
)
from scanpipe.errors import TransientError

log = logging.getLogger(__name__)

#: How often ``shutdown`` checks whether stopped workers have exited.
_SHUTDOWN_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class ScalingEvent:
    """One change in the number of running workers."""

    #: When it happened, on the supervisor's clock.
    at: float
    from_replicas: int
    to_replicas: int
    reason: str
    #: The queue metric the decision was made on (0 for shutdown).
    metric: int


@dataclass
class _Worker:
    worker_id: str
    process: subprocess.Popen[Any]
    started_at: float
    #: Order of starting; several start within one tick, at the same time.
    sequence: int
    stop_requested_at: float | None = None
    killed: bool = False


class Supervisor:
    """Keeps as many worker processes running as the scaling policy decides.

    Args:
        policy: The scaling settings; ``polling_interval_seconds`` paces ``run``.
        observe: Returns ``(visible, in_flight)`` message counts of the queue.
            A ``TransientError`` skips the decision for that tick.
        spawn: Starts one worker process for the given worker id.
        on_scale: Called with every scaling event, after it happened.
        is_busy: Says whether a worker is processing a message; idle workers
            are stopped first when scaling down.
        stop_grace_seconds: Time a worker has after SIGTERM before SIGKILL
            (Kubernetes ``terminationGracePeriodSeconds``).
        kill_margin_seconds: Extra time on top of the grace period before
            SIGKILL, so a worker that honours the grace period exactly is not
            killed while it is about to exit.
        restart_backoff_seconds: Delay before replacing a worker after the
            second crash in a row; it doubles with each further crash.
        max_restart_backoff_seconds: Upper bound of that delay. A worker that
            ran this long before crashing starts a new count of crashes.
        clock: Returns the current time in seconds; ``time.time`` by default.
    """

    def __init__(
        self,
        policy: ScalingPolicy,
        observe: Callable[[], tuple[int, int]],
        spawn: Callable[[str], subprocess.Popen[Any]],
        *,
        on_scale: Callable[[ScalingEvent], None] | None = None,
        is_busy: Callable[[str], bool] | None = None,
        stop_grace_seconds: float = 30.0,
        kill_margin_seconds: float = 2.0,
        restart_backoff_seconds: float = 1.0,
        max_restart_backoff_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self._observe = observe
        self._spawn = spawn
        self._on_scale = on_scale
        self._is_busy = is_busy
        self.stop_grace_seconds = stop_grace_seconds
        self.kill_margin_seconds = kill_margin_seconds
        self.restart_backoff_seconds = restart_backoff_seconds
        self.max_restart_backoff_seconds = max_restart_backoff_seconds
        self._clock = clock

        # One lock around every change, so a dashboard thread can read the
        # properties while ``run`` ticks in another.
        self._lock = threading.RLock()
        self._state = ScalerState()
        self._running: dict[str, _Worker] = {}
        self._stopping: dict[str, _Worker] = {}
        self._events: list[ScalingEvent] = []
        self._peak = 0
        self._ids = itertools.count(1)
        self._crashes_in_a_row = 0
        self._no_spawn_before = float("-inf")
        self._backoff_logged = False

    @property
    def running(self) -> list[str]:
        """Ids of the workers running and not asked to stop, oldest first."""
        with self._lock:
            return list(self._running)

    @property
    def stopping(self) -> list[str]:
        """Ids of the workers asked to stop that have not exited yet."""
        with self._lock:
            return list(self._stopping)

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of the workers not yet reaped (running or stopping)."""
        with self._lock:
            workers = [*self._running.values(), *self._stopping.values()]
            return {w.worker_id: w.process.pid for w in workers}

    @property
    def peak_replicas(self) -> int:
        """The most workers that ever ran at the same time."""
        with self._lock:
            return self._peak

    @property
    def events(self) -> list[ScalingEvent]:
        """Every scaling event so far, oldest first."""
        with self._lock:
            return list(self._events)

    def tick(self) -> Decision | None:
        """Reap, observe, decide, and start or stop workers; one poll's work.

        Returns:
            The decision applied, or None when the queue could not be read.
        """
        with self._lock:
            now = self._clock()
            self._reap(now)
            self._escalate(now)

            try:
                visible, in_flight = self._observe()
            except TransientError as exc:
                # KEDA keeps the current count when its scaler errors.
                log.warning("queue depth unavailable, keeping workers error=%s", exc)
                return None

            current = len(self._running)
            obs = Observation(now, visible, in_flight, current)
            decision, self._state = decide(self.policy, self._state, obs)
            log.debug(
                "scaling decision metric=%d current=%d desired=%d reason=%s",
                decision.metric,
                current,
                decision.desired,
                decision.reason,
            )
            if decision.desired > current:
                self._scale_up(now, decision.desired - current)
            elif decision.desired < current:
                self._scale_down(now, current - decision.desired)

            if len(self._running) != current:
                self._record(
                    now, current, len(self._running), decision.reason, decision.metric
                )
            return decision

    def run(self, stop_event: threading.Event) -> None:
        """Tick every polling interval until ``stop_event`` is set, then shut down.

        Workers are shut down however the loop ends, an exception included.
        """
        log.info(
            "autoscaler started polling_seconds=%g min=%d max=%d",
            self.policy.polling_interval_seconds,
            self.policy.min_replicas,
            self.policy.max_replicas,
        )
        try:
            while not stop_event.is_set():
                self.tick()
                stop_event.wait(self.policy.polling_interval_seconds)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """SIGTERM every worker, SIGKILL those still alive after grace, reap all.

        This blocks for up to the grace period plus the margin, measured on the
        monotonic clock since it waits on real processes.
        """
        with self._lock:
            now = self._clock()
            before = len(self._running)
            for worker in list(self._running.values()):
                self._terminate(worker, now)
            if before:
                self._record(now, before, 0, "shutdown", 0)

            deadline = (
                time.monotonic() + self.stop_grace_seconds + self.kill_margin_seconds
            )
            while self._stopping and time.monotonic() < deadline:
                self._reap(self._clock())
                if self._stopping:
                    time.sleep(_SHUTDOWN_POLL_SECONDS)

            for worker in list(self._stopping.values()):
                if worker.process.poll() is None:
                    self._kill(worker)
                worker.process.wait()
            self._reap(self._clock())
            log.info("autoscaler stopped peak_replicas=%d", self._peak)

    def _reap(self, now: float) -> None:
        for worker in list(self._stopping.values()):
            code = worker.process.poll()
            if code is not None:
                del self._stopping[worker.worker_id]
                log.info("worker stopped id=%s exit_code=%d", worker.worker_id, code)

        for worker in list(self._running.values()):
            code = worker.process.poll()
            if code is None:
                continue
            del self._running[worker.worker_id]
            if code == 0:
                log.info("worker exited id=%s exit_code=0", worker.worker_id)
            else:
                self._crashed(worker.worker_id, code, now - worker.started_at, now)

    def _crashed(
        self, worker_id: str, code: int, ran_seconds: float, now: float
    ) -> None:
        if ran_seconds >= self.max_restart_backoff_seconds:
            self._crashes_in_a_row = 0
        self._crashes_in_a_row += 1

        # The first crash is replaced at once; a second in a row suggests a
        # cause that a restart will not fix, so wait before trying again.
        delay = 0.0
        if self._crashes_in_a_row >= 2:
            delay = min(
                self.restart_backoff_seconds * 2 ** (self._crashes_in_a_row - 2),
                self.max_restart_backoff_seconds,
            )
        self._no_spawn_before = now + delay
        self._backoff_logged = False
        log.warning(
            "worker crashed id=%s exit_code=%d ran_seconds=%.1f crashes_in_a_row=%d "
            "respawn_delay_seconds=%g",
            worker_id,
            code,
            ran_seconds,
            self._crashes_in_a_row,
            delay,
        )

    def _escalate(self, now: float) -> None:
        allowed = self.stop_grace_seconds + self.kill_margin_seconds
        for worker in self._stopping.values():
            if worker.killed or worker.stop_requested_at is None:
                continue
            if now - worker.stop_requested_at >= allowed:
                self._kill(worker)

    def _scale_up(self, now: float, count: int) -> None:
        if now < self._no_spawn_before:
            if not self._backoff_logged:
                log.warning(
                    "worker start delayed after crashes crashes_in_a_row=%d "
                    "wait_seconds=%.1f",
                    self._crashes_in_a_row,
                    self._no_spawn_before - now,
                )
                self._backoff_logged = True
            return

        for _ in range(count):
            sequence = next(self._ids)
            worker_id = f"worker-{sequence}"
            try:
                process = self._spawn(worker_id)
            except OSError as exc:
                log.error("worker start failed id=%s error=%s", worker_id, exc)
                self._crashed(worker_id, -1, 0.0, now)
                return
            self._running[worker_id] = _Worker(worker_id, process, now, sequence)
            self._peak = max(self._peak, len(self._running))
            log.info("worker started id=%s pid=%d", worker_id, process.pid)

    def _scale_down(self, now: float, count: int) -> None:
        # Idle workers first, then the newest: the least work is lost.
        order = sorted(
            self._running.values(),
            key=lambda w: (self._busy(w.worker_id), -w.sequence),
        )
        for worker in order[:count]:
            self._terminate(worker, now)

    def _busy(self, worker_id: str) -> bool:
        return self._is_busy is not None and self._is_busy(worker_id)

    def _terminate(self, worker: _Worker, now: float) -> None:
        del self._running[worker.worker_id]
        worker.stop_requested_at = now
        self._stopping[worker.worker_id] = worker
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
        log.info("worker stopping id=%s signal=SIGTERM", worker.worker_id)

    def _kill(self, worker: _Worker) -> None:
        worker.killed = True
        worker.process.kill()
        log.warning(
            "worker killed id=%s signal=SIGKILL grace_seconds=%g",
            worker.worker_id,
            self.stop_grace_seconds,
        )

    def _record(
        self, now: float, before: int, after: int, reason: str, metric: int
    ) -> None:
        event = ScalingEvent(now, before, after, reason, metric)
        self._events.append(event)
        log.info(
            "scaled from=%d to=%d metric=%d reason=%s", before, after, metric, reason
        )
        if self._on_scale is not None:
            self._on_scale(event)

"""The supervisor starting and stopping real worker processes with real signals.

The workers here are a small script written to the test's folder: it notes
``ready`` once its SIGTERM handling is in place and ``terminated`` when it gets
SIGTERM, then behaves as its mode says. It is a process to supervise, not a
stand-in for scanpipe's worker.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scanpipe.autoscale.policy import ScalingPolicy
from scanpipe.autoscale.supervisor import ScalingEvent, Supervisor
from scanpipe.errors import TransientError

WORKER_SCRIPT = """\
import signal
import sys
import time

log_path, mode = sys.argv[1], sys.argv[2]


def note(word):
    with open(log_path, "a") as log:
        log.write(word + "\\n")


def on_term(signum, frame):
    note("terminated")
    if mode == "serve":
        sys.exit(0)


if mode == "crash":
    sys.exit(3)
if mode == "exit-clean":
    sys.exit(0)
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, on_term)
note("ready")
while True:
    time.sleep(0.05)
"""

#: Long enough for a loaded machine; only a failing test waits this long.
PATIENCE_SECONDS = 15.0


@dataclass
class Workers:
    """Starts the worker script and keeps each process to inspect afterwards.

    ``mode`` is ``serve`` (exit 0 on SIGTERM), ``linger`` (note SIGTERM and
    carry on), ``ignore-term``, ``crash`` (exit 3 at once) or ``exit-clean``.
    """

    folder: Path
    mode: str = "serve"
    processes: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)

    def spawn(self, worker_id: str) -> subprocess.Popen[Any]:
        script = self.folder / "worker.py"
        if not script.exists():
            script.write_text(WORKER_SCRIPT)
        process = subprocess.Popen(
            [sys.executable, "-S", str(script), str(self.log(worker_id)), self.mode]
        )
        self.processes[worker_id] = process
        return process

    def log(self, worker_id: str) -> Path:
        return self.folder / f"{worker_id}.log"

    def notes(self, worker_id: str) -> list[str]:
        path = self.log(worker_id)
        return path.read_text().splitlines() if path.exists() else []

    def all_ready(self, worker_ids: list[str]) -> bool:
        return all("ready" in self.notes(worker_id) for worker_id in worker_ids)

    def exit_codes(self) -> dict[str, int | None]:
        return {worker_id: p.poll() for worker_id, p in self.processes.items()}


@dataclass
class QueueDepth:
    """The queue's message counts, as the test sets them."""

    visible: int = 0
    in_flight: int = 0
    failing: bool = False

    def __call__(self) -> tuple[int, int]:
        if self.failing:
            raise TransientError("The queue did not answer.")
        return self.visible, self.in_flight


@dataclass
class ManualClock:
    """A clock that moves only when the test sets ``now``."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    workers = Workers(tmp_path)
    yield workers
    for process in workers.processes.values():
        if process.poll() is None:
            process.kill()
        process.wait()


def make_policy(**changes: Any) -> ScalingPolicy:
    settings: dict[str, Any] = {
        "polling_interval_seconds": 0.1,
        "cooldown_period_seconds": 0.3,
        "target_per_replica": 1,
        "scale_down_stabilization_seconds": 60,
    }
    return ScalingPolicy(**(settings | changes))


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def tick_until(
    supervisor: Supervisor, condition: Callable[[], bool], what: str
) -> None:
    def ticked() -> bool:
        supervisor.tick()
        return condition()

    wait_until(ticked, what)


def transitions(events: list[ScalingEvent]) -> list[tuple[int, int]]:
    return [(event.from_replicas, event.to_replicas) for event in events]


def test_workers_scale_from_zero_to_n_and_back_to_zero_by_sigterm(
    workers: Workers,
) -> None:
    depth = QueueDepth()
    recorded: list[ScalingEvent] = []
    supervisor = Supervisor(
        make_policy(), depth, workers.spawn, on_scale=recorded.append
    )

    supervisor.tick()
    assert supervisor.running == []

    depth.visible = 3
    supervisor.tick()
    assert supervisor.running == ["worker-1", "worker-2", "worker-3"]
    wait_until(lambda: workers.all_ready(supervisor.running), "workers ready")

    depth.visible = 0
    tick_until(
        supervisor,
        lambda: not supervisor.running and not supervisor.stopping,
        "scale to zero",
    )

    assert workers.exit_codes() == {"worker-1": 0, "worker-2": 0, "worker-3": 0}
    assert all(workers.notes(w) == ["ready", "terminated"] for w in workers.processes)
    assert transitions(supervisor.events) == [(0, 3), (3, 0)]
    assert supervisor.events[0].reason == (
        "queue metric 3 > activation 0: activate; ceil(3/1)=3"
    )
    assert supervisor.events[0].metric == 3
    assert "scale to zero" in supervisor.events[1].reason
    assert recorded == supervisor.events
    assert supervisor.peak_replicas == 3


def test_a_crashed_worker_is_replaced_on_the_next_tick(workers: Workers) -> None:
    depth = QueueDepth(visible=1)
    supervisor = Supervisor(make_policy(), depth, workers.spawn)
    supervisor.tick()
    wait_until(lambda: workers.all_ready(["worker-1"]), "worker ready")

    workers.processes["worker-1"].kill()
    workers.processes["worker-1"].wait()
    supervisor.tick()

    assert supervisor.running == ["worker-2"]
    assert workers.exit_codes()["worker-1"] == -9
    assert transitions(supervisor.events) == [(0, 1), (0, 1)]
    supervisor.shutdown()


def test_a_crash_loop_waits_longer_before_each_new_worker(workers: Workers) -> None:
    workers.mode = "crash"
    clock = ManualClock()
    supervisor = Supervisor(
        make_policy(),
        QueueDepth(visible=1),
        workers.spawn,
        restart_backoff_seconds=10,
        clock=clock,
    )

    started_by: dict[float, int] = {}
    for now in [0, 1, 2, 11.9, 12, 13, 32.9, 33]:
        clock.now = now
        supervisor.tick()
        for process in workers.processes.values():
            process.wait()
        started_by[now] = len(workers.processes)

    # First crash: replaced at once. Second: 10 s. Third: 20 s.
    assert started_by == {0: 1, 1: 2, 2: 2, 11.9: 2, 12: 3, 13: 3, 32.9: 3, 33: 4}
    assert set(workers.exit_codes().values()) == {3}


def test_a_worker_that_exits_cleanly_is_replaced_without_backoff(
    workers: Workers,
) -> None:
    workers.mode = "exit-clean"
    clock = ManualClock()
    supervisor = Supervisor(
        make_policy(),
        QueueDepth(visible=1),
        workers.spawn,
        restart_backoff_seconds=10,
        clock=clock,
    )

    for now in [0, 1, 2, 3]:
        clock.now = now
        supervisor.tick()
        for process in workers.processes.values():
            process.wait()

    assert workers.exit_codes() == {f"worker-{n}": 0 for n in range(1, 5)}


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace_period(
    workers: Workers,
) -> None:
    workers.mode = "ignore-term"
    clock = ManualClock()
    depth = QueueDepth(visible=1)
    supervisor = Supervisor(
        make_policy(cooldown_period_seconds=0),
        depth,
        workers.spawn,
        stop_grace_seconds=5,
        kill_margin_seconds=1,
        clock=clock,
    )
    supervisor.tick()
    wait_until(lambda: workers.all_ready(["worker-1"]), "worker ready")

    depth.visible = 0
    clock.now = 1
    supervisor.tick()
    assert supervisor.stopping == ["worker-1"]

    clock.now = 6.9
    supervisor.tick()
    assert supervisor.stopping == ["worker-1"]
    assert workers.processes["worker-1"].poll() is None

    clock.now = 7
    supervisor.tick()
    assert workers.processes["worker-1"].wait() == -9

    supervisor.tick()
    assert supervisor.stopping == []
    assert supervisor.running == []


def test_a_stopping_worker_is_signalled_once_and_not_counted_as_running(
    workers: Workers,
) -> None:
    workers.mode = "linger"
    clock = ManualClock()
    depth = QueueDepth(visible=2)
    supervisor = Supervisor(
        make_policy(scale_down_stabilization_seconds=0),
        depth,
        workers.spawn,
        stop_grace_seconds=0.5,
        kill_margin_seconds=0.1,
        clock=clock,
    )
    supervisor.tick()
    wait_until(lambda: workers.all_ready(supervisor.running), "workers ready")

    depth.visible = 1
    for now in [0.1, 0.2, 0.3]:
        clock.now = now
        supervisor.tick()
        assert supervisor.running == ["worker-1"]
        assert supervisor.stopping == ["worker-2"]
    wait_until(lambda: "terminated" in workers.notes("worker-2"), "SIGTERM noted")

    supervisor.shutdown()

    assert workers.notes("worker-2") == ["ready", "terminated"]
    assert workers.exit_codes() == {"worker-1": -9, "worker-2": -9}
    assert len(workers.processes) == 2
    assert transitions(supervisor.events) == [(0, 2), (2, 1), (1, 0)]
    assert supervisor.events[-1].reason == "shutdown"


def test_scaling_down_stops_idle_workers_first(workers: Workers) -> None:
    busy = {"worker-1", "worker-3"}
    depth = QueueDepth(visible=3)
    supervisor = Supervisor(
        make_policy(scale_down_stabilization_seconds=0),
        depth,
        workers.spawn,
        is_busy=busy.__contains__,
    )
    supervisor.tick()
    wait_until(lambda: workers.all_ready(supervisor.running), "workers ready")

    depth.visible = 1
    supervisor.tick()

    # The one idle worker, then the newest busy one.
    assert supervisor.running == ["worker-1"]
    assert sorted(supervisor.stopping) == ["worker-2", "worker-3"]
    tick_until(supervisor, lambda: not supervisor.stopping, "stopped workers exit")
    assert workers.exit_codes() == {"worker-1": None, "worker-2": 0, "worker-3": 0}
    supervisor.shutdown()


def test_an_unreadable_queue_keeps_the_workers_running(workers: Workers) -> None:
    depth = QueueDepth(visible=2)
    supervisor = Supervisor(
        make_policy(cooldown_period_seconds=0), depth, workers.spawn
    )
    supervisor.tick()

    depth.failing = True
    supervisor.tick()

    assert supervisor.running == ["worker-1", "worker-2"]
    assert transitions(supervisor.events) == [(0, 2)]
    supervisor.shutdown()


def test_run_polls_until_stopped_then_shuts_every_worker_down(
    workers: Workers,
) -> None:
    depth = QueueDepth(visible=2)
    supervisor = Supervisor(make_policy(), depth, workers.spawn)
    stop = threading.Event()
    thread = threading.Thread(target=supervisor.run, args=(stop,))
    thread.start()
    wait_until(
        lambda: len(supervisor.running) == 2 and workers.all_ready(supervisor.running),
        "two workers ready",
    )

    stop.set()
    thread.join(PATIENCE_SECONDS)

    assert not thread.is_alive()
    assert supervisor.running == []
    assert supervisor.stopping == []
    assert workers.exit_codes() == {"worker-1": 0, "worker-2": 0}
    assert all("terminated" in workers.notes(w) for w in workers.processes)
    assert transitions(supervisor.events) == [(0, 2), (2, 0)]
    assert supervisor.events[-1].reason == "shutdown"


def test_shutdown_kills_workers_that_ignore_sigterm(workers: Workers) -> None:
    workers.mode = "ignore-term"
    supervisor = Supervisor(
        make_policy(),
        QueueDepth(visible=1),
        workers.spawn,
        stop_grace_seconds=0.2,
        kill_margin_seconds=0.1,
    )
    supervisor.tick()
    wait_until(lambda: workers.all_ready(["worker-1"]), "worker ready")

    supervisor.shutdown()

    assert workers.exit_codes() == {"worker-1": -9}
    assert supervisor.running == []
    assert supervisor.stopping == []

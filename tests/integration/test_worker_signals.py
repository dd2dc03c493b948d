"""Real worker processes, killed and stopped with real signals mid-scan."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from scanpipe.events import QueueNotifier
from scanpipe.ledger import Ledger
from scanpipe.queue import open_queue
from scanpipe.queue.base import Queue
from scanpipe.storage.local import LocalStore
from tests import scans
from tests.integration.conftest import start_worker, wait_until

pytestmark = pytest.mark.slow

#: Large enough that the threshold model takes a good part of a second.
SLOW_SHAPE = (192, 192, 160)


@dataclass
class Setup:
    root: Path
    queue_url: str
    queue: Queue
    inbox: LocalStore
    outbox: LocalStore
    ledger: Ledger

    def worker(self, worker_id: str, *extra: str):  # type: ignore[no-untyped-def]
        return start_worker(
            queue_url=self.queue_url,
            input_dir=self.inbox.root,
            output_dir=self.outbox.root,
            ledger=self.root / "ledger.db",
            worker_id=worker_id,
            log_path=self.root / f"{worker_id}.log",
            extra=list(extra),
        )

    def outputs(self) -> list[str]:
        return [o.key for o in self.outbox.list()]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    url = f"sqlite://{tmp_path}/queue.db?visibility_timeout=3"
    queue = open_queue(url)
    inbox = LocalStore(tmp_path / "input", bucket="input")
    inbox.add_put_listener(QueueNotifier(queue))
    scan = scans.make_scan(tmp_path / "big.nii.gz", shape=SLOW_SHAPE, seed=5)
    inbox.put_file("big.nii.gz", scan)
    yield Setup(
        tmp_path,
        url,
        queue,
        inbox,
        LocalStore(tmp_path / "outbox"),
        Ledger(tmp_path / "ledger.db"),
    )
    queue.close()


def test_sigkill_mid_scan_redelivers_and_the_scan_completes_once(setup: Setup) -> None:
    first = setup.worker("w1")
    wait_until(lambda: setup.ledger.is_busy("w1"), 60, "w1 to start the scan")

    first.send_signal(signal.SIGKILL)
    first.wait(10)

    assert setup.outputs() == [], "no output may appear under a final key"
    assert setup.queue.depth().in_flight == 1

    second = setup.worker("w2", "--max-messages", "1", "--wait-seconds", "10")
    assert second.wait(60) == 0
    done = [s for s in setup.ledger.scans() if s.outcome == "done"]
    assert [(s.worker_id, s.attempts) for s in done] == [("w2", 2)]
    assert len([k for k in setup.outputs() if k.endswith(".mask.nii.gz")]) == 1
    assert len([k for k in setup.outputs() if k.endswith(".json")]) == 1
    depth = setup.queue.depth()
    assert depth.visible + depth.in_flight == 0


def test_sigterm_mid_scan_finishes_the_scan_within_the_grace_period(
    setup: Setup,
) -> None:
    worker = setup.worker("w1", "--stop-grace", "60")
    wait_until(lambda: setup.ledger.is_busy("w1"), 60, "w1 to start the scan")

    worker.send_signal(signal.SIGTERM)

    assert worker.wait(60) == 0
    assert [s.outcome for s in setup.ledger.scans()] == ["done"]
    assert setup.queue.depth().visible + setup.queue.depth().in_flight == 0
    (lifetime,) = setup.ledger.workers()
    assert lifetime.stop_reason == "signal"


def test_sigterm_past_the_grace_period_releases_the_message(setup: Setup) -> None:
    worker = setup.worker("w1", "--stop-grace", "0")
    wait_until(lambda: setup.ledger.is_busy("w1"), 60, "w1 to start the scan")

    worker.send_signal(signal.SIGTERM)

    assert worker.wait(30) == 0
    assert [s.outcome for s in setup.ledger.scans()] == ["released"]
    # Released, not left to time out: another worker can take it right away.
    assert setup.queue.depth().visible == 1
    assert setup.outputs() == []


def test_sigterm_while_idle_exits_promptly_and_cleanly(setup: Setup) -> None:
    setup.queue.receive(1, visibility_timeout=60)  # nothing left to receive
    worker = setup.worker("w1")
    wait_until(lambda: bool(setup.ledger.workers()), 30, "w1 to register")
    wait_until(
        lambda: setup.ledger.workers()[0].model_loaded_at is not None, 30, "model load"
    )

    worker.send_signal(signal.SIGTERM)

    assert worker.wait(30) == 0
    assert setup.ledger.scans() == []

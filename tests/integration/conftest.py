"""Helpers for end-to-end tests that run real worker processes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 20 ms; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def start_worker(
    *,
    queue_url: str,
    input_dir: Path,
    output_dir: Path,
    ledger: Path,
    worker_id: str,
    log_path: Path,
    extra: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``scanpipe worker`` as its own process, logging to ``log_path``."""
    command = [
        sys.executable,
        "-m",
        "scanpipe",
        "worker",
        "--queue",
        queue_url,
        "--input",
        str(input_dir),
        "--output",
        str(output_dir),
        "--model",
        "threshold",
        "--worker-id",
        worker_id,
        "--ledger",
        str(ledger),
        "--wait-seconds",
        "1",
        *(extra or []),
    ]
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

"""What worker processes use, read from ``/proc`` by the process that runs them.

The efficiency view of the bill (CPU and RAM used against requested) needs
each worker's CPU seconds and its resident memory over time. The embedded
stack samples its worker processes once per autoscaler tick: CPU seconds are
the kernel's own count (exact whatever the sampling rate); memory is the
resident set size, integrated over time between samples, so it is as good as
the tick is short. A cluster measures the same thing with cAdvisor, which
OpenCost reads.

Linux only: where ``/proc`` is missing nothing is recorded and the report
says "not measured" rather than guessing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from scanpipe.ledger import WorkerUsage

_PROC = Path("/proc")
_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class ProcessReading:
    """One look at one process: CPU seconds so far and resident bytes now."""

    cpu_seconds: float
    rss_bytes: int


def read_process(pid: int, proc: Path = _PROC) -> ProcessReading | None:
    """Read ``/proc/<pid>``; None when the process is gone or unreadable."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        statm = (proc / str(pid) / "statm").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses; the fields
    # after its closing parenthesis are plain numbers.
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14 and 15 of stat(5), utime and stime, counted from field 3.
    utime, stime = int(fields[11]), int(fields[12])
    resident_pages = int(statm.split()[1])
    return ProcessReading(
        cpu_seconds=(utime + stime) / _TICKS_PER_SECOND,
        rss_bytes=resident_pages * _PAGE_BYTES,
    )


@dataclass
class _Running:
    last: ProcessReading
    last_at: float
    ram_byte_seconds: float = 0.0
    peak_rss_bytes: int = 0


class UsageSampler:
    """Integrates the usage of a changing set of processes over time.

    Call :meth:`sample` with the processes running now (worker id -> pid); it
    returns the usage so far of every worker it could read, for the ledger.
    A process that exited keeps the usage of its last sample.
    """

    def __init__(self, proc: Path = _PROC) -> None:
        self._proc = proc
        self._workers: dict[str, _Running] = {}

    @property
    def available(self) -> bool:
        return (self._proc / "self" / "stat").exists()

    def sample(
        self, pids: Mapping[str, int], now: float | None = None
    ) -> list[WorkerUsage]:
        now = time.time() if now is None else now
        updated = []
        for worker_id, pid in pids.items():
            reading = read_process(pid, self._proc)
            if reading is None:
                continue
            state = self._workers.get(worker_id)
            if state is None:
                # CPU seconds count from the process start, so the first
                # reading already holds the start-up's CPU time; memory before
                # the first sample is unknown and is not made up.
                state = self._workers[worker_id] = _Running(reading, now)
            else:
                # The mean of the two readings: the integral of a value that
                # moved linearly between them.
                mean_rss = (state.last.rss_bytes + reading.rss_bytes) / 2
                state.ram_byte_seconds += mean_rss * max(0.0, now - state.last_at)
                state.last, state.last_at = reading, now
            state.peak_rss_bytes = max(state.peak_rss_bytes, reading.rss_bytes)
            updated.append(self.usage(worker_id))
        return updated

    def usage(self, worker_id: str) -> WorkerUsage:
        state = self._workers[worker_id]
        return WorkerUsage(
            worker_id=worker_id,
            cpu_core_seconds=state.last.cpu_seconds,
            ram_byte_seconds=state.ram_byte_seconds,
            peak_rss_bytes=state.peak_rss_bytes,
        )

"""Usage of real processes, read from /proc: what the efficiency view rests on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scanpipe.usage import UsageSampler, read_process

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="needs Linux /proc"
)

BUSY = """
import time
buffer = bytearray(64 << 20)
print("ready", flush=True)
end = time.time() + 30
while time.time() < end:
    pass
"""


def test_a_busy_process_accumulates_cpu_seconds_and_memory() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", BUSY], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        sampler = UsageSampler()
        assert sampler.available
        start = time.time()
        first = sampler.sample({"w1": process.pid}, now=start)[0]
        time.sleep(1.0)
        second = sampler.sample({"w1": process.pid}, now=start + 1.0)[0]
    finally:
        process.kill()
        process.communicate()

    assert second.cpu_core_seconds is not None and first.cpu_core_seconds is not None
    assert second.cpu_core_seconds > first.cpu_core_seconds
    # A 64 MiB buffer, resident for the second between the samples.
    assert second.peak_rss_bytes is not None and second.peak_rss_bytes > 64 << 20
    assert second.ram_byte_seconds is not None
    assert second.ram_byte_seconds >= (64 << 20) * 1.0
    assert first.ram_byte_seconds == 0.0


def test_an_exited_process_keeps_its_last_usage() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    sampler = UsageSampler()
    sampled = sampler.sample({"w1": process.pid})
    process.wait()

    assert read_process(process.pid) is None
    assert sampler.sample({"w1": process.pid}) == []
    if sampled:  # the process may have been gone before the first look
        assert sampler.usage("w1") == sampled[0]


def test_a_command_name_with_spaces_and_parentheses_is_parsed(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    fields = ["S"] + ["0"] * 10 + ["250", "150"] + ["0"] * 30
    (proc / "42" / "stat").write_text(f"42 (a (weird) name) {' '.join(fields)}\n")
    (proc / "42" / "statm").write_text("1000 300 0 0 0 0 0\n")

    reading = read_process(42, proc)

    assert reading is not None
    assert reading.cpu_seconds == pytest.approx(400 / os.sysconf("SC_CLK_TCK"))
    assert reading.rss_bytes == 300 * os.sysconf("SC_PAGE_SIZE")

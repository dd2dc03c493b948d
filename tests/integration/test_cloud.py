"""The cloud form end to end: S3 -> notification -> SQS -> worker process -> S3.

Everything is real except AWS itself: moto's server speaks S3 and SQS over
HTTP on 127.0.0.1, ``scanpipe aws bootstrap`` creates the buckets, queues and
notification on it, scans are uploaded with boto3, S3 sends the events, and
``scanpipe worker`` runs as a subprocess, killed with real signals where a
test says so. Each test has its own buckets and queue.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scanpipe.cloud.bootstrap import bootstrap
from scanpipe.cloud.clients import make_client
from scanpipe.queue.base import QueueDepth
from scanpipe.queue.sqs import SqsQueue
from tests.aws import (
    DUMMY_SECRET_ACCESS_KEY,
    MotoServer,
    aws_environment,
    make_name,
)
from tests.scans import make_not_nifti, make_scan

#: Short enough that a killed worker's scan comes back within the test.
VISIBILITY_SECONDS = 3
#: Morphological opening with a wide ball, on one thread, over a full-size
#: phantom: a scan of a few seconds, so signals arrive while it is processed.
SLOW_MODEL = "threshold:open_mm=3"
SLOW_SHAPE = (128, 128, 96)
#: Bound on any wait for a process or a message; never reached when all works.
PATIENCE_SECONDS = 60.0

KEYS = {
    "flat": "scan.nii.gz",
    "space": "with space/a b.nii.gz",
    "plus-percent": "plus+and%percent.nii.gz",
    "unicode": "unicodé/頭部/スキャン.nii.gz",
    "nested": "site-7/2024/06/ct/scan.nii",
}


@dataclass
class Stack:
    """One bootstrapped cloud stack, and the environment that reaches it."""

    input_bucket: str
    output_bucket: str
    queue_url: str
    env: dict[str, str]

    @property
    def queue(self) -> SqsQueue:
        return SqsQueue(self.queue_url)


@pytest.fixture
def stack(aws_env: dict[str, str]) -> Stack:
    """A fresh stack on the session's moto server, its queue empty."""
    return make_stack(aws_env)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes a test starts; any still running at the end are killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def make_stack(env: dict[str, str], names: tuple[str, str, str] | None = None) -> Stack:
    """Bootstrap a stack (new names unless given) and empty its queue."""
    result = bootstrap(
        *(names or (make_name("input"), make_name("output"), make_name("scans"))),
        max_receive_count=3,
        visibility_timeout=VISIBILITY_SECONDS,
    )
    built = Stack(
        result["input_bucket"], result["output_bucket"], result["queue_url"], env
    )
    # Drop the s3:TestEvent of the new notification, so each test starts
    # from a queue that holds only what it uploads.
    make_client("sqs").purge_queue(QueueUrl=built.queue_url)
    return built


def s3() -> Any:
    """An S3 client for the endpoint the test process points at now."""
    return _s3_client(os.environ["AWS_ENDPOINT_URL"])


@functools.cache
def _s3_client(endpoint: str) -> Any:
    # Clients are slow to make and safe to share: one per endpoint.
    return make_client("s3")


def make_upload(stack: Stack, key: str, path: Path) -> None:
    s3().upload_file(str(path), stack.input_bucket, key)


def worker_command(stack: Stack, *options: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "scanpipe",
        "worker",
        "--queue",
        stack.queue_url,
        "--input",
        f"s3://{stack.input_bucket}",
        "--output",
        f"s3://{stack.output_bucket}",
        "--wait-seconds",
        "1",
        *options,
    ]


def run_worker(stack: Stack, *options: str) -> str:
    """Run a worker until the queue is empty; return its log.

    ``options`` come last, so they can replace the defaults (click keeps the
    last value of an option given twice).
    """
    command = worker_command(stack, "--model", "threshold", "--exit-when-idle")
    result = subprocess.run(
        command + list(options),
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=PATIENCE_SECONDS,
    )
    assert result.returncode == 0, result.stderr
    assert DUMMY_SECRET_ACCESS_KEY not in result.stderr + result.stdout
    return result.stderr


def start_worker(
    stack: Stack,
    processes: list[subprocess.Popen[bytes]],
    log_path: Path,
    *options: str,
) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            worker_command(stack, *options),
            env={**stack.env, "OMP_NUM_THREADS": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    processes.append(process)
    return process


def run_cli(stack: Stack, *arguments: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "scanpipe", *arguments],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=PATIENCE_SECONDS,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_until(
    condition: Callable[[], Any], what: str, *, log_path: Path | None = None
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after a bound
    (with the tail of the worker's log, where one is given)."""
    deadline = time.monotonic() + PATIENCE_SECONDS
    while not (value := condition()):
        if time.monotonic() > deadline:
            tail = "" if log_path is None else "\n" + log_text(log_path)[-3000:]
            raise AssertionError(f"gave up waiting until {what}{tail}")
        time.sleep(0.05)
    return value


def output_keys(stack: Stack) -> list[str]:
    pages = s3().get_paginator("list_objects_v2").paginate(Bucket=stack.output_bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def provenance(stack: Stack, key: str) -> dict[str, Any]:
    body = s3().get_object(Bucket=stack.output_bucket, Key=key)["Body"]
    return dict(json.loads(body.read()))


def provenance_of(stack: Stack, input_key: str) -> list[dict[str, Any]]:
    records = [provenance(stack, k) for k in output_keys(stack) if k.endswith(".json")]
    return [r for r in records if r["input"]["key"] == input_key]


def assert_queues_empty(stack: Stack) -> None:
    queue = stack.queue
    dlq = queue.dead_letter_queue()
    assert dlq is not None
    assert queue.depth() == QueueDepth(visible=0, in_flight=0, delayed=0)
    assert dlq.depth() == QueueDepth(visible=0, in_flight=0, delayed=0)


def log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.mark.slow
def test_uploaded_scans_come_back_as_masks_with_provenance(
    stack: Stack, tmp_path: Path
) -> None:
    for n, key in enumerate(KEYS.values()):
        name = "scan.nii.gz" if key.endswith(".gz") else "scan.nii"
        make_upload(stack, key, make_scan(tmp_path / f"{n}-{name}", seed=n))

    run_worker(stack)

    outputs = output_keys(stack)
    for key in KEYS.values():
        [record] = provenance_of(stack, key)
        assert record["input"]["bucket"] == stack.input_bucket
        assert record["output"]["mask_key"] in outputs
        assert record["attempts"] == 1
        folder = key.rpartition("/")[0]
        assert record["output"]["mask_key"].startswith(folder)
    assert len(outputs) == 2 * len(KEYS)
    assert_queues_empty(stack)


@pytest.mark.slow
def test_stores_under_prefixes_map_event_keys_in_and_output_keys_out(
    stack: Stack, tmp_path: Path
) -> None:
    make_upload(stack, "ct/nested/a b.nii.gz", make_scan(tmp_path / "a.nii.gz"))
    make_upload(stack, "mr/b.nii.gz", make_scan(tmp_path / "b.nii.gz"))

    run_worker(
        stack,
        "--input",
        f"s3://{stack.input_bucket}/ct",
        "--output",
        f"s3://{stack.output_bucket}/masks/",
    )

    # The record names the object as it is in the bucket: prefix included.
    [record] = provenance_of(stack, "ct/nested/a b.nii.gz")
    assert record["input"]["bucket"] == stack.input_bucket
    mask_key = record["output"]["mask_key"]
    assert mask_key.startswith("nested/a b.")
    assert f"masks/{mask_key}" in output_keys(stack)
    listed = run_cli(stack, "dlq", "list", "--queue", stack.queue_url, "--json")
    [dead] = [json.loads(line) for line in listed.splitlines()]
    assert (dead["keys"], dead["reason"]) == (["mr/b.nii.gz"], "outside_prefix")


@pytest.mark.slow
def test_a_scan_that_is_not_nifti_goes_to_the_dead_letter_queue_and_back(
    stack: Stack, tmp_path: Path
) -> None:
    make_upload(stack, "bad/scan.nii.gz", make_not_nifti(tmp_path / "bad.nii.gz"))

    log = run_worker(stack)

    assert log.count("message dead-lettered") == 1
    assert "will retry" not in log
    listed = run_cli(stack, "dlq", "list", "--queue", stack.queue_url, "--json")
    [dead] = [json.loads(line) for line in listed.splitlines()]
    assert dead["keys"] == ["bad/scan.nii.gz"]
    assert dead["reason"] == "not_nifti"
    assert "NIfTI" in dead["detail"]
    assert output_keys(stack) == []

    # Fixed at the source, the scan succeeds once redriven.
    make_upload(stack, "bad/scan.nii.gz", make_scan(tmp_path / "good.nii.gz"))
    moved = run_cli(stack, "dlq", "redrive", "--queue", stack.queue_url)
    assert moved.startswith("redrove 1 messages")
    run_worker(stack)

    assert len(provenance_of(stack, "bad/scan.nii.gz")) == 1
    assert_queues_empty(stack)


@pytest.mark.slow
def test_a_transient_fault_is_retried_until_the_scan_succeeds(
    stack: Stack, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    s3().delete_bucket(Bucket=stack.output_bucket)
    make_upload(stack, "scan.nii.gz", make_scan(tmp_path / "scan.nii.gz"))
    log_path = tmp_path / "worker.log"

    worker = start_worker(stack, processes, log_path, "--model", "threshold")
    wait_until(lambda: "will retry" in log_text(log_path), "the first attempt failed")
    s3().create_bucket(Bucket=stack.output_bucket)

    [record] = wait_until(
        lambda: provenance_of(stack, "scan.nii.gz"), "a later attempt succeeded"
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=PATIENCE_SECONDS) == 0
    assert record["attempts"] >= 2
    assert_queues_empty(stack)


@pytest.mark.slow
def test_a_worker_killed_mid_scan_is_replaced_and_the_scan_done_once(
    stack: Stack, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    make_upload(stack, "scan.nii.gz", make_scan(tmp_path / "scan.nii.gz", SLOW_SHAPE))
    queue = stack.queue

    first = start_worker(
        stack, processes, tmp_path / "first.log", "--model", SLOW_MODEL
    )
    wait_until(lambda: queue.depth().in_flight == 1, "the first worker took the scan")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert output_keys(stack) == []

    second = start_worker(
        stack,
        processes,
        tmp_path / "second.log",
        "--model",
        SLOW_MODEL,
        "--max-messages",
        "1",
    )

    assert second.wait(timeout=PATIENCE_SECONDS) == 0
    [record] = provenance_of(stack, "scan.nii.gz")
    assert record["attempts"] == 2
    assert len([k for k in output_keys(stack) if k.endswith(".mask.nii.gz")]) == 1
    assert_queues_empty(stack)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("grace_seconds", "outcome"),
    [("60", "finished"), ("0", "released")],
    ids=["finishes-within-grace", "releases-without-grace"],
)
def test_sigterm_finishes_or_releases_the_current_scan(
    stack: Stack,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
    grace_seconds: str,
    outcome: str,
) -> None:
    make_upload(stack, "scan.nii.gz", make_scan(tmp_path / "scan.nii.gz", SLOW_SHAPE))
    queue = stack.queue
    log_path = tmp_path / "worker.log"
    worker = start_worker(
        stack,
        processes,
        log_path,
        "--model",
        SLOW_MODEL,
        "--stop-grace",
        grace_seconds,
    )
    wait_until(lambda: queue.depth().in_flight == 1, "the worker took the scan")
    # Let the worker get from its receive into the scan, which lasts seconds.
    time.sleep(0.5)

    worker.send_signal(signal.SIGTERM)

    assert worker.wait(timeout=PATIENCE_SECONDS) == 0
    if outcome == "finished":
        assert len(provenance_of(stack, "scan.nii.gz")) == 1
        assert_queues_empty(stack)
    else:
        assert "message released" in log_text(log_path)
        assert output_keys(stack) == []
        # Released, not left to time out: visible again at once.
        [message] = queue.receive(1, wait_seconds=1, visibility_timeout=60)
        assert message.receive_count == 2


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[MotoServer]:
    """A moto server of this test's own, which it may stop and start."""
    server = MotoServer(log_path=tmp_path / "moto.log").start()
    yield server
    server.stop()


@pytest.mark.slow
def test_the_worker_rides_out_an_endpoint_outage(
    own_server: MotoServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    variables = aws_environment(own_server.endpoint)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    env = {**os.environ, **variables}
    stack = make_stack(env)
    queue_name = stack.queue_url.rpartition("/")[2]
    log_path = tmp_path / "worker.log"
    worker = start_worker(stack, processes, log_path, "--model", "threshold")
    wait_until(lambda: "worker started" in log_text(log_path), "the worker started")

    # Stopped at once: the worker is still starting up (looking up its
    # dead-letter queue) or already polling; either way it must ride it out.
    own_server.stop()
    wait_until(
        lambda: log_text(log_path).count("receive failed") >= 2,
        "the worker noticed the outage twice",
        log_path=log_path,
    )
    # moto keeps its state in memory: the restarted server is empty, so the
    # same stack is created again, under the same URLs.
    own_server.start()
    again = make_stack(env, (stack.input_bucket, stack.output_bucket, queue_name))
    assert again.queue_url == stack.queue_url
    make_upload(stack, "scan.nii.gz", make_scan(tmp_path / "scan.nii.gz"))

    wait_until(
        lambda: provenance_of(stack, "scan.nii.gz"),
        "the scan was done",
        log_path=log_path,
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=PATIENCE_SECONDS) == 0
    log = log_text(log_path)
    assert 2 <= log.count("receive failed") < 20
    assert "scan loop crashed" not in log
    assert len(provenance_of(stack, "scan.nii.gz")) == 1
    assert DUMMY_SECRET_ACCESS_KEY not in log

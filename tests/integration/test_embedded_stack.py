"""The whole embedded stack with real worker processes: inbox to outbox, 0 -> N -> 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from scanpipe.autoscale import ScalingPolicy
from scanpipe.events import QueueNotifier
from scanpipe.stack import EmbeddedStack, RunDir, StackSettings
from scanpipe.summary import summarize
from tests import scans

pytestmark = pytest.mark.slow

BAD_FILES = {
    "corrupt.nii.gz": (scans.make_corrupt_gzip, "not_nifti"),
    "truncated.nii.gz": (scans.make_truncated, "truncated"),
    "bomb.nii.gz": (scans.make_gzip_bomb, "gzip_bomb"),
    "huge.nii.gz": (scans.make_huge_dims, "too_large"),
    "notes.nii.gz": (scans.make_not_nifti, "not_nifti"),
}


def make_stack(root: Path, *, cooldown: float = 1.0) -> EmbeddedStack:
    return EmbeddedStack(
        RunDir(root),
        StackSettings(
            max_workers=2,
            policy=ScalingPolicy(
                polling_interval_seconds=0.5,
                cooldown_period_seconds=cooldown,
                max_replicas=2,
                target_per_replica=2,
                scale_down_stabilization_seconds=0.0,
            ),
            inbox_settle_seconds=0.3,
        ),
    )


def run_until_idle(stack: EmbeddedStack, timeout: float = 150) -> None:
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    try:
        stack.run(stop, until_idle=True)
    finally:
        timer.cancel()
    assert not stop.is_set() or stack.is_idle(), "the stack did not drain in time"


def test_good_scans_complete_and_bad_ones_land_in_the_dead_letter_queue(
    tmp_path: Path,
) -> None:
    stack = make_stack(tmp_path / "run")
    for i in range(3):
        scans.make_scan(stack.run_dir.inbox / f"good-{i}.nii.gz", seed=i)
    for name, (make, _) in BAD_FILES.items():
        make(stack.run_dir.inbox / name)

    run_until_idle(stack)

    done = sorted(s.input_key for s in stack.ledger.scans() if s.outcome == "done")
    assert done == ["good-0.nii.gz", "good-1.nii.gz", "good-2.nii.gz"]
    dlq = stack.queue.dead_letter_queue()
    assert dlq is not None
    reasons = {}
    for message in dlq.peek():
        (record,) = json.loads(message.body)["Records"]
        reasons[record["s3"]["object"]["key"]] = message.attributes["scanpipe_reason"]
    assert reasons == {name: reason for name, (_, reason) in BAD_FILES.items()}

    inputs = [o.key for o in stack.input_store.list()]
    assert len(inputs) == 3 + len(BAD_FILES)
    outputs = sorted(p.name for p in stack.run_dir.outbox.glob("*.mask.nii.gz"))
    assert len(outputs) == 3

    # The workers stayed up through the bad input: every one stopped because
    # the autoscaler asked it to, none crashed.
    lifetimes = stack.ledger.workers()
    assert lifetimes
    assert {w.stop_reason for w in lifetimes} == {"signal"}
    events = stack.ledger.scaling_events()
    assert events[0].from_replicas == 0 and events[0].to_replicas >= 1
    assert events[-1].to_replicas == 0

    # The timeline the dashboard draws: work queued, workers up, back to zero.
    samples = stack.ledger.samples()
    assert max(s.visible + s.in_flight for s in samples) >= 1
    assert max(s.workers_running for s in samples) >= 1
    assert samples[-1].workers_running == 0
    assert samples[-1].dead_letters == len(BAD_FILES)
    stack.close()


def test_a_file_is_taken_from_the_inbox_only_once_completely_written(
    tmp_path: Path,
) -> None:
    stack = make_stack(tmp_path / "run")
    scan = scans.make_scan(tmp_path / "scan.nii.gz")
    data = scan.read_bytes()
    target = stack.run_dir.inbox / "slow.nii.gz"

    # Written in pieces with pauses longer than a poll: the watcher must wait.
    with open(target, "wb") as handle:
        for start in range(0, len(data), len(data) // 4 + 1):
            handle.write(data[start : start + len(data) // 4 + 1])
            handle.flush()
            stack.inbox.poll()
            assert stack.inbox.moved == 0
            threading.Event().wait(0.15)
    threading.Event().wait(0.4)
    stack.inbox.poll()
    stack.inbox.poll()

    assert stack.inbox.moved == 1
    (info,) = stack.input_store.list()
    assert info.size == len(data)
    assert stack.queue.depth().visible == 1
    stack.close()


def test_an_inbox_file_whose_name_cannot_be_a_key_is_set_aside_with_its_reason(
    tmp_path: Path,
) -> None:
    stack = make_stack(tmp_path / "run")
    (stack.run_dir.inbox / "back\\slash.nii.gz").write_bytes(b"x")

    for hour in range(3):
        stack.inbox.poll(now=1e12 + 3600 * hour)

    rejected = stack.run_dir.root / "inbox-rejected"
    assert (rejected / "back\\slash.nii.gz").exists()
    assert "backslash" in (rejected / "back\\slash.nii.gz.reason.txt").read_text()
    assert stack.queue.depth().visible == 0
    stack.close()


def test_duplicate_events_for_one_object_give_one_mask(tmp_path: Path) -> None:
    stack = make_stack(tmp_path / "run")
    scan = scans.make_scan(tmp_path / "scan.nii.gz")
    info = stack.input_store.put_file("dup.nii.gz", scan)
    QueueNotifier(stack.queue)(stack.input_store, info)
    QueueNotifier(stack.queue)(stack.input_store, info)

    run_until_idle(stack)

    # Two workers may hold copies at the same moment and both compute (the
    # same mask, written atomically); a copy that arrives after the first
    # finished is recognised without computing. Either way: one mask.
    outcomes = sorted(s.outcome for s in stack.ledger.scans())
    assert len(outcomes) == 3
    assert outcomes[0] == "done" and "duplicate" in outcomes
    assert len(list(stack.run_dir.outbox.glob("*.mask.nii.gz"))) == 1
    assert len(list(stack.run_dir.outbox.glob("*.json"))) == 1
    assert summarize(stack.ledger, stack.queue).scans_done == 1
    stack.close()


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scanpipe", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "SCANPIPE_LOG_LEVEL": "WARNING"},
    )


def test_demo_drains_the_queue_and_scales_back_to_zero(tmp_path: Path) -> None:
    result = run_cli(
        "demo",
        "--scans",
        "4",
        "--shape",
        "64",
        "64",
        "48",
        "--max-workers",
        "2",
        "--cooldown",
        "1",
        "--dir",
        str(tmp_path / "demo"),
        "--json",
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["scans_done"] == 4
    assert summary["scans_failed"] == 0
    assert summary["dead_letters"] == 0
    assert summary["peak_workers"] >= 1
    assert 0 < summary["p50_seconds"] <= summary["p95_seconds"]
    assert summary["scaling_events"][-1]["to"] == 0

    status = json.loads(
        run_cli(
            "status", "--dir", str(tmp_path / "demo"), "--json", cwd=tmp_path
        ).stdout
    )
    assert {
        k: status[k] for k in ("visible", "in_flight", "dead_letters", "workers")
    } == {
        "visible": 0,
        "in_flight": 0,
        "dead_letters": 0,
        "workers": 0,
    }

    # The default model is the builtin one, run by the engine.
    records = sorted((tmp_path / "demo" / "outbox").glob("*.json"))
    assert len(records) == 4
    for record in records:
        model = json.loads(record.read_text())["model"]
        assert model["backend"] == "onnx"
        assert str(model["model_id"]).startswith("builtin-")


def test_dead_letters_can_be_listed_and_redriven_from_the_cli(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    bad = scans.make_not_nifti(tmp_path / "notes.nii.gz")
    submitted = run_cli("submit", str(bad), "--dir", str(run_dir), cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    stack = make_stack(run_dir)
    run_until_idle(stack)
    stack.close()

    listed = run_cli("dlq", "list", "--dir", str(run_dir), "--json", cwd=tmp_path)
    (entry,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert entry["keys"] == ["notes.nii.gz"]
    assert entry["reason"] == "not_nifti"

    redriven = run_cli("dlq", "redrive", "--dir", str(run_dir), cwd=tmp_path)
    assert "redrove 1" in redriven.stdout
    status = json.loads(
        run_cli("status", "--dir", str(run_dir), "--json", cwd=tmp_path).stdout
    )
    assert (status["visible"], status["dead_letters"]) == (1, 0)


def test_cli_errors_are_one_line_that_says_what_was_expected(tmp_path: Path) -> None:
    result = run_cli("status", "--dir", str(tmp_path / "nowhere"), cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.startswith("error: Expected a run directory")
    assert "Traceback" not in result.stderr

"""The worker loop, in-process, on the embedded queue and folder stores."""

from __future__ import annotations

import gzip
import json
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scanpipe.errors import TransientError
from scanpipe.storage.local import TMP_DIR
from scanpipe.worker.loop import Worker, WorkerSettings
from scanpipe.worker.outputs import output_keys
from tests import scans
from tests.worker.conftest import Pipeline


def test_a_scan_event_yields_a_mask_a_provenance_record_and_a_ledger_entry(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    scan = scans.make_scan(tmp_path / "jaw.nii.gz", seed=3)
    info = pipeline.inbox.put_file("patients/jaw.nii.gz", scan)

    (record,) = pipeline.worker.handle(pipeline.receive_one())

    keys = output_keys("patients/jaw.nii.gz", info.etag, "threshold-v1")
    assert record.outcome == "done"
    assert record.output_key == keys.mask
    assert [o.key for o in pipeline.outbox.list()] == sorted(
        [keys.mask, keys.provenance]
    )
    assert pipeline.queue.depth().visible + pipeline.queue.depth().in_flight == 0

    mask = nib.load(pipeline.outbox.root / keys.mask)
    source = nib.load(scan)
    assert mask.shape == source.shape
    assert np.allclose(mask.affine, source.affine)
    labels = np.asarray(mask.dataobj)
    assert labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2}

    provenance = json.loads(pipeline.outbox.get_bytes(keys.provenance))
    assert provenance["input"]["etag"] == info.etag
    assert provenance["output"]["mask_key"] == keys.mask
    assert provenance["labels"]["teeth"]["voxels"] == int((labels == 2).sum())

    (ledger_record,) = pipeline.ledger.scans()
    assert ledger_record.outcome == "done"
    assert set(ledger_record.seconds) == {
        "queue_wait",
        "download",
        "validate",
        "inference",
        "postprocess",
        "upload",
    }
    assert ledger_record.voxels == int(np.prod(source.shape))
    assert ledger_record.worker_id == "w1"


def test_a_duplicate_event_is_deleted_without_recomputing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    scan = scans.make_scan(tmp_path / "a.nii.gz")
    pipeline.inbox.put_file("a.nii.gz", scan)
    pipeline.worker.handle(pipeline.receive_one())
    before = {o.key: o.etag for o in pipeline.outbox.list()}

    pipeline.send_event("a.nii.gz")
    (record,) = pipeline.worker.handle(pipeline.receive_one())

    assert record.outcome == "duplicate"
    assert "inference" not in record.seconds
    assert {o.key: o.etag for o in pipeline.outbox.list()} == before
    assert pipeline.queue.depth().visible == 0


def test_a_new_version_of_an_object_gets_its_own_mask(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline.inbox.put_file("a.nii.gz", scans.make_scan(tmp_path / "1.nii.gz", seed=1))
    pipeline.worker.handle(pipeline.receive_one())
    pipeline.inbox.put_file("a.nii.gz", scans.make_scan(tmp_path / "2.nii.gz", seed=2))

    (record,) = pipeline.worker.handle(pipeline.receive_one())

    assert record.outcome == "done"
    assert len([o for o in pipeline.outbox.list() if o.key.endswith(".json")]) == 2


BAD_SCANS = {
    "not_nifti": scans.make_not_nifti,
    "truncated": scans.make_truncated,
    "gzip_bomb": scans.make_gzip_bomb,
    "too_large": scans.make_huge_dims,
    "not_3d": scans.make_4d,
}


@pytest.mark.parametrize("reason", BAD_SCANS.keys())
def test_a_bad_scan_goes_to_the_dead_letter_queue_after_one_attempt(
    pipeline: Pipeline, tmp_path: Path, reason: str
) -> None:
    bad = BAD_SCANS[reason](tmp_path / "bad.nii.gz")
    pipeline.inbox.put_file("bad.nii.gz", bad)

    (record,) = pipeline.worker.handle(pipeline.receive_one())

    assert (record.outcome, record.reason, record.attempts) == (
        "dead_letter",
        reason,
        1,
    )
    ((dead_reason, detail),) = pipeline.dead_letters()
    assert dead_reason == reason
    assert "Expected" in detail
    depth = pipeline.queue.depth()
    assert depth.visible + depth.in_flight == 0
    assert list(pipeline.outbox.list()) == []


def test_a_malformed_message_is_dead_lettered_with_its_reason(
    pipeline: Pipeline,
) -> None:
    pipeline.queue.send("{not json")

    (record,) = pipeline.worker.handle(pipeline.receive_one())

    assert record.reason == "malformed_event"
    assert [r for r, _ in pipeline.dead_letters()] == ["malformed_event"]


def test_an_s3_test_event_is_deleted_without_work(pipeline: Pipeline) -> None:
    pipeline.queue.send(json.dumps({"Event": "s3:TestEvent", "Bucket": "input"}))

    records = pipeline.worker.handle(pipeline.receive_one())

    assert records == []
    assert pipeline.queue.depth().visible + pipeline.queue.depth().in_flight == 0
    assert pipeline.dead_letters() == []


@pytest.mark.parametrize(
    ("key", "bucket", "reason"),
    [
        ("../../etc/passwd", None, "invalid_key"),
        ("a/../../x.nii.gz", None, "invalid_key"),
        ("missing.nii.gz", None, "object_not_found"),
        ("a.nii.gz", "someone-elses-bucket", "wrong_bucket"),
    ],
    ids=["traversal", "inner-traversal", "missing-object", "wrong-bucket"],
)
def test_events_naming_unusable_objects_are_dead_lettered(
    pipeline: Pipeline, key: str, bucket: str | None, reason: str
) -> None:
    pipeline.send_event(key, bucket=bucket)

    (record,) = pipeline.worker.handle(pipeline.receive_one())

    assert record.reason == reason
    assert [r for r, _ in pipeline.dead_letters()] == [reason]


def test_a_transient_failure_is_retried_after_a_backoff(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline.inbox.put_file("a.nii.gz", scans.make_scan(tmp_path / "a.nii.gz"))
    # A file where the output store keeps its temp folder: writes fail with
    # an OSError until it is removed, like a full or unmounted disk.
    blocker = pipeline.outbox.root / TMP_DIR
    shutil.rmtree(blocker, ignore_errors=True)
    blocker.write_text("in the way")

    (first,) = pipeline.worker.handle(pipeline.receive_one())
    assert (first.outcome, first.attempts) == ("retry", 1)
    assert pipeline.queue.receive(1) == []  # hidden for the backoff
    assert pipeline.dead_letters() == []

    blocker.unlink()
    time.sleep(0.3)
    (second,) = pipeline.worker.handle(pipeline.receive_one())

    assert (second.outcome, second.attempts) == ("done", 2)


def test_the_mask_header_carries_nothing_from_the_input_header(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    scan = scans.make_header_with_phi(tmp_path / "phi.nii.gz")
    info = pipeline.inbox.put_file("phi.nii.gz", scan)

    pipeline.worker.handle(pipeline.receive_one())

    keys = output_keys("phi.nii.gz", info.etag, "threshold-v1")
    mask = nib.load(pipeline.outbox.root / keys.mask)
    assert mask.header["descrip"].tobytes().strip(b"\x00") == b""
    assert mask.header["aux_file"].tobytes().strip(b"\x00") == b""
    assert len(mask.header.extensions) == 0
    for key in (keys.mask, keys.provenance):
        raw = pipeline.outbox.get_bytes(key)
        if key.endswith(".gz"):
            raw = gzip.decompress(raw)
        assert b"PATIENT" not in raw.upper()


def test_worker_lifetime_and_busy_intervals_are_recorded(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline.ledger.worker_started("w1", pid=1)
    pipeline.inbox.put_file("a.nii.gz", scans.make_scan(tmp_path / "a.nii.gz"))

    pipeline.worker.handle(pipeline.receive_one())

    (worker,) = pipeline.ledger.workers()
    ((start, end),) = worker.busy
    assert end is not None and end >= start
    assert not pipeline.ledger.is_busy("w1")


def test_an_unreachable_dead_letter_queue_at_start_does_not_stop_the_worker(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The endpoint drops out just as the worker starts (seen with SQS): the
    # look-up of the dead-letter queue fails once, the worker works on.
    real = pipeline.queue.dead_letter_queue
    calls: list[int] = []

    def flaky() -> object:
        calls.append(1)
        if len(calls) == 1:
            raise TransientError("Could not open the queue: endpoint unreachable.")
        return real()

    monkeypatch.setattr(pipeline.queue, "dead_letter_queue", flaky)
    worker = Worker(
        queue=pipeline.queue,
        input_store=pipeline.inbox,
        output_store=pipeline.outbox,
        segmenter=pipeline.worker.segmenter,
        settings=WorkerSettings(
            worker_id="w2", wait_seconds=0, exit_when_idle=True, scratch_dir=tmp_path
        ),
    )
    pipeline.inbox.put_file("a.nii.gz", scans.make_scan(tmp_path / "a.nii.gz"))

    assert worker.run() == 0
    assert worker.messages_handled == 1
    assert pipeline.queue.depth().visible == 0

"""The worker loop that every backend shares: one scan at a time, from queue to mask.

receive -> parse the event -> download -> validate -> segment -> write the
mask and its provenance record -> delete the message. What happens when a step
fails depends only on the error's class (see :mod:`scanpipe.errors`):

- ``PermanentError``: the message goes to the dead-letter queue at once, with
  its reason; retrying a corrupt file only burns GPU time.
- anything else: the message is retried after a backoff that doubles with
  each receive (its visibility is set to the backoff), until the queue's
  redrive policy moves it to the dead-letter queue.

On SIGTERM the worker stops receiving, finishes the current scan if it ends
within the grace period, and otherwise releases the message (visibility 0)
so another worker takes it at once; then it exits 0.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from scanpipe.errors import (
    PermanentError,
    ReceiptHandleInvalid,
    ScanpipeError,
    TransientError,
)
from scanpipe.events import ObjectEvent, Skipped, parse_message
from scanpipe.imaging.nifti import ScanLimits, load_scan, write_mask
from scanpipe.ledger import Ledger, ScanRecord
from scanpipe.models.base import Segmenter
from scanpipe.queue.base import Message, Queue
from scanpipe.storage.base import ObjectStore
from scanpipe.worker.heartbeat import Heartbeat
from scanpipe.worker.outputs import output_keys, provenance_record

if TYPE_CHECKING:
    from scanpipe.telemetry import WorkerTelemetry

log = logging.getLogger(__name__)


@dataclass
class WorkerSettings:
    """How one worker process behaves; the CLI fills it from flags."""

    worker_id: str = field(default_factory=lambda: f"worker-{os.getpid()}")
    #: Long-poll wait per receive (SQS allows at most 20 s).
    wait_seconds: float = 20.0
    #: Visibility timeout per receive; None uses the queue's default.
    visibility_timeout: float | None = None
    #: After SIGTERM, how long the current scan may still run.
    stop_grace_seconds: float = 30.0
    limits: ScanLimits = field(default_factory=ScanLimits)
    #: Backoff before a failed scan is retried: base * 2**(attempt-1), capped.
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 300.0
    #: Stop after this many messages (None: run until signalled).
    max_messages: int | None = None
    #: Stop after the first receive that finds the queue empty.
    exit_when_idle: bool = False
    #: Where downloads and masks are staged; the system temp dir by default.
    scratch_dir: Path | None = None


class Worker:
    """Consumes scan events from a queue until stopped."""

    def __init__(
        self,
        *,
        queue: Queue,
        input_store: ObjectStore,
        output_store: ObjectStore,
        segmenter: Segmenter,
        settings: WorkerSettings | None = None,
        ledger: Ledger | None = None,
        metrics: WorkerTelemetry | None = None,
    ) -> None:
        self.queue = queue
        self.input_store = input_store
        self.output_store = output_store
        self.segmenter = segmenter
        self.settings = settings or WorkerSettings()
        self.ledger = ledger
        self.metrics = metrics
        self.stopping = threading.Event()
        self.messages_handled = 0
        self._stop_requested_at: float | None = None
        self._current: Message | None = None
        self._current_lock = threading.Lock()
        self._visibility = (
            self.settings.visibility_timeout or self.queue.visibility_timeout
        )

    # -- process lifetime ----------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or the configured limits); return the exit code.

        Must be called from the main thread, which owns signal handling; the
        scans run in a second thread so a signal can be acted on mid-scan.
        """
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info(
            "worker started worker=%s model=%s queue=%s",
            self.settings.worker_id,
            self.segmenter.model_id,
            self.queue.url,
        )
        self._check_dead_letter_queue()
        loop = threading.Thread(
            target=self._loop_guarded, name="scan-loop", daemon=True
        )
        loop.start()
        while loop.is_alive() and not self.stopping.is_set():
            loop.join(0.2)

        if loop.is_alive():
            assert self._stop_requested_at is not None
            deadline = self._stop_requested_at + self.settings.stop_grace_seconds
            while loop.is_alive() and time.monotonic() < deadline:
                loop.join(0.1)
        if loop.is_alive():
            self._release_current("the stop grace period ended mid-scan")
            self._finish("grace_period_ended")
            logging.shutdown()
            # The scan thread cannot be interrupted; its partial output lives
            # only in scratch space, never under a final key.
            os._exit(0)
        self._finish("signal" if self.stopping.is_set() else "done")
        return 0

    def request_stop(self) -> None:
        """Stop receiving; the current scan finishes within the grace period."""
        if not self.stopping.is_set():
            self._stop_requested_at = time.monotonic()
            self.stopping.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info(
            "stop requested worker=%s signal=%s grace_seconds=%.0f",
            self.settings.worker_id,
            signal.Signals(signum).name,
            self.settings.stop_grace_seconds,
        )
        self.request_stop()

    def _finish(self, reason: str) -> None:
        if self.ledger is not None:
            self.ledger.worker_stopped(self.settings.worker_id, reason)
        if self.metrics is not None:
            self.metrics.stopped()
        log.info(
            "worker stopped worker=%s reason=%s messages=%d",
            self.settings.worker_id,
            reason,
            self.messages_handled,
        )

    def _release_current(self, why: str) -> None:
        with self._current_lock:
            message = self._current
            if message is None:
                return
            try:
                self.queue.change_visibility(message.receipt_handle, 0)
            except ScanpipeError as exc:
                log.warning("release failed error=%s", exc)
            log.info("message released id=%s why=%s", message.message_id, why)
            self._record(
                ScanRecord(
                    input_key=_message_label(message),
                    outcome="released",
                    finished_at=time.time(),
                    worker_id=self.settings.worker_id,
                    attempts=message.receive_count,
                    reason="stopped",
                    detail=why,
                )
            )

    def _check_dead_letter_queue(self) -> None:
        try:
            dlq = self.queue.dead_letter_queue()
        except TransientError as exc:
            # An endpoint that is down at start must not stop the worker: the
            # loop rides out the outage, and the dead-letter queue is looked
            # up again when a failure first needs it.
            log.warning(
                "dead-letter queue not checked queue=%s error=%s",
                self.queue.url,
                exc,
            )
            return
        if dlq is None:
            log.warning(
                "queue has no dead-letter queue queue=%s: permanent failures "
                "stay on it and come back after every visibility timeout",
                self.queue.url,
            )

    # -- the loop ------------------------------------------------------------

    def _loop_guarded(self) -> None:
        try:
            self._loop()
        except BaseException:
            log.exception("scan loop crashed worker=%s", self.settings.worker_id)
            self.request_stop()

    def _loop(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            limit = self.settings.max_messages
            if limit is not None and self.messages_handled >= limit:
                break
            try:
                messages = self.queue.receive(
                    1,
                    wait_seconds=self.settings.wait_seconds,
                    visibility_timeout=self._visibility,
                )
            except ScanpipeError as exc:
                # The queue is unreachable: wait and try again, doubling the
                # pause, so an outage costs no CPU and floods no log.
                failures += 1
                pause = min(
                    self.settings.retry_max_seconds, 0.5 * 2 ** min(failures, 10)
                )
                log.warning(
                    "receive failed error=%s attempt=%d retry_in=%.1f",
                    exc,
                    failures,
                    pause,
                )
                self.stopping.wait(pause)
                continue
            failures = 0
            if not messages:
                if self.settings.exit_when_idle:
                    break
                continue
            for message in messages:
                if self.stopping.is_set():
                    self._release(message)
                    continue
                self.handle(message)
                self.messages_handled += 1

    def _release(self, message: Message) -> None:
        try:
            self.queue.change_visibility(message.receipt_handle, 0)
        except ScanpipeError as exc:
            log.warning("release failed id=%s error=%s", message.message_id, exc)

    # -- one message ---------------------------------------------------------

    def handle(self, message: Message) -> list[ScanRecord]:
        """Process one received message to its end; return what was recorded."""
        received_at = time.time()
        with self._current_lock:
            self._current = message
        busy_id = (
            self.ledger.busy_started(self.settings.worker_id) if self.ledger else 0
        )
        if self.metrics is not None:
            self.metrics.busy_started()
        try:
            with Heartbeat(self.queue, message.receipt_handle, self._visibility):
                records = self._handle(message, received_at)
        finally:
            with self._current_lock:
                self._current = None
            if self.ledger is not None:
                self.ledger.busy_ended(busy_id)
            if self.metrics is not None:
                self.metrics.busy_ended()
        for record in records:
            self._record(record)
        return records

    def _record(self, record: ScanRecord) -> None:
        if self.ledger is not None:
            self.ledger.record_scan(record)
        if self.metrics is not None:
            self.metrics.scan_recorded(record)

    def _handle(self, message: Message, received_at: float) -> list[ScanRecord]:
        try:
            parsed = parse_message(message.body)
        except PermanentError as exc:
            self._dead_letter(message, exc)
            return [
                self._failure_record(message, None, received_at, exc, "dead_letter")
            ]

        records: list[ScanRecord] = []
        for item in parsed:
            if isinstance(item, Skipped):
                log.info(
                    "event skipped id=%s reason=%s", message.message_id, item.reason
                )
                continue
            try:
                records.append(self._process_object(item, message, received_at))
            except PermanentError as exc:
                self._dead_letter(message, exc)
                records.append(
                    self._failure_record(message, item, received_at, exc, "dead_letter")
                )
                return records
            except Exception as exc:
                self._retry_later(message, exc)
                records.append(
                    self._failure_record(message, item, received_at, exc, "retry")
                )
                return records

        try:
            self.queue.delete(message.receipt_handle)
        except ReceiptHandleInvalid:
            # Redelivered meanwhile; the other delivery finds our output.
            log.warning("delete found a stale handle id=%s", message.message_id)
        except ScanpipeError as exc:
            # The queue is unreachable: the message will be redelivered and
            # recognised as done, so this costs a duplicate check, not a scan.
            log.warning("delete failed id=%s error=%s", message.message_id, exc)
        return records

    def _process_object(
        self, event: ObjectEvent, message: Message, received_at: float
    ) -> ScanRecord:
        key = self.input_store.key_from_event(event.bucket, event.key)
        info = self.input_store.head(key)
        keys = output_keys(key, info.etag, self.segmenter.model_id)
        arrived_at = event.event_time or message.sent_at
        seconds: dict[str, float] = {"queue_wait": max(0.0, received_at - arrived_at)}
        record = ScanRecord(
            input_key=key,
            outcome="done",
            finished_at=0.0,
            etag=info.etag,
            size_bytes=info.size,
            model_id=self.segmenter.model_id,
            worker_id=self.settings.worker_id,
            attempts=message.receive_count,
            output_key=keys.mask,
            event_time=arrived_at,
            received_at=received_at,
            seconds=seconds,
        )
        if self.output_store.exists(keys.provenance):
            log.info("scan already done key=%r output=%r", key, keys.mask)
            record.outcome = "duplicate"
            return _finished(record)

        with tempfile.TemporaryDirectory(
            prefix="scanpipe-", dir=self.settings.scratch_dir
        ) as scratch:
            local = Path(scratch) / "input.nii.gz"
            started = time.time()
            mark = time.perf_counter()
            downloaded = self.input_store.download(
                key, local, max_bytes=self.settings.limits.max_file_bytes
            )
            seconds["download"] = time.perf_counter() - mark
            if downloaded.etag != info.etag:
                # Overwritten since the head: the output keys name the old
                # content. Retry; the next attempt sees the new ETag.
                raise TransientError(
                    f"Expected the object with ETag {info.etag}, but it was "
                    f"replaced by ETag {downloaded.etag} during the scan."
                )

            mark = time.perf_counter()
            volume = load_scan(local, self.settings.limits)
            local.unlink()
            seconds["validate"] = time.perf_counter() - mark
            record.voxels = int(volume.data.size)

            mark = time.perf_counter()
            result = self.segmenter.segment(volume)
            segment_seconds = time.perf_counter() - mark
            seconds["inference"] = result.seconds.get("inference", segment_seconds)
            seconds["postprocess"] = result.seconds.get(
                "postprocess", max(0.0, segment_seconds - seconds["inference"])
            )

            mark = time.perf_counter()
            mask_path = Path(scratch) / "mask.nii.gz"
            write_mask(result.labels, volume, mask_path)
            self.output_store.put_file(keys.mask, mask_path)
            seconds["upload"] = time.perf_counter() - mark
            finished = time.time()
            record.total_seconds = sum(
                v for k, v in seconds.items() if k != "queue_wait"
            )
            provenance = provenance_record(
                bucket=self.input_store.bucket,
                input_key=self.input_store.prefix + key,
                etag=info.etag,
                size_bytes=info.size,
                version_id=event.version_id,
                sequencer=event.sequencer,
                mask_key=keys.mask,
                model=self.segmenter.describe(),
                volume=volume,
                segmentation=result,
                label_names=self.segmenter.labels,
                seconds=dict(seconds, total=record.total_seconds),
                worker_id=self.settings.worker_id,
                attempts=message.receive_count,
                started_at=started,
                finished_at=finished,
            )
            # Written last: its presence is what marks the scan as complete.
            self.output_store.put_bytes(keys.provenance, _dumps(provenance))

        record = _finished(record)
        log.info(
            "scan done key=%r voxels=%d seconds=%.2f inference_seconds=%.2f "
            "attempts=%d",
            key,
            record.voxels or 0,
            record.total_seconds or 0.0,
            seconds["inference"],
            message.receive_count,
        )
        return record

    # -- failures ------------------------------------------------------------

    def _dead_letter(self, message: Message, exc: PermanentError) -> None:
        log.warning(
            "message dead-lettered id=%s reason=%s detail=%r",
            message.message_id,
            exc.reason,
            str(exc),
        )
        try:
            self.queue.dead_letter(message, reason=exc.reason, detail=str(exc))
        except ReceiptHandleInvalid:
            log.warning("dead-letter found a stale handle id=%s", message.message_id)
        except ScanpipeError as move_exc:
            # Left on the queue, it comes back and fails the same way again.
            log.warning(
                "dead-letter move failed id=%s error=%s",
                message.message_id,
                move_exc,
            )

    def _retry_later(self, message: Message, exc: Exception) -> None:
        attempt = max(1, message.receive_count)
        backoff = min(
            self.settings.retry_max_seconds,
            self.settings.retry_base_seconds * 2 ** (attempt - 1),
        )
        log.warning(
            "scan failed, will retry id=%s attempt=%d retry_in=%.1f error=%s: %s",
            message.message_id,
            attempt,
            backoff,
            type(exc).__name__,
            exc,
        )
        try:
            self.queue.change_visibility(message.receipt_handle, backoff)
        except ScanpipeError as release_exc:
            log.warning("retry backoff not applied error=%s", release_exc)

    def _failure_record(
        self,
        message: Message,
        event: ObjectEvent | None,
        received_at: float,
        exc: Exception,
        outcome: str,
    ) -> ScanRecord:
        reason = exc.reason if isinstance(exc, PermanentError) else type(exc).__name__
        return _finished(
            ScanRecord(
                input_key=event.key if event else _message_label(message),
                outcome=outcome,
                finished_at=0.0,
                etag=event.etag if event else None,
                size_bytes=event.size if event else None,
                model_id=self.segmenter.model_id,
                worker_id=self.settings.worker_id,
                attempts=message.receive_count,
                reason=reason,
                detail=str(exc)[:1000],
                event_time=(event.event_time if event else None) or message.sent_at,
                received_at=received_at,
            )
        )


def _finished(record: ScanRecord) -> ScanRecord:
    record.finished_at = time.time()
    if record.event_time is not None:
        record.end_to_end_seconds = record.finished_at - record.event_time
    return record


def _message_label(message: Message) -> str:
    return f"message:{message.message_id}"


def _dumps(doc: object) -> bytes:
    return json.dumps(doc, indent=2, sort_keys=True).encode("utf-8")

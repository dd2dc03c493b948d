"""Keeps a message invisible to other workers while its scan is being processed.

A scan can outlast the queue's visibility timeout; without a heartbeat the
message would reappear and a second worker would start the same scan. The
heartbeat extends the visibility every third of the timeout, so two beats can
fail before the message becomes visible again.
"""

from __future__ import annotations

import logging
import threading

from scanpipe.errors import ReceiptHandleInvalid, ScanpipeError
from scanpipe.queue.base import Queue

log = logging.getLogger(__name__)


class Heartbeat:
    """A background thread that extends one message's visibility until stopped."""

    def __init__(
        self, queue: Queue, receipt_handle: str, visibility_timeout: float
    ) -> None:
        self._queue = queue
        self._receipt = receipt_handle
        self._timeout = visibility_timeout
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        interval = max(self._timeout / 3.0, 0.1)
        while not self._stop.wait(interval):
            try:
                self._queue.change_visibility(self._receipt, self._timeout)
            except ReceiptHandleInvalid:
                # Another worker holds the message now; ours will be a duplicate
                # that idempotent output keys absorb.
                log.warning("heartbeat lost the message; it was redelivered")
                self.lost = True
                return
            except ScanpipeError as exc:
                log.warning("heartbeat failed error=%s", type(exc).__name__)

"""The inbox watcher: moves files users drop into ``DIR/inbox`` into the input store.

A file is taken only once it is completely written: its size and modification
time must stay the same across two polls at least ``settle_seconds`` apart,
and names that copy tools use for partial files (``.part``, ``.tmp``,
``.crdownload``, dot-files) are left alone until renamed. The store write is
atomic and publishes the object-created event; only then is the inbox file
removed, so a crash in between repeats the move (the event then names the same
ETag, and the worker's idempotent output keys absorb the duplicate).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from scanpipe.errors import InvalidKey, ScanpipeError
from scanpipe.storage.base import ObjectStore

log = logging.getLogger(__name__)

_PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", "~")


@dataclass(frozen=True)
class _Seen:
    size: int
    mtime_ns: int
    first_seen: float


class InboxWatcher:
    """Polls an inbox folder and moves settled files into a store."""

    def __init__(
        self,
        inbox: Path,
        store: ObjectStore,
        *,
        rejected: Path | None = None,
        poll_seconds: float = 0.5,
        settle_seconds: float = 1.0,
    ) -> None:
        self.inbox = inbox
        self.store = store
        self.rejected = rejected or inbox.parent / "inbox-rejected"
        self.poll_seconds = poll_seconds
        self.settle_seconds = settle_seconds
        self.moved = 0
        self._seen: dict[Path, _Seen] = {}
        inbox.mkdir(parents=True, exist_ok=True)

    def pending(self) -> int:
        """Files in the inbox not yet moved (partial ones included)."""
        return sum(1 for _ in self._candidates())

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.poll()
            except ScanpipeError as exc:
                log.warning("inbox poll failed error=%s", exc)
            stop.wait(self.poll_seconds)

    def poll(self, now: float | None = None) -> int:
        """Move every file that has settled; return how many were moved."""
        now = time.time() if now is None else now
        moved = 0
        present = set()
        for path in self._candidates():
            present.add(path)
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            seen = self._seen.get(path)
            if seen is None or (seen.size, seen.mtime_ns) != (
                stat.st_size,
                stat.st_mtime_ns,
            ):
                self._seen[path] = _Seen(stat.st_size, stat.st_mtime_ns, now)
                continue
            settled = now - max(seen.first_seen, stat.st_mtime) >= self.settle_seconds
            if settled and self._move(path):
                moved += 1
        for path in set(self._seen) - present:
            del self._seen[path]
        self.moved += moved
        return moved

    def _candidates(self) -> list[Path]:
        found = []
        for dirpath, dirnames, filenames in os.walk(self.inbox):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith(".") or name.endswith(_PARTIAL_SUFFIXES):
                    continue
                found.append(Path(dirpath) / name)
        return sorted(found)

    def _move(self, path: Path) -> bool:
        key = path.relative_to(self.inbox).as_posix()
        try:
            info = self.store.put_file(key, path)
        except InvalidKey as exc:
            self._reject(path, str(exc))
            return False
        path.unlink(missing_ok=True)
        self._seen.pop(path, None)
        log.info("inbox file taken key=%r size=%d etag=%s", key, info.size, info.etag)
        return True

    def _reject(self, path: Path, why: str) -> None:
        # A name that cannot be an object key never reaches the queue; keep
        # the file and the reason side by side so nothing is lost silently.
        self.rejected.mkdir(parents=True, exist_ok=True)
        target = self.rejected / path.name
        shutil.move(path, target)
        target.with_name(target.name + ".reason.txt").write_text(why + "\n")
        self._seen.pop(path, None)
        log.warning("inbox file rejected name=%r reason=%s", path.name, why)

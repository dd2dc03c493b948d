"""The object store contract every backend fills in: a bucket of keyed blobs.

Keys are relative to the store's root (a folder, or ``s3://bucket/prefix``) and
use ``/`` as separator. Writes are atomic: a reader sees the old object, the
new one, or none, never a partial one. ``etag`` is the hex MD5 of the content
for single-part objects, as S3 reports it (without quotes).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ObjectInfo:
    """What ``head`` tells about one object."""

    key: str
    size: int
    etag: str
    last_modified: float  # seconds since the epoch


#: Called after every successful put; the embedded form publishes S3-style
#: events from it, as an S3 bucket notification would.
PutListener = Callable[["ObjectStore", ObjectInfo], None]


class ObjectStore(abc.ABC):
    """A bucket: put, get, head, list and delete objects by key."""

    #: The location this store was opened from, e.g. ``file:///data/in``.
    url: str
    #: The bucket name events carry for this store.
    bucket: str
    #: Key prefix within the bucket that this store is rooted at ('' or 'a/b/').
    prefix: str = ""

    def __init__(self) -> None:
        self._listeners: list[PutListener] = []

    def add_put_listener(self, listener: PutListener) -> None:
        """Call ``listener(store, info)`` after every successful put."""
        self._listeners.append(listener)

    def _notify_put(self, info: ObjectInfo) -> None:
        for listener in self._listeners:
            listener(self, info)

    def key_from_event(self, bucket: str, key: str) -> str:
        """Map a bucket-wide key from an event onto this store's relative key.

        Raises:
            PermanentError: the event names another bucket or a key outside
                this store's prefix.
        """
        from scanpipe.errors import PermanentError

        if bucket != self.bucket:
            raise PermanentError(
                f"The event names bucket {bucket!r}, but this worker reads "
                f"from bucket {self.bucket!r} ({self.url}).",
                reason="wrong_bucket",
            )
        if not key.startswith(self.prefix):
            raise PermanentError(
                f"The event's key is outside this store's prefix {self.prefix!r}.",
                reason="outside_prefix",
            )
        return key[len(self.prefix) :]

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Store ``data`` under ``key`` atomically."""
        info = self._put_bytes(key, data)
        self._notify_put(info)
        return info

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        """Store the content of the local file ``path`` under ``key`` atomically."""
        info = self._put_file(key, path)
        self._notify_put(info)
        return info

    @abc.abstractmethod
    def _put_bytes(self, key: str, data: bytes) -> ObjectInfo: ...

    @abc.abstractmethod
    def _put_file(self, key: str, path: Path) -> ObjectInfo: ...

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Describe one object.

        Raises:
            ObjectNotFound: no object has this key.
            InvalidKey: the key cannot name an object in this store.
        """

    def exists(self, key: str) -> bool:
        from scanpipe.errors import ObjectNotFound

        try:
            self.head(key)
        except ObjectNotFound:
            return False
        return True

    @abc.abstractmethod
    def download(
        self, key: str, dest: Path, *, max_bytes: int | None = None
    ) -> ObjectInfo:
        """Copy the object into the local file ``dest``.

        Raises:
            ObjectNotFound: no object has this key.
            ScanRejected: the object is larger than ``max_bytes``; checked
                against its size before any byte is copied.
        """

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Return a whole (small) object, e.g. a provenance record."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield the objects whose key starts with ``prefix``, sorted by key."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; removing a missing object is not an error (as S3)."""

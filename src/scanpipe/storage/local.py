"""A folder that behaves like an S3 bucket: the embedded form's object store.

Each key maps to a file under the root; ``/`` in keys makes sub-folders.
Writes go to a temporary file inside the root's private ``.scanpipe-tmp``
folder, are fsynced and then renamed over the final path, so a reader (or a
crash) never sees a partial object under a final key. The ETag is the hex MD5
of the content, as S3 reports it for single-part uploads.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from scanpipe.errors import InvalidKey, ObjectNotFound, ScanRejected
from scanpipe.storage.base import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

#: Private folder for in-progress writes; never listed, never a valid key.
TMP_DIR = ".scanpipe-tmp"
_CHUNK = 1 << 20
_MAX_KEY_BYTES = 1024  # S3's limit on key length


class LocalStore(ObjectStore):
    """An object store rooted at a local folder (created if missing)."""

    def __init__(self, root: Path | str, *, bucket: str | None = None) -> None:
        super().__init__()
        self.root = Path(root).absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        self._real_root = self.root.resolve()
        self.url = self.root.as_uri()
        self.bucket = bucket or self.root.name
        self.prefix = ""
        self._etags: dict[tuple[str, int, int], str] = {}

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # -- key mapping ---------------------------------------------------------

    def path_for(self, key: str) -> Path:
        """Map a key onto a path under the root, refusing anything that escapes it.

        Raises:
            InvalidKey: empty, absolute, ``..`` or ``.`` segments, empty
                segments, NUL, backslashes, the private temp folder, keys over
                1024 bytes, or a path whose symlinks lead outside the root.
        """
        problem = _key_problem(key)
        if problem:
            raise InvalidKey(
                f"Expected an object key of '/'-separated names inside the "
                f"bucket, but the key {problem}."
            )
        path = self.root.joinpath(*key.split("/"))
        # Resolve symlinks of every existing component: a link planted inside
        # the folder must not let a write or read reach outside it.
        real = path.resolve()
        if real != self._real_root and self._real_root not in real.parents:
            raise InvalidKey(
                "Expected an object key inside the bucket, but the key resolves "
                "through a symbolic link to a location outside the store's root."
            )
        return path

    # -- reads ---------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo:
        path = self.path_for(key)
        try:
            stat = path.stat()
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"No object with this key in {self.url}.") from exc
        if not path.is_file():
            raise ObjectNotFound(
                f"The key names a folder, not an object, in {self.url}."
            )
        return ObjectInfo(
            key=key,
            size=stat.st_size,
            etag=self._etag(path, stat),
            last_modified=stat.st_mtime,
        )

    def download(
        self, key: str, dest: Path, *, max_bytes: int | None = None
    ) -> ObjectInfo:
        info = self.head(key)
        if max_bytes is not None and info.size > max_bytes:
            raise ScanRejected(
                f"Expected an object of at most {max_bytes} bytes, but it has "
                f"{info.size} bytes.",
                reason="too_large",
            )
        try:
            shutil.copyfile(self.path_for(key), dest)
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"The object vanished from {self.url}.") from exc
        return info

    def get_bytes(self, key: str) -> bytes:
        path = self.path_for(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ObjectNotFound(f"No object with this key in {self.url}.") from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        keys = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            if Path(dirpath) == self.root and TMP_DIR in dirnames:
                dirnames.remove(TMP_DIR)
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        for key in sorted(keys):
            try:
                yield self.head(key)
            except (ObjectNotFound, InvalidKey):
                continue  # deleted while listing, or a stray link: not an object

    # -- writes --------------------------------------------------------------

    def _put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        path = self.path_for(key)
        md5 = hashlib.md5(data, usedforsecurity=False)
        with self._atomic_writer(path) as handle:
            handle.write(data)
        return self._finish_put(key, path, md5.hexdigest())

    def _put_file(self, key: str, path: Path) -> ObjectInfo:
        target = self.path_for(key)
        md5 = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as src, self._atomic_writer(target) as handle:
            while chunk := src.read(_CHUNK):
                md5.update(chunk)
                handle.write(chunk)
        return self._finish_put(key, target, md5.hexdigest())

    def delete(self, key: str) -> None:
        path = self.path_for(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    # -- internals -----------------------------------------------------------

    def _atomic_writer(self, path: Path) -> _AtomicWriter:
        tmp_dir = self.root / TMP_DIR
        tmp_dir.mkdir(exist_ok=True)
        return _AtomicWriter(tmp_dir / f"{uuid.uuid4().hex}.part", path)

    def _finish_put(self, key: str, path: Path, etag: str) -> ObjectInfo:
        stat = path.stat()
        self._etags[(str(path), stat.st_size, stat.st_mtime_ns)] = etag
        log.debug(
            "object stored store=%s size=%d etag=%s", self.url, stat.st_size, etag
        )
        return ObjectInfo(
            key=key, size=stat.st_size, etag=etag, last_modified=stat.st_mtime
        )

    def _etag(self, path: Path, stat: os.stat_result) -> str:
        cache_key = (str(path), stat.st_size, stat.st_mtime_ns)
        etag = self._etags.get(cache_key)
        if etag is None:
            md5 = hashlib.md5(usedforsecurity=False)
            with open(path, "rb") as handle:
                while chunk := handle.read(_CHUNK):
                    md5.update(chunk)
            etag = md5.hexdigest()
            self._etags[cache_key] = etag
        return etag


class _AtomicWriter:
    """Write to a temp file, fsync, rename over the target, fsync the folder."""

    def __init__(self, tmp: Path, target: Path) -> None:
        self.tmp = tmp
        self.target = target

    def __enter__(self) -> _AtomicWriter:
        self._handle = open(self.tmp, "wb")
        return self

    def write(self, data: bytes) -> None:
        self._handle.write(data)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self._handle.flush()
                os.fsync(self._handle.fileno())
            self._handle.close()
            if exc_type is not None:
                return
            self.target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.tmp, self.target)
            _fsync_dir(self.target.parent)
        finally:
            if self.tmp.exists():
                self.tmp.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _key_problem(key: str) -> str | None:
    """Say what is wrong with a key, or None when it is acceptable."""
    if not key:
        return "is empty"
    if "\x00" in key:
        return "contains a NUL character"
    if "\\" in key:
        return "contains a backslash"
    if key.startswith("/"):
        return "is absolute (starts with '/')"
    if len(key.encode("utf-8", "surrogatepass")) > _MAX_KEY_BYTES:
        return f"is longer than {_MAX_KEY_BYTES} bytes"
    parts = key.split("/")
    if any(part in ("..", ".") for part in parts):
        return "has a '.' or '..' path segment"
    if any(part == "" for part in parts):
        return "has an empty path segment (a trailing or doubled '/')"
    if parts[0] == TMP_DIR:
        return f"uses the store's private folder {TMP_DIR!r}"
    return None

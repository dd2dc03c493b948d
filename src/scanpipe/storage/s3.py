"""An S3 bucket (or a prefix in one) as an object store: the cloud form's storage.

``S3Store("scans-in", "ct/")`` stores the key ``a/b.nii.gz`` as the S3 object
``ct/a/b.nii.gz``; events that name the bucket-wide key map back through
:meth:`~scanpipe.storage.base.ObjectStore.key_from_event`. Any S3-compatible
server works (MinIO, Ceph): see :mod:`scanpipe.cloud.clients` for where the
endpoint, region and credentials come from.

How the contract is kept on S3:

- **Atomic writes.** Uploads go through boto3's managed transfer: a single
  PUT below the multipart threshold, a multipart upload above it. S3 shows
  an object under its key only once the PUT or the multipart completion
  succeeds, and the managed transfer aborts a multipart upload that fails,
  so a reader never sees a partial object.
- **Downloads** check the size from HEAD against the cap before the first
  byte moves, then stream the object (pinned to that ETag with If-Match)
  into a temporary file next to the destination and rename it.
- **ETags** are S3's, without quotes: the MD5 of the content for single-part
  uploads, ``<md5 of part md5s>-<parts>`` for multipart ones.
- **Listing** pages through ListObjectsV2; S3 returns keys in UTF-8 binary
  order, which is the order of Python strings, so results stream sorted.
- **Keys** follow the same rules as the local store (no ``..``, empty
  segments, backslashes, NUL, ...), so a bucket can always be mirrored
  onto a folder and both backends accept the same keys.
- **A 404** on an object is :class:`~scanpipe.errors.ObjectNotFound`; when
  the bucket itself is missing it is a :class:`~scanpipe.errors.ConfigError`
  instead, so a misconfigured bucket is retried rather than dead-lettered.
"""

from __future__ import annotations

import io
import logging
import os
import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from scanpipe.cloud.clients import (
    error_code,
    make_client,
    status_code,
    translate,
    translated,
)
from scanpipe.errors import (
    ConfigError,
    InvalidKey,
    ObjectNotFound,
    ScanRejected,
    TransientError,
)
from scanpipe.storage.base import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

#: Objects at least this large are uploaded in parts (boto3's default).
DEFAULT_MULTIPART_THRESHOLD_BYTES = 8 * 1024 * 1024
#: Size of each part; S3 needs at least 5 MiB for every part but the last.
DEFAULT_MULTIPART_CHUNK_BYTES = 8 * 1024 * 1024

_CHUNK = 1 << 20
_MAX_KEY_BYTES = 1024  # S3's limit on the whole key, prefix included
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


class S3Store(ObjectStore):
    """An object store rooted at ``s3://bucket/prefix``; see the module docstring.

    ::

        store = S3Store("scans-in", "ct/")
        info = store.put_file("a.nii.gz", Path("a.nii.gz"))
        store.download("a.nii.gz", Path("/tmp/a.nii.gz"), max_bytes=2**30)
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        multipart_threshold_bytes: int = DEFAULT_MULTIPART_THRESHOLD_BYTES,
        multipart_chunk_bytes: int = DEFAULT_MULTIPART_CHUNK_BYTES,
    ) -> None:
        super().__init__()
        check_bucket_name(bucket)
        self.bucket = bucket
        self.prefix = normalize_prefix(prefix)
        self.url = f"s3://{bucket}/{self.prefix}"
        self._client = client if client is not None else make_client("s3")
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold_bytes,
            multipart_chunksize=multipart_chunk_bytes,
        )

    def __repr__(self) -> str:
        return f"S3Store({self.bucket!r}, {self.prefix!r})"

    def object_key(self, key: str) -> str:
        """The bucket-wide S3 key of a store key.

        Raises:
            InvalidKey: the key breaks the rules every store keeps.
        """
        problem = key_problem(key)
        full = self.prefix + key
        if problem is None and len(full.encode("utf-8")) > _MAX_KEY_BYTES:
            problem = f"is longer than {_MAX_KEY_BYTES} bytes with the store's prefix"
        if problem:
            raise InvalidKey(
                f"Expected an object key of '/'-separated names inside the "
                f"bucket, but the key {problem}."
            )
        return full

    # -- reads ---------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo:
        full = self.object_key(key)
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=full)
        except ClientError as exc:
            if _is_not_found(exc):
                raise self._not_found() from exc
            raise translate(exc, "describe an object", self.url) from exc
        except BotoCoreError as exc:
            raise translate(exc, "describe an object", self.url) from exc
        return _info(key, response["ContentLength"], response)

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

        dest = Path(dest)
        partial = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
        try:
            self._stream_to(key, info, partial, max_bytes)
            os.replace(partial, dest)
        finally:
            partial.unlink(missing_ok=True)
        return info

    def _stream_to(
        self, key: str, info: ObjectInfo, path: Path, max_bytes: int | None
    ) -> None:
        action = "download an object"
        try:
            # If-Match pins the GET to the version whose size was checked.
            response = self._client.get_object(
                Bucket=self.bucket, Key=self.object_key(key), IfMatch=f'"{info.etag}"'
            )
        except ClientError as exc:
            if _is_missing_object(exc):
                raise ObjectNotFound(
                    f"The object vanished from {self.url} before its download."
                ) from exc
            if error_code(exc) == "PreconditionFailed" or status_code(exc) == 412:
                raise TransientError(
                    f"Expected the object in {self.url} to keep ETag {info.etag} "
                    "during its download, found it replaced by a newer version."
                ) from exc
            raise translate(exc, action, self.url) from exc
        except BotoCoreError as exc:
            raise translate(exc, action, self.url) from exc

        body = response["Body"]
        written = 0
        try:
            with translated(action, self.url), open(path, "wb") as handle:
                for chunk in body.iter_chunks(_CHUNK):
                    written += len(chunk)
                    if max_bytes is not None and written > max_bytes:
                        raise ScanRejected(
                            f"Expected an object of at most {max_bytes} bytes, but "
                            f"its download passed {written} bytes.",
                            reason="too_large",
                        )
                    handle.write(chunk)
        finally:
            body.close()
        if written != info.size:
            raise TransientError(
                f"Expected {info.size} bytes from {self.url}, found the download "
                f"ended after {written} bytes."
            )

    def get_bytes(self, key: str) -> bytes:
        full = self.object_key(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=full)
            body = response["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()
        except ClientError as exc:
            if _is_missing_object(exc):
                raise ObjectNotFound(f"No object with this key in {self.url}.") from exc
            raise translate(exc, "read an object", self.url) from exc
        except BotoCoreError as exc:
            raise translate(exc, "read an object", self.url) from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with translated("list objects", self.url):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.prefix) :]
                    if key_problem(key) is not None:
                        # Folder markers ('a/') and keys no store could hold.
                        log.debug("object skipped in list store=%s", self.url)
                        continue
                    yield _info(key, item["Size"], item)

    # -- writes --------------------------------------------------------------

    def _put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        full = self.object_key(key)
        self._upload(
            lambda: self._client.upload_fileobj(
                io.BytesIO(data), self.bucket, full, Config=self._transfer
            )
        )
        return self._stored(key, len(data))

    def _put_file(self, key: str, path: Path) -> ObjectInfo:
        full = self.object_key(key)
        size = Path(path).stat().st_size
        self._upload(
            lambda: self._client.upload_file(
                str(path), self.bucket, full, Config=self._transfer
            )
        )
        return self._stored(key, size)

    def _upload(self, upload: Any) -> None:
        action = "upload an object"
        try:
            upload()
        except S3UploadFailedError as exc:
            # boto3 wraps the service's error; classify by the original.
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, BotoCoreError | ClientError):
                raise translate(cause, action, self.url) from exc
            raise TransientError(
                f"Could not {action} to {self.url}: expected the upload to "
                f"complete, found: {exc}"
            ) from exc
        except (BotoCoreError, ClientError) as exc:
            raise translate(exc, action, self.url) from exc

    def _stored(self, key: str, size: int) -> ObjectInfo:
        # The upload does not report the ETag and time S3 recorded; HEAD does,
        # and S3 reads are consistent with the write that just returned.
        info = self.head(key)
        log.debug(
            "object stored store=%s size=%d etag=%s", self.url, info.size, info.etag
        )
        if info.size != size:
            log.warning(
                "object replaced during upload store=%s expected_size=%d size=%d",
                self.url,
                size,
                info.size,
            )
        return info

    def delete(self, key: str) -> None:
        full = self.object_key(key)
        with translated("delete an object", self.url):
            self._client.delete_object(Bucket=self.bucket, Key=full)

    # -- internals -----------------------------------------------------------

    def _not_found(self) -> ObjectNotFound | ConfigError:
        # HEAD answers a bare 404 for a missing bucket and a missing key alike.
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _is_not_found(exc) or error_code(exc) == "NoSuchBucket":
                return ConfigError(
                    f"Expected the bucket {self.bucket!r} of {self.url} to exist, "
                    "found none."
                )
        except BotoCoreError:
            pass  # the object's 404 is still the best answer we have
        return ObjectNotFound(f"No object with this key in {self.url}.")


def check_bucket_name(bucket: str) -> None:
    """Raise ConfigError unless ``bucket`` is a valid S3 bucket name."""
    if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(
            "Expected an S3 bucket name of 3 to 63 lowercase letters, digits, "
            f"'.' and '-', starting and ending with a letter or digit; found "
            f"{bucket!r}."
        )


def normalize_prefix(prefix: str) -> str:
    """``'a/b'`` and ``'a/b/'`` both root a store at ``'a/b/'``; ``''`` at the top.

    Raises:
        ConfigError: the prefix has segments no key may have.
    """
    trimmed = prefix.strip("/")
    if not trimmed:
        return ""
    problem = key_problem(trimmed)
    if problem:
        raise ConfigError(
            f"Expected a key prefix of '/'-separated names, but the prefix {problem}."
        )
    return trimmed + "/"


def key_problem(key: str) -> str | None:
    """Say what is wrong with a store key, or None when it is acceptable.

    The same rules as :mod:`scanpipe.storage.local`, so both backends accept
    the same keys and a bucket can be mirrored onto a folder.
    """
    if not key:
        return "is empty"
    if "\x00" in key:
        return "contains a NUL character"
    if "\\" in key:
        return "contains a backslash"
    if key.startswith("/"):
        return "is absolute (starts with '/')"
    parts = key.split("/")
    if any(part in ("..", ".") for part in parts):
        return "has a '.' or '..' path segment"
    if any(part == "" for part in parts):
        return "has an empty path segment (a trailing or doubled '/')"
    return None


def _is_not_found(exc: ClientError) -> bool:
    return error_code(exc) in _NOT_FOUND_CODES or status_code(exc) == 404


def _is_missing_object(exc: ClientError) -> bool:
    # GET answers with a body, so a missing bucket names itself there.
    return _is_not_found(exc) and error_code(exc) != "NoSuchBucket"


def _info(key: str, size: int, response: dict[str, Any]) -> ObjectInfo:
    modified = response.get("LastModified")
    return ObjectInfo(
        key=key,
        size=int(size),
        etag=str(response.get("ETag", "")).strip('"'),
        last_modified=modified.timestamp() if isinstance(modified, datetime) else 0.0,
    )

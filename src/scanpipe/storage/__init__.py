"""Object stores: where scans come from and masks go to.

``open_store(url)`` turns a location into a store: ``file:///path`` or a plain
path gives a :class:`LocalStore` (a folder used as a bucket), and
``s3://bucket/prefix`` an :class:`~scanpipe.storage.s3.S3Store` (the prefix is
optional). boto3 is imported only when an S3 store is opened.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from scanpipe.errors import ConfigError
from scanpipe.storage.base import ObjectInfo, ObjectStore
from scanpipe.storage.local import LocalStore

__all__ = ["LocalStore", "ObjectInfo", "ObjectStore", "open_store"]


def open_store(url: str) -> ObjectStore:
    """Open the object store at ``url``.

    Raises:
        ConfigError: the URL names a scheme scanpipe cannot store objects in.
    """
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(
                f"Expected a file URL without a host (file:///path), "
                f"but found host {parsed.netloc!r} in {url!r}."
            )
        return LocalStore(Path(unquote(parsed.path)))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and url[1:3] in (":\\", ":/")):
        return LocalStore(Path(url))
    if parsed.scheme == "s3":
        return _open_s3(url)
    raise ConfigError(
        f"Expected a storage location as file:///path, s3://bucket/prefix or a "
        f"plain path, but found the scheme {parsed.scheme!r} in {url!r}."
    )


def _open_s3(url: str) -> ObjectStore:
    # Everything after the bucket is the prefix, taken literally: S3 keys may
    # hold '?', '#' and '%', which URL parsing would eat or decode.
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise ConfigError(
            f"Expected an S3 location of the form s3://bucket/prefix, but found no "
            f"bucket in {url!r}."
        )
    from scanpipe.storage.s3 import S3Store

    return S3Store(bucket, prefix)

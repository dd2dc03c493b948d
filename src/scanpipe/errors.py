"""The errors scanpipe raises, split by what the caller should do about them.

::

    ScanpipeError
    ├── ConfigError            fix the configuration; nothing will work until then
    │   └── ModelError         a model spec or model folder is unusable
    ├── TransientError         retry later, with backoff (I/O hiccup, busy backend)
    ├── PermanentError         give up on this input: it goes to the dead-letter queue
    │   ├── ScanRejected       the scan file itself is invalid (bad header, bomb, ...)
    │   ├── InvalidKey         an object key that cannot map safely onto storage
    │   └── ObjectNotFound     the object was deleted before it was processed
    └── ReceiptHandleInvalid   a stale or unknown receipt handle (already deleted,
                               or the message was redelivered to someone else)

Adapters translate third-party errors (sqlite3, nibabel, boto3) into this tree
at their boundary with ``raise ... from exc``, so the worker decides on
retry-or-dead-letter by class alone. Messages are full sentences that say what
was expected and what was found.
"""

from __future__ import annotations


class ScanpipeError(Exception):
    """Root of every error scanpipe raises on purpose."""


class ConfigError(ScanpipeError):
    """A setting, URL or file given by the user is invalid."""


class ModelError(ConfigError):
    """A model spec or model folder cannot be loaded; the worker refuses to start."""


class TransientError(ScanpipeError):
    """A failure that may go away by itself; the message is retried with backoff."""


class PermanentError(ScanpipeError):
    """A failure that retrying cannot fix; the message goes to the dead-letter queue.

    ``reason`` is a short stable code (``not_nifti``, ``gzip_bomb``, ...) that
    dashboards and ``scanpipe dlq list`` group by; the message is the sentence
    a person reads.
    """

    reason: str = "permanent_failure"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ScanRejected(PermanentError):
    """The scan file is not a valid single 3D NIfTI volume within the limits."""

    reason = "invalid_scan"


class InvalidKey(PermanentError):
    """An object key would escape its bucket or cannot be stored safely."""

    reason = "invalid_key"


class ObjectNotFound(PermanentError):
    """The object named by an event does not exist (any more)."""

    reason = "object_not_found"


class ReceiptHandleInvalid(ScanpipeError):
    """A receipt handle that no longer names a message this caller holds."""

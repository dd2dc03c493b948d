"""Logging set up once, by the CLI: one greppable key=value line per event.

Every module logs through ``logging.getLogger(__name__)`` with lazy %-args;
this module only decides the format and the level. Lines look like::

    2026-12-03T10:00:00.123Z level=INFO logger=scanpipe.worker.loop pid=7 scan done
    key='a.nii.gz' voxels=1572864 seconds=1.93 ...
"""

from __future__ import annotations

import logging
import sys
import time

_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s pid=%(process)d %(message)s"


class _UTCFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def configure(level: str = "INFO") -> None:
    """Send scanpipe's logs to stderr at ``level``; quiet noisy libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_UTCFormatter(_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "nibabel"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

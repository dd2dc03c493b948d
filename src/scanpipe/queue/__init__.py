"""Message queues with SQS semantics, opened from a URL.

``open_queue`` maps a location onto a backend::

    sqlite:///var/lib/scanpipe/queue.db                 embedded, queue 'scans'
    sqlite:///var/lib/scanpipe/queue.db?name=scans&visibility_timeout=30
    sqlite:///var/lib/scanpipe/queue.db?max_receive_count=3
    queue.db, /data/queue.sqlite                        embedded, a plain path
    https://sqs.eu-west-1.amazonaws.com/123456789012/scans   Amazon SQS
    http://127.0.0.1:5000/123456789012/scans            an SQS-compatible server

The embedded queue (``SqliteQueue``) is shared by every process on one
machine. The query parameters, all optional, are ``name`` (default
``scans``), ``visibility_timeout`` in seconds (default 30) and
``max_receive_count`` (default 3; 0 never dead-letters). An SQS queue
(``SqsQueue``) takes its settings from the queue's own attributes; see
:mod:`scanpipe.queue.sqs`.
"""

from __future__ import annotations

import os
import re
from typing import TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from scanpipe.errors import ConfigError
from scanpipe.queue.base import Message, Queue, QueueDepth
from scanpipe.queue.sqlite import SqliteQueue

__all__ = ["Message", "Queue", "QueueDepth", "SqliteQueue", "open_queue"]

DEFAULT_NAME = "scans"
DEFAULT_VISIBILITY_TIMEOUT = 30.0
DEFAULT_MAX_RECEIVE_COUNT = 3

_ACCEPTED_FORMS = (
    "sqlite:///absolute/path/queue.db (optionally with ?name=...&"
    "visibility_timeout=...&max_receive_count=...), or a file path ending in "
    ".db or .sqlite, or an SQS queue URL "
    "(https://sqs.<region>.amazonaws.com/<account>/<name>)"
)
_SQS_HOST = re.compile(r"sqs\.[a-z0-9-]+\.amazonaws\.com(\.cn)?")
_SQS_PATH = re.compile(r"/[^/]+/[A-Za-z0-9_-]{1,80}(\.fifo)?")
_PATH_SUFFIXES = (".db", ".sqlite")


def open_queue(url: str) -> Queue:
    """Open the queue at ``url``; see the module docstring for the forms.

    Raises:
        ConfigError: the URL has none of the accepted forms, or a query
            parameter is unknown or out of range.
    """
    if "://" not in url:
        if url.lower().endswith(_PATH_SUFFIXES):
            return SqliteQueue(
                os.path.expanduser(url),
                name=DEFAULT_NAME,
                visibility_timeout=DEFAULT_VISIBILITY_TIMEOUT,
                max_receive_count=DEFAULT_MAX_RECEIVE_COUNT,
                url=url,
            )
        raise ConfigError(
            f"Expected a queue URL of the form {_ACCEPTED_FORMS}; found {url!r}."
        )

    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return _open_sqlite(url)

    # --- SQS ---------------------------------------------------------------
    # https://sqs.<region>.amazonaws.com/<account>/<name>, or any http(s) URL
    # with the path /<account>/<name>: an SQS-compatible server or endpoint.
    if parts.scheme in ("http", "https") and (
        _SQS_HOST.fullmatch(parts.hostname or "") or _SQS_PATH.fullmatch(parts.path)
    ):
        # Imported here so that the embedded form never loads boto3.
        from scanpipe.queue.sqs import SqsQueue

        return SqsQueue(url)
    # -------------------------------------------------------------------------

    raise ConfigError(
        f"Expected a queue URL of the form {_ACCEPTED_FORMS}; found {url!r}."
    )


def _open_sqlite(url: str) -> SqliteQueue:
    parts = urlsplit(url)
    path = unquote(parts.path)
    if parts.netloc or not path.startswith("/") or parts.fragment:
        raise ConfigError(
            "Expected an SQLite queue URL with an absolute path, such as "
            f"sqlite:///var/lib/scanpipe/queue.db; found {url!r}."
        )

    settings: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in ("name", "visibility_timeout", "max_receive_count"):
            raise ConfigError(
                f"Unknown queue URL parameter {key!r} in {url!r}; expected only "
                "name, visibility_timeout and max_receive_count."
            )
        if key in settings:
            raise ConfigError(
                f"Queue URL parameter {key} is given twice in {url!r}; "
                "expected it at most once."
            )
        settings[key] = value

    return SqliteQueue(
        path,
        name=settings.get("name", DEFAULT_NAME),
        visibility_timeout=_number(
            settings, "visibility_timeout", float, DEFAULT_VISIBILITY_TIMEOUT
        ),
        max_receive_count=_number(
            settings, "max_receive_count", int, DEFAULT_MAX_RECEIVE_COUNT
        ),
        url=url,
    )


_Number = TypeVar("_Number", int, float)


def _number(
    settings: dict[str, str], key: str, kind: type[_Number], default: _Number
) -> _Number:
    """Parse one numeric query parameter; ranges are checked by the queue."""
    if key not in settings:
        return default
    text = settings[key]
    try:
        value = kind(text)
    except ValueError as exc:
        what = "a whole number" if kind is int else "a number of seconds"
        raise ConfigError(
            f"Queue URL parameter {key} must be {what}; found {text!r}."
        ) from exc
    if value < 0 or value != value:
        raise ConfigError(
            f"Queue URL parameter {key} must not be negative; found {text!r}."
        )
    return value

"""``scanpipe events inspect``: what the worker would make of queue messages.

For checking a bucket notification or a captured message by hand: it prints,
one JSON object per line, every object a message announces (``bucket``,
``key``, ``size``, ``etag``, ``version_id``, ``sequencer``) or ``skipped`` with
the reason, exactly as :func:`scanpipe.events.parse_message` reads them in the
worker.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import click

from scanpipe.errors import PermanentError, ScanpipeError
from scanpipe.events import parse_message


@click.group()
def events() -> None:
    """Read S3 event notifications as the worker reads them."""


@events.command()
@click.argument("source", type=click.File("r", encoding="utf-8"))
def inspect(source: Any) -> None:
    """Print what each message in SOURCE (a file, or - for stdin) yields.

    SOURCE holds one message body (S3 notification, SNS envelope, EventBridge
    event), one body per line, or the output of ``aws sqs receive-message``.
    A message that is not an event prints an ``error`` line; the exit status
    is then 1, after every other message has been printed.
    """
    text = source.read()
    malformed = 0
    for number, body in enumerate(_message_bodies(text), start=1):
        try:
            parsed = parse_message(body)
        except PermanentError as exc:
            malformed += 1
            _emit({"message": number, "error": str(exc), "reason": exc.reason})
            continue
        for item in parsed:
            _emit({"message": number, **item.to_json()})
    if malformed:
        raise ScanpipeError(
            f"{malformed} message(s) in {source.name} are not S3 event notifications"
        )


def _message_bodies(text: str) -> Iterator[str]:
    """The message bodies in ``text``, in order.

    One JSON document is one message, unless it is a ReceiveMessage response
    (``Messages[].Body``); text that is not one document is read as one body
    per non-empty line, so a malformed line is reported on its own.
    """
    if not text.strip():
        raise ScanpipeError(
            "Expected at least one message (a JSON event notification), "
            "found empty input."
        )
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        yield from (line for line in text.splitlines() if line.strip())
        return
    if isinstance(doc, dict) and isinstance(doc.get("Messages"), list):
        for message in doc["Messages"]:
            body = message.get("Body") if isinstance(message, dict) else None
            yield body if isinstance(body, str) else json.dumps(message)
        return
    yield text


def _emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
    sys.stdout.flush()

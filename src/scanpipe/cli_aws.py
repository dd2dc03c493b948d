"""``scanpipe aws``: commands for the cloud form's infrastructure in development.

Kept apart from :mod:`scanpipe.cli` so that the embedded form's commands
never import boto3; the library does the work in :mod:`scanpipe.cloud`.
"""

from __future__ import annotations

import json

import click

from scanpipe.cloud import DEFAULT_MAX_RECEIVE_COUNT, DEFAULT_VISIBILITY_TIMEOUT


@click.group()
def aws() -> None:
    """Set up S3 buckets and SQS queues on any endpoint (AWS_ENDPOINT_URL)."""


@aws.command()
@click.option("--input-bucket", required=True, help="Bucket scans are uploaded to.")
@click.option("--output-bucket", required=True, help="Bucket masks are written to.")
@click.option("--queue", "queue_name", required=True, help="Name of the SQS queue.")
@click.option("--prefix", default=None, help="Notify only for keys with this prefix.")
@click.option("--suffix", default=None, help="Notify only for keys with this suffix.")
@click.option(
    "--max-receive-count",
    default=DEFAULT_MAX_RECEIVE_COUNT,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Receives before a message moves to the dead-letter queue.",
)
@click.option(
    "--visibility-timeout",
    default=DEFAULT_VISIBILITY_TIMEOUT,
    show_default=True,
    type=click.IntRange(0, 43200),
    help="Seconds a received message stays hidden from other workers.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bootstrap(
    input_bucket: str,
    output_bucket: str,
    queue_name: str,
    prefix: str | None,
    suffix: str | None,
    max_receive_count: int,
    visibility_timeout: int,
    as_json: bool,
) -> None:
    """Create the buckets, the queue with its dead-letter queue and the S3
    notification; running it again is safe. Production uses Terraform."""
    from scanpipe.cloud.bootstrap import bootstrap as create_stack

    result = create_stack(
        input_bucket,
        output_bucket,
        queue_name,
        prefix=prefix,
        suffix=suffix,
        max_receive_count=max_receive_count,
        visibility_timeout=visibility_timeout,
    )
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
        return
    for name in (
        "input_url",
        "output_url",
        "queue_url",
        "dead_letter_queue_url",
        "region",
    ):
        click.echo(f"{name:22} {result[name]}")
    click.echo(
        "\nrun a worker with:\n  scanpipe worker "
        f"--queue {result['queue_url']} --input {result['input_url']} "
        f"--output {result['output_url']}"
    )

"""`scanpipe aws bootstrap` prints what it created, for people and for scripts."""

from __future__ import annotations

import json

from click.testing import CliRunner

from scanpipe.cli_aws import aws
from tests.aws import make_name


def test_bootstrap_prints_one_json_object_with_the_urls(
    aws_env: dict[str, str],
) -> None:
    input_bucket, output_bucket, queue = (
        make_name("input"),
        make_name("output"),
        make_name("scans"),
    )
    arguments = ["bootstrap", "--input-bucket", input_bucket]
    arguments += ["--output-bucket", output_bucket, "--queue", queue, "--json"]

    result = CliRunner().invoke(aws, arguments, catch_exceptions=False)

    assert result.exit_code == 0
    doc = json.loads(result.output)
    assert doc["queue_url"].endswith(f"/{queue}")
    assert doc["dead_letter_queue_url"].endswith(f"/{queue}-dlq")
    assert doc["input_url"] == f"s3://{input_bucket}"
    assert doc["output_url"] == f"s3://{output_bucket}"


def test_bootstrap_tells_a_person_how_to_start_a_worker(
    aws_env: dict[str, str],
) -> None:
    queue = make_name("scans")
    arguments = ["bootstrap", "--input-bucket", make_name("input")]
    arguments += ["--output-bucket", make_name("output"), "--queue", queue]
    arguments += ["--prefix", "ct/", "--suffix", ".nii.gz"]

    result = CliRunner().invoke(aws, arguments, catch_exceptions=False)

    assert result.exit_code == 0
    assert "scanpipe worker --queue http" in result.output
    assert f"/{queue} --input s3://" in result.output
    assert aws_env["AWS_SECRET_ACCESS_KEY"] not in result.output

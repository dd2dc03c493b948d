"""What the SQS queue does beyond the shared contract: URLs, attributes, errors."""

from __future__ import annotations

import pytest

from scanpipe.cloud.bootstrap import create_queue
from scanpipe.cloud.clients import make_client
from scanpipe.errors import ConfigError, ReceiptHandleInvalid, TransientError
from scanpipe.queue import open_queue
from scanpipe.queue.base import DETAIL_ATTRIBUTE, REASON_ATTRIBUTE
from scanpipe.queue.sqs import SqsQueue, parse_queue_url
from tests.aws import MotoServer, make_name


def make_sqs_queue(visibility_timeout: int = 45, max_receive_count: int = 4) -> str:
    queues = create_queue(
        make_client("sqs"),
        make_name("queue"),
        visibility_timeout=visibility_timeout,
        max_receive_count=max_receive_count,
    )
    return queues.queue_url


def test_open_queue_opens_a_queue_url_with_the_queues_own_settings(
    aws_env: dict[str, str],
) -> None:
    url = make_sqs_queue(visibility_timeout=45, max_receive_count=4)

    queue = open_queue(url)

    assert isinstance(queue, SqsQueue)
    assert queue.url == url
    assert queue.visibility_timeout == 45
    assert queue.max_receive_count == 4
    dlq = queue.dead_letter_queue()
    assert dlq is not None
    assert dlq.url == url + "-dlq"
    assert dlq.max_receive_count == 0
    assert dlq.dead_letter_queue() is None


def test_a_queue_without_a_redrive_policy_has_no_dead_letter_queue(
    aws_env: dict[str, str],
) -> None:
    queue = SqsQueue(make_sqs_queue(max_receive_count=0))

    assert queue.max_receive_count == 0
    assert queue.dead_letter_queue() is None
    assert queue.redrive() == 0


def test_opening_a_queue_that_does_not_exist_says_so(
    aws_env: dict[str, str],
) -> None:
    url = f"{aws_env['AWS_ENDPOINT_URL']}/123456789012/{make_name('missing')}"

    with pytest.raises(ConfigError, match="found none"):
        open_queue(url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://sqs.eu-west-1.amazonaws.com/123456789012/scans",
            ("123456789012", "scans", "eu-west-1", None),
        ),
        (
            "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/scans",
            ("123456789012", "scans", "cn-north-1", None),
        ),
        (
            "https://eu-west-1.queue.amazonaws.com/123456789012/scans",
            ("123456789012", "scans", "eu-west-1", None),
        ),
        (
            "http://127.0.0.1:4566/000000000000/scans_2",
            ("000000000000", "scans_2", None, "http://127.0.0.1:4566"),
        ),
    ],
    ids=["aws", "aws-china", "aws-legacy", "custom-endpoint"],
)
def test_a_queue_url_names_account_name_region_and_endpoint(
    monkeypatch: pytest.MonkeyPatch, url: str, expected: tuple[str, ...]
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_SQS", raising=False)

    assert parse_queue_url(url) == expected


def test_an_endpoint_from_the_environment_wins_over_the_queue_url_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://moto:5000")

    *_, endpoint = parse_queue_url("http://localhost:5000/123456789012/scans")

    assert endpoint is None


@pytest.mark.parametrize(
    ("url", "mentioned"),
    [
        ("https://sqs.eu-west-1.amazonaws.com/scans", "queue URL"),
        ("https://sqs.eu-west-1.amazonaws.com/123/bad.name", "queue URL"),
        ("https://sqs.eu-west-1.amazonaws.com/123456789012/scans.fifo", "FIFO"),
    ],
    ids=["no-account", "invalid-name", "fifo"],
)
def test_open_queue_rejects_urls_it_cannot_use(url: str, mentioned: str) -> None:
    with pytest.raises(ConfigError, match=mentioned):
        open_queue(url)


@pytest.mark.parametrize("handle", ["", "not-a-handle"], ids=["empty", "garbage"])
def test_a_handle_sqs_refuses_is_receipt_handle_invalid(
    aws_env: dict[str, str], handle: str
) -> None:
    queue = SqsQueue(make_sqs_queue())

    with pytest.raises(ReceiptHandleInvalid):
        queue.delete(handle)
    with pytest.raises(ReceiptHandleInvalid):
        queue.change_visibility(handle, 10)


def test_peek_releases_what_it_read_and_reports_counts_before_the_peek(
    aws_env: dict[str, str],
) -> None:
    queue = SqsQueue(make_sqs_queue(max_receive_count=0))
    sent = [queue.send(f"scan {n}") for n in range(12)]

    peeked = queue.peek()

    assert sorted(m.message_id for m in peeked) == sorted(sent)
    assert {m.receive_count for m in peeked} == {0}
    assert {m.receipt_handle for m in peeked} == {""}
    assert queue.depth().visible == 12


def test_peek_of_the_dead_letter_queue_tells_why_a_message_is_there(
    aws_env: dict[str, str],
) -> None:
    queue = SqsQueue(make_sqs_queue(max_receive_count=1))
    queue.send("poison")
    [message] = queue.receive(1, wait_seconds=5)
    queue.change_visibility(message.receipt_handle, 0)
    assert queue.receive(1, wait_seconds=1) == []

    dlq = queue.dead_letter_queue()
    assert dlq is not None
    [dead] = dlq.peek()

    assert dead.attributes[REASON_ATTRIBUTE] == "max_receive_count"
    assert dead.attributes[DETAIL_ATTRIBUTE] == "received 1 times, maxReceiveCount is 1"
    assert dead.receive_count == 1


def test_an_unreachable_endpoint_is_a_transient_error(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = MotoServer().start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    queue = SqsQueue(make_sqs_queue())
    queue.send("scan")
    [message] = queue.receive(1, wait_seconds=5)
    server.stop()

    with pytest.raises(TransientError, match="endpoint"):
        queue.receive(1, wait_seconds=1)
    with pytest.raises(TransientError):
        queue.delete(message.receipt_handle)
    with pytest.raises(TransientError):
        queue.depth()

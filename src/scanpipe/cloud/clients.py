"""boto3 clients for the cloud backends, and the translation of their errors.

Where the settings come from:

- **Credentials**: only boto3's default chain (environment, shared profile,
  web identity as IRSA sets it up, EKS Pod Identity or the instance role).
  scanpipe's own configuration never takes access keys, and nothing here
  logs or returns them.
- **Region**: ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` or the profile; an SQS
  queue URL on an AWS host names its own region.
- **Endpoint**: ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3`` /
  ``AWS_ENDPOINT_URL_SQS``), which botocore reads itself, for MinIO, Ceph,
  moto or a VPC endpoint. With a custom S3 endpoint buckets are addressed
  by path (``http://host/bucket/key``), which every S3-compatible server
  understands; virtual-host addressing needs wildcard DNS.
- **Retries**: botocore's ``standard`` mode, up to :data:`MAX_ATTEMPTS`
  tries with jittered exponential backoff, for throttling, 5xx and
  connection errors; ``AWS_RETRY_MODE`` and ``AWS_MAX_ATTEMPTS`` override.

Whatever still fails after the retries is translated by :func:`translate`:
throttling, 5xx, timeouts and lost connections become
:class:`~scanpipe.errors.TransientError` (the worker retries the message
later); missing credentials or region, denied access and other client
errors become :class:`~scanpipe.errors.ConfigError`. Callers map the codes
that mean something to them (``NoSuchKey``, ``ReceiptHandleIsInvalid``)
before falling back to it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import boto3
from botocore import exceptions as boto_errors
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from scanpipe.errors import ConfigError, ScanpipeError, TransientError

#: Tries per request (the first one included) before an error is raised.
MAX_ATTEMPTS = 5
#: A refused or silent endpoint should fail fast and be retried, not hang.
CONNECT_TIMEOUT_SECONDS = 5.0
#: Longer than SQS's 20 s long poll, so a poll that waits is not cut off.
READ_TIMEOUT_SECONDS = 60.0

#: Error codes of throttling and of server-side failures: worth a retry later.
TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "SlowDown",
        "EC2ThrottledException",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "InternalError",
        "ServiceUnavailable",
        "KMS.ThrottlingException",
        "AWS.SimpleQueueService.RequestThrottled",
    }
)
#: Expired temporary credentials: the default chain refreshes them.
_EXPIRED_CODES = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired"})


def make_client(
    service: str, *, region: str | None = None, endpoint_url: str | None = None
) -> Any:
    """A boto3 client for ``service`` with scanpipe's timeouts and retries.

    Args:
        service: ``"s3"`` or ``"sqs"``.
        region: overrides the region from the environment or profile.
        endpoint_url: overrides the endpoint; None lets botocore choose
            (``AWS_ENDPOINT_URL*`` or the service's AWS endpoint).

    Raises:
        ConfigError: boto3 cannot set up a client (no region for SQS, a
            broken profile).
    """
    options: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "read_timeout": READ_TIMEOUT_SECONDS,
        "retries": {
            "mode": os.environ.get("AWS_RETRY_MODE", "standard"),
            "max_attempts": _max_attempts(),
        },
    }
    if service == "s3" and (endpoint_url or custom_endpoint("s3")):
        options["s3"] = {"addressing_style": "path"}
    try:
        return boto3.session.Session().client(
            service,
            region_name=region,
            endpoint_url=endpoint_url,
            config=Config(**options),
        )
    except (BotoCoreError, ValueError) as exc:
        raise ConfigError(
            f"Expected boto3 to set up an {service.upper()} client from the "
            f"environment (region, profile, endpoint), found: {exc}"
        ) from exc


def custom_endpoint(service: str) -> str | None:
    """The endpoint set for ``service`` in the environment, if any."""
    specific = f"AWS_ENDPOINT_URL_{service.upper()}"
    return os.environ.get(specific) or os.environ.get("AWS_ENDPOINT_URL") or None


def error_code(exc: ClientError) -> str:
    """The error code of a ClientError ('' when the service sent none)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def status_code(exc: ClientError) -> int:
    """The HTTP status of a ClientError (0 when unknown)."""
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def translate(exc: Exception, action: str, where: str) -> ScanpipeError:
    """Turn a botocore error into the error class that says what to do next.

    Args:
        exc: the error botocore raised (after its own retries).
        action: what was being done, as a verb phrase ("read the object").
        where: the resource, as a person would name it (a URL).
    """
    if isinstance(exc, ScanpipeError):
        return exc
    if isinstance(
        exc, boto_errors.NoCredentialsError | boto_errors.PartialCredentialsError
    ):
        return ConfigError(
            f"Could not {action} in {where}: expected AWS credentials from boto3's "
            "default chain (IRSA or Pod Identity, AWS_* environment variables, a "
            "profile or an instance role), found none that are complete."
        )
    if isinstance(exc, boto_errors.NoRegionError):
        return ConfigError(
            f"Could not {action} in {where}: expected an AWS region in AWS_REGION, "
            "AWS_DEFAULT_REGION or the profile, found none."
        )
    if isinstance(
        exc,
        boto_errors.ConnectionError
        | boto_errors.HTTPClientError
        | boto_errors.ResponseStreamingError
        | boto_errors.CredentialRetrievalError,
    ):
        return TransientError(
            f"Could not {action} in {where}: expected the endpoint to answer, "
            f"found: {exc}"
        )
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = status_code(exc)
        message = exc.response.get("Error", {}).get("Message") or "no message"
        found = f"{code or status} ({message})"
        if code in TRANSIENT_CODES or code in _EXPIRED_CODES or status >= 500:
            return TransientError(
                f"Could not {action} in {where}: expected the service to accept "
                f"the request, found it busy or failing: {found}."
            )
        if status in (401, 403) or "AccessDenied" in code:
            return ConfigError(
                f"Could not {action} in {where}: expected the credentials to be "
                f"allowed to, found access denied: {found}. Check the IAM policy "
                "of the role the worker runs as."
            )
        return ConfigError(
            f"Could not {action} in {where}: expected the request to succeed, "
            f"found {found}."
        )
    if isinstance(exc, BotoCoreError):
        return TransientError(
            f"Could not {action} in {where}: expected the request to complete, "
            f"found: {exc}"
        )
    return ConfigError(f"Could not {action} in {where}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def translated(action: str, where: str) -> Iterator[None]:
    """Run the block, translating any botocore error with :func:`translate`."""
    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise translate(exc, action, where) from exc


def _max_attempts() -> int:
    text = os.environ.get("AWS_MAX_ATTEMPTS")
    if not text:
        return MAX_ATTEMPTS
    try:
        value = int(text)
    except ValueError as exc:
        raise ConfigError(
            f"AWS_MAX_ATTEMPTS must be a whole number of tries; found {text!r}."
        ) from exc
    if value < 1:
        raise ConfigError(f"AWS_MAX_ATTEMPTS must be 1 or more; found {value}.")
    return value

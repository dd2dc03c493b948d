"""A real S3 and SQS API for the tests: moto's server, in its own process.

The server listens on 127.0.0.1 on a free port and speaks HTTP, as AWS does;
boto3 reaches it through ``AWS_ENDPOINT_URL``, so the code under test runs
exactly as against AWS. It runs as a subprocess rather than a thread so that
it has its own interpreter (the tests' warnings-are-errors filter does not
reach it) and so a test can stop it and start it again to play an outage.
Its state is in memory: a restarted server starts empty.

``moto_server`` is one server for the whole session; ``aws_env`` points the
test process at it with dummy credentials, and returns the environment a
subprocess (a worker) needs to do the same. Each test names its own buckets
and queues, so tests never see each other's resources.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Credentials moto accepts; they exist only in the tests' environment.
DUMMY_ACCESS_KEY_ID = "AKIATESTSCANPIPE0000"
DUMMY_SECRET_ACCESS_KEY = "scanpipe-test-secret-never-logged"
REGION = "us-east-1"

_START_TIMEOUT_SECONDS = 30.0


class MotoServer:
    """moto's server as a subprocess on ``127.0.0.1:port``."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> MotoServer:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1"]
        command += ["-p", str(self.port)]
        log_path = self.log_path or Path(os.devnull)
        # The child keeps its own copy of the descriptor.
        with open(log_path, "ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while not self.is_up():
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"moto's server exited with {self._process.returncode} before "
                    f"it listened on port {self.port}."
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"moto's server did not answer on port {self.port} within "
                    f"{_START_TIMEOUT_SECONDS:.0f} s."
                )
            time.sleep(0.05)
        return self

    def is_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                return True
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def aws_environment(endpoint: str) -> dict[str, str]:
    """The variables that point boto3 at ``endpoint`` and nothing else."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_ACCESS_KEY,
        # No profile, config file or instance metadata may leak in.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


#: Variables that would make boto3 reach past the test endpoint.
_CLEARED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_SQS",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One moto server for the session; yields its endpoint URL."""
    log_path = tmp_path_factory.mktemp("moto") / "server.log"
    server = MotoServer(log_path=log_path).start()
    yield server.endpoint
    server.stop()


@pytest.fixture
def aws_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point boto3 in this process at the session's moto server.

    Returns the full environment for a subprocess that should do the same.
    """
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    variables = aws_environment(moto_server)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return {
        **{k: v for k, v in os.environ.items() if k not in _CLEARED},
        **variables,
    }


def make_name(kind: str) -> str:
    """A bucket or queue name no other test uses (valid for both)."""
    return f"{kind}-{uuid.uuid4().hex[:12]}"

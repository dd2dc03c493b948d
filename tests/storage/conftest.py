"""Store backends for the shared contract suite; each test runs against every one.

``make_store()`` opens a fresh, empty store on the backend under test; what a
backend needs (folders, a server, credentials, buckets) stays in here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from scanpipe.storage.base import ObjectStore
from scanpipe.storage.local import LocalStore

MakeStore = Callable[[], ObjectStore]


def make_s3_store() -> ObjectStore:
    """A store under a prefix of a new bucket on the test endpoint."""
    from scanpipe.cloud.clients import make_client
    from scanpipe.storage.s3 import S3Store
    from tests.aws import make_name

    bucket = make_name("bucket")
    make_client("s3").create_bucket(Bucket=bucket)
    # A prefix, so that every contract test also checks the key mapping.
    return S3Store(bucket, "store/root/")


@pytest.fixture(params=["local", "s3"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
    counter = iter(range(1000))
    if request.param == "s3":
        request.getfixturevalue("aws_env")

    def make() -> ObjectStore:
        if request.param == "local":
            return LocalStore(tmp_path / f"bucket-{next(counter)}")
        if request.param == "s3":
            return make_s3_store()
        raise AssertionError(request.param)

    return make

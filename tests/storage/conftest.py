"""Store backends for the shared contract suite; each test runs against every one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from scanpipe.storage.base import ObjectStore
from scanpipe.storage.local import LocalStore

MakeStore = Callable[[], ObjectStore]


@pytest.fixture(params=["local"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
    counter = iter(range(1000))

    def make() -> ObjectStore:
        if request.param == "local":
            return LocalStore(tmp_path / f"bucket-{next(counter)}")
        raise AssertionError(request.param)

    return make

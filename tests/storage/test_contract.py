"""The object store contract: every backend behaves as one S3 bucket."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from scanpipe.errors import InvalidKey, ObjectNotFound, ScanRejected
from scanpipe.storage.base import ObjectInfo, ObjectStore
from tests.storage.conftest import MakeStore

KEYS = [
    "scan.nii.gz",
    "nested/deeper/scan.nii.gz",
    "with space/a b.nii.gz",
    "plus+and%percent.nii.gz",
    "unicodé/頭部/スキャン.nii.gz",
]


@pytest.mark.parametrize(
    "key", KEYS, ids=["flat", "nested", "space", "plus", "unicode"]
)
def test_put_then_head_and_get_round_trip(make_store: MakeStore, key: str) -> None:
    store = make_store()
    data = f"content of {key}".encode()

    info = store.put_bytes(key, data)

    assert info.key == key
    assert info.size == len(data)
    assert info.etag == hashlib.md5(data).hexdigest()
    assert store.head(key) == ObjectInfo(key, len(data), info.etag, info.last_modified)
    assert store.get_bytes(key) == data


def test_put_file_and_download_copy_the_content(
    make_store: MakeStore, tmp_path: Path
) -> None:
    store = make_store()
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 5000)

    info = store.put_file("a/b.bin", source)
    dest = tmp_path / "dest.bin"
    got = store.download("a/b.bin", dest)

    assert dest.read_bytes() == source.read_bytes()
    assert got.etag == info.etag == hashlib.md5(source.read_bytes()).hexdigest()


def test_download_refuses_objects_over_the_size_cap(
    make_store: MakeStore, tmp_path: Path
) -> None:
    store = make_store()
    store.put_bytes("big", b"x" * 1000)

    with pytest.raises(ScanRejected, match="at most 999 bytes") as caught:
        store.download("big", tmp_path / "out", max_bytes=999)

    assert caught.value.reason == "too_large"
    assert not (tmp_path / "out").exists()


def test_missing_objects_raise_object_not_found(
    make_store: MakeStore, tmp_path: Path
) -> None:
    store = make_store()

    with pytest.raises(ObjectNotFound):
        store.head("nothing.nii.gz")
    with pytest.raises(ObjectNotFound):
        store.download("nothing.nii.gz", tmp_path / "x")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("nothing.nii.gz")
    assert not store.exists("nothing.nii.gz")


def test_list_filters_by_prefix_in_key_order(make_store: MakeStore) -> None:
    store = make_store()
    for key in ["b/2", "a/1", "b/1", "c"]:
        store.put_bytes(key, key.encode())

    assert [o.key for o in store.list()] == ["a/1", "b/1", "b/2", "c"]
    assert [o.key for o in store.list("b/")] == ["b/1", "b/2"]
    assert list(store.list("zzz")) == []


def test_overwrite_replaces_content_and_etag(make_store: MakeStore) -> None:
    store = make_store()
    first = store.put_bytes("k", b"one")
    second = store.put_bytes("k", b"two")

    assert first.etag != second.etag
    assert store.get_bytes("k") == b"two"


def test_delete_removes_and_tolerates_missing(make_store: MakeStore) -> None:
    store = make_store()
    store.put_bytes("k", b"v")

    store.delete("k")
    store.delete("k")

    assert not store.exists("k")


def test_put_listeners_see_every_write(make_store: MakeStore, tmp_path: Path) -> None:
    store = make_store()
    seen: list[tuple[ObjectStore, ObjectInfo]] = []
    store.add_put_listener(lambda s, info: seen.append((s, info)))
    source = tmp_path / "f"
    source.write_bytes(b"file")

    store.put_bytes("a", b"bytes")
    store.put_file("b", source)

    assert [(s is store, info.key) for s, info in seen] == [(True, "a"), (True, "b")]


BAD_KEYS = {
    "empty": "",
    "parent": "../escape.nii.gz",
    "inner-parent": "a/../../escape",
    "absolute": "/etc/passwd",
    "nul": "a\x00b",
    "backslash": "a\\..\\b",
    "dot": "./a",
    "double-slash": "a//b",
}


@pytest.mark.parametrize("key", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_keys_that_could_escape_are_rejected(make_store: MakeStore, key: str) -> None:
    store = make_store()

    with pytest.raises(InvalidKey, match="Expected an object key"):
        store.put_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        store.head(key)

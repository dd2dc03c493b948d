"""What only the folder-backed store has to get right: paths, links, atomicity."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scanpipe.errors import ConfigError, InvalidKey
from scanpipe.storage import open_store
from scanpipe.storage.local import TMP_DIR, LocalStore


def test_a_symlink_leading_outside_the_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not yours")
    store = LocalStore(tmp_path / "bucket")
    os.symlink(outside, store.root / "link")

    with pytest.raises(InvalidKey, match="symbolic link"):
        store.get_bytes("link/secret")
    with pytest.raises(InvalidKey, match="symbolic link"):
        store.put_bytes("link/new", b"x")
    assert not (outside / "new").exists()


def test_a_symlink_inside_the_root_is_followed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "bucket")
    store.put_bytes("real/a", b"x")
    os.symlink(store.root / "real", store.root / "alias")

    assert store.get_bytes("alias/a") == b"x"


def test_writes_leave_no_temporary_files_and_are_never_listed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "bucket")
    store.put_bytes("a", b"x" * 10)

    assert list((store.root / TMP_DIR).iterdir()) == []
    assert [o.key for o in store.list()] == ["a"]
    with pytest.raises(InvalidKey, match="private folder"):
        store.put_bytes(f"{TMP_DIR}/x", b"x")


def test_a_failed_write_leaves_the_old_object_intact(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "bucket")
    store.put_bytes("k", b"old")

    class Boom(Exception):
        pass

    source = tmp_path / "src"
    source.write_bytes(b"new content")
    original_open = open

    def failing_read() -> None:
        with (
            original_open(source, "rb"),
            store._atomic_writer(store.path_for("k")) as w,
        ):
            w.write(b"partial")
            raise Boom

    with pytest.raises(Boom):
        failing_read()

    assert store.get_bytes("k") == b"old"
    assert list((store.root / TMP_DIR).iterdir()) == []


def test_etag_reflects_content_written_by_other_processes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "bucket")
    first = store.put_bytes("k", b"one")
    (store.root / "k").write_bytes(b"changed outside")
    os.utime(store.root / "k", ns=(1, 1))

    assert store.head("k").etag != first.etag


@pytest.mark.parametrize(
    "url",
    ["s3x://bucket", "http://example.com/x", "file://host/path"],
    ids=["unknown-scheme", "http", "file-with-host"],
)
def test_open_store_rejects_locations_it_cannot_serve(url: str) -> None:
    with pytest.raises(ConfigError, match="Expected"):
        open_store(url)


def test_open_store_accepts_file_urls_and_plain_paths(tmp_path: Path) -> None:
    by_url = open_store((tmp_path / "a").as_uri())
    by_path = open_store(str(tmp_path / "b"))

    assert isinstance(by_url, LocalStore) and by_url.root == tmp_path / "a"
    assert isinstance(by_path, LocalStore) and by_path.root == tmp_path / "b"
    assert by_url.bucket == "a"

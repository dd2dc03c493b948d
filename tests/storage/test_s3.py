"""What the S3 store does beyond the shared contract: URLs, prefixes, parts, errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from scanpipe.cloud.clients import make_client
from scanpipe.errors import ConfigError, PermanentError, TransientError
from scanpipe.storage import open_store
from scanpipe.storage.s3 import S3Store
from tests.aws import MotoServer, make_name

MIB = 1024 * 1024


def make_bucket() -> str:
    bucket = make_name("bucket")
    make_client("s3").create_bucket(Bucket=bucket)
    return bucket


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://scans-in", "scans-in", ""),
        ("s3://scans-in/", "scans-in", ""),
        ("s3://scans-in/ct/2024", "scans-in", "ct/2024/"),
        ("s3://scans-in/ct/2024/", "scans-in", "ct/2024/"),
        ("s3://scans-in/a b/#1?", "scans-in", "a b/#1?/"),
    ],
    ids=["bucket", "bucket-slash", "prefix", "prefix-slash", "literal-characters"],
)
def test_open_store_maps_an_s3_url_onto_bucket_and_prefix(
    aws_env: dict[str, str], url: str, bucket: str, prefix: str
) -> None:
    store = open_store(url)

    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == (bucket, prefix)
    assert store.url == f"s3://{bucket}/{prefix}"


@pytest.mark.parametrize(
    ("url", "mentioned"),
    [
        ("s3://", "no bucket"),
        ("s3:///prefix", "no bucket"),
        ("s3://Scans_In", "bucket name"),
        ("s3://ab", "bucket name"),
        ("s3://scans-in/a/../b", "prefix"),
        ("s3://scans-in/a//b", "prefix"),
    ],
    ids=["empty", "no-bucket", "invalid-bucket", "short-bucket", "dotdot", "empty-seg"],
)
def test_open_store_rejects_invalid_s3_urls(
    aws_env: dict[str, str], url: str, mentioned: str
) -> None:
    with pytest.raises(ConfigError, match=mentioned):
        open_store(url)


def test_event_keys_map_onto_the_store_prefix(aws_env: dict[str, str]) -> None:
    store = S3Store("scans-in", "ct/")

    assert store.key_from_event("scans-in", "ct/a b/+%é.nii.gz") == "a b/+%é.nii.gz"
    with pytest.raises(PermanentError) as other_bucket:
        store.key_from_event("scans-out", "ct/a.nii.gz")
    with pytest.raises(PermanentError) as outside:
        store.key_from_event("scans-in", "mr/a.nii.gz")

    assert other_bucket.value.reason == "wrong_bucket"
    assert outside.value.reason == "outside_prefix"


def test_objects_are_stored_under_the_prefix(aws_env: dict[str, str]) -> None:
    bucket = make_bucket()
    store = S3Store(bucket, "ct")

    store.put_bytes("a/b.nii.gz", b"scan")

    raw = make_client("s3").list_objects_v2(Bucket=bucket)["Contents"]
    assert [item["Key"] for item in raw] == ["ct/a/b.nii.gz"]


def test_listing_skips_folder_markers_and_keys_outside_the_prefix(
    aws_env: dict[str, str],
) -> None:
    bucket = make_bucket()
    client = make_client("s3")
    for key in ["ct/", "ct/a/", "ct/a/1.nii.gz", "ct/b.nii.gz", "mr/c.nii.gz"]:
        client.put_object(Bucket=bucket, Key=key, Body=b"x")

    store = S3Store(bucket, "ct/")

    assert [info.key for info in store.list()] == ["a/1.nii.gz", "b.nii.gz"]


def test_large_objects_are_uploaded_in_parts(
    aws_env: dict[str, str], tmp_path: Path
) -> None:
    bucket = make_bucket()
    # S3 needs parts of 5 MiB, except the last.
    store = S3Store(
        bucket, multipart_threshold_bytes=5 * MIB, multipart_chunk_bytes=5 * MIB
    )
    source = tmp_path / "large.bin"
    source.write_bytes(bytes(range(256)) * (11 * MIB // 256))

    info = store.put_file("large.bin", source)
    dest = tmp_path / "copy.bin"
    store.download("large.bin", dest)

    assert info.etag.endswith("-3")
    assert info.size == source.stat().st_size
    assert dest.read_bytes() == source.read_bytes()
    uploads = make_client("s3").list_multipart_uploads(Bucket=bucket)
    assert uploads.get("Uploads", []) == []


def test_small_objects_are_uploaded_whole_with_an_md5_etag(
    aws_env: dict[str, str], tmp_path: Path
) -> None:
    store = S3Store(make_bucket(), multipart_threshold_bytes=5 * MIB)
    data = b"y" * (5 * MIB - 1)

    info = store.put_bytes("just-under.bin", data)

    assert info.etag == hashlib.md5(data).hexdigest()


def test_a_missing_bucket_is_a_configuration_error_not_a_missing_object(
    aws_env: dict[str, str], tmp_path: Path
) -> None:
    store = S3Store(make_name("never-created"))

    with pytest.raises(ConfigError, match="bucket"):
        store.head("a.nii.gz")
    with pytest.raises(ConfigError, match="bucket"):
        store.download("a.nii.gz", tmp_path / "a.nii.gz")
    with pytest.raises(ConfigError, match="NoSuchBucket"):
        store.get_bytes("a.nii.gz")
    with pytest.raises(ConfigError, match="NoSuchBucket"):
        store.put_bytes("a.nii.gz", b"scan")
    with pytest.raises(ConfigError, match="NoSuchBucket"):
        list(store.list())


def test_an_unreachable_endpoint_is_a_transient_error(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = MotoServer().start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = S3Store(make_bucket())
    store.put_bytes("a.nii.gz", b"scan")
    server.stop()

    with pytest.raises(TransientError, match="endpoint"):
        store.head("a.nii.gz")
    with pytest.raises(TransientError, match="endpoint"):
        store.download("a.nii.gz", tmp_path / "a.nii.gz")
    with pytest.raises(TransientError):
        store.put_bytes("b.nii.gz", b"scan")
    assert not (tmp_path / "a.nii.gz").exists()

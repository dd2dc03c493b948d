"""load_scan refuses unsafe or invalid files with a stable reason, loads valid
ones as nibabel would, and write_mask writes geometry without patient data."""

from __future__ import annotations

import gzip
import math
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scanpipe.errors import ConfigError, ScanpipeError, ScanRejected
from scanpipe.imaging.nifti import ScanLimits, load_scan, write_mask
from scanpipe.models.base import Volume
from tests import scans


@pytest.mark.parametrize("name", ["scan.nii", "scan.nii.gz"], ids=["plain", "gzip"])
def test_a_valid_scan_loads_as_float32_with_its_geometry(tmp_path: Path, name: str):
    path = scans.make_scan(tmp_path / name, shape=(48, 40, 32), spacing=0.4)

    volume = load_scan(path)

    reference = nib.load(path)
    assert volume.data.dtype == np.float32
    assert volume.data.shape == (48, 40, 32)
    np.testing.assert_array_equal(volume.data, reference.get_fdata())
    np.testing.assert_array_equal(volume.affine, reference.affine)
    assert volume.affine.dtype == np.float64
    assert volume.spacing == (0.4, 0.4, 0.4)
    assert volume.notes["nonfinite_filled"] == 0
    assert volume.notes["gzip"] is name.endswith(".gz")


@pytest.mark.parametrize(
    ("name", "compress"),
    [("scan.nii", True), ("scan.nii.gz", False)],
    ids=["gzip-named-nii", "plain-named-gz"],
)
def test_compression_is_detected_from_content_not_name(
    tmp_path: Path, name: str, compress: bool
):
    payload = scans.nifti_bytes(np.arange(64, dtype=np.int16).reshape(4, 4, 4))
    path = tmp_path / name
    path.write_bytes(gzip.compress(payload) if compress else payload)

    volume = load_scan(path)

    assert volume.notes["gzip"] is compress
    assert volume.data[3, 3, 3] == 63


@pytest.mark.parametrize("version", [1, 2], ids=["nifti1", "nifti2"])
@pytest.mark.parametrize("big_endian", [False, True], ids=["little", "big"])
def test_both_nifti_versions_load_in_either_byte_order(
    tmp_path: Path, version: int, big_endian: bool
):
    data = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4) - 1000
    path = scans.make_nifti(
        tmp_path / "scan.nii.gz",
        data,
        (0.3, 0.3, 0.5),
        version=version,
        big_endian=big_endian,
    )

    volume = load_scan(path)

    np.testing.assert_array_equal(volume.data, data)
    assert volume.spacing == (0.3, 0.3, 0.5)
    assert volume.notes["nifti_version"] == version


def test_scaling_is_applied_as_nibabel_applies_it(tmp_path: Path):
    def scaled(header: nib.Nifti1Header) -> None:
        header["scl_slope"] = 0.5
        header["scl_inter"] = -1024

    data = np.array([0, 2, 2048, 4096], dtype=np.uint16).reshape(1, 2, 2)
    path = scans.make_nifti(tmp_path / "scan.nii", data, edit=scaled)

    volume = load_scan(path)

    np.testing.assert_array_equal(volume.data.ravel(), [-1024, -1023, 0, 1024])
    np.testing.assert_array_equal(volume.data, nib.load(path).get_fdata())


@pytest.mark.parametrize(
    "extents",
    [[4, 48, 48, 32, 1], [5, 48, 48, 32, 1, 1]],
    ids=["4d-one-frame", "5d-ones"],
)
def test_trailing_extents_of_one_count_as_3d(tmp_path: Path, extents: list[int]):
    def shaped(header: nib.Nifti1Header) -> None:
        header["dim"] = extents + [1] * (8 - len(extents))

    data = np.zeros((48, 48, 32), dtype=np.int16)
    volume = load_scan(scans.make_nifti(tmp_path / "scan.nii", data, edit=shaped))

    assert volume.data.shape == (48, 48, 32)


def test_spacing_in_metres_is_given_in_millimetres(tmp_path: Path):
    def metres(header: nib.Nifti1Header) -> None:
        header.set_xyzt_units(xyz="meter")

    data = np.zeros((4, 4, 4), dtype=np.int16)
    path = scans.make_nifti(tmp_path / "scan.nii", data, (0.0004,) * 3, edit=metres)

    volume = load_scan(path)

    assert volume.spacing == pytest.approx((0.4, 0.4, 0.4))
    assert np.diag(volume.affine)[:3] == pytest.approx([0.4, 0.4, 0.4])


def make_empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def make_analyze(path: Path) -> Path:
    def no_magic(header: nib.Nifti1Header) -> None:
        header["magic"] = b""

    return scans.make_nifti(path, np.zeros((4, 4, 4), np.int16), edit=no_magic)


def make_pair_header(path: Path) -> Path:
    def pair(header: nib.Nifti1Header) -> None:
        header["magic"] = b"ni1"

    return scans.make_nifti(path, np.zeros((4, 4, 4), np.int16), edit=pair)


def make_2d(path: Path) -> Path:
    def flat(header: nib.Nifti1Header) -> None:
        header["dim"] = [2, 48, 48, 1, 1, 1, 1, 1]

    return scans.make_nifti(path, np.zeros((48, 48, 1), np.int16), edit=flat)


def make_complex(path: Path) -> Path:
    return scans.make_nifti(path, np.zeros((8, 8, 8), np.complex64))


def make_rgb(path: Path) -> Path:
    def rgb(header: nib.Nifti1Header) -> None:
        header["datatype"] = 128
        header["bitpix"] = 24

    return scans.make_nifti(path, np.zeros((8, 8, 8, 3), np.uint8)[..., 0], edit=rgb)


def make_truncated_plain(path: Path) -> Path:
    path.write_bytes(scans.nifti_bytes(np.zeros((48, 48, 32), np.int16))[:-1000])
    return path


def make_header_only(path: Path) -> Path:
    path.write_bytes(scans.nifti_bytes(np.zeros((4, 4, 4), np.int16))[:200])
    return path


def make_zero_offset(path: Path) -> Path:
    def zero(header: nib.Nifti1Header) -> None:
        header["vox_offset"] = 0

    return scans.make_nifti(path, np.zeros((4, 4, 4), np.int16), edit=zero)


def make_degenerate_affine(path: Path) -> Path:
    def flat_sform(header: nib.Nifti1Header) -> None:
        header["srow_z"] = [0, 0, 0, 0]

    return scans.make_nifti(path, np.zeros((4, 4, 4), np.int16), edit=flat_sform)


REJECTIONS: list[tuple[str, Callable[[Path], Path], str, list[str]]] = [
    ("text-file", scans.make_not_nifti, "not_nifti", ["348 or 540"]),
    ("empty-file", make_empty, "not_nifti", ["gzip signature"]),
    ("corrupt-gzip", scans.make_corrupt_gzip, "not_nifti", ["cannot be decoded"]),
    ("analyze", make_analyze, "not_nifti", ["magic"]),
    ("pair-header", make_pair_header, "not_nifti", ["pair"]),
    ("data-inside-header", make_zero_offset, "not_nifti", ["352", "is 0"]),
    ("time-series", scans.make_4d, "not_3d", ["4 dimensions", "[48, 48, 32, 3]"]),
    ("2d", make_2d, "not_3d", ["2 dimensions"]),
    ("complex", make_complex, "bad_datatype", ["complex64"]),
    ("rgb", make_rgb, "bad_datatype", ["128", "RGB"]),
    ("flat-affine", make_degenerate_affine, "bad_spacing", ["degenerate"]),
    ("huge-dims", scans.make_huge_dims, "too_large", ["4096x4096x4096"]),
    ("data-cut", scans.make_truncated, "truncated", ["147808", "74080"]),
    ("gzip-cut", scans.make_truncated_gzip, "truncated", ["truncated or corrupt"]),
    ("plain-cut", make_truncated_plain, "truncated", ["147808", "146808"]),
    ("header-cut", make_header_only, "truncated", ["348-byte", "200"]),
]


@pytest.mark.parametrize(
    ("maker", "reason", "found"),
    [case[1:] for case in REJECTIONS],
    ids=[case[0] for case in REJECTIONS],
)
def test_an_invalid_file_is_rejected_with_its_reason(
    tmp_path: Path, maker: Callable[[Path], Path], reason: str, found: list[str]
):
    path = maker(tmp_path / "scan.nii.gz")

    with pytest.raises(ScanRejected) as caught:
        load_scan(path)

    assert caught.value.reason == reason
    message = str(caught.value)
    assert message.startswith("Expected ")
    for text in found:
        assert text.lower() in message.lower()


@pytest.mark.parametrize(
    "value", [0.0, -0.4, math.nan, math.inf], ids=["zero", "negative", "nan", "inf"]
)
@pytest.mark.parametrize("axis", [1, 3], ids=["x", "z"])
def test_spacing_must_be_finite_and_positive(tmp_path: Path, value: float, axis: int):
    path = scans.make_bad_spacing(tmp_path / "scan.nii.gz", value, axis=axis)

    with pytest.raises(ScanRejected) as caught:
        load_scan(path)

    assert caught.value.reason == "bad_spacing"
    assert str(value) in str(caught.value)


def test_a_gzip_bomb_is_refused_without_inflating_it(tmp_path: Path):
    path = scans.make_gzip_bomb(tmp_path / "bomb.nii.gz")
    assert path.stat().st_size < 2 * 1024**2

    tracemalloc.start()
    try:
        with pytest.raises(ScanRejected) as caught:
            load_scan(path)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert caught.value.reason == "gzip_bomb"
    assert "147808" in str(caught.value)
    assert peak_bytes < 16 * 1024**2


@pytest.mark.parametrize(
    ("limits", "found"),
    [
        (ScanLimits(max_voxels=48 * 48 * 31), "73728"),
        (ScanLimits(max_file_bytes=100_000), "bytes"),
    ],
    ids=["voxels", "file-bytes"],
)
def test_limits_are_enforced(tmp_path: Path, limits: ScanLimits, found: str):
    path = scans.make_scan(tmp_path / "scan.nii.gz")

    with pytest.raises(ScanRejected) as caught:
        load_scan(path, limits)

    assert caught.value.reason == "too_large"
    assert found in str(caught.value)


def test_a_few_nonfinite_voxels_are_filled_with_the_minimum(tmp_path: Path):
    path = scans.make_nonfinite(tmp_path / "scan.nii.gz", fraction=0.005)
    raw = np.asarray(nib.load(path).dataobj)
    bad = ~np.isfinite(raw)

    volume = load_scan(path)

    assert volume.notes["nonfinite_filled"] == int(bad.sum()) == 369
    assert np.isfinite(volume.data).all()
    assert (volume.data[bad] == raw[~bad].min()).all()
    np.testing.assert_array_equal(volume.data[~bad], raw[~bad])


@pytest.mark.parametrize(
    ("fraction", "limits", "found"),
    [
        (0.05, ScanLimits(), "5.00%"),
        (0.001, ScanLimits(nonfinite="reject"), "74 of 73728"),
        (1.0, ScanLimits(max_nonfinite_fraction=1.0), "all 73728"),
    ],
    ids=["too-many", "policy-reject", "none-finite"],
)
def test_nonfinite_voxels_beyond_the_policy_reject_the_scan(
    tmp_path: Path, fraction: float, limits: ScanLimits, found: str
):
    path = scans.make_nonfinite(tmp_path / "scan.nii.gz", fraction=fraction)

    with pytest.raises(ScanRejected) as caught:
        load_scan(path, limits)

    assert caught.value.reason == "nonfinite"
    assert found in str(caught.value)


@pytest.mark.parametrize(
    "settings",
    [{"nonfinite": "drop"}, {"max_voxels": 0}, {"max_nonfinite_fraction": 1.5}],
    ids=["policy", "voxels", "fraction"],
)
def test_invalid_limits_are_a_config_error(settings: dict[str, object]):
    with pytest.raises(ConfigError):
        ScanLimits(**settings)  # type: ignore[arg-type]


def make_labels(volume: Volume) -> np.ndarray:
    labels = np.zeros(volume.data.shape, dtype=np.uint8)
    labels[10:20, 10:30, 5:15] = 1
    labels[20:25, 12:18, 15:20] = 2
    return labels


@pytest.mark.parametrize("name", ["mask.nii", "mask.nii.gz"], ids=["plain", "gzip"])
def test_a_mask_keeps_the_scans_geometry(tmp_path: Path, name: str):
    volume = load_scan(scans.make_scan(tmp_path / "scan.nii.gz", shape=(48, 40, 32)))
    labels = make_labels(volume)

    write_mask(labels, volume, tmp_path / name)

    written = nib.load(tmp_path / name)
    assert isinstance(written, nib.Nifti1Image)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(written.dataobj), labels)
    np.testing.assert_allclose(written.affine, volume.affine, atol=1e-6)
    assert written.header.get_zooms() == pytest.approx(volume.spacing)
    assert int(written.header["qform_code"]) == 1  # scanner
    assert int(written.header["sform_code"]) == 2  # aligned
    assert written.header.get_xyzt_units()[0] == "mm"
    assert (tmp_path / name).read_bytes()[:2] == (
        b"\x1f\x8b" if name.endswith(".gz") else b"\x5c\x01"
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_mask_carries_no_text_from_the_scans_header(tmp_path: Path):
    volume = load_scan(scans.make_header_with_phi(tmp_path / "scan.nii.gz"))
    source = gzip.decompress((tmp_path / "scan.nii.gz").read_bytes())
    assert all(text in source for text in scans.PHI_STRINGS)

    write_mask(make_labels(volume), volume, tmp_path / "mask.nii.gz")

    written = gzip.decompress((tmp_path / "mask.nii.gz").read_bytes())
    for text in scans.PHI_STRINGS:
        assert text not in written
    header = nib.load(tmp_path / "mask.nii.gz").header
    assert list(header.extensions) == []
    for field in ("descrip", "aux_file", "intent_name", "db_name"):
        assert header[field].item() == b""


def test_writing_the_same_mask_twice_gives_the_same_bytes(tmp_path: Path):
    volume = load_scan(scans.make_scan(tmp_path / "scan.nii.gz"))
    labels = make_labels(volume)

    write_mask(labels, volume, tmp_path / "one.nii.gz")
    write_mask(labels, volume, tmp_path / "two.nii.gz")

    assert (tmp_path / "one.nii.gz").read_bytes() == (
        tmp_path / "two.nii.gz"
    ).read_bytes()


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((48, 48, 31), np.uint8), ((48, 48, 32), np.int16)],
    ids=["shape", "dtype"],
)
def test_a_mask_that_does_not_fit_the_scan_is_refused(
    tmp_path: Path, shape: tuple[int, int, int], dtype: type
):
    volume = load_scan(scans.make_scan(tmp_path / "scan.nii.gz"))

    with pytest.raises(ScanpipeError, match="Expected a uint8 mask of shape"):
        write_mask(np.zeros(shape, dtype=dtype), volume, tmp_path / "mask.nii.gz")

    assert not (tmp_path / "mask.nii.gz").exists()

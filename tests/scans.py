"""Makers of good and bad scan files, shared by unit and end-to-end tests.

Each ``make_*`` writes one file and returns its path. Files whose name ends in
``.gz`` are gzip-compressed, others are plain. The docstring of each bad-file
maker names the ``ScanRejected.reason`` that ``load_scan`` gives it.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from scanpipe.imaging.phantom import make_phantom

#: Text planted by ``make_header_with_phi``; none of it may reach an output.
PHI_STRINGS = (b"PATIENT^DOE^JANE", b"MRN-00042", b"DOB-19700101", b"ACC-7731")

HeaderEdit = Callable[[nib.Nifti1Header], None]


def make_nifti(
    path: Path,
    data: npt.NDArray[np.generic],
    spacing: tuple[float, float, float] = (0.4, 0.4, 0.4),
    *,
    version: int = 1,
    big_endian: bool = False,
    edit: HeaderEdit | None = None,
) -> Path:
    """Write ``data`` as a single-file NIfTI, built byte by byte.

    Args:
        version: 1 or 2.
        edit: called on the finished header to set fields to anything,
            including values nibabel's setters refuse (zero spacing, huge
            dims); the voxel bytes are not changed to match.
    """
    return _write(path, nifti_bytes(data, spacing, version, big_endian, edit))


def nifti_bytes(
    data: npt.NDArray[np.generic],
    spacing: tuple[float, float, float] = (0.4, 0.4, 0.4),
    version: int = 1,
    big_endian: bool = False,
    edit: HeaderEdit | None = None,
) -> bytes:
    """The uncompressed bytes ``make_nifti`` writes."""
    header_class = nib.Nifti1Header if version == 1 else nib.Nifti2Header
    header = header_class(endianness=">" if big_endian else "<")
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    header.set_zooms(spacing + (1.0,) * (data.ndim - 3))
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [
        -(n - 1) / 2 * s for n, s in zip(data.shape[:3], spacing, strict=True)
    ]
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units(xyz="mm")
    header["vox_offset"] = 352 if version == 1 else 544

    voxels = np.asarray(data, dtype=header.get_data_dtype()).tobytes(order="F")
    if edit is not None:
        edit(header)
    # Four zero bytes after the header: no extensions.
    return bytes(header.binaryblock) + b"\0" * 4 + voxels


def make_scan(
    path: Path,
    shape: tuple[int, int, int] = (48, 48, 32),
    spacing: float = 0.4,
    seed: int = 0,
) -> Path:
    """A small valid phantom, int16 HU, as a scanner would export it."""
    return _write(path, _phantom_bytes(shape, spacing, seed))


def _phantom_bytes(shape: tuple[int, int, int], spacing: float, seed: int) -> bytes:
    image, _, _ = make_phantom(shape, spacing, seed)
    hu = np.clip(np.rint(image), -32768, 32767).astype(np.int16)
    return nifti_bytes(hu, (spacing, spacing, spacing))


def make_not_nifti(path: Path) -> Path:
    """A text file: reason ``not_nifti``."""
    return _write_raw(path, b"%PDF-1.4 this is a report, not a scan\n" * 20)


def make_corrupt_gzip(path: Path) -> Path:
    """A gzip header over a deflate stream broken from its first block:
    reason ``not_nifti``, since no NIfTI header can be decoded."""
    rng = np.random.default_rng(0)
    # 0x07: a final block of the reserved type 3, which every inflater refuses.
    body = b"\x07" + rng.bytes(4096)
    return _write_raw(path, _gzip_header() + body)


def make_truncated(path: Path) -> Path:
    """A valid gzip of a NIfTI whose voxel data stops halfway: reason
    ``truncated``."""
    payload = _phantom_bytes((48, 48, 32), 0.4, 0)
    cut = 352 + (len(payload) - 352) // 2
    return _write_raw(path, gzip.compress(payload[:cut], mtime=0))


def make_truncated_gzip(path: Path) -> Path:
    """A gzip stream cut off in its middle, trailer missing: reason
    ``truncated``."""
    stream = gzip.compress(_phantom_bytes((48, 48, 32), 0.4, 0), mtime=0)
    return _write_raw(path, stream[: len(stream) // 2])


def make_gzip_bomb(path: Path, decompressed_bytes: int = 1 << 30) -> Path:
    """A valid small NIfTI followed, in the same gzip stream, by about
    ``decompressed_bytes`` of zeros, about a thousand times smaller
    compressed: reason ``gzip_bomb``.

    The stream is written chunk by chunk: a deflate block of 1 MiB of zeros,
    compressed once with no history, is repeated, so nothing large is ever
    held in memory. The CRC and length trailer are correct, so ``gunzip``
    would inflate it all.
    """
    payload = nifti_bytes(np.zeros((48, 48, 32), dtype=np.int16))

    chunk = bytes(1 << 20)
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = head.compress(payload) + head.flush(zlib.Z_FULL_FLUSH)
    zeros = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = zeros.compress(chunk) + zeros.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush()

    crc = zlib.crc32(payload)
    chunks = decompressed_bytes // len(chunk)
    with path.open("wb") as out:
        out.write(_gzip_header())
        out.write(first)
        for _ in range(chunks):
            out.write(block)
            crc = zlib.crc32(chunk, crc)
        out.write(final)
        size = len(payload) + chunks * len(chunk)
        out.write(struct.pack("<II", crc, size & 0xFFFFFFFF))
    return path


def make_huge_dims(path: Path) -> Path:
    """A header declaring 4096^3 int16 voxels over a few bytes of data:
    reason ``too_large``."""

    def huge(header: nib.Nifti1Header) -> None:
        header["dim"] = [3, 4096, 4096, 4096, 1, 1, 1, 1]

    return make_nifti(path, np.zeros((4, 4, 4), dtype=np.int16), edit=huge)


def make_4d(path: Path, frames: int = 3) -> Path:
    """A time series of ``frames`` volumes: reason ``not_3d``."""
    image, _, _ = make_phantom((48, 48, 32), 0.4, 0)
    series = np.stack([image.astype(np.int16)] * frames, axis=-1)
    return make_nifti(path, series)


def make_bad_spacing(path: Path, value: float, axis: int = 1) -> Path:
    """A valid scan whose pixdim along ``axis`` (1-3) is ``value``, such as 0,
    a negative number or NaN: reason ``bad_spacing``."""

    def spacing(header: nib.Nifti1Header) -> None:
        pixdim = header["pixdim"].copy()
        pixdim[axis] = value
        header["pixdim"] = pixdim

    data = np.zeros((48, 48, 32), dtype=np.int16)
    return make_nifti(path, data, edit=spacing)


def make_nonfinite(path: Path, fraction: float, seed: int = 0) -> Path:
    """A float32 phantom with ``fraction`` of its voxels NaN, +Inf or -Inf.

    Loaded with the default limits it is filled when ``fraction`` is at most
    0.01 and rejected with reason ``nonfinite`` above.
    """
    image, _, _ = make_phantom((48, 48, 32), 0.4, seed)
    rng = np.random.default_rng(seed)
    spots = rng.choice(image.size, size=round(fraction * image.size), replace=False)
    flat = image.reshape(-1)
    flat[spots] = rng.choice(
        np.array([np.nan, np.inf, -np.inf], np.float32), spots.size
    )
    return make_nifti(path, image)


def make_header_with_phi(path: Path) -> Path:
    """A valid phantom whose header text fields and a comment extension carry
    the ``PHI_STRINGS``, as scanner exports sometimes do."""
    image, _, affine = make_phantom((48, 48, 32), 0.4, 0)
    nifti = nib.Nifti1Image(np.rint(image).astype(np.int16), affine)
    header = nifti.header
    header["descrip"] = PHI_STRINGS[0] + b" " + PHI_STRINGS[1]
    header["aux_file"] = PHI_STRINGS[2]
    header["intent_name"] = PHI_STRINGS[3][:16]
    header["db_name"] = PHI_STRINGS[0][:18]
    comment = b" ".join(PHI_STRINGS)
    header.extensions.append(nib.nifti1.Nifti1Extension("comment", comment))
    return _write(path, nifti.to_bytes())


def _gzip_header() -> bytes:
    # Magic, deflate, no flags, mtime 0, no extra flags, OS unknown.
    return b"\x1f\x8b\x08\x00" + b"\0" * 4 + b"\x00\xff"


def _write(path: Path, payload: bytes) -> Path:
    if path.suffix == ".gz":
        payload = gzip.compress(payload, compresslevel=1, mtime=0)
    return _write_raw(path, payload)


def _write_raw(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path

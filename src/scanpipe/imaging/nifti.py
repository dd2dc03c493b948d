"""Safe loading of NIfTI scans and writing of label masks.

A scan file comes from outside and is untrusted: its header decides how much
memory the loader allocates, and a gzip stream can expand a thousandfold. So
``load_scan`` reads the header alone first, through a streaming decompressor,
checks it against ``ScanLimits``, and only then reads exactly the bytes the
header promises, plus a small slack to tell a clean end from a bomb. Every
refusal is a ``ScanRejected`` with a stable ``reason``:

=============  ===============================================================
reason         when
=============  ===============================================================
not_nifti      neither gzip nor a NIfTI-1/NIfTI-2 single-file header
not_3d         not one 3D volume (trailing extents of 1 are allowed)
bad_datatype   complex, RGB, bit or 128-bit voxels
too_large      file, voxel count or header extensions over the limits
bad_spacing    spacing not finite and positive, or an unusable affine
truncated      fewer bytes than the header promises, or a damaged gzip stream
gzip_bomb      the stream goes on past the promised size
nonfinite      NaN or infinite voxels beyond what the policy accepts
=============  ===============================================================

Non-finite voxels. With ``nonfinite='fill'`` (the default) NaN and ±Inf
voxels are replaced by the smallest finite value of the volume, which in CT is
air, and their count is kept in ``Volume.notes['nonfinite_filled']``; a scan
where more than ``max_nonfinite_fraction`` of the voxels are non-finite, or
none is finite, is rejected all the same, because it is damaged rather than
speckled. With ``nonfinite='reject'`` any non-finite voxel rejects the scan.

``write_mask`` builds a fresh header for every mask, so text fields and
extensions of the input, which can carry patient data, never reach the output.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
import numpy.typing as npt
from nibabel.spatialimages import HeaderDataError

from scanpipe.errors import ConfigError, ScanpipeError, ScanRejected
from scanpipe.models.base import Volume

log = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI1_HEADER_BYTES = 348
_NIFTI2_HEADER_BYTES = 540
#: Bytes a gzip stream may run past the promised size before it counts as a
#: bomb; some writers pad the end of the data.
_TRAILING_SLACK_BYTES = 64 * 1024
#: Extensions sit between header and data and are read into memory, so their
#: size is bounded too; real ones (DICOM headers, comments) are far smaller.
_MAX_VOX_OFFSET = 64 * 1024 * 1024
#: Datatype codes of real scalar voxels, with their size in bytes.
_SUPPORTED_DATATYPES = {
    2: 1,  # uint8
    4: 2,  # int16
    8: 4,  # int32
    16: 4,  # float32
    64: 8,  # float64
    256: 1,  # int8
    512: 2,  # uint16
    768: 4,  # uint32
    1024: 8,  # int64
    1280: 8,  # uint64
}
#: What a damaged gzip stream raises: early end, bad CRC or header, bad deflate.
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)
_MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 0.001, "unknown": 1.0}


@dataclass(frozen=True)
class ScanLimits:
    """What a scan may cost before it is refused."""

    max_voxels: int = 512**3
    max_file_bytes: int = 2 * 1024**3
    #: 'fill' replaces non-finite voxels by the minimum finite value;
    #: 'reject' refuses any scan that has one.
    nonfinite: Literal["fill", "reject"] = "fill"
    #: Above this fraction of non-finite voxels the scan is refused even
    #: with 'fill'.
    max_nonfinite_fraction: float = 0.01

    def __post_init__(self) -> None:
        if self.max_voxels <= 0 or self.max_file_bytes <= 0:
            raise ConfigError(
                "Scan limits must be positive, but got "
                f"max_voxels={self.max_voxels} "
                f"max_file_bytes={self.max_file_bytes}."
            )
        if self.nonfinite not in ("fill", "reject"):
            raise ConfigError(
                "The non-finite policy must be 'fill' or 'reject', "
                f"but got {self.nonfinite!r}."
            )
        if not 0.0 <= self.max_nonfinite_fraction <= 1.0:
            raise ConfigError(
                "max_nonfinite_fraction must lie between 0 and 1, "
                f"but got {self.max_nonfinite_fraction}."
            )


@dataclass(frozen=True)
class _Layout:
    """What a validated header promises about the bytes that follow it."""

    header: nib.Nifti1Header  # Nifti2Header is a subclass
    version: int
    header_bytes: int
    shape: tuple[int, int, int]
    vox_offset: int
    data_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.vox_offset + self.data_bytes


def load_scan(path: Path, limits: ScanLimits = ScanLimits()) -> Volume:
    """Read one NIfTI scan, refusing it before any large allocation if unsafe.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file; compression is detected from the
            content, not the name.
        limits: size limits and the non-finite policy.

    Returns:
        The volume as float32 (X, Y, Z) with scaling applied, nibabel's best
        affine, and the spacing in mm from the header.

    Raises:
        ScanRejected: the file is not a safe, valid 3D scan; see the module
            docstring for the reason codes.
    """
    file_bytes = path.stat().st_size
    if file_bytes > limits.max_file_bytes:
        raise ScanRejected(
            f"Expected a file of at most {limits.max_file_bytes} bytes, "
            f"but it has {file_bytes}.",
            reason="too_large",
        )

    with path.open("rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if compressed:
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                layout, payload = _read_bounded(stream, limits, compressed=True)
        else:
            layout, payload = _read_bounded(raw, limits, compressed=False)

    volume = _decode(payload, layout, limits, compressed=compressed)
    log.debug(
        "scan loaded shape=%s nifti_version=%d gzip=%s nonfinite_filled=%s",
        layout.shape,
        layout.version,
        compressed,
        volume.notes["nonfinite_filled"],
    )
    return volume


def _read_bounded(
    stream: io.BufferedIOBase, limits: ScanLimits, *, compressed: bool
) -> tuple[_Layout, bytes]:
    """Read the header, validate it, then read exactly what it promises."""
    layout = _read_header(stream, limits)
    # Everything after the header, so the data needs no second copy.
    payload = _read(stream, layout.total_bytes - layout.header_bytes)
    found = layout.header_bytes + len(payload)
    if found < layout.total_bytes:
        raise ScanRejected(
            f"Expected {layout.total_bytes} bytes of header, extensions and "
            f"voxel data, but the {'gzip stream' if compressed else 'file'} "
            f"holds only {found}.",
            reason="truncated",
        )

    # Reading past the end also makes gzip check its CRC and length trailer,
    # and the cap keeps a bomb from being decompressed any further.
    if compressed:
        trailing = len(_read(stream, _TRAILING_SLACK_BYTES + 1))
        if trailing > _TRAILING_SLACK_BYTES:
            raise ScanRejected(
                f"Expected the gzip stream to end after {layout.total_bytes} "
                f"bytes, but it decompresses to more than "
                f"{layout.total_bytes + _TRAILING_SLACK_BYTES}; "
                "stopped reading there.",
                reason="gzip_bomb",
            )
    return layout, payload


def _read(stream: io.BufferedIOBase, size: int) -> bytes:
    """Read up to ``size`` bytes; a damaged gzip stream rejects the scan."""
    try:
        return stream.read(size)
    except _GZIP_ERRORS as exc:
        raise ScanRejected(
            "Expected a gzip stream that decodes to its end, but it is "
            f"truncated or corrupt ({exc}).",
            reason="truncated",
        ) from exc


def _read_header(stream: io.BufferedIOBase, limits: ScanLimits) -> _Layout:
    """Read and check the fixed-size header; nothing large is allocated yet."""
    try:
        start = stream.read(4)
    except _GZIP_ERRORS as exc:
        # Nothing decoded yet, so there is no sign it ever held a NIfTI.
        raise ScanRejected(
            "Expected a NIfTI file, plain or gzip-compressed, but the gzip "
            f"stream cannot be decoded ({exc}).",
            reason="not_nifti",
        ) from exc
    version, endian, header_bytes = _sniff(start)

    block = start + _read(stream, header_bytes - len(start))
    if len(block) < header_bytes:
        raise ScanRejected(
            f"Expected a {header_bytes}-byte NIfTI-{version} header, "
            f"but the file ends after {len(block)} bytes.",
            reason="truncated",
        )
    header_class = nib.Nifti1Header if version == 1 else nib.Nifti2Header
    header = header_class(binaryblock=block, endianness=endian, check=False)

    _check_magic(header, version)
    shape = _check_shape(header, limits)
    itemsize = _check_datatype(header)
    _check_spacing(header)
    vox_offset = _check_vox_offset(header, header_bytes)
    try:
        # nibabel's own checks, as when it loads a file; it fixes what it can.
        header.check_fix()
    except HeaderDataError as exc:
        raise ScanRejected(
            f"Expected a consistent NIfTI header, but nibabel refused it: {exc}",
            reason="not_nifti",
        ) from exc

    data_bytes = shape[0] * shape[1] * shape[2] * itemsize
    return _Layout(header, version, header_bytes, shape, vox_offset, data_bytes)


def _sniff(start: bytes) -> tuple[int, str, int]:
    """Return (version, endianness, header size) from the first 4 bytes."""
    if len(start) == 4:
        for endian in ("<", ">"):
            sizeof_hdr = int(np.frombuffer(start, dtype=f"{endian}i4")[0])
            if sizeof_hdr == _NIFTI1_HEADER_BYTES:
                return 1, endian, sizeof_hdr
            if sizeof_hdr == _NIFTI2_HEADER_BYTES:
                return 2, endian, sizeof_hdr
    raise ScanRejected(
        "Expected a NIfTI file, plain or gzip-compressed, but the file starts "
        "with neither a gzip signature nor a NIfTI header size (348 or 540).",
        reason="not_nifti",
    )


def _check_magic(header: nib.Nifti1Header, version: int) -> None:
    magic = header["magic"].item()
    if magic == f"n+{version}".encode():
        return
    if magic == f"ni{version}".encode():
        found = "the header of a two-file NIfTI pair, which holds no voxels"
    else:
        found = "no NIfTI magic string (an Analyze file or another format)"
    raise ScanRejected(
        f"Expected a single-file NIfTI-{version} scan, but found {found}.",
        reason="not_nifti",
    )


def _check_shape(header: nib.Nifti1Header, limits: ScanLimits) -> tuple[int, int, int]:
    dim = [int(d) for d in header["dim"]]
    ndim = dim[0]
    extents = dim[1 : 1 + ndim] if 1 <= ndim <= 7 else []
    # A 4D or 5D header whose extra extents are all 1 is still one volume.
    if ndim < 3 or ndim > 7 or any(d != 1 for d in extents[3:]):
        raise ScanRejected(
            "Expected a single 3D volume, but the header declares "
            f"{ndim} dimensions with extents {extents or dim[1:]}.",
            reason="not_3d",
        )
    if any(d < 1 for d in extents[:3]):
        raise ScanRejected(
            "Expected a positive extent along each spatial axis, but the "
            f"header declares {extents[:3]}.",
            reason="not_3d",
        )

    shape = (extents[0], extents[1], extents[2])
    voxels = shape[0] * shape[1] * shape[2]
    if voxels > limits.max_voxels:
        raise ScanRejected(
            f"Expected at most {limits.max_voxels} voxels, but the header "
            f"declares {voxels} ({shape[0]}x{shape[1]}x{shape[2]}).",
            reason="too_large",
        )
    return shape


def _check_datatype(header: nib.Nifti1Header) -> int:
    code = int(header["datatype"])
    if code in _SUPPORTED_DATATYPES:
        return _SUPPORTED_DATATYPES[code]
    try:
        name = str(nib.nifti1.data_type_codes.label[code])
    except KeyError:
        name = "unknown"
    raise ScanRejected(
        "Expected real scalar voxels (signed or unsigned integers, float32 or "
        f"float64), but the header declares datatype {code} ({name}).",
        reason="bad_datatype",
    )


def _check_spacing(header: nib.Nifti1Header) -> None:
    spacing = [float(str(p)) for p in header["pixdim"][1:4]]
    if not all(np.isfinite(p) and p > 0 for p in spacing):
        raise ScanRejected(
            "Expected a finite, positive voxel spacing along each spatial axis, "
            f"but pixdim[1:4] is {spacing}.",
            reason="bad_spacing",
        )


def _check_vox_offset(header: nib.Nifti1Header, header_bytes: int) -> int:
    raw_offset = float(header["vox_offset"])
    # The 4 bytes after the header flag extensions, so data starts after them.
    lowest = header_bytes + 4
    if not np.isfinite(raw_offset) or raw_offset != int(raw_offset):
        raise ScanRejected(
            "Expected a whole-number byte offset to the voxel data, "
            f"but vox_offset is {raw_offset}.",
            reason="not_nifti",
        )
    vox_offset = int(raw_offset)
    if vox_offset < lowest:
        raise ScanRejected(
            f"Expected the voxel data to start at byte {lowest} or later in a "
            f"single-file NIfTI, but vox_offset is {vox_offset}.",
            reason="not_nifti",
        )
    if vox_offset > _MAX_VOX_OFFSET:
        raise ScanRejected(
            f"Expected header extensions of at most {_MAX_VOX_OFFSET} bytes, "
            f"but the voxel data starts at byte {vox_offset}.",
            reason="too_large",
        )
    return vox_offset


def _decode(
    payload: bytes, layout: _Layout, limits: ScanLimits, *, compressed: bool
) -> Volume:
    """Turn the bytes after the header into a Volume, scaled as nibabel does."""
    header = layout.header
    affine, spacing = _geometry(header)
    try:
        dtype = header.get_data_dtype()
        slope, inter = header.get_slope_inter()
    except HeaderDataError as exc:
        raise ScanRejected(
            f"Expected valid scaling in the NIfTI header, but nibabel says: {exc}",
            reason="not_nifti",
        ) from exc

    raw = np.frombuffer(
        payload,
        dtype=dtype,
        count=layout.data_bytes // dtype.itemsize,
        offset=layout.vox_offset - layout.header_bytes,
    )
    # float32 throughout: float64 scaling would double peak memory for a
    # precision CT values do not need.
    data = raw.reshape(layout.shape, order="F").astype(np.float32)
    if slope is not None and (slope != 1.0 or inter != 0.0):
        data *= np.float32(slope)
        data += np.float32(inter)
    filled = _apply_nonfinite_policy(data, limits)

    notes: dict[str, object] = {
        "nonfinite_filled": filled,
        "nifti_version": layout.version,
        "source_dtype": str(dtype.newbyteorder("=")),
        "gzip": compressed,
    }
    return Volume(data=data, affine=affine, spacing=spacing, notes=notes)


def _geometry(
    header: nib.Nifti1Header,
) -> tuple[npt.NDArray[np.float64], tuple[float, float, float]]:
    """nibabel's best affine and the header's spacing, both in millimetres."""
    try:
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    except (HeaderDataError, ValueError, np.linalg.LinAlgError) as exc:
        raise ScanRejected(
            f"Expected a usable qform or sform, but nibabel says: {exc}",
            reason="bad_spacing",
        ) from exc
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ScanRejected(
            "Expected an invertible, finite voxel-to-world affine, but the "
            "header's qform/sform gives a degenerate one.",
            reason="bad_spacing",
        )

    mm = _MM_PER_UNIT.get(header.get_xyzt_units()[0], 1.0)
    affine[:3, :] *= mm
    # str() of a float32 is its shortest decimal: 0.4, not 0.4000000059604645.
    x, y, z = (float(str(p)) * mm for p in header["pixdim"][1:4])
    return affine, (x, y, z)


def _apply_nonfinite_policy(data: npt.NDArray[np.float32], limits: ScanLimits) -> int:
    """Fill or refuse NaN and ±Inf voxels in place; return how many were filled."""
    finite = np.isfinite(data)
    count = int(data.size - np.count_nonzero(finite))
    if count == 0:
        return 0

    fraction = count / data.size
    found = f"{count} of {data.size} voxels ({fraction:.2%}) are NaN or infinite"
    if limits.nonfinite == "reject":
        raise ScanRejected(
            f"Expected only finite voxel values, but {found}.", reason="nonfinite"
        )
    if count == data.size:
        raise ScanRejected(
            f"Expected at least one finite voxel, but all {count} are NaN or infinite.",
            reason="nonfinite",
        )
    if fraction > limits.max_nonfinite_fraction:
        raise ScanRejected(
            f"Expected at most {limits.max_nonfinite_fraction:.2%} non-finite "
            f"voxels, but {found}.",
            reason="nonfinite",
        )

    fill = np.min(data, where=finite, initial=np.inf)
    np.copyto(data, fill, where=~finite)
    log.info("nonfinite voxels filled count=%d fill_value=%.1f", count, fill)
    return count


def write_mask(labels: npt.NDArray[np.uint8], volume: Volume, path: Path) -> None:
    """Write a label mask on the geometry of ``volume``, with a fresh header.

    The header holds only geometry and datatype: uint8 labels, the volume's
    affine as qform (scanner) and sform (aligned), millimetre units. No text
    field or extension of the input is carried over. The file is gzipped when
    ``path`` ends in ``.gz`` and is replaced atomically.

    Raises:
        ScanpipeError: the labels are not uint8 or not the volume's shape.
    """
    if labels.dtype != np.uint8 or labels.shape != volume.data.shape:
        raise ScanpipeError(
            f"Expected a uint8 mask of shape {volume.data.shape}, but got "
            f"{labels.dtype} of shape {labels.shape}."
        )

    image = nib.Nifti1Image(labels, affine=None)
    image.set_qform(volume.affine, code="scanner")
    image.set_sform(volume.affine, code="aligned")
    image.header.set_data_dtype(np.uint8)
    image.header.set_xyzt_units(xyz="mm")
    encoded = image.to_bytes()
    if path.suffix == ".gz":
        # mtime=0 and no stored name: the same mask gives the same bytes.
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6, mtime=0) as gz:
            gz.write(encoded)
        encoded = buffer.getvalue()

    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_bytes(encoded)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)

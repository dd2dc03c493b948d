"""Synthetic CBCT phantoms of a lower jaw with teeth, and the labels they carry.

They give the pipeline scans whose true segmentation is known, for tests,
benchmarks and training a model without patient data. A phantom is a head-like
soft-tissue ellipsoid in air holding a U-shaped mandible (a bar with a dense
cortical shell around trabecular bone) and a row of teeth along the arch:
roots in the bone, crowns above it, dentin under an enamel cap. The image is in
HU-like values, blurred a little for partial volume and given Gaussian noise.

Anatomy is drawn in millimetres for a field of view of 51.2 x 51.2 x 38.4 mm,
so a finer spacing on a proportionally larger grid gives the same anatomy at
more voxels. A smaller field of view shrinks the anatomy to fit; a larger one
shows it at its own size with more air around it. Arrays are (X, Y, Z) with
+Y anterior and +Z superior, and everything is decided by the seed.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage

log = logging.getLogger(__name__)

#: Label values, as nnU-Net's dataset.json names them.
LABELS = {"background": 0, "jaw": 1, "teeth": 2}
JAW = LABELS["jaw"]
TEETH = LABELS["teeth"]
#: Spacings a CBCT scanner of the jaw produces.
MIN_SPACING_MM = 0.2
MAX_SPACING_MM = 0.5
#: The field of view the anatomy is drawn for.
_DESIGN_FOV_MM = (51.2, 51.2, 38.4)
#: Blur standing in for the scanner's point-spread function.
_BLUR_SIGMA_MM = 0.3
#: Cell size of the random field that gives trabecular bone its texture.
_TEXTURE_CELL_MM = 1.5

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class _Anatomy:
    """One phantom's random draw; lengths in mm, angles in radians, values in HU."""

    arch_half_width: float
    arch_depth: float
    leg_length: float
    center: tuple[float, float]
    yaw: float
    pitch: float
    roll: float
    jaw_half_thickness: float
    jaw_half_height: float
    jaw_z: float
    cortex: float
    head_radii: tuple[float, float, float]
    # Teeth, one entry per slot along the arch; a missing tooth keeps its gap.
    tooth_pitch: float
    first_tooth: float
    present: npt.NDArray[np.bool_]
    half_width: FloatArray
    half_depth: FloatArray
    apex_z: FloatArray
    top_z: FloatArray
    dentin: FloatArray
    cervical_z: float
    enamel_thickness: float
    # Intensities.
    air: float
    soft: float
    trabecular: float
    cortical: float
    enamel: float
    pulp: float
    noise_sigma: float


def make_phantom(
    shape: tuple[int, int, int] = (128, 128, 96),
    spacing: float = 0.4,
    seed: int = 0,
) -> tuple[FloatArray, npt.NDArray[np.uint8], npt.NDArray[np.float64]]:
    """Draw one phantom.

    Args:
        shape: voxels along (X, Y, Z); at least 16 each.
        spacing: isotropic voxel size in mm, between 0.2 and 0.5.
        seed: the same seed always gives the same phantom.

    Returns:
        The image in HU (float32), its labels (uint8: 0 background, 1 jaw,
        2 teeth) and the 4x4 voxel-to-world affine in mm, centred on the volume.

    Raises:
        ValueError: the shape or spacing is out of range.
    """
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"Expected 3 extents of at least 16 voxels, got {shape}.")
    if not MIN_SPACING_MM <= spacing <= MAX_SPACING_MM:
        raise ValueError(
            f"Expected a spacing between {MIN_SPACING_MM} and {MAX_SPACING_MM} mm, "
            f"got {spacing}."
        )

    rng = np.random.default_rng(seed)
    fit = min(
        1.0, *(n * spacing / d for n, d in zip(shape, _DESIGN_FOV_MM, strict=True))
    )
    anatomy = _draw_anatomy(rng, fit)
    axes = [((np.arange(n) - (n - 1) / 2) * spacing).astype(np.float32) for n in shape]

    image = _head(anatomy, axes)
    labels = np.zeros(shape, dtype=np.uint8)
    _draw_jaw_and_teeth(image, labels, anatomy, axes, spacing, rng)

    sigma = _BLUR_SIGMA_MM / spacing
    image = ndimage.gaussian_filter(image, sigma=sigma, truncate=3.0)
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise *= np.float32(anatomy.noise_sigma)
    image += noise

    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * spacing for n in shape]
    return image, labels, affine


def _draw_anatomy(rng: np.random.Generator, fit: float) -> _Anatomy:
    """Draw every random choice of one phantom, in a fixed order."""

    def mm(low: float, high: float) -> float:
        return float(rng.uniform(low, high)) * fit

    a, b, leg = mm(15, 19), mm(12, 16), mm(5, 9)
    half_t, half_h, cortex = mm(3.6, 4.4), mm(5.5, 7.0), mm(0.9, 1.4)
    crest_z = mm(-1.5, 0.5)
    # The ellipse centre sits so that the U, back ends to front, is centred.
    center = (mm(-1.5, 1.5), mm(-1.5, 1.5) + (leg - b) / 2)
    yaw, pitch, roll = np.radians(rng.uniform([-8, -6, -4], [8, 6, 4]))
    head = (a + half_t + mm(2.5, 4), (leg + b) / 2 + half_t + mm(4, 6), mm(17, 20))

    slots = int(rng.integers(12, 17))
    present = np.ones(slots, dtype=bool)
    present[rng.choice(slots, size=int(rng.integers(0, 3)), replace=False)] = False
    # Teeth fill the curve and part of the straight legs behind it.
    span = _quarter_arc(a, b) + 0.6 * leg - 0.5 * fit
    tooth_pitch = 2 * span / slots
    root_room = 2 * half_h - cortex - 1.0 * fit

    def per_tooth(low: float, high: float) -> FloatArray:
        return rng.uniform(low, high, slots).astype(np.float32)

    half_width = 0.4 * tooth_pitch * per_tooth(0.95, 1.05)
    half_depth = np.minimum(per_tooth(2.2, 2.8) * fit, half_t - cortex - 0.3 * fit)
    crown = per_tooth(5.5, 7.5) * fit
    root = np.minimum(per_tooth(6.5, 8.5) * fit, root_room)
    dentin = float(rng.uniform(1700, 1950)) + rng.normal(0, 30, slots)

    return _Anatomy(
        arch_half_width=a,
        arch_depth=b,
        leg_length=leg,
        center=center,
        yaw=float(yaw),
        pitch=float(pitch),
        roll=float(roll),
        jaw_half_thickness=half_t,
        jaw_half_height=half_h,
        jaw_z=crest_z - half_h,
        cortex=cortex,
        head_radii=head,
        tooth_pitch=tooth_pitch,
        first_tooth=-span + tooth_pitch / 2,
        present=present,
        half_width=half_width,
        half_depth=half_depth.astype(np.float32),
        apex_z=(crest_z - root).astype(np.float32),
        top_z=(crest_z + crown).astype(np.float32),
        dentin=dentin.astype(np.float32),
        cervical_z=crest_z,
        enamel_thickness=mm(0.9, 1.2),
        air=float(rng.uniform(-1010, -990)),
        soft=float(rng.uniform(10, 50)),
        trabecular=float(rng.uniform(700, 900)),
        cortical=float(rng.uniform(1150, 1350)),
        enamel=float(rng.uniform(2500, 2900)),
        pulp=float(rng.uniform(40, 120)),
        noise_sigma=float(rng.uniform(40, 80)),
    )


def _quarter_arc(a: float, b: float) -> float:
    """Length of a quarter of the ellipse with half-axes a and b (Ramanujan)."""
    return math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b))) / 4


def _head(anatomy: _Anatomy, axes: list[FloatArray]) -> FloatArray:
    """Air with a soft-tissue ellipsoid whose value drifts a little in space."""
    x, y, z = axes
    cx, cy = anatomy.center
    rx, ry, rz = anatomy.head_radii
    radial_xy = ((x - cx) / rx)[:, None] ** 2 + ((y - cy) / ry)[None, :] ** 2
    inside = radial_xy[:, :, None] + ((z / rz) ** 2)[None, None, :] <= 1

    drift_xy = anatomy.soft + 8 * np.sin(x / 7.0)[:, None] + 8 * np.cos(y / 9.0)
    drift_z = 6 * np.sin(z / 5.0)
    image = np.full(inside.shape, anatomy.air, dtype=np.float32)
    # Evaluated inside the head only, without a full-size temporary.
    np.add(drift_xy[:, :, None], drift_z[None, None, :], out=image, where=inside)
    return image


def _arch_coordinates(
    anatomy: _Anatomy, u: FloatArray, v: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Distance across the arch's centre line, and arc length along it.

    ``u`` and ``v`` are lateral and anterior positions in the arch's own frame.
    The centre line is the front half of an ellipse continued backwards by two
    straight legs; past the legs' ends the distance grows round the end, so
    the bar has rounded ends.
    """
    a, b, leg = anatomy.arch_half_width, anatomy.arch_depth, anatomy.leg_length
    side = np.where(u < 0, -1.0, 1.0).astype(np.float32)

    # Front: a first-order distance to the ellipse, (rho - 1) / |grad rho|.
    nu, nv = u / a, np.maximum(v, 0) / b
    rho = np.maximum(np.sqrt(nu**2 + nv**2), 1e-6)
    grad = np.sqrt((nu / a) ** 2 + (nv / b) ** 2) / rho
    front_across = np.abs(rho - 1) / np.maximum(grad, 1e-6)
    theta = np.arctan2(nv, np.abs(nu))  # 0 at the side, pi/2 at the midline
    front_along = _arc_from_midline(a, b, theta)

    back = np.minimum(-v, leg)
    beyond = np.maximum(-v - leg, 0)
    back_across = np.sqrt((np.abs(u) - a) ** 2 + beyond**2)
    back_along = _quarter_arc(a, b) + back

    across = np.where(v >= 0, front_across, back_across)
    along = side * np.where(v >= 0, front_along, back_along)
    return across.astype(np.float32), along.astype(np.float32)


def _arc_from_midline(a: float, b: float, theta: FloatArray) -> FloatArray:
    """Arc length on the ellipse from the midline to parameter ``theta``."""
    table = np.linspace(0, np.pi / 2, 257)
    speed = np.sqrt((a * np.sin(table)) ** 2 + (b * np.cos(table)) ** 2)
    from_side = np.concatenate([[0], np.cumsum((speed[1:] + speed[:-1]) / 2)])
    from_side *= table[1] - table[0]
    return (from_side[-1] - np.interp(theta, table, from_side)).astype(np.float32)


def _draw_jaw_and_teeth(
    image: FloatArray,
    labels: npt.NDArray[np.uint8],
    anatomy: _Anatomy,
    axes: list[FloatArray],
    spacing: float,
    rng: np.random.Generator,
) -> None:
    """Paint the mandible and teeth into ``image`` and ``labels`` in place."""
    index, across, along, z = _band(anatomy, axes, spacing)

    jaw, trabecular = _jaw(anatomy, across, z)
    tooth, enamel, pulp, slot = _teeth(anatomy, across, along, z)

    values = image.ravel()[index]
    texture = _texture(rng, image.shape, spacing, index[trabecular])
    values[jaw] = anatomy.cortical
    values[trabecular] = anatomy.trabecular + texture
    values[tooth] = anatomy.dentin[slot[tooth]]
    values[enamel] = anatomy.enamel
    values[pulp] = anatomy.pulp
    image.ravel()[index] = values

    classes = np.where(tooth, TEETH, np.where(jaw, JAW, 0)).astype(np.uint8)
    labels.ravel()[index] = classes


def _band(
    anatomy: _Anatomy, axes: list[FloatArray], spacing: float
) -> tuple[npt.NDArray[np.intp], FloatArray, FloatArray, FloatArray]:
    """Voxels near the arch, as flat indices with their arch coordinates.

    The arch coordinates depend on the axial position only, so they are
    computed once on a 2D grid twice as fine as the voxels; the head's pitch
    and roll shear that grid per slice, and each voxel picks its nearest node.
    """
    x, y, z = axes
    step = spacing / 2
    shift_x = np.tan(anatomy.roll) * z
    shift_y = np.tan(anatomy.pitch) * z
    gx = _fine_axis(x, shift_x, step)
    gy = _fine_axis(y, shift_y, step)

    cx, cy = anatomy.center
    cos, sin = math.cos(anatomy.yaw), math.sin(anatomy.yaw)
    dx, dy = (gx - cx)[:, None], (gy - cy)[None, :]
    u = (cos * dx + sin * dy).astype(np.float32)
    v = (-sin * dx + cos * dy).astype(np.float32)
    across2d, along2d = _arch_coordinates(anatomy, u, v)

    ix = np.rint((x[:, None] - shift_x[None, :] - gx[0]) / step).astype(np.intp)
    iy = np.rint((y[:, None] - shift_y[None, :] - gy[0]) / step).astype(np.intp)
    node = ix[:, None, :] * len(gy) + iy[None, :, :]

    reach = max(anatomy.jaw_half_thickness, float(anatomy.half_depth.max()) * 1.2)
    z_low = anatomy.jaw_z - anatomy.jaw_half_height
    z_high = float(anatomy.top_z.max())
    in_z = ((z >= z_low) & (z <= z_high))[None, None, :]
    near = (np.take(across2d, node) <= reach) & in_z
    index = np.flatnonzero(near)
    node = node.ravel()[index]
    z_of = z[index % len(z)]
    return index, np.take(across2d, node), np.take(along2d, node), z_of


def _fine_axis(coords: FloatArray, shift: FloatArray, step: float) -> FloatArray:
    low = float(coords[0] - shift.max()) - step
    high = float(coords[-1] - shift.min()) + step
    return (low + step * np.arange(int((high - low) / step) + 2)).astype(np.float32)


def _jaw(
    anatomy: _Anatomy, across: FloatArray, z: FloatArray
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """The bar (rounded-rectangle section) and its trabecular core."""
    half_t, half_h = anatomy.jaw_half_thickness, anatomy.jaw_half_height
    height = z - anatomy.jaw_z
    jaw = (across / half_t) ** 4 + (height / half_h) ** 4 <= 1
    core_t, core_h = half_t - anatomy.cortex, half_h - anatomy.cortex
    trabecular = (across / core_t) ** 4 + (height / core_h) ** 4 <= 1
    return jaw, trabecular


def _teeth(
    anatomy: _Anatomy, across: FloatArray, along: FloatArray, z: FloatArray
) -> tuple[
    npt.NDArray[np.bool_],
    npt.NDArray[np.bool_],
    npt.NDArray[np.bool_],
    npt.NDArray[np.intp],
]:
    """Teeth as elliptic columns whose radius follows a root-and-crown profile."""
    position = (along - anatomy.first_tooth) / anatomy.tooth_pitch
    slot = np.clip(np.rint(position), 0, len(anatomy.present) - 1).astype(np.intp)
    offset = along - (anatomy.first_tooth + slot * anatomy.tooth_pitch)
    width, depth = anatomy.half_width[slot], anatomy.half_depth[slot]
    radius = np.sqrt((offset / width) ** 2 + (across / depth) ** 2)

    apex, top, cervical = anatomy.apex_z[slot], anatomy.top_z[slot], anatomy.cervical_z
    tooth = anatomy.present[slot] & (radius <= _tooth_profile(z, apex, cervical, top))

    shell = anatomy.enamel_thickness
    inner = _tooth_profile(z, apex, cervical, top - shell) - shell / width
    enamel = tooth & (z >= cervical + shell / 2) & (radius > inner)

    root_end = apex + 0.3 * (cervical - apex)
    chamber_top = cervical + 0.45 * (top - cervical)
    pulp = tooth & (z > root_end) & (z < chamber_top)
    pulp &= radius <= 0.3 * _tooth_profile(z, apex, cervical, top)
    return tooth, enamel, pulp, slot


def _tooth_profile(
    z: FloatArray, apex: FloatArray, cervical: float, top: FloatArray
) -> FloatArray:
    """Relative tooth radius by height: tapered root, bulging crown, round ends."""
    root_t = (z - apex) / (cervical - apex)
    crown_t = np.clip((z - cervical) / (top - cervical), 0, 1)
    radius = np.where(
        z < cervical, 0.55 + 0.45 * root_t, 1 + 0.12 * np.sin(0.8 * np.pi * crown_t)
    )
    apex_dome = 1 - (1 - np.clip(root_t / 0.15, 0, 1)) ** 2
    top_dome = 1 - np.clip((crown_t - 0.7) / 0.3, 0, 1) ** 2
    return (radius * np.sqrt(apex_dome * top_dome)).astype(np.float32)


def _texture(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    spacing: float,
    index: npt.NDArray[np.intp],
) -> FloatArray:
    """Smooth random variation for trabecular bone, sampled at ``index`` only."""
    cell = _TEXTURE_CELL_MM / spacing
    coarse_shape = tuple(int(n / cell) + 2 for n in shape)
    coarse = rng.normal(0, 60, coarse_shape).astype(np.float32)
    points = np.array(np.unravel_index(index, shape), dtype=np.float32) / cell
    return ndimage.map_coordinates(coarse, points, order=1).astype(np.float32)


def write_dataset(
    out_dir: Path,
    count: int,
    seed: int,
    shape: tuple[int, int, int] = (128, 128, 96),
    spacing: float = 0.4,
    name_prefix: str = "cbct",
) -> list[Path]:
    """Write phantoms as an nnU-Net v2 raw dataset.

    Case ``i`` is drawn from a seed derived from ``(seed, i)``, so a larger
    ``count`` adds cases without changing the earlier ones.

    Args:
        out_dir: the dataset folder; ``imagesTr``, ``labelsTr`` and
            ``dataset.json`` are created in it.
        count: number of cases, at least 1.
        seed: seed of the whole dataset.
        shape: voxels per case along (X, Y, Z).
        spacing: voxel size in mm.
        name_prefix: case names are ``{name_prefix}_{i:03d}``.

    Returns:
        The image paths, in case order.
    """
    if count < 1:
        raise ValueError(f"Expected at least one case, got count={count}.")
    images_dir, labels_dir = out_dir / "imagesTr", out_dir / "labelsTr"
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)

    paths = []
    for i in range(count):
        case_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        image, labels, affine = make_phantom(shape, spacing, case_seed)
        name = f"{name_prefix}_{i:03d}"
        hu = np.clip(np.rint(image), -32768, 32767).astype(np.int16)
        _save(hu, affine, images_dir / f"{name}_0000.nii.gz")
        _save(labels, affine, labels_dir / f"{name}.nii.gz")
        paths.append(images_dir / f"{name}_0000.nii.gz")

    description = (
        f"Synthetic CBCT phantoms of a lower jaw with teeth: seed {seed}, "
        f"shape {list(shape)}, spacing {spacing} mm."
    )
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": LABELS,
        "numTraining": count,
        "file_ending": ".nii.gz",
        "description": description,
    }
    (out_dir / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    log.info(
        "phantom dataset written out_dir=%s count=%d seed=%d", out_dir, count, seed
    )
    return paths


def _save(
    array: npt.NDArray[np.generic], affine: npt.NDArray[np.float64], path: Path
) -> None:
    image = nib.Nifti1Image(array, affine=None)
    image.set_qform(affine, code="scanner")
    image.set_sform(affine, code="scanner")
    image.header.set_xyzt_units(xyz="mm")
    image.to_filename(path)

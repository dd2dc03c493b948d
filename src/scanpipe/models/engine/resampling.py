"""Resampling between a scan's spacing and the network's, as nnU-Net does it.

nnU-Net resamples with scikit-image's ``resize`` (spline interpolation, edge
mode, no anti-aliasing, output clipped to the input's range), which is a thin
wrapper round ``scipy.ndimage.zoom`` with ``grid_mode=True``; the same calls
are made here on scipy directly, so the engine needs neither scikit-image nor
torch and gives the same numbers.

Anisotropic data is resampled in two steps: each slice in-plane with the
full interpolation order, then the low-resolution axis with ``order_z``
(nearest neighbour by default), because cubic interpolation across thick
slices invents structure between them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage

log = logging.getLogger(__name__)

#: nnU-Net's ANISO_THRESHOLD: a spacing ratio above this counts as anisotropic.
ANISOTROPY_THRESHOLD = 3.0


def compute_new_shape(
    old_shape: Sequence[int],
    old_spacing: Sequence[float],
    new_spacing: Sequence[float],
) -> tuple[int, ...]:
    """The shape a volume has after resampling it to ``new_spacing``."""
    return tuple(
        round(s / t * n)
        for s, t, n in zip(old_spacing, new_spacing, old_shape, strict=True)
    )


def separate_axis(
    force_separate_z: bool | None,
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
) -> int | None:
    """The low-resolution axis to resample on its own, or None.

    The source spacing decides first, then the target; an axis is only
    separated when exactly one axis has the largest spacing.
    """
    if force_separate_z is not None:
        axes = _lowres_axes(current_spacing) if force_separate_z else None
    elif _is_anisotropic(current_spacing):
        axes = _lowres_axes(current_spacing)
    elif _is_anisotropic(new_spacing):
        axes = _lowres_axes(new_spacing)
    else:
        axes = None
    if axes is None or len(axes) != 1:
        return None
    return axes[0]


def _is_anisotropic(spacing: Sequence[float]) -> bool:
    return bool(max(spacing) / min(spacing) > ANISOTROPY_THRESHOLD)


def _lowres_axes(spacing: Sequence[float]) -> list[int]:
    largest = max(spacing)
    return [i for i, s in enumerate(spacing) if largest / s == 1]


def resample_to_shape(
    data: npt.NDArray[np.floating],
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    *,
    order: int,
    order_z: int,
    force_separate_z: bool | None,
    out_dtype: npt.DTypeLike = np.float32,
) -> npt.NDArray[np.floating]:
    """Resample every channel of ``data`` (C, X, Y, Z) to ``new_shape``.

    Returns ``data`` itself when the shape does not change, as nnU-Net does,
    even if the spacings differ.
    """
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(data.shape[1:]) == new_shape:
        return data
    axis = separate_axis(force_separate_z, current_spacing, new_spacing)
    out = np.empty((data.shape[0], *new_shape), dtype=out_dtype)
    for c in range(data.shape[0]):
        channel = data[c].astype(np.float64, copy=False)
        if axis is None:
            out[c] = resize(channel, new_shape, order)
        else:
            out[c] = _resize_separate(channel, new_shape, axis, order, order_z)
    return out


def resize(
    image: npt.NDArray[np.float64], new_shape: Sequence[int], order: int
) -> npt.NDArray[np.float64]:
    """scikit-image's ``resize(mode='edge', anti_aliasing=False)`` on scipy.

    The zoom factor is formed as scikit-image forms it (one over the ratio of
    shapes) so that scipy rounds to the same output shape.
    """
    zoom = [1 / (n / m) for n, m in zip(image.shape, new_shape, strict=True)]
    out = ndimage.zoom(image, zoom, order=order, mode="nearest", grid_mode=True)
    if order > 0:
        # Splines overshoot; scikit-image clips back to the input's range.
        np.clip(out, image.min(), image.max(), out=out)
    return out


def _resize_separate(
    image: npt.NDArray[np.float64],
    new_shape: tuple[int, ...],
    axis: int,
    order: int,
    order_z: int,
) -> npt.NDArray[np.float64]:
    """In-plane resize slice by slice, then the low-resolution axis alone."""
    in_plane = [n for i, n in enumerate(new_shape) if i != axis]
    staged_shape = list(new_shape)
    staged_shape[axis] = image.shape[axis]
    staged = np.empty(staged_shape, dtype=np.float64)
    for index in range(image.shape[axis]):
        where: list[slice | int] = [slice(None)] * 3
        where[axis] = index
        staged[tuple(where)] = resize(image[tuple(where)], in_plane, order)
    if image.shape[axis] == new_shape[axis]:
        return staged

    # Pixel centres as scikit-image maps them (align_corners=False). Only
    # the separate axis moves; the others map onto themselves.
    old, new = image.shape[axis], new_shape[axis]
    centres = (old / new) * (np.arange(new, dtype=np.float64) + 0.5) - 0.5
    if order_z == 0:
        # Nearest neighbour picks whole slices; asking scipy which ones keeps
        # its rounding without the full coordinate grid nnU-Net allocates.
        picked = ndimage.map_coordinates(
            np.arange(old, dtype=np.float64), centres[None], order=0, mode="nearest"
        )
        return np.take(staged, picked.astype(np.intp), axis=axis)
    grid = np.meshgrid(
        *[
            centres if i == axis else np.arange(n, dtype=np.float64)
            for i, n in enumerate(new_shape)
        ],
        indexing="ij",
    )
    return ndimage.map_coordinates(
        staged, np.array(grid), order=order_z, mode="nearest"
    )

"""nnU-Net's preprocessing of one case, in numpy: transpose, crop, normalise, resample.

The order is nnU-Net's ``DefaultPreprocessor.run_case_npy``: transpose the
axes as the plans say, crop to the bounding box of the nonzero region,
normalise each channel, then resample to the plans' spacing. Normalising
before resampling keeps the nonzero mask aligned with the image. What the
way back needs (the crop box and the shapes before and after cropping) is
kept in :class:`Preprocessed`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from scanpipe.errors import ScanRejected
from scanpipe.models.engine.plans import ChannelNormalization, ModelPlans
from scanpipe.models.engine.resampling import compute_new_shape, resample_to_shape

FloatArray = npt.NDArray[np.float32]
#: Largest resampled volume accepted, in voxels: a scan at a much coarser
#: spacing than the model's would otherwise be blown up without bound.
MAX_RESAMPLED_VOXELS = 2**29


@dataclass(frozen=True)
class Preprocessed:
    """One case ready for the network, and what restoring its geometry needs."""

    data: FloatArray  # (C, *shape) at the plans' spacing, network axis order
    spacing: tuple[float, ...]  # the case's own spacing, network axis order
    shape_before_cropping: tuple[int, ...]
    bbox: tuple[tuple[int, int], ...]  # half-open crop box per axis
    shape_after_cropping: tuple[int, ...]


def preprocess(
    image: FloatArray,
    spacing: tuple[float, ...],
    plans: ModelPlans,
    *,
    max_voxels: int = MAX_RESAMPLED_VOXELS,
) -> Preprocessed:
    """Prepare one case as nnU-Net's DefaultPreprocessor does.

    Args:
        image: (C, *shape) in the axis order nnU-Net's readers produce.
        spacing: mm per voxel along those axes.
        plans: the model's plans.
        max_voxels: refuse cases that would resample to more voxels.

    Raises:
        ScanRejected: the case would resample to an empty or oversized grid.
    """
    forward = plans.transpose_forward
    data = image.astype(np.float32).transpose((0, *[a + 1 for a in forward]))
    original_spacing = tuple(spacing[a] for a in forward)
    shape_before_cropping = tuple(int(n) for n in data.shape[1:])

    data, nonzero, bbox = crop_to_nonzero(data)
    shape_after_cropping = tuple(int(n) for n in data.shape[1:])
    new_shape = compute_new_shape(shape_after_cropping, original_spacing, plans.spacing)
    _check_resampled_shape(new_shape, shape_after_cropping, max_voxels)

    for c, scheme in enumerate(plans.normalization):
        data[c] = normalize(data[c], nonzero, scheme)
    data = resample_to_shape(
        data,
        new_shape,
        original_spacing,
        plans.spacing,
        order=plans.resample_data.order,
        order_z=plans.resample_data.order_z,
        force_separate_z=plans.resample_data.force_separate_z,
    )
    return Preprocessed(
        data=np.ascontiguousarray(data, dtype=np.float32),
        spacing=original_spacing,
        shape_before_cropping=shape_before_cropping,
        bbox=bbox,
        shape_after_cropping=shape_after_cropping,
    )


def _check_resampled_shape(
    new_shape: tuple[int, ...], cropped: tuple[int, ...], max_voxels: int
) -> None:
    if min(new_shape) < 1:
        raise ScanRejected(
            "Expected every axis to keep at least one voxel at the model's "
            f"spacing, but the {cropped} voxels of the scan resample to "
            f"{new_shape}.",
            reason="too_small",
        )
    voxels = int(np.prod(new_shape, dtype=np.int64))
    if voxels > max_voxels:
        raise ScanRejected(
            f"Expected at most {max_voxels} voxels at the model's spacing, but "
            f"the scan resamples to {voxels} ({new_shape}).",
            reason="too_large",
        )


def crop_to_nonzero(
    data: FloatArray,
) -> tuple[FloatArray, npt.NDArray[np.bool_], tuple[tuple[int, int], ...]]:
    """Crop to the box round voxels that are nonzero in any channel.

    Holes in the nonzero mask are filled first, as nnU-Net does, so an
    object with zero-valued voxels inside is not cut. An all-zero case keeps
    its full extent.

    Returns:
        The cropped data, the cropped nonzero mask and the crop box.
    """
    mask = np.any(data != 0, axis=0)
    mask = ndimage.binary_fill_holes(mask)
    bbox = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(np.any(mask, axis=other))
        if present.size:
            bbox.append((int(present[0]), int(present[-1]) + 1))
        else:
            bbox.append((0, mask.shape[axis]))
    window = tuple(slice(a, b) for a, b in bbox)
    return data[(slice(None), *window)], mask[window], tuple(bbox)


def normalize(
    channel: FloatArray,
    nonzero: npt.NDArray[np.bool_],
    scheme: ChannelNormalization,
) -> FloatArray:
    """Normalise one channel with one of nnU-Net's default schemes.

    Arithmetic is in float32 with the statistics as Python floats, in
    nnU-Net's order of operations, so the results agree to the last bit.
    """
    image = channel.astype(np.float32, copy=True)
    eps = 1e-8
    if scheme.scheme == "CTNormalization":
        p = scheme.properties
        np.clip(image, p["percentile_00_5"], p["percentile_99_5"], out=image)
        image -= p["mean"]
        image /= max(p["std"], eps)
    elif scheme.scheme == "ZScoreNormalization":
        if scheme.use_mask:
            values = image[nonzero]
            mean, std = values.mean(), values.std()
            image[nonzero] = (values - mean) / max(std, eps)
        else:
            mean, std = image.mean(), image.std()
            image -= mean
            image /= max(std, eps)
    elif scheme.scheme == "RescaleTo01Normalization":
        image -= image.min()
        image /= np.clip(image.max(), a_min=eps, a_max=None)
    elif scheme.scheme == "RGBTo01Normalization":
        if image.min() < 0 or image.max() > 255:
            raise ScanRejected(
                "Expected RGB intensities between 0 and 255 for this model, but "
                f"found {image.min()} to {image.max()}.",
                reason="bad_intensities",
            )
        image /= 255.0
    # NoNormalization only casts, which the copy above already did.
    return image

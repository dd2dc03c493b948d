"""A classical CBCT baseline: intensity thresholds and connected components.

Enamel and dentin are the densest tissues in a CBCT of the jaw, and bone is
denser than soft tissue, so after a light Gaussian smoothing two thresholds
split teeth from jaw. Clean-up then removes what thresholds get wrong:

* holes inside a tooth (the pulp) are filled;
* the thin rim of blurred voxels round each crown, which falls between the
  two thresholds, is opened away from the jaw;
* islands smaller than ``min_island_mm3`` (noise, metal scatter) are dropped.

It needs no weights and runs on a CPU, which makes it the reference the learnt
models are compared against and the model end-to-end tests use.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import time

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from scanpipe.errors import ModelError
from scanpipe.models.base import Segmentation, Segmenter, Volume
from scanpipe.models.postprocess import drop_islands

log = logging.getLogger(__name__)

_VERSION = "threshold-v1"


class ThresholdSegmenter(Segmenter):
    """Jaw and teeth from two HU thresholds.

    Args:
        bone_hu: voxels at or above this are bone (jaw or teeth).
        teeth_hu: voxels at or above this are teeth; must exceed ``bone_hu``.
        min_island_mm3: connected pieces of either label smaller than this
            are removed.
        smooth_mm: sigma of the Gaussian smoothing before thresholding;
            0 turns it off.
        open_mm: radius of the morphological opening that strips thin rims
            from the jaw; 0 turns it off.
        fill_holes: fill cavities enclosed by a tooth (the pulp).
    """

    def __init__(
        self,
        *,
        bone_hu: float = 500.0,
        teeth_hu: float = 1300.0,
        min_island_mm3: float = 5.0,
        smooth_mm: float = 0.2,
        open_mm: float = 0.4,
        fill_holes: bool = True,
    ) -> None:
        if not teeth_hu > bone_hu:
            raise ModelError(
                f"Expected teeth_hu above bone_hu, but got teeth_hu={teeth_hu} "
                f"and bone_hu={bone_hu}."
            )
        for name, value in (
            ("min_island_mm3", min_island_mm3),
            ("smooth_mm", smooth_mm),
            ("open_mm", open_mm),
        ):
            if not value >= 0:
                raise ModelError(f"Expected {name} >= 0, but got {value}.")

        self.bone_hu = float(bone_hu)
        self.teeth_hu = float(teeth_hu)
        self.min_island_mm3 = float(min_island_mm3)
        self.smooth_mm = float(smooth_mm)
        self.open_mm = float(open_mm)
        self.fill_holes = bool(fill_holes)
        self.labels = {1: "jaw", 2: "teeth"}
        self.model_id = _model_id(self.settings())

    def settings(self) -> dict[str, float | bool]:
        """The parameters, by the names the constructor takes."""
        return {
            "bone_hu": self.bone_hu,
            "teeth_hu": self.teeth_hu,
            "min_island_mm3": self.min_island_mm3,
            "smooth_mm": self.smooth_mm,
            "open_mm": self.open_mm,
            "fill_holes": self.fill_holes,
        }

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "settings": self.settings()}

    def segment(self, volume: Volume) -> Segmentation:
        started = time.perf_counter()
        spacing = np.asarray(volume.spacing, dtype=np.float64)
        data = volume.data
        if self.smooth_mm > 0:
            data = ndimage.gaussian_filter(
                data, sigma=self.smooth_mm / spacing, truncate=3.0
            )
        teeth = data >= self.teeth_hu
        bone = data >= self.bone_hu
        thresholded = time.perf_counter()

        min_voxels = int(np.ceil(self.min_island_mm3 / float(np.prod(spacing))))
        teeth = drop_islands(teeth, min_voxels)
        if self.fill_holes:
            teeth = ndimage.binary_fill_holes(teeth)
        jaw = bone & ~teeth
        if self.open_mm > 0:
            jaw = ndimage.binary_opening(jaw, structure=_ball(self.open_mm, spacing))
        jaw = drop_islands(jaw, min_voxels)

        labels = np.zeros(data.shape, dtype=np.uint8)
        labels[jaw] = 1
        labels[teeth] = 2
        finished = time.perf_counter()
        log.debug(
            "segmented model_id=%s teeth_voxels=%d jaw_voxels=%d",
            self.model_id,
            int(np.count_nonzero(teeth)),
            int(np.count_nonzero(jaw)),
        )
        return Segmentation(
            labels=labels,
            seconds={
                "inference": thresholded - started,
                "postprocess": finished - thresholded,
            },
        )


#: The constructor's defaults; settings equal to them leave the model id bare.
_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(ThresholdSegmenter).parameters.items()
}


def _model_id(settings: dict[str, float | bool]) -> str:
    """'threshold-v1', with a short hash of the settings that differ from the
    defaults, so output keys change whenever the segmentation can."""
    changed = {k: v for k, v in settings.items() if v != _DEFAULTS[k]}
    if not changed:
        return _VERSION
    digest = hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()
    return f"{_VERSION}-{digest[:8]}"


def _ball(radius_mm: float, spacing: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """An ellipsoidal structuring element of the given radius in mm, at least
    one voxel across in each direction."""
    half = np.maximum(np.rint(radius_mm / spacing), 1).astype(int)
    grid = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    distance = sum((g / h) ** 2 for g, h in zip(grid, half, strict=True))
    return np.asarray(distance <= 1, dtype=bool)

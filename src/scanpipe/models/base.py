"""The segmenter interface: one loaded model that turns a volume into labels.

A segmenter is loaded once per worker process and called for every scan, so
``load_segmenter`` does all expensive work (reading weights, building
sessions) and ``segment`` only computes.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Volume:
    """A validated scan: voxels in RAS-agnostic array order, with its geometry."""

    data: npt.NDArray[np.float32]  # shape (X, Y, Z), array order of the file
    affine: npt.NDArray[np.float64]  # 4x4 voxel-to-world (mm)
    spacing: tuple[float, float, float]  # mm per voxel along each array axis
    #: Notes from validation for the provenance record (e.g. non-finite fills).
    notes: dict[str, object] = field(default_factory=dict)


@dataclass
class Segmentation:
    """The result of one ``segment`` call: uint8 labels and stage timings."""

    labels: npt.NDArray[np.uint8]  # same shape as the input volume
    #: Seconds spent per stage; the worker adds them to the ledger
    #: ('inference', 'postprocess').
    seconds: dict[str, float] = field(default_factory=dict)


class Segmenter(abc.ABC):
    """A loaded model."""

    #: Stable identifier of the model and its settings; part of output keys,
    #: so changing weights or settings must change it.
    model_id: str
    #: Label names by value, background (0) excluded: {1: 'jaw', 2: 'teeth'}.
    labels: dict[int, str]

    @abc.abstractmethod
    def segment(self, volume: Volume) -> Segmentation:
        """Segment one volume; must not keep state between calls."""

    def describe(self) -> dict[str, object]:
        """Settings for the provenance record."""
        return {"model_id": self.model_id, "labels": self.labels}

"""Where a scan's mask and provenance record go, and what the record says.

The output key is derived from the input key, the input's ETag and the model
id, so the same object processed by the same model always lands on the same
keys: a redelivered or duplicated event finds its output and is dropped
without recomputing, while a new version of the object (new ETag) or another
model gets outputs of its own. The provenance record is written after the
mask, so its presence marks the scan complete.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

import scanpipe
from scanpipe.models.base import Segmentation, Volume

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_MASK_SUFFIX = ".mask.nii.gz"
_PROVENANCE_SUFFIX = ".json"


@dataclass(frozen=True)
class OutputKeys:
    mask: str
    provenance: str


def output_keys(input_key: str, etag: str, model_id: str) -> OutputKeys:
    """Derive the mask and provenance keys for one input object and model.

    ``scans/a b.nii.gz`` with ETag ``0cc1...`` and model ``threshold-v1`` gives
    ``scans/a b.threshold-v1.0cc175b9c0f1.mask.nii.gz`` and ``....json``.
    """
    folder, _, name = input_key.rpartition("/")
    stem = name
    for suffix in _NIFTI_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    model = _UNSAFE.sub("_", model_id).strip("._") or "model"
    tag = _UNSAFE.sub("", etag.split("-")[0])[:12] or "noetag"
    base = f"{stem}.{model}.{tag}"
    if folder:
        base = f"{folder}/{base}"
    return OutputKeys(mask=base + _MASK_SUFFIX, provenance=base + _PROVENANCE_SUFFIX)


def provenance_key(mask_key: str) -> str:
    """The provenance record's key beside a mask key from :func:`output_keys`."""
    return mask_key.removesuffix(_MASK_SUFFIX) + _PROVENANCE_SUFFIX


def label_statistics(
    labels: np.ndarray, volume: Volume, names: dict[int, str]
) -> dict[str, dict[str, float]]:
    """Voxel count and volume in millilitres of every label the model knows."""
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=max(names, default=0) + 1)
    return {
        name: {"voxels": int(counts[value]), "volume_ml": counts[value] * voxel_ml}
        for value, name in sorted(names.items())
    }


def provenance_record(
    *,
    bucket: str,
    input_key: str,
    etag: str,
    size_bytes: int,
    version_id: str | None,
    sequencer: str | None,
    mask_key: str,
    model: dict[str, Any],
    volume: Volume,
    segmentation: Segmentation,
    label_names: dict[int, str],
    seconds: dict[str, float],
    worker_id: str,
    attempts: int,
    started_at: float,
    finished_at: float,
) -> dict[str, Any]:
    """The JSON sidecar written beside a mask.

    It names its input by key and ETag only: no header text of the scan is
    copied, since that can hold patient data.
    """
    return {
        "schema": "scanpipe.provenance/1",
        "scanpipe_version": scanpipe.__version__,
        "input": {
            "bucket": bucket,
            "key": input_key,
            "etag": etag,
            "size_bytes": size_bytes,
            "version_id": version_id,
            "sequencer": sequencer,
        },
        "output": {"mask_key": mask_key},
        "model": model,
        "geometry": {
            "shape": list(volume.data.shape),
            "spacing_mm": [float(s) for s in volume.spacing],
            "affine": [[float(v) for v in row] for row in volume.affine],
        },
        "labels": label_statistics(segmentation.labels, volume, label_names),
        "validation": volume.notes,
        "seconds": seconds,
        "worker_id": worker_id,
        "attempts": attempts,
        "started_at": started_at,
        "finished_at": finished_at,
    }

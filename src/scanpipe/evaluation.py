"""Agreement between a predicted label volume and the ground truth.

Two measures per label: Dice (overlap) and HD95 (the 95th percentile of the
distances between the two surfaces, in mm, from the voxel spacing). Used by
``scanpipe evaluate`` and ``scanpipe tradeoff``, benchmarks and model tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from scanpipe.errors import ConfigError, ScanpipeError


def dice(
    pred: npt.NDArray[np.integer], gt: npt.NDArray[np.integer], label: int
) -> float:
    """Dice overlap of one label: 2|P ∩ G| / (|P| + |G|).

    Returns:
        A value in [0, 1]; 1.0 when the label is absent from both, since an
        empty prediction of an empty truth is exactly right.

    Raises:
        ValueError: the two volumes differ in shape.
    """
    if pred.shape != gt.shape:
        raise ValueError(
            f"Expected volumes of the same shape, but got {pred.shape} and {gt.shape}."
        )
    in_pred = pred == label
    in_gt = gt == label
    total = int(np.count_nonzero(in_pred)) + int(np.count_nonzero(in_gt))
    if total == 0:
        return 1.0
    both = int(np.count_nonzero(in_pred & in_gt))
    return 2.0 * both / total


def dice_per_label(
    pred: npt.NDArray[np.integer], gt: npt.NDArray[np.integer], labels: Iterable[int]
) -> dict[int, float]:
    """Dice of each label in ``labels``, keyed by label value."""
    return {label: dice(pred, gt, label) for label in labels}


def hd95_mm(
    pred: npt.NDArray[np.integer],
    gt: npt.NDArray[np.integer],
    label: int,
    spacing: tuple[float, float, float],
) -> float:
    """95th percentile Hausdorff distance of one label's surfaces, in mm.

    The distances from each surface voxel of one mask to the nearest surface
    voxel of the other, in both directions, pooled; the 95th percentile of
    the pool, as medpy's ``hd95`` computes it.

    Returns:
        0.0 when the label is absent from both; ``inf`` when it is absent
        from exactly one, since no distance exists.

    Raises:
        ValueError: the two volumes differ in shape.
    """
    if pred.shape != gt.shape:
        raise ValueError(
            f"Expected volumes of the same shape, but got {pred.shape} and {gt.shape}."
        )
    in_pred, in_gt = pred == label, gt == label
    has_pred, has_gt = bool(in_pred.any()), bool(in_gt.any())
    if not has_pred and not has_gt:
        return 0.0
    if not (has_pred and has_gt):
        return math.inf

    # Distances only matter near the two masks; crop to their joint box.
    window = _bounding_box(in_pred | in_gt)
    in_pred, in_gt = in_pred[window], in_gt[window]
    pred_surface, gt_surface = _surface(in_pred), _surface(in_gt)
    to_gt = ndimage.distance_transform_edt(~gt_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    distances = np.concatenate([to_gt[pred_surface], to_pred[gt_surface]])
    return float(np.percentile(distances, 95))


def finite_or_none(value: float) -> float | None:
    """A distance for JSON, which has no infinity: None where none exists."""
    return value if math.isfinite(value) else None


def _surface(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Voxels of the mask with a 6-neighbour outside it."""
    eroded = ndimage.binary_erosion(mask, border_value=0)
    return np.asarray(mask & ~eroded, dtype=bool)


def _bounding_box(mask: npt.NDArray[np.bool_]) -> tuple[slice, ...]:
    # One voxel of margin so that surfaces on the box edge stay surfaces.
    window = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(np.any(mask, axis=other))
        low = max(int(present[0]) - 1, 0)
        window.append(slice(low, int(present[-1]) + 2))
    return tuple(window)


@dataclass(frozen=True)
class CaseScore:
    """Dice and HD95 (mm) of each label of one case, by label name."""

    case: str
    dice: dict[str, float]
    hd95_mm: dict[str, float]


def score_case(
    case: str,
    pred: npt.NDArray[np.integer],
    gt: npt.NDArray[np.integer],
    spacing: tuple[float, float, float],
    labels: Mapping[int, str],
) -> CaseScore:
    """Dice and HD95 of every label in ``labels`` (value to name)."""
    return CaseScore(
        case=case,
        dice={name: dice(pred, gt, value) for value, name in labels.items()},
        hd95_mm={
            name: hd95_mm(pred, gt, value, spacing) for value, name in labels.items()
        },
    )


def mean_scores(scores: Iterable[CaseScore]) -> dict[str, dict[str, float]]:
    """Mean Dice and mean HD95 per label over cases.

    A case whose HD95 is infinite (a label missed or invented entirely)
    makes the mean infinite: a mean that hid it would flatter the model.
    """
    scores = list(scores)
    names = sorted({name for s in scores for name in s.dice})
    return {
        name: {
            "dice": float(np.mean([s.dice[name] for s in scores])),
            "hd95_mm": float(np.mean([s.hd95_mm[name] for s in scores])),
        }
        for name in names
    }


def load_labels(path: Path) -> tuple[npt.NDArray[np.int32], tuple[float, ...]]:
    """A label file as integers, with its spacing in mm.

    Raises:
        ConfigError: the file is not a valid 3D NIfTI volume of whole numbers.
    """
    from scanpipe.imaging.nifti import load_scan

    try:
        volume = load_scan(path)
    except ScanpipeError as exc:
        raise ConfigError(f"Expected a label volume at {path}, but: {exc}") from exc
    values = np.rint(volume.data)
    if not np.array_equal(values, volume.data) or values.min() < 0:
        raise ConfigError(
            f"Expected non-negative whole label values in {path}, but found "
            "fractional or negative voxels."
        )
    return values.astype(np.int32), volume.spacing


def label_names(gt_dir: Path, present: Iterable[int]) -> dict[int, str]:
    """Names of the labels present, from a ``dataset.json`` beside ``gt_dir``.

    nnU-Net's raw layout keeps ``dataset.json`` in the folder above
    ``labelsTr``; without one, labels are named by their value.
    """
    import json

    names: dict[int, str] = {}
    for candidate in (gt_dir / "dataset.json", gt_dir.parent / "dataset.json"):
        if candidate.is_file():
            try:
                raw = json.loads(candidate.read_text()).get("labels", {})
            except (OSError, ValueError, AttributeError):
                raw = {}
            names = {v: str(k) for k, v in raw.items() if isinstance(v, int)}
            break
    return {value: names.get(value, str(value)) for value in sorted(present) if value}


def evaluate_folders(pred_dir: Path, gt_dir: Path) -> list[CaseScore]:
    """Score every ground-truth file in ``gt_dir`` against ``pred_dir``.

    A case is a file ``NAME.nii.gz`` (or ``.nii``) in ``gt_dir``, or in its
    ``labelsTr`` when ``gt_dir`` is a dataset in nnU-Net's raw layout; its
    prediction is ``NAME.nii.gz`` in ``pred_dir``, as nnU-Net names
    predictions, or ``NAME_0000.nii.gz``, the name of the image it was made
    from. The labels scored are those present in any ground-truth file.

    Raises:
        ConfigError: a folder is empty or missing, a prediction is missing,
            or a prediction's shape differs from its ground truth.
    """
    if not any(gt_dir.glob("*.nii*")) and (gt_dir / "labelsTr").is_dir():
        gt_dir = gt_dir / "labelsTr"  # a dataset root in nnU-Net's raw layout
    gt_files = _nifti_files(gt_dir, "ground-truth")
    predictions = {
        truth: found
        for truth in gt_files
        if (found := _prediction_of(pred_dir, truth)) is not None
    }
    missing = [p.name for p in gt_files if p not in predictions]
    if missing:
        raise ConfigError(
            f"Expected a prediction in {pred_dir} for every case in {gt_dir}, "
            f"but {len(missing)} are missing: {', '.join(missing[:5])}."
        )

    cases = []
    present: set[int] = set()
    for path, pred_path in predictions.items():
        gt, spacing = load_labels(path)
        pred, _ = load_labels(pred_path)
        if pred.shape != gt.shape:
            raise ConfigError(
                f"Expected {pred_path} to have the shape of its "
                f"ground truth {gt.shape}, but it has {pred.shape}."
            )
        present |= {int(v) for v in np.unique(gt)}
        cases.append((_case_name(path), pred, gt, spacing))

    labels = label_names(gt_dir, present)
    return [
        score_case(name, pred, gt, (s[0], s[1], s[2]), labels)
        for name, pred, gt, s in cases
    ]


def _nifti_files(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(f"Expected a folder of {what} files at {folder}.")
    files = sorted(p for p in folder.iterdir() if p.name.endswith((".nii.gz", ".nii")))
    if not files:
        raise ConfigError(
            f"Expected {what} files (.nii.gz or .nii) in {folder}, but found none."
        )
    return files


def _prediction_of(pred_dir: Path, truth: Path) -> Path | None:
    """The prediction of a ground-truth file: the same name, as nnU-Net
    writes it, or the image's name (``NAME_0000``), either NIfTI suffix."""
    name = _case_name(truth)
    for stem in (name, f"{name}_0000"):
        for suffix in (".nii.gz", ".nii"):
            candidate = pred_dir / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _case_name(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".nii")

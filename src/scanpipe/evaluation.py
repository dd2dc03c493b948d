"""Agreement between a predicted label volume and the ground truth.

Used by benchmarks and model tests to say how good a segmenter is, per label.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt


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

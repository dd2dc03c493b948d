"""From network logits back to a label mask on the scan's own grid.

The reverse of preprocessing, in nnU-Net's order: resample the logits from
the plans' spacing to the cropped shape (linear in-plane, nearest along a
separate anisotropic axis), take the most likely label, put the crop back
into a full-size mask, and undo the transpose.

Resampled logits keep the sliding window's precision (float16, as in
nnU-Net, where it decides ties). The argmax is taken one channel at a time
while resampling, so only two full-size float arrays exist at once instead
of one per label; ties go to the lower label, as ``argmax`` decides them.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from scanpipe.models.engine.plans import ModelPlans
from scanpipe.models.engine.preprocessing import Preprocessed
from scanpipe.models.engine.resampling import resample_to_shape


def logits_to_labels(
    logits: npt.NDArray[np.floating], case: Preprocessed, plans: ModelPlans
) -> npt.NDArray[np.uint8]:
    """Labels of the case in the axis order it was given to :func:`preprocess`.

    Args:
        logits: (heads, *shape) at the plans' spacing, network axis order.
        case: what preprocessing recorded about the case.
        plans: the model's plans.
    """
    spec = plans.resample_probabilities
    best: npt.NDArray[np.floating] | None = None
    labels = np.zeros(case.shape_after_cropping, dtype=np.uint8)
    for head in range(logits.shape[0]):
        # nnU-Net resamples from the plans' spacing to the case's spacing.
        channel = resample_to_shape(
            logits[head : head + 1],
            case.shape_after_cropping,
            plans.spacing,
            case.spacing,
            order=spec.order,
            order_z=spec.order_z,
            force_separate_z=spec.force_separate_z,
            out_dtype=logits.dtype,
        )[0]
        if best is None:
            best = np.array(channel, copy=True)
            continue
        better = channel > best
        labels[better] = head
        np.maximum(best, channel, out=best)

    full = np.zeros(case.shape_before_cropping, dtype=np.uint8)
    full[tuple(slice(a, b) for a, b in case.bbox)] = labels
    return np.ascontiguousarray(full.transpose(plans.transpose_backward))

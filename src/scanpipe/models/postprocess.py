"""Per-label clean-up of a mask with connected components, for any model.

This is nnU-Net's post-processing step: for the labels it is configured for,
keep only the largest connected piece, and drop pieces smaller than a volume
in mm³ ("islands"). Removed voxels become background. Components are found
with cc3d at 26-connectivity (a piece touching another at a corner is the
same piece).

A spec turns it on with two options, for any backend::

    builtin?keep_largest=jaw&min_island_mm3=teeth:5
    nnunet:MODEL_DIR?keep_largest=all&min_island_mm3=20

``keep_largest`` takes label names or values separated by commas, or
``all``; ``min_island_mm3`` takes one volume for every label, or
``label:volume`` pairs separated by commas.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import cc3d
import numpy as np
import numpy.typing as npt

from scanpipe.errors import ModelError
from scanpipe.models.base import Segmentation, Segmenter, Volume

#: Spec options read here, before the backend sees the rest.
SPEC_OPTIONS = ("keep_largest", "min_island_mm3")


@dataclass(frozen=True)
class LabelRule:
    """What happens to one label's connected pieces."""

    keep_largest: bool = False
    min_island_mm3: float = 0.0


def drop_islands(mask: npt.NDArray[np.bool_], min_voxels: int) -> npt.NDArray[np.bool_]:
    """``mask`` without connected pieces of fewer than ``min_voxels`` voxels."""
    if min_voxels <= 1 or not mask.any():
        return mask
    kept = cc3d.dust(mask.view(np.uint8), threshold=min_voxels, connectivity=26)
    return np.asarray(kept, dtype=bool)


def keep_largest(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """``mask`` reduced to its largest connected piece."""
    if not mask.any():
        return mask
    largest = cc3d.largest_k(mask.view(np.uint8), k=1, connectivity=26)
    return np.asarray(largest, dtype=bool)


def apply_rules(
    labels: npt.NDArray[np.uint8],
    spacing: tuple[float, float, float],
    rules: Mapping[int, LabelRule],
) -> npt.NDArray[np.uint8]:
    """Apply each label's rule; voxels removed from a label become background.

    Args:
        labels: the mask, uint8 label values.
        spacing: mm per voxel along each axis, to turn mm³ into voxels.
        rules: rules by label value; labels without one are left alone.
    """
    voxel_mm3 = float(np.prod(spacing))
    out = labels.copy()
    for value, rule in sorted(rules.items()):
        mask = out == value
        kept = mask
        if rule.keep_largest:
            kept = keep_largest(kept)
        if rule.min_island_mm3 > 0:
            kept = drop_islands(kept, int(np.ceil(rule.min_island_mm3 / voxel_mm3)))
        out[mask & ~kept] = 0
    return out


def parse_rules(
    options: Mapping[str, str], labels: Mapping[int, str]
) -> dict[int, LabelRule]:
    """Rules by label value from a spec's ``keep_largest`` and ``min_island_mm3``.

    Args:
        options: the spec's options; others are ignored.
        labels: the model's foreground labels by value, to resolve names.

    Raises:
        ModelError: a label the model does not have, or a malformed volume.
    """
    largest: set[int] = set()
    raw = options.get("keep_largest")
    if raw is not None:
        names = [part.strip() for part in raw.split(",") if part.strip()]
        if names == ["all"]:
            largest = set(labels)
        else:
            largest = {_label_value(name, labels) for name in names}
        if not largest:
            raise ModelError(
                "Expected keep_largest to name labels or 'all', but it is empty."
            )

    islands: dict[int, float] = {}
    raw = options.get("min_island_mm3")
    if raw is not None:
        for part in raw.split(","):
            name, sep, volume = part.strip().rpartition(":")
            targets = [_label_value(name, labels)] if sep else list(labels)
            number = _volume_mm3(volume, raw)
            for value in targets:
                islands[value] = number

    return {
        value: LabelRule(value in largest, islands.get(value, 0.0))
        for value in sorted(largest | set(islands))
    }


def _label_value(name: str, labels: Mapping[int, str]) -> int:
    by_name = {n: v for v, n in labels.items()}
    if name in by_name:
        return by_name[name]
    if name.isdigit() and int(name) in labels:
        return int(name)
    known = ", ".join(f"{n} ({v})" for v, n in sorted(labels.items()))
    raise ModelError(
        f"Expected a label of the model ({known}) in the post-processing "
        f"options, but found {name!r}."
    )


def _volume_mm3(text: str, whole: str) -> float:
    try:
        number = float(text)
    except ValueError:
        number = -1.0
    if not (np.isfinite(number) and number >= 0):
        raise ModelError(
            "Expected min_island_mm3 as a volume in mm³ or label:volume pairs, "
            f"but found {whole!r}."
        )
    return number


class PostprocessedSegmenter(Segmenter):
    """Another segmenter's masks, cleaned up per label.

    The rules are part of ``model_id``, so masks cleaned up differently get
    different output keys.
    """

    def __init__(self, inner: Segmenter, rules: Mapping[int, LabelRule]) -> None:
        self.inner = inner
        self.rules = dict(rules)
        self.labels = dict(inner.labels)
        described = {str(v): asdict(r) for v, r in sorted(self.rules.items())}
        digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
        self.model_id = f"{inner.model_id}-pp{digest.hexdigest()[:8]}"

    def segment(self, volume: Volume) -> Segmentation:
        result = self.inner.segment(volume)
        started = time.perf_counter()
        labels = apply_rules(result.labels, volume.spacing, self.rules)
        seconds = dict(result.seconds)
        seconds["postprocess"] = seconds.get("postprocess", 0.0) + (
            time.perf_counter() - started
        )
        return Segmentation(labels=labels, seconds=seconds)

    def describe(self) -> dict[str, object]:
        return {
            **self.inner.describe(),
            "model_id": self.model_id,
            "postprocessing": {
                self.labels.get(v, str(v)): asdict(r)
                for v, r in sorted(self.rules.items())
            },
        }

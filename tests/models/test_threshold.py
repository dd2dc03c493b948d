"""The threshold baseline segments phantoms well, and its specs parse strictly."""

from __future__ import annotations

import numpy as np
import pytest

from scanpipe.errors import ModelError
from scanpipe.evaluation import dice_per_label
from scanpipe.imaging.phantom import JAW, TEETH, make_phantom
from scanpipe.models import ThresholdSegmenter, load_segmenter
from scanpipe.models.base import Volume

#: Measured on these phantoms: jaw 0.95-0.98, teeth 0.93-0.99 Dice.
MIN_DICE = 0.90


def make_volume(
    seed: int, shape: tuple[int, int, int] = (96, 96, 72), spacing: float = 0.5
) -> tuple[Volume, np.ndarray]:
    image, labels, affine = make_phantom(shape, spacing, seed)
    return Volume(image, affine, (spacing, spacing, spacing)), labels


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed0", "seed1", "seed2"])
def test_threshold_segments_jaw_and_teeth_of_a_phantom(seed: int):
    volume, truth = make_volume(seed)

    result = ThresholdSegmenter().segment(volume)

    scores = dice_per_label(result.labels, truth, [JAW, TEETH])
    assert scores[JAW] >= MIN_DICE
    assert scores[TEETH] >= MIN_DICE


def test_a_segmentation_is_uint8_labels_with_stage_timings():
    volume, _ = make_volume(0, shape=(48, 48, 36), spacing=0.5)
    segmenter = ThresholdSegmenter()

    result = segmenter.segment(volume)

    assert result.labels.dtype == np.uint8
    assert result.labels.shape == volume.data.shape
    assert set(np.unique(result.labels)) <= {0, 1, 2}
    assert set(result.seconds) == {"inference", "postprocess"}
    assert all(seconds >= 0 for seconds in result.seconds.values())
    assert segmenter.labels == {1: "jaw", 2: "teeth"}


def test_a_scan_without_bone_gives_an_empty_mask():
    data = np.full((32, 32, 32), 40.0, dtype=np.float32)
    volume = Volume(data, np.eye(4), (0.4, 0.4, 0.4))

    result = ThresholdSegmenter().segment(volume)

    assert not result.labels.any()


def test_islands_smaller_than_the_minimum_are_removed():
    data = np.full((40, 40, 40), 0.0, dtype=np.float32)
    data[5:7, 5:7, 5:7] = 2000  # 8 voxels: 0.5 mm3 at 0.4 mm
    data[20:30, 20:30, 20:30] = 2000
    volume = Volume(data, np.eye(4), (0.4, 0.4, 0.4))

    labels = ThresholdSegmenter(smooth_mm=0, min_island_mm3=1).segment(volume).labels

    assert not labels[:10, :10, :10].any()
    assert (labels[21:29, 21:29, 21:29] == TEETH).all()


def test_a_cavity_inside_a_tooth_is_filled():
    data = np.zeros((30, 30, 30), dtype=np.float32)
    data[5:25, 5:25, 5:25] = 1800
    data[12:18, 12:18, 12:18] = 80  # pulp
    volume = Volume(data, np.eye(4), (0.4, 0.4, 0.4))

    labels = ThresholdSegmenter(smooth_mm=0).segment(volume).labels

    assert (labels[12:18, 12:18, 12:18] == TEETH).all()


def test_the_model_id_changes_with_the_settings_and_only_then():
    default = ThresholdSegmenter()

    assert default.model_id == "threshold-v1"
    assert ThresholdSegmenter(teeth_hu=1300).model_id == "threshold-v1"
    changed = ThresholdSegmenter(teeth_hu=1400)
    assert changed.model_id.startswith("threshold-v1-")
    assert changed.model_id == ThresholdSegmenter(teeth_hu=1400.0).model_id
    assert changed.model_id != ThresholdSegmenter(bone_hu=400).model_id
    assert changed.describe()["settings"] == changed.settings()


@pytest.mark.parametrize(
    "settings",
    [{"bone_hu": 1500, "teeth_hu": 1400}, {"min_island_mm3": -1}, {"smooth_mm": -0.1}],
    ids=["teeth-below-bone", "negative-island", "negative-smoothing"],
)
def test_invalid_settings_are_a_model_error(settings: dict[str, float]):
    with pytest.raises(ModelError, match="Expected"):
        ThresholdSegmenter(**settings)


def test_a_bare_kind_loads_the_defaults():
    segmenter = load_segmenter("threshold")

    assert isinstance(segmenter, ThresholdSegmenter)
    assert segmenter.model_id == "threshold-v1"


def test_options_in_the_spec_set_the_parameters():
    segmenter = load_segmenter(
        "threshold:bone=400, teeth=1400,min_island_mm3=5,fill_holes=false"
    )

    assert isinstance(segmenter, ThresholdSegmenter)
    assert segmenter.bone_hu == 400
    assert segmenter.teeth_hu == 1400
    assert segmenter.min_island_mm3 == 5
    assert segmenter.fill_holes is False
    assert (
        segmenter.model_id
        == load_segmenter("threshold:fill_holes=no,teeth=1400,bone=400").model_id
    )


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("tensorrt:/models/jaw.plan", ["'tensorrt'", "threshold"]),
        ("", ["''", "threshold"]),
        ("threshold:bone=abc", ["'bone'", "'abc'", "number"]),
        ("threshold:bone=nan", ["'bone'", "'nan'"]),
        ("threshold:color=red", ["'color'", "bone, teeth"]),
        ("threshold:bone", ["'bone'", "key=value"]),
        ("threshold:bone=400,", ["''", "key=value"]),
        ("threshold:bone=1,bone=2", ["'bone'", "twice"]),
        ("threshold:fill_holes=maybe", ["'fill_holes'", "'maybe'"]),
        ("threshold:teeth=100", ["teeth_hu=100"]),
    ],
    ids=[
        "unknown-kind",
        "empty",
        "not-a-number",
        "nan",
        "unknown-option",
        "no-value",
        "empty-item",
        "repeated",
        "not-a-boolean",
        "teeth-below-bone",
    ],
)
def test_a_bad_spec_is_a_model_error_naming_the_culprit(spec: str, named: list[str]):
    with pytest.raises(ModelError) as caught:
        load_segmenter(spec)

    for text in named:
        assert text in str(caught.value)

"""Phantoms are deterministic per seed, anatomically plausible, and written in
nnU-Net's raw-dataset layout."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scanpipe.imaging.phantom import JAW, TEETH, make_phantom, write_dataset

SMALL = (48, 48, 36)


def test_the_same_seed_gives_the_same_phantom():
    first = make_phantom(SMALL, 0.4, seed=7)
    second = make_phantom(SMALL, 0.4, seed=7)

    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_different_seeds_give_different_anatomy():
    _, labels_a, _ = make_phantom(SMALL, 0.4, seed=1)
    _, labels_b, _ = make_phantom(SMALL, 0.4, seed=2)

    assert (labels_a != labels_b).mean() > 0.005


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed0", "seed1", "seed2"])
def test_a_phantom_has_jaw_and_teeth_with_ct_like_values(seed: int):
    image, labels, affine = make_phantom((64, 64, 48), 0.5, seed)

    assert image.dtype == np.float32 and labels.dtype == np.uint8
    assert image.shape == labels.shape == (64, 64, 48)
    assert set(np.unique(labels)) == {0, JAW, TEETH}
    assert np.median(image[0, 0, :]) < -900  # air in the corners
    assert np.median(image[32, 32, 24]) == pytest.approx(30, abs=200)  # soft tissue
    bone = np.median(image[labels == JAW])
    assert 600 < bone < 1300
    assert 1500 < np.median(image[labels == TEETH]) < 2300
    # Enamel caps make the brightest tooth voxels far denser than any bone.
    assert np.percentile(image[labels == TEETH], 95) > 2200
    assert np.percentile(image[labels == TEETH], 95) > np.percentile(
        image[labels == JAW], 99
    )
    np.testing.assert_array_equal(np.diag(affine), [0.5, 0.5, 0.5, 1.0])


def test_teeth_stand_above_the_jaw():
    _, labels, _ = make_phantom((64, 64, 48), 0.5, seed=0)
    teeth_z = np.nonzero(labels == TEETH)[2]
    jaw_z = np.nonzero(labels == JAW)[2]

    assert teeth_z.max() > jaw_z.max() + 5  # crowns above the bone
    assert teeth_z.min() < jaw_z.max() - 5  # roots inside it
    assert jaw_z.min() < teeth_z.min()


def test_a_finer_spacing_draws_the_same_anatomy_at_more_voxels():
    _, coarse, _ = make_phantom((48, 48, 36), 0.4, seed=3)
    _, fine, _ = make_phantom((96, 96, 72), 0.2, seed=3)

    for label in (JAW, TEETH):
        coarse_mm3 = np.count_nonzero(coarse == label) * 0.4**3
        fine_mm3 = np.count_nonzero(fine == label) * 0.2**3
        assert fine_mm3 == pytest.approx(coarse_mm3, rel=0.05)
        coarse_center = np.argwhere(coarse == label).mean(axis=0) * 0.4 - 47 * 0.4 / 2
        fine_center = np.argwhere(fine == label).mean(axis=0) * 0.2 - 95 * 0.2 / 2
        np.testing.assert_allclose(fine_center[:2], coarse_center[:2], atol=0.2)


@pytest.mark.parametrize("spacing", [0.1, 0.6], ids=["too-fine", "too-coarse"])
def test_spacing_outside_cbct_range_is_refused(spacing: float):
    with pytest.raises(ValueError, match=r"between 0\.2 and 0\.5 mm"):
        make_phantom(SMALL, spacing)


def test_a_dataset_has_the_nnunet_raw_layout(tmp_path: Path):
    images = write_dataset(tmp_path, count=2, seed=5, shape=SMALL, name_prefix="jaw")

    assert images == [
        tmp_path / "imagesTr" / "jaw_000_0000.nii.gz",
        tmp_path / "imagesTr" / "jaw_001_0000.nii.gz",
    ]
    assert sorted(p.name for p in (tmp_path / "labelsTr").iterdir()) == [
        "jaw_000.nii.gz",
        "jaw_001.nii.gz",
    ]
    dataset = json.loads((tmp_path / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CT"}
    assert dataset["labels"] == {"background": 0, "jaw": 1, "teeth": 2}
    assert dataset["numTraining"] == 2
    assert dataset["file_ending"] == ".nii.gz"
    assert dataset["description"]

    image = nib.load(images[0])
    labels = nib.load(tmp_path / "labelsTr" / "jaw_000.nii.gz")
    assert image.get_data_dtype() == np.int16
    assert labels.get_data_dtype() == np.uint8
    assert image.shape == labels.shape == SMALL
    np.testing.assert_array_equal(image.affine, labels.affine)
    np.testing.assert_allclose(np.diag(image.affine), [0.4, 0.4, 0.4, 1.0])
    assert set(np.unique(np.asarray(labels.dataobj))) == {0, 1, 2}


def test_adding_cases_leaves_earlier_cases_unchanged(tmp_path: Path):
    write_dataset(tmp_path / "one", count=1, seed=9, shape=SMALL)
    write_dataset(tmp_path / "two", count=2, seed=9, shape=SMALL)

    for folder in ("imagesTr/cbct_000_0000.nii.gz", "labelsTr/cbct_000.nii.gz"):
        one = np.asarray(nib.load(tmp_path / "one" / folder).dataobj)
        two = np.asarray(nib.load(tmp_path / "two" / folder).dataobj)
        np.testing.assert_array_equal(one, two)
    case0 = np.asarray(nib.load(tmp_path / "two/imagesTr/cbct_000_0000.nii.gz").dataobj)
    case1 = np.asarray(nib.load(tmp_path / "two/imagesTr/cbct_001_0000.nii.gz").dataobj)
    assert not np.array_equal(case0, case1)

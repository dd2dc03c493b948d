"""Dice scores per label, with empty-versus-empty counted as perfect."""

from __future__ import annotations

import numpy as np
import pytest

from scanpipe.evaluation import dice, dice_per_label


def make_pair() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((10, 10, 10), dtype=np.uint8)
    truth[0:4] = 1  # 400 voxels
    truth[6:8] = 2  # 200 voxels
    pred = truth.copy()
    pred[0:2] = 0  # half of label 1 missed
    return pred, truth


def test_dice_counts_overlap_against_both_sizes():
    pred, truth = make_pair()

    assert dice(pred, truth, 1) == pytest.approx(2 * 200 / (200 + 400))
    assert dice(pred, truth, 2) == 1.0


def test_a_label_absent_from_both_scores_one_and_from_one_scores_zero():
    pred, truth = make_pair()

    assert dice(pred, truth, 3) == 1.0
    assert dice(np.zeros_like(truth), truth, 2) == 0.0


def test_dice_per_label_keys_by_label():
    pred, truth = make_pair()

    assert dice_per_label(pred, truth, [1, 2]) == {
        1: pytest.approx(2 / 3),
        2: 1.0,
    }


def test_volumes_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        dice(np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 3), np.uint8), 1)

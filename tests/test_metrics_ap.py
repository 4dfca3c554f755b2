"""Average precision (SIPEC Methods): hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sipec_models.metrics import average_precision, mask_iou


def _square(x0, y0, x1, y1, size=20):
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


A = _square(0, 0, 4, 4)
B = _square(10, 10, 14, 14)
C = _square(15, 0, 19, 4)


def test_mask_iou_values():
    half = _square(0, 0, 4, 2)  # 8 of A's 16 px
    iou = mask_iou(np.stack([A, half]), np.stack([A, B]))
    np.testing.assert_allclose(iou, [[1, 0], [0.5, 0]])
    assert mask_iou(np.zeros((0, 20, 20), bool), np.stack([A])).shape == (0, 1)


def test_perfect():
    preds = [(np.array([0.9, 0.8]), np.stack([A, B])), (np.array([0.7]), np.stack([C]))]
    truths = [np.stack([A, B]), np.stack([C])]
    assert average_precision(preds, truths) == pytest.approx(1.0)


def test_false_positive_ranked_above_true_positive():
    # Ranking: FP (0.9), TP (0.8). Precision [0, 0.5], recall [0, 1] (one truth).
    # AP = (0 - 0) * 1/2 + (1 - 0) * 1/2 = 0.5
    preds = [(np.array([0.9, 0.8]), np.stack([C, A]))]
    ap, p, r = average_precision(preds, [np.stack([A])], return_curve=True)
    assert ap == pytest.approx(0.5)
    np.testing.assert_allclose(p, [0, 0.5])
    np.testing.assert_allclose(r, [0, 1])


def test_false_positive_ranked_below_costs_nothing():
    preds = [(np.array([0.9, 0.1]), np.stack([A, C]))]
    assert average_precision(preds, [np.stack([A])]) == pytest.approx(1.0)


def test_missed_truth():
    # Two truths, one found with the top score: recall 0.5 at precision 1 -> AP 0.5.
    preds = [(np.array([0.9]), np.stack([A]))]
    assert average_precision(preds, [np.stack([A, B])]) == pytest.approx(0.5)


def test_interpolated_precision_three_detections():
    # Ranking over two frames: TP, FP, TP with 2 truths. p = [1, 1/2, 2/3], r = [1/2, 1/2, 1].
    # p_interp = [1, 2/3, 2/3]: AP = 1/2 * 1 + 0 + 1/2 * 2/3 = 5/6.
    preds = [(np.array([0.9, 0.8]), np.stack([A, C])), (np.array([0.7]), np.stack([B]))]
    truths = [np.stack([A]), np.stack([B])]
    assert average_precision(preds, truths) == pytest.approx(5 / 6)


def test_duplicate_detection_is_false_positive():
    preds = [(np.array([0.9, 0.8]), np.stack([A, A]))]
    ap, p, _ = average_precision(preds, [np.stack([A])], return_curve=True)
    assert ap == pytest.approx(1.0)
    np.testing.assert_allclose(p, [1, 0.5])


def test_iou_exactly_at_threshold_is_a_miss():
    half = _square(0, 0, 4, 2)  # IoU with A = 0.5 exactly
    preds = [(np.array([0.9]), np.stack([half]))]
    assert average_precision(preds, [np.stack([A])], iou_threshold=0.5) == 0.0
    assert average_precision(preds, [np.stack([A])], iou_threshold=0.49) == pytest.approx(1.0)


def test_box_kind_matches_mask_kind_for_rectangles():
    boxes = np.array([[0, 0, 4, 4], [15, 0, 19, 4]], float)
    tbox = np.array([[0, 0, 4, 4]], float)
    preds_box = [(np.array([0.9, 0.8]), boxes)]
    preds_mask = [(np.array([0.9, 0.8]), np.stack([A, C]))]
    ap_box = average_precision(preds_box, [tbox], kind="box")
    assert ap_box == pytest.approx(1.0)
    assert ap_box == pytest.approx(average_precision(preds_mask, [np.stack([A])], kind="mask"))
    # Half-overlapping box: IoU 0.5 exactly -> miss; NaN rows are ignored.
    half = [(np.array([0.9, 0.5]), np.array([[0, 0, 4, 2], [np.nan] * 4]))]
    assert average_precision(half, [tbox], kind="box") == 0.0


def test_no_predictions_and_no_truths():
    assert average_precision([(np.zeros(0), np.zeros((0, 20, 20), bool))], [np.stack([A])]) == 0.0
    assert math.isnan(average_precision([(np.array([0.9]), np.stack([A]))], [np.zeros((0, 20, 20), bool)]))
    assert math.isnan(average_precision([], []))
    with pytest.raises(ValueError, match="frames"):
        average_precision([(np.array([0.9]), np.stack([A]))], [])

"""Evaluation against ground truth: matching tracks to true animals and centre-of-mass error.

Box IoU lives in :func:`sipec_models.tracking.box_iou`; identity switches in
:func:`sipec_models.tracking.identity_switches`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment


def positions_array(table: pd.DataFrame, animal_col: str = "animal", x: str = "x", y: str = "y",
                    n_frames: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Long table (frame, animal, x, y) -> ``(T, A, 2)`` float array (NaN where absent) and animal names."""
    names = sorted(table[animal_col].unique())
    n_frames = int(table["frame"].max()) + 1 if n_frames is None else n_frames
    out = np.full((n_frames, len(names), 2), np.nan)
    index = {a: i for i, a in enumerate(names)}
    rows = table[table["frame"] < n_frames]
    out[rows["frame"].to_numpy(), rows[animal_col].map(index).to_numpy()] = rows[[x, y]].to_numpy(float)
    return out, names


def match_tracks_to_truth(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """One-to-one assignment of predicted tracks to true animals by mean distance over the video.

    Args:
        pred: ``(T, A, 2)`` predicted centres (px, NaN when missing).
        truth: ``(T, G, 2)`` true centres.

    Returns:
        ``(A,)`` index of the true animal for each track (-1 if unmatched).
    """
    d = np.linalg.norm(pred[:, :, None, :] - truth[:, None, :, :], axis=-1)  # (T, A, G)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(d)
        cost = np.where(valid, d, 0).sum(0) / np.maximum(valid.sum(0), 1)
    cost[valid.sum(0) == 0] = 1e9
    rows, cols = linear_sum_assignment(cost)
    mapping = np.full(pred.shape[1], -1)
    mapping[rows] = cols
    return mapping


def centre_errors(pred: np.ndarray, truth: np.ndarray, mapping: np.ndarray | None = None) -> np.ndarray:
    """Per-frame, per-track distance (px) between predicted and matched true centres (NaN where missing)."""
    mapping = match_tracks_to_truth(pred, truth) if mapping is None else mapping
    errors = np.full(pred.shape[:2], np.nan)
    for a, g in enumerate(mapping):
        if g >= 0:
            errors[:, a] = np.linalg.norm(pred[:, a] - truth[:, g], axis=-1)
    return errors

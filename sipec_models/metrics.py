"""Evaluation against ground truth: track matching, centre-of-mass error, detection AP, pose accuracy.

Box IoU lives in :func:`sipec_models.tracking.box_iou`; identity switches in
:func:`sipec_models.tracking.identity_switches`.
"""

from __future__ import annotations

from typing import Sequence

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


def match_instances(pred: np.ndarray, truth: np.ndarray, max_distance: float = np.inf) -> np.ndarray:
    """Per-frame one-to-one matching of predicted instances to true animals by distance (Hungarian).

    Unlike :func:`match_tracks_to_truth` (one assignment for the whole video),
    each frame is matched on its own, so identity does not matter: use it to
    score what a detection or pose prediction found, not who it is.

    Args:
        pred: ``(T, I, 2)`` predicted positions, px (a NaN row: no instance).
        truth: ``(T, G, 2)`` true positions, px (NaN: animal not labelled).
        max_distance: pairs farther apart than this (px) stay unmatched.

    Returns:
        ``(T, G)`` int: the instance matched to each true animal, -1 where none.
    """
    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    if pred.ndim != 3 or truth.ndim != 3 or len(pred) != len(truth):
        raise ValueError(f"need (T, I, 2) and (T, G, 2) positions; got {pred.shape} and {truth.shape}")
    out = np.full(truth.shape[:2], -1)
    d = np.linalg.norm(pred[:, :, None, :] - truth[:, None, :, :], axis=-1)  # (T, I, G)
    ok = np.isfinite(d) & (d <= max_distance)
    for t in np.flatnonzero(ok.any(axis=(1, 2))):
        cost = np.where(ok[t], d[t], 1e12)
        rows, cols = linear_sum_assignment(cost)
        keep = ok[t, rows, cols]
        out[t, cols[keep]] = rows[keep]
    return out


def take_matched(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values (T, I, ...)`` of the instances in ``index (T, G)`` (:func:`match_instances`) -> ``(T, G, ...)``,
    NaN where the index is -1."""
    values = np.asarray(values, np.float64)
    t = np.arange(len(index))[:, None]
    out = values[t, np.maximum(index, 0)]
    out[index < 0] = np.nan
    return out


def centre_errors(pred: np.ndarray, truth: np.ndarray, mapping: np.ndarray | None = None) -> np.ndarray:
    """Per-frame, per-track distance (px) between predicted and matched true centres (NaN where missing)."""
    mapping = match_tracks_to_truth(pred, truth) if mapping is None else mapping
    errors = np.full(pred.shape[:2], np.nan)
    for a, g in enumerate(mapping):
        if g >= 0:
            errors[:, a] = np.linalg.norm(pred[:, a] - truth[:, g], axis=-1)
    return errors


# --------------------------------------------------------------------------- detection / segmentation AP


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` IoU between bool masks ``a`` ``(N, H, W)`` and ``b`` ``(M, H, W)`` (0 where both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    a = a.reshape(len(a), int(np.prod(a.shape[1:])))
    b = b.reshape(len(b), int(np.prod(b.shape[1:])))
    if a.shape[1] != b.shape[1] and len(a) and len(b):
        raise ValueError(f"mask sizes differ: {a.shape[1]} vs {b.shape[1]} pixels")
    af, bf = a.astype(np.float32), b.astype(np.float32)
    inter = af @ bf.T
    union = af.sum(1)[:, None] + bf.sum(1)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from sipec_models.tracking import box_iou

    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    return box_iou(a, b)


def average_precision(predictions, truths, iou_threshold: float = 0.5, kind: str = "mask",
                      return_curve: bool = False):
    """Average precision of instance detections over many frames (SIPEC Methods, VOC/COCO style).

    Detections of all frames are ranked by descending score; each is matched
    greedily to the unmatched truth of its frame with the highest IoU, and is
    a true positive when that IoU is strictly greater than ``iou_threshold``
    (each truth is matched at most once; ties in score keep frame order).
    With precision ``p_n`` and recall ``r_n`` after the ``n``-th detection,
    ``AP = sum_n (r_{n+1} - r_n) p_interp(r_{n+1})`` with ``r_0 = 0`` and
    ``p_interp(r) = max_{r' >= r} p(r')``: the area under the interpolated
    precision-recall curve.

    Args:
        predictions: per frame ``(scores (N,), masks (N, H, W) bool)`` for
            ``kind="mask"`` or ``(scores (N,), boxes (N, 4))`` ``x0, y0, x1,
            y1`` px for ``kind="box"``; rows of boxes with NaN are ignored.
        truths: per frame (same length) ``(M, H, W)`` masks or ``(M, 4)`` boxes.
        iou_threshold: a match needs IoU > this.
        kind: ``"mask"`` or ``"box"``.
        return_curve: also return the ``precision`` and ``recall`` arrays (one
            value per ranked detection).

    Returns:
        AP in [0, 1] (or ``(ap, precision, recall)``). Edge cases: with no
        truths at all, AP is ``nan`` (undefined: recall is 0/0), whether or
        not there are detections; with truths but no detections, AP is 0.
    """
    if kind not in ("mask", "box"):
        raise ValueError(f"kind must be 'mask' or 'box', not {kind!r}")
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} frames of predictions but {len(truths)} of truths")
    iou_fn = mask_iou if kind == "mask" else _box_iou
    records = []  # (score, frame, index)
    ious, n_truth = [], 0
    for f, ((scores, pred), truth) in enumerate(zip(predictions, truths)):
        scores = np.asarray(scores, np.float64).reshape(-1)
        pred = np.asarray(pred)
        truth = np.asarray(truth)
        if kind == "box":
            pred = pred.reshape(-1, 4)
            truth = truth.reshape(-1, 4)
            ok = np.isfinite(pred).all(1) & np.isfinite(scores)
            pred, scores = pred[ok], scores[ok]
            truth = truth[np.isfinite(truth).all(1)]
        if len(scores) != len(pred):
            raise ValueError(f"frame {f}: {len(scores)} scores for {len(pred)} predictions")
        n_truth += len(truth)
        ious.append(iou_fn(pred, truth) if len(pred) and len(truth) else np.zeros((len(pred), len(truth))))
        records.extend((s, f, i) for i, s in enumerate(scores))
    if n_truth == 0:
        nan = float("nan")
        return (nan, np.zeros(0), np.zeros(0)) if return_curve else nan
    order = sorted(range(len(records)), key=lambda r: -records[r][0])
    used = [np.zeros(iou.shape[1], bool) for iou in ious]
    tp = np.zeros(len(records))
    for n, r in enumerate(order):
        _, f, i = records[r]
        iou = ious[f]
        if not iou.shape[1]:
            continue
        cand = np.where(used[f], -1.0, iou[i])
        j = int(np.argmax(cand))
        if cand[j] > iou_threshold:
            used[f][j] = True
            tp[n] = 1
    ctp = np.cumsum(tp)
    precision = ctp / np.arange(1, len(tp) + 1)
    recall = ctp / n_truth
    if len(tp):
        p_interp = np.maximum.accumulate(precision[::-1])[::-1]
        ap = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * p_interp))
    else:
        ap = 0.0
    return (ap, precision, recall) if return_curve else ap


# --------------------------------------------------------------------------- pose estimation
#
# All functions take ``(N, K, 2)`` predicted and true keypoints in px, NaN = missing; a keypoint
# missing in either array is ignored (not counted as an error nor as a correct detection).


def _pose_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    if pred.shape != truth.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"pose arrays must both be (N, K, 2); got {pred.shape} and {truth.shape}")
    return pred, truth


def pose_errors(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``(N, K)`` Euclidean distance (px) between predicted and true keypoints; NaN where either is missing."""
    pred, truth = _pose_pair(pred, truth)
    return np.sqrt(((pred - truth) ** 2).sum(-1))


def _reduce(err: np.ndarray, fn, per_keypoint: bool):
    if per_keypoint:
        return np.array([fn(e[np.isfinite(e)]) if np.isfinite(e).any() else np.nan for e in err.T])
    e = err[np.isfinite(err)]
    return float(fn(e)) if len(e) else float("nan")


def pose_rmse(pred: np.ndarray, truth: np.ndarray, per_keypoint: bool = False):
    """Root-mean-square keypoint error, px: ``sqrt(mean(d^2))`` over the keypoints present in both (SIPEC's RMSE).

    Returns a float, or ``(K,)`` per keypoint with ``per_keypoint`` (NaN where a keypoint is never present).
    """
    return _reduce(pose_errors(pred, truth), lambda e: np.sqrt(np.mean(e ** 2)), per_keypoint)


def pose_median_error(pred: np.ndarray, truth: np.ndarray, per_keypoint: bool = False):
    """Median keypoint error, px (float, or ``(K,)`` with ``per_keypoint``)."""
    return _reduce(pose_errors(pred, truth), np.median, per_keypoint)


def pck(pred: np.ndarray, truth: np.ndarray, radii: float | Sequence[float], per_keypoint: bool = False,
        normalizer: np.ndarray | None = None):
    """Percentage of correct keypoints: the fraction of present keypoints within ``radius`` of the truth.

    Args:
        pred, truth: ``(N, K, 2)`` px.
        radii: one radius or several (px; or fractions of ``normalizer``).
        per_keypoint: one value per keypoint.
        normalizer: ``(N,)`` per-animal length (e.g. :func:`body_length`);
            distances are divided by it first.

    Returns:
        For one radius a float (or ``(K,)``); for several, an array
        ``(R,)`` (or ``(R, K)``), in [0, 1]; NaN when nothing is present.
    """
    err = pose_errors(pred, truth)
    if normalizer is not None:
        err = err / np.asarray(normalizer, np.float64).reshape(-1, 1)
    scalar = np.ndim(radii) == 0
    out = [_reduce(err, lambda e, r=float(r): np.mean(e <= r), per_keypoint) for r in np.atleast_1d(radii)]
    return out[0] if scalar else np.array(out)


def body_length(truth: np.ndarray, nodes: tuple[int, int] | None = None) -> np.ndarray:
    """``(N,)`` per-animal length, px: the distance between two nodes (e.g. snout and tail base), or with
    ``nodes=None`` the diagonal of the box around the animal's present keypoints. NaN when undefined."""
    truth = np.asarray(truth, np.float64)
    if nodes is not None:
        a, b = nodes
        return np.sqrt(((truth[:, a] - truth[:, b]) ** 2).sum(-1))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        span = np.nanmax(truth, axis=1) - np.nanmin(truth, axis=1)
    return np.sqrt((span ** 2).sum(-1))


def normalized_errors(pred: np.ndarray, truth: np.ndarray, length: np.ndarray) -> np.ndarray:
    """``(N, K)`` errors as a fraction of each animal's ``length`` (``(N,)``, e.g. :func:`body_length`)."""
    length = np.asarray(length, np.float64).reshape(-1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(length > 0, pose_errors(pred, truth) / length, np.nan)


def pose_metrics(pred: np.ndarray, truth: np.ndarray, radii: Sequence[float] = (2.0, 5.0, 10.0),
                 node_names: Sequence[str] | None = None, body_nodes: tuple[int, int] | None = None) -> dict:
    """Summary of pose accuracy (JSON-serialisable).

    Returns:
        ``n`` (keypoints compared), ``rmse_px``, ``median_px``,
        ``pck`` ``{radius: fraction}``, ``error_body_fraction`` (mean error /
        body length: ``body_nodes`` distance, else the box diagonal),
        ``per_keypoint`` ``{name: {rmse_px, median_px, pck}}``.
    """
    pred, truth = _pose_pair(pred, truth)
    K = truth.shape[1]
    names = list(node_names) if node_names is not None else [str(k) for k in range(K)]
    err = pose_errors(pred, truth)
    nb = normalized_errors(pred, truth, body_length(truth, body_nodes))
    rm, md = pose_rmse(pred, truth, True), pose_median_error(pred, truth, True)
    pk = pck(pred, truth, list(radii), per_keypoint=True)

    def num(v):
        return None if v is None or not np.isfinite(v) else float(v)

    return {
        "n": int(np.isfinite(err).sum()),
        "rmse_px": num(pose_rmse(pred, truth)),
        "median_px": num(pose_median_error(pred, truth)),
        "pck": {str(r): num(v) for r, v in zip(radii, pck(pred, truth, list(radii)))},
        "error_body_fraction": num(np.nanmean(nb)) if np.isfinite(nb).any() else None,
        "per_keypoint": {n: {"rmse_px": num(rm[k]), "median_px": num(md[k]),
                             "pck": {str(r): num(pk[i, k]) for i, r in enumerate(radii)}}
                         for k, n in enumerate(names)},
    }


def mean_pose_baseline(train: np.ndarray, n: int, train_centres: np.ndarray | None = None,
                       test_centres: np.ndarray | None = None) -> np.ndarray:
    """Predict the mean training pose for every test animal: ``(n, K, 2)``.

    Without centres the mean is taken in the given coordinates (e.g. crop
    px). With ``train_centres`` ``(M, 2)`` and ``test_centres`` ``(n, 2)``
    the mean offset of each keypoint from its animal's centre is added to
    each test centre (the top-down baseline a pose network must beat).
    """
    train = np.asarray(train, np.float64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if train_centres is None:
            mean = np.nanmean(train, axis=0)
            return np.repeat(mean[None], n, axis=0)
        if test_centres is None:
            raise ValueError("mean_pose_baseline needs test_centres with train_centres")
        offset = np.nanmean(train - np.asarray(train_centres, np.float64)[:, None, :], axis=0)
        return np.asarray(test_centres, np.float64).reshape(n, 1, 2) + offset[None]

"""Scores of behaviour classifiers: per-frame ethograms (multi-label) and single-label clips.

Per-frame scores follow SIPEC (BehaveNet) and DeepEthogram: per-behaviour
F1, precision, recall and AUROC, macro F1 (optionally over the
non-background behaviours only), exact-match and argmax accuracy, and the
Pearson correlation over time between predicted and true traces. The chance
level (:func:`circular_shift_chance`) scores the same predictions against
labels circularly shifted in time within each video, which keeps the
labels' bout structure and class balance but breaks their alignment to the
video.

Arrays: ``y_true`` and ``y_pred`` are ``(T, C)`` 0/1 (``T`` frames, ``C``
behaviours), ``y_prob`` ``(T, C)`` float probabilities. Every score is a
plain float (or None where undefined), so the results can go to JSON as is.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support,
                             roc_auc_score)


def _binary_2d(a, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{what} must be (T, C), got shape {a.shape}")
    if not np.isin(a, (0, 1)).all():
        raise ValueError(f"{what} must hold only 0/1")
    return a.astype(np.int8)


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson r of two ``(T,)`` series; None if either is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def frame_accuracy(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """Accuracy of the argmax behaviour per frame, for labels with exactly one behaviour per frame.

    Args:
        y_true: ``(T, C)`` 0/1, one 1 per row.
        scores: ``(T, C)`` probabilities or 0/1 calls. A frame whose largest
            score is shared by several behaviours (e.g. no call or several
            calls) counts as wrong.

    Returns:
        The fraction of frames right, or None when some frame of ``y_true``
        does not have exactly one behaviour (or there are no frames).
    """
    y_true, scores = np.asarray(y_true), np.asarray(scores, np.float64)
    if not len(y_true) or not np.all(y_true.sum(axis=1) == 1):
        return None
    top = scores.max(axis=1, keepdims=True)
    unique = (scores == top).sum(axis=1) == 1
    return float(np.mean(unique & (np.argmax(scores, axis=1) == np.argmax(y_true, axis=1))))


def classification_scores(y_true: np.ndarray, y_pred: np.ndarray, y_prob: np.ndarray | None,
                          names: Sequence[str], exclude: Sequence[str] = ()) -> dict:
    """Per-frame scores of a (multi-label) behaviour classifier.

    Args:
        y_true: ``(T, C)`` 0/1 labels.
        y_pred: ``(T, C)`` 0/1 calls (thresholded, postprocessed).
        y_prob: ``(T, C)`` probabilities, or None. Used for AUROC, for the
            correlation and for ``frame_accuracy``; without it AUROC is None
            and the others use ``y_pred``.
        names: the ``C`` behaviours.
        exclude: behaviours left out of ``macro_f1`` (DeepEthogram reports
            macro F1 over the non-background behaviours: ``("background",)``);
            names not present are ignored. Per-behaviour scores cover all.

    Returns:
        ``accuracy``: fraction of frames whose calls all equal the labels
        (exact match); ``frame_accuracy``: :func:`frame_accuracy` of
        ``y_prob`` (else ``y_pred``), None unless each frame has exactly one
        true behaviour; ``macro_f1``: mean F1 over ``macro_f1_names``;
        ``per_behaviour``: ``{name: {f1, precision, recall, auroc,
        pearson_r, support, n_called}}`` where precision, recall and F1 are
        0 when undefined (``zero_division=0``), ``auroc`` is None when the
        behaviour has one value only in ``y_true`` (or without ``y_prob``),
        ``pearson_r`` (over time, between ``y_prob`` or ``y_pred`` and
        ``y_true``) is None when either is constant, ``support`` and
        ``n_called`` are frame counts; ``n_frames``.
    """
    y_true, y_pred = _binary_2d(y_true, "y_true"), _binary_2d(y_pred, "y_pred")
    names = [str(n) for n in names]
    if y_pred.shape != y_true.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    if len(names) != y_true.shape[1]:
        raise ValueError(f"{len(names)} names for {y_true.shape[1]} behaviour columns")
    if y_prob is not None:
        y_prob = np.asarray(y_prob, np.float64)
        if y_prob.shape != y_true.shape:
            raise ValueError(f"y_true {y_true.shape} and y_prob {y_prob.shape} differ in shape")
    if not len(y_true):
        raise ValueError("no frames to score")
    scores = y_pred if y_prob is None else y_prob
    precision, recall, f1, support = _per_column(y_true, y_pred)
    per = {}
    for c, name in enumerate(names):
        auroc = None
        if y_prob is not None and len(np.unique(y_true[:, c])) == 2:
            auroc = float(roc_auc_score(y_true[:, c], y_prob[:, c]))
        per[name] = {
            "f1": float(f1[c]), "precision": float(precision[c]), "recall": float(recall[c]),
            "auroc": auroc, "pearson_r": _pearson(scores[:, c], y_true[:, c]),
            "support": int(support[c]), "n_called": int(y_pred[:, c].sum()),
        }
    macro_names = [n for n in names if n not in set(exclude)]
    return {
        "n_frames": int(len(y_true)),
        "accuracy": float(np.mean(np.all(y_true == y_pred, axis=1))),
        "frame_accuracy": frame_accuracy(y_true, scores),
        "macro_f1": float(np.mean([per[n]["f1"] for n in macro_names])) if macro_names else None,
        "macro_f1_names": macro_names,
        "per_behaviour": per,
    }


def _per_column(y_true: np.ndarray, y_pred: np.ndarray):
    """Precision, recall, F1 and support ``(C,)`` of each column of ``(T, C)`` 0/1 arrays, scored on its 1s.

    Column by column, so that one column (``C = 1``) is not read by
    scikit-learn as binary labels whose classes 0 and 1 are both scored.
    """
    out = np.zeros((4, y_true.shape[1]))
    for c in range(y_true.shape[1]):
        p, r, f, _ = precision_recall_fscore_support(y_true[:, c], y_pred[:, c], average="binary", pos_label=1,
                                                     zero_division=0)
        out[:, c] = p, r, f, int(y_true[:, c].sum())
    return out[0], out[1], out[2], out[3].astype(int)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro F1 of ``(T, C)`` 0/1 arrays (F1 of a behaviour without true or called frames: 0)."""
    y_true, y_pred = _binary_2d(y_true, "y_true"), _binary_2d(y_pred, "y_pred")
    return float(np.mean(_per_column(y_true, y_pred)[2]))


def _shift_offsets(n: int, min_shift_fraction: float) -> tuple[int, int]:
    lo = max(1, int(np.ceil(min_shift_fraction * n)))
    return lo, n - lo


def circular_shift_chance(y_true: np.ndarray, y_pred: np.ndarray, video_ids: np.ndarray | None = None,
                          score_fn: Callable[[np.ndarray, np.ndarray], float] | None = None,
                          n_shifts: int = 20, seed: int = 0, min_shift_fraction: float = 0.1) -> dict:
    """Chance level of a score: the predictions scored against time-shifted labels.

    For each of ``n_shifts`` repeats, the labels of each video are rolled
    circularly along time by a random offset ``k`` frames, uniform over
    ``[m, n - m]`` with ``n`` the video's frames and ``m = max(1,
    ceil(min_shift_fraction * n))``, and ``score_fn(shifted_labels,
    y_pred)`` is computed over all frames. Shifting keeps each video's
    label statistics and bout structure while breaking their alignment with
    the predictions.

    Args:
        y_true: ``(T, ...)`` labels, e.g. ``(T, C)`` 0/1.
        y_pred: ``(T, ...)`` predictions or probabilities, left as they are.
        video_ids: ``(T,)`` video of each frame (frames of a video in time
            order, not necessarily contiguous); None: one video.
        score_fn: ``(labels, predictions) -> float``; default :func:`macro_f1`
            (needs 0/1 predictions).
        n_shifts: number of random shifts.
        seed: seed of the random offsets.
        min_shift_fraction: smallest offset as a fraction of the video, in
            ``[0, 0.5]``.

    Returns:
        ``{"mean", "std", "values"}``: mean and standard deviation (ddof 0)
        of the ``n_shifts`` scores and the scores themselves (a list).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} frames of labels but {len(y_pred)} of predictions")
    if not 0 <= min_shift_fraction <= 0.5:
        raise ValueError(f"min_shift_fraction must be in [0, 0.5], got {min_shift_fraction}")
    if n_shifts < 1:
        raise ValueError(f"n_shifts must be >= 1, got {n_shifts}")
    score_fn = macro_f1 if score_fn is None else score_fn
    video_ids = np.zeros(len(y_true), np.int64) if video_ids is None else np.asarray(video_ids)
    if video_ids.shape != (len(y_true),):
        raise ValueError(f"video_ids must be (T,) = ({len(y_true)},), got {video_ids.shape}")
    groups = []
    for v in dict.fromkeys(video_ids.tolist()):  # videos in order of appearance
        idx = np.flatnonzero(video_ids == v)
        lo, hi = _shift_offsets(len(idx), min_shift_fraction)
        if lo > hi:
            raise ValueError(f"video {v!r} has {len(idx)} frames: too few for a circular shift of at least "
                             f"{lo} frame(s) from 0 and from its length")
        groups.append((idx, lo, hi))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_shifts):
        shifted = y_true.copy()
        for idx, lo, hi in groups:
            shifted[idx] = np.roll(y_true[idx], int(rng.integers(lo, hi + 1)), axis=0)
        values.append(float(score_fn(shifted, y_pred)))
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}


def clip_scores(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str]) -> dict:
    """Scores of single-label clip classification.

    Args:
        y_true: ``(N,)`` int true class of each clip, in ``[0, len(names))``.
        y_pred: ``(N,)`` int predicted class.
        names: the class names.

    Returns:
        ``accuracy``, ``macro_f1`` (over all ``names``, F1 0 for a class
        neither true nor predicted), ``f1`` ``{name: F1}``, ``confusion``
        (list of ``len(names)`` lists: rows true class, columns predicted,
        counts), ``n_clips``.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    names = [str(n) for n in names]
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must be (N,) of one length, got {y_true.shape} and {y_pred.shape}")
    if not len(y_true):
        raise ValueError("no clips to score")
    for what, y in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(names):
            raise ValueError(f"{what} must hold integer classes in [0, {len(names)}), got {np.unique(y)[:10]}")
    labels = np.arange(len(names))
    f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "n_clips": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(np.mean(f1)),
        "f1": {n: float(v) for n, v in zip(names, f1)},
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }

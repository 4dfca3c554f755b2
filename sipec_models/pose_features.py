"""Per-frame pose features for the pose-based behaviour classifier (Sturman et al. 2020, SIPEC's baseline).

Sturman et al. (2020, "Deep learning-based behavioral analysis reaches
human accuracy and is capable of outperforming commercial solutions",
Neuropsychopharmacology 45, 1942) classify behaviour from DeepLabCut
keypoints with a small MLP on hand-made pose features of each frame,
stacked over the frames ``t - 15 .. t + 15``; SIPEC and DeepEthogram
compare against it. Here the features are computed in centimetres and
seconds, so that a model trained on one video transfers to videos with
another frame rate and image scale:

* ``x_<node>``, ``y_<node>``: each keypoint relative to the body centre,
  rotated into the body axis (``x`` along the axis, tail to head; ``y``
  along the axis turned by +90°, i.e. the way image +x turns into image
  +y), cm;
* ``dist_<a>_<b>``: distances between keypoint pairs, cm;
* ``angle_<a>_<b>_<c>_sin/_cos``: the angle at ``b`` between ``b -> a`` and
  ``b -> c``;
* ``seg_<a>_<b>_sin/_cos``: the direction of the segment ``a -> b``
  relative to the body axis;
* ``speed_<node>_<w>s``, ``speed_centre_<w>s``: speed of each keypoint and
  of the body centre, cm/s, from a centred difference over ``w`` seconds;
  ``turn_<w>s``: angular speed of the body axis, rad/s, the same way;
* ``area``: area of the convex hull of the keypoints, cm²;
* ``missing``: fraction of keypoints missing in the frame (after gap filling).

Speeds and turning can be returned as ``log(value + offset)`` (slow
movements spread out), and the tracks can be median-filtered over a time
window before the features (``log_offset``, ``smooth_s`` of
:func:`pose_features`).

Missing keypoints (NaN, or a detection likelihood below a threshold) are
interpolated linearly over gaps of at most ``max_gap_s`` seconds
(:func:`interpolate_gaps`); features still missing after that are filled
with the nearest earlier value (later, at the start), 0 where a feature
is never defined (:func:`fill_missing`).

:func:`stack_window` stacks each frame's features with those of its
neighbours in time, the classifier's input.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from scipy.spatial import ConvexHull, QhullError

Node = int | str

#: Feature groups of :func:`pose_features`, in output order.
FEATURE_GROUPS = ("position", "distance", "angle", "segment", "speed", "turn", "area", "missing")


# --------------------------------------------------------------------------- missing values


def interpolate_gaps(x: np.ndarray, max_gap: int | None = None) -> np.ndarray:
    """Linear interpolation over time of short runs of NaN.

    Args:
        x: ``(T, ...)`` float; each series ``x[:, j...]`` is treated on its own.
        max_gap: longest run of NaN frames filled; None: every run lying
            between two finite values. Runs at the start or end are left NaN.

    Returns:
        ``(T, ...)`` float64, a new array.
    """
    x = np.array(x, np.float64)
    if max_gap is not None and max_gap < 0:
        raise ValueError(f"max_gap must be >= 0 frames or None, got {max_gap}")
    flat = x.reshape(len(x), -1)
    t = np.arange(len(x))
    for j in range(flat.shape[1]):
        col = flat[:, j]
        ok = np.isfinite(col)
        if ok.all() or ok.sum() < 2:
            continue
        d = np.diff(np.concatenate([[0], (~ok).astype(np.int8), [0]]))
        starts, stops = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
        inner = (starts > 0) & (stops < len(col))
        if max_gap is not None:
            inner &= stops - starts <= max_gap
        if not inner.any():
            continue
        fill = np.zeros(len(col), bool)
        for a, b in zip(starts[inner], stops[inner]):
            fill[a:b] = True
        col[fill] = np.interp(t[fill], t[ok], col[ok])
    return flat.reshape(x.shape)


def fill_missing(features: np.ndarray) -> np.ndarray:
    """Fill every NaN of ``(T, F)`` features with the nearest earlier finite value of its column.

    NaN at the start of a column take the first finite value; a column
    without any finite value becomes 0.

    Returns:
        ``(T, F)`` float64, a new array without NaN.
    """
    x = np.array(features, np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (T, F), got shape {x.shape}")
    x[~np.isfinite(x)] = np.nan
    T = len(x)
    if T == 0:
        return x
    ok = np.isfinite(x)
    idx = np.where(ok, np.arange(T)[:, None], -1)
    np.maximum.accumulate(idx, axis=0, out=idx)  # last finite row at or before t
    first = np.where(ok.any(0), ok.argmax(0), -1)
    idx = np.where(idx < 0, first[None, :], idx)
    cols = np.broadcast_to(np.arange(x.shape[1]), x.shape)
    out = np.where(idx >= 0, x[np.maximum(idx, 0), cols], 0.0)
    return out


def clean_keypoints(points: np.ndarray, scores: np.ndarray | None = None, min_score: float = 0.1,
                    max_gap: int | None = None) -> np.ndarray:
    """Keypoints with low-confidence detections removed and short gaps interpolated.

    Args:
        points: ``(T, K, 2)`` px, NaN missing.
        scores: optional ``(T, K)`` detection likelihoods (DeepLabCut); points
            with ``score < min_score`` become NaN.
        min_score: likelihood threshold.
        max_gap: longest gap (frames) interpolated linearly (None: all interior gaps).

    Returns:
        ``(T, K, 2)`` float64 px, NaN where still missing.
    """
    p = _check_points(points)
    if scores is not None:
        s = np.asarray(scores, np.float64)
        if s.shape != p.shape[:2]:
            raise ValueError(f"scores must be (T, K) = {p.shape[:2]}, got {s.shape}")
        p[~(s >= min_score)] = np.nan
    p[~np.isfinite(p).all(-1)] = np.nan
    return interpolate_gaps(p, max_gap)


def smooth_keypoints(points: np.ndarray, fps: float, window_s: float) -> np.ndarray:
    """Centred running median of each coordinate over ``window_s`` seconds.

    Args:
        points: ``(T, K, 2)`` (NaN missing: left out of the medians, and
            kept NaN where the point itself is missing).
        fps: frames per second; window_s: seconds (``max(1, round(window_s
            * fps))`` frames, made odd).

    Returns:
        ``(T, K, 2)`` float64.
    """
    import pandas as pd

    p = _check_points(points)
    n = max(1, int(round(window_s * fps)))
    n += 1 - n % 2
    if n == 1 or len(p) == 0:
        return p
    flat = pd.DataFrame(p.reshape(len(p), -1))
    out = flat.rolling(n, center=True, min_periods=1).median().to_numpy().reshape(p.shape).copy()
    out[~np.isfinite(p)] = np.nan
    return out


# --------------------------------------------------------------------------- helpers


def _check_points(points: np.ndarray) -> np.ndarray:
    p = np.array(points, np.float64)
    if p.ndim != 3 or p.shape[-1] != 2:
        raise ValueError(f"keypoints must be (T, K, 2), got shape {p.shape}")
    return p


def _node_index(node: Node, names: Sequence[str] | None, K: int) -> int:
    if isinstance(node, (int, np.integer)):
        i = int(node)
    elif names is None:
        raise ValueError(f"node {node!r} is a name but no node_names were given")
    elif str(node) not in names:
        raise ValueError(f"unknown node {node!r}; nodes are {list(names)}")
    else:
        i = list(names).index(str(node))
    if not 0 <= i < K:
        raise ValueError(f"node index {i} out of range for {K} keypoints")
    return i


def centred_difference(x: np.ndarray, fps: float, window_s: float) -> np.ndarray:
    """Time derivative per second from a centred difference over about ``window_s`` seconds.

    ``dx/dt(t) = (x[t + h] - x[t - h]) / (2 h / fps)`` with ``h = max(1,
    round(window_s * fps / 2))`` frames; near the ends the indices are
    clipped to ``[0, T - 1]`` and the time step shrinks accordingly.

    Args:
        x: ``(T, ...)`` values; fps: frames per second; window_s: seconds.

    Returns:
        ``(T, ...)`` float64 (NaN where an end point is NaN; zeros for ``T < 2``).
    """
    x = np.asarray(x, np.float64)
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if not window_s > 0:
        raise ValueError(f"speed window must be > 0 s, got {window_s}")
    T = len(x)
    if T < 2:
        return np.zeros_like(x)
    h = max(1, int(round(window_s * fps / 2)))
    t = np.arange(T)
    a, b = np.maximum(t - h, 0), np.minimum(t + h, T - 1)
    dt = ((b - a) / fps).reshape((T,) + (1,) * (x.ndim - 1))
    return (x[b] - x[a]) / dt


def convex_hull_area(points: np.ndarray) -> np.ndarray:
    """Area of the convex hull of each frame's finite keypoints.

    Args:
        points: ``(T, K, 2)``.

    Returns:
        ``(T,)`` float64 in squared input units; 0 for fewer than 3 finite
        or collinear points.
    """
    p = _check_points(points)
    out = np.zeros(len(p))
    for t, frame in enumerate(p):
        q = frame[np.isfinite(frame).all(1)]
        if len(q) < 3:
            continue
        try:
            out[t] = ConvexHull(q).volume  # in 2-D, "volume" is the area
        except QhullError:
            out[t] = 0.0
    return out


# --------------------------------------------------------------------------- features


def pose_features(points: np.ndarray, fps: float, px_per_cm: float, node_names: Sequence[str] | None = None,
                  body_axis: tuple[Node, Node] = (0, 1), centre: Sequence[Node] | None = None,
                  pairs: Sequence[tuple[Node, Node]] | str | None = "all",
                  triplets: Sequence[tuple[Node, Node, Node]] = (),
                  segments: Sequence[tuple[Node, Node]] = (),
                  speed_window_s: float | Sequence[float] = 0.1, scores: np.ndarray | None = None,
                  min_score: float = 0.1, max_gap_s: float | None = 0.5, log_offset: float | None = None,
                  groups: Sequence[str] | None = None, smooth_s: float | None = None) -> tuple[np.ndarray, list[str]]:
    """Per-frame pose features of one animal in one video, in cm and seconds.

    Args:
        points: ``(T, K, 2)`` keypoints, image px (NaN missing).
        fps: frames per second of the video.
        px_per_cm: image scale, px per cm.
        node_names: the ``K`` node names (needed to name nodes by string;
            default ``node0 .. node{K-1}`` in feature names).
        body_axis: ``(tail, head)`` nodes (names or indices): the body axis
            points from ``tail`` to ``head``.
        centre: nodes averaged into the body centre (default: all nodes;
            the mean of those present in the frame).
        pairs: node pairs whose distances are features; ``"all"``: every pair;
            None or ``()``: none.
        triplets: ``(a, b, c)`` nodes: the angle at ``b`` as sin and cos.
        segments: ``(a, b)`` nodes: direction of ``a -> b`` relative to the
            body axis as sin and cos.
        speed_window_s: one or more time windows (s) of the centred
            differences giving speeds; features are produced for each.
        scores: optional ``(T, K)`` detection likelihoods.
        min_score: likelihood below which a keypoint is treated as missing.
        max_gap_s: longest gap (s) of a keypoint interpolated linearly
            (None: all gaps between detections).
        log_offset: None: speeds in cm/s and turning in rad/s as they are.
            A number ``o`` > 0: ``log(speed + o)`` (``o`` in cm/s, and
            ``log(turn + o)``), named ``logspeed_...`` and ``logturn_...``;
            it spreads out the slow movements that separate immobility from
            small movements.
        groups: which feature groups to return, any of :data:`FEATURE_GROUPS`
            (None: all), in the fixed order of that list.
        smooth_s: None: raw tracks. A duration in s: each coordinate is first
            replaced by its running median over that window (centred; an odd
            number of frames, at least 1), which removes tracking jitter
            before the speeds are taken (:func:`smooth_keypoints`).

    Returns:
        ``(features (T, F) float32, names (F,) list of str)``; every value finite.

    Raises:
        ValueError: bad shapes, scale or frame rate, unknown node names.
    """
    p = _check_points(points)
    T, K, _ = p.shape
    if not (np.isfinite(px_per_cm) and px_per_cm > 0):
        raise ValueError(f"px_per_cm must be a positive number, got {px_per_cm}")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if node_names is not None and len(node_names) != K:
        raise ValueError(f"{len(node_names)} node names for {K} keypoints")
    names = [str(n) for n in node_names] if node_names is not None else [f"node{k}" for k in range(K)]
    ix = lambda n: _node_index(n, None if node_names is None else names, K)  # noqa: E731
    windows = [float(w) for w in np.atleast_1d(speed_window_s)]
    max_gap = None if max_gap_s is None else int(round(max_gap_s * fps))
    p = clean_keypoints(p, scores, min_score, max_gap) / px_per_cm  # cm from here on
    if smooth_s:
        p = smooth_keypoints(p, fps, smooth_s)
    missing = (~np.isfinite(p).all(-1)).mean(1)

    tail, head = ix(body_axis[0]), ix(body_axis[1])
    if tail == head:
        raise ValueError(f"body_axis needs two different nodes, got {body_axis}")
    centre_idx = list(range(K)) if centre is None else [ix(n) for n in centre]
    with warnings.catch_warnings():  # a frame where every centre node is missing: NaN, filled later
        warnings.filterwarnings("ignore", message="Mean of empty slice", category=RuntimeWarning)
        c = np.nanmean(p[:, centre_idx], axis=1)  # (T, 2)
    axis = p[:, head] - p[:, tail]
    norm = np.linalg.norm(axis, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = np.where(norm > 0, axis / norm, np.nan)  # (T, 2) unit vector tail -> head
    v = np.stack([-u[:, 1], u[:, 0]], axis=1)  # u turned by +90 degrees
    rel = p - c[:, None]
    groups = FEATURE_GROUPS if groups is None else tuple(groups)
    unknown = sorted(set(groups) - set(FEATURE_GROUPS))
    if unknown:
        raise ValueError(f"unknown feature groups {unknown}; choose from {list(FEATURE_GROUPS)}")
    if log_offset is not None and not log_offset > 0:
        raise ValueError(f"log_offset must be > 0 (cm/s) or None, got {log_offset}")
    out: dict[str, tuple[list, list[str]]] = {g: ([], []) for g in FEATURE_GROUPS}

    def add(group: str, values, names_: list[str]) -> None:
        out[group][0].append(np.asarray(values, np.float64).reshape(T, -1))
        out[group][1].extend(names_)

    add("position", np.einsum("tkd,td->tk", rel, u), [f"x_{n}" for n in names])
    add("position", np.einsum("tkd,td->tk", rel, v), [f"y_{n}" for n in names])

    if isinstance(pairs, str):
        if pairs != "all":
            raise ValueError(f"pairs must be 'all', None or a list of node pairs, not {pairs!r}")
        pair_idx = [(a, b) for a in range(K) for b in range(a + 1, K)]
    else:
        pair_idx = [(ix(a), ix(b)) for a, b in (pairs or ())]
    for a, b in pair_idx:
        add("distance", np.linalg.norm(p[:, a] - p[:, b], axis=1), [f"dist_{names[a]}_{names[b]}"])

    for trip in triplets:
        if len(trip) != 3:
            raise ValueError(f"angle triplets need three nodes, got {trip!r}")
        a, b, cc = (ix(n) for n in trip)
        ang = _angle(p[:, a] - p[:, b]) - _angle(p[:, cc] - p[:, b])
        add("angle", np.stack([np.sin(ang), np.cos(ang)], 1),
            [f"angle_{names[a]}_{names[b]}_{names[cc]}_{f}" for f in ("sin", "cos")])
    heading = _angle(u)
    for seg in segments:
        if len(seg) != 2:
            raise ValueError(f"segments need two nodes, got {seg!r}")
        a, b = (ix(n) for n in seg)
        ang = _angle(p[:, b] - p[:, a]) - heading
        add("segment", np.stack([np.sin(ang), np.cos(ang)], 1),
            [f"seg_{names[a]}_{names[b]}_{f}" for f in ("sin", "cos")])

    unwrapped = _unwrap_nan(heading)
    tr = (lambda x: x) if log_offset is None else (lambda x: np.log(x + log_offset))
    pre = "" if log_offset is None else "log"
    for w in windows:
        tag = f"{w:g}s"
        if "speed" in groups:
            vel = centred_difference(p, fps, w)  # (T, K, 2) cm/s
            add("speed", tr(np.linalg.norm(vel, axis=-1)), [f"{pre}speed_{n}_{tag}" for n in names])
            add("speed", tr(np.linalg.norm(centred_difference(c, fps, w), axis=-1)), [f"{pre}speed_centre_{tag}"])
        if "turn" in groups:
            add("turn", tr(np.abs(centred_difference(unwrapped, fps, w))), [f"{pre}turn_{tag}"])
    if "area" in groups:
        add("area", convex_hull_area(p), ["area"])
    add("missing", missing, ["missing"])

    cols = [col for g in groups for col in out[g][0]]
    out_names = [n for g in groups for n in out[g][1]]
    if not cols:
        raise ValueError(f"no features in the groups {list(groups)} (no pairs, triplets or segments given?)")
    feats = np.concatenate(cols, axis=1)
    return fill_missing(feats).astype(np.float32), out_names


def _angle(vec: np.ndarray) -> np.ndarray:
    """Angle (rad) of ``(T, 2)`` vectors, NaN for zero or missing vectors."""
    with np.errstate(invalid="ignore"):
        ang = np.arctan2(vec[:, 1], vec[:, 0])
    ang[~np.isfinite(vec).all(1) | ~(np.abs(vec).sum(1) > 0)] = np.nan
    return ang


def _unwrap_nan(angle: np.ndarray) -> np.ndarray:
    """``np.unwrap`` over the finite values, NaN kept in place."""
    out = np.full_like(angle, np.nan)
    ok = np.isfinite(angle)
    out[ok] = np.unwrap(angle[ok])
    return out


# --------------------------------------------------------------------------- time windows


def window_offsets(half_width: int = 15, window_s: float | None = None, fps: float | None = None) -> np.ndarray:
    """Frame offsets of a stacked time window.

    Args:
        half_width: ``h``: the window holds ``2h + 1`` time steps.
        window_s: None: the steps are the frames ``-h .. h``. Otherwise the
            steps lie at ``k * window_s / h`` seconds, ``k = -h .. h``,
            rounded to the nearest frame at ``fps``: the same number of
            steps, covering the same time, at any frame rate.
        fps: frames per second (needed with ``window_s``).

    Returns:
        ``(2h + 1,)`` int64 offsets in frames, ascending (repeats possible at
        low frame rates).
    """
    if int(half_width) != half_width or half_width < 0:
        raise ValueError(f"half_width must be a whole number of steps >= 0, got {half_width}")
    h = int(half_width)
    k = np.arange(-h, h + 1)
    if window_s is None:
        return k.astype(np.int64)
    if fps is None or not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"window_s needs the video's fps (a positive number), got {fps}")
    if not window_s >= 0:
        raise ValueError(f"window_s must be >= 0 s, got {window_s}")
    if h == 0:
        return np.zeros(1, np.int64)
    return np.round(k * (window_s / h) * fps).astype(np.int64)


def stack_window(features: np.ndarray, half_width: int = 15, window_s: float | None = None,
                 fps: float | None = None, video_ids: np.ndarray | None = None) -> np.ndarray:
    """Stack each frame's features with those of its neighbours (Sturman et al.: ``t - 15 .. t + 15``).

    Frames beyond the ends of the sequence (or of the frame's video, with
    ``video_ids``) repeat the nearest frame of it (edge padding).

    Args:
        features: ``(T, F)`` per-frame features.
        half_width, window_s, fps: the offsets, :func:`window_offsets`.
        video_ids: optional ``(T,)`` video of each frame; the frames of a
            video must be contiguous, and windows never reach into another video.

    Returns:
        ``(T, S * F)`` with ``S = 2h + 1``: block ``s`` (columns ``s*F ..
        (s+1)*F``) holds the features at offset ``offsets[s]``.
    """
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features must be (T, F), got shape {x.shape}")
    offsets = window_offsets(half_width, window_s, fps)
    T = len(x)
    lo, hi = np.zeros(T, np.int64), np.full(T, T - 1, np.int64)
    if video_ids is not None:
        lo, hi = _video_bounds(video_ids, T)
    t = np.arange(T)
    idx = np.clip(t[:, None] + offsets[None, :], lo[:, None], hi[:, None])  # (T, S)
    return x[idx].reshape(T, -1)


def stack_names(names: Sequence[str], half_width: int = 15) -> list[str]:
    """Column names of :func:`stack_window`: ``<name>@<step>`` for steps ``-h .. h``."""
    return [f"{n}@{k:+d}" for k in range(-half_width, half_width + 1) for n in names]


def _video_bounds(video_ids, T: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last frame of the video of each frame (videos must be contiguous runs)."""
    v = np.asarray(video_ids)
    if v.shape != (T,):
        raise ValueError(f"video_ids must be (T,) = ({T},), got {v.shape}")
    change = np.flatnonzero(v[1:] != v[:-1]) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [T]])
    if len(set(v[starts].tolist())) != len(starts):
        raise ValueError("the frames of each video must be contiguous in video_ids")
    lengths = stops - starts
    return np.repeat(starts, lengths), np.repeat(stops - 1, lengths)

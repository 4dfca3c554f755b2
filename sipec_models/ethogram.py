"""Ethogram postprocessing and bout statistics (SIPEC BehaveNet, DeepEthogram-style).

An ethogram here is a per-frame table of behaviours of one animal:
``probs`` ``(T, C)`` float, the probability of each of ``C`` behaviours in
each of ``T`` frames, and ``calls`` ``(T, C)`` bool, the behaviours called
present. Several behaviours may be called in one frame (multi-label); the
``background`` column of :func:`add_background` marks frames where none is.

Postprocessing follows DeepEthogram: a threshold per behaviour chosen to
maximise F1 on validation data (:func:`choose_thresholds`), then removal of
bouts shorter than a per-behaviour minimum (:func:`remove_short_bouts`),
the minimum taken from the bout lengths of the training labels
(:func:`min_bout_lengths`), then the background column.

A bout is a maximal run of consecutive frames in which a behaviour is
called, written ``[start, stop)`` in frames (``stop`` exclusive). Times are
``frame / fps`` in seconds. When several videos are concatenated along
time, ``video_ids`` ``(T,)`` (any hashable values, one per frame) stops
bouts and transitions from running across a video boundary.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

BACKGROUND = "background"


# --------------------------------------------------------------------------- runs


def _new_video(video_ids, n: int) -> np.ndarray | None:
    """``(T,)`` bool, True at the first frame of each video after the first (None without ids)."""
    if video_ids is None:
        return None
    video_ids = np.asarray(video_ids)
    if video_ids.shape != (n,):
        raise ValueError(f"video_ids must be (T,) = ({n},), got {video_ids.shape}")
    new = np.zeros(n, bool)
    new[1:] = video_ids[1:] != video_ids[:-1]
    return new


def run_lengths(x: np.ndarray, video_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Runs of True in a boolean sequence.

    Args:
        x: ``(T,)`` bool (or 0/1).
        video_ids: optional ``(T,)`` video of each frame; a run is cut where
            the video changes.

    Returns:
        ``(starts, stops)``, each ``(R,)`` int64 frame indices in time order:
        run ``r`` covers frames ``[starts[r], stops[r])``.
    """
    x = np.asarray(x).astype(bool)
    if x.ndim != 1:
        raise ValueError(f"run_lengths needs a (T,) sequence, got shape {x.shape}")
    d = np.diff(np.concatenate([[0], x.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    new = _new_video(video_ids, len(x))
    if new is not None and new.any():
        cut = np.flatnonzero(new)
        starts = np.union1d(starts, cut[x[cut]])  # a run going on into a new video restarts there
        stops = np.union1d(stops, cut[x[cut - 1]])  # ... and the one before it ends at the boundary
    return starts.astype(np.int64), stops.astype(np.int64)


def _as_2d(a, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{what} must be (T, C), got shape {a.shape}")
    return a


def _per_class(value, n: int, what: str) -> np.ndarray:
    """An int or ``(C,)`` sequence -> ``(C,)`` int64, each >= 0."""
    v = np.broadcast_to(np.asarray(value), (n,)) if np.ndim(value) == 0 else np.asarray(value)
    if v.shape != (n,):
        raise ValueError(f"{what} must be one int or one per behaviour ({n}), got shape {v.shape}")
    if not np.all(v == np.round(v)) or np.any(v < 0):
        raise ValueError(f"{what} must be whole numbers of frames >= 0, got {v.tolist()}")
    return v.astype(np.int64)


def _calls_and_names(calls, names) -> tuple[np.ndarray, list[str]]:
    """Accept a ``(T, C)`` array with ``names`` or a DataFrame whose columns are the names."""
    if isinstance(calls, pd.DataFrame):
        names = list(calls.columns) if names is None else list(names)
        calls = calls.to_numpy()
    calls = _as_2d(calls, "calls")
    if names is None:
        raise ValueError("names are needed when calls is an array")
    names = [str(n) for n in names]
    if len(names) != calls.shape[1]:
        raise ValueError(f"{len(names)} names for {calls.shape[1]} behaviour columns")
    return calls.astype(bool), names


# --------------------------------------------------------------------------- thresholds


def choose_thresholds(probs: np.ndarray, labels: np.ndarray,
                      grid: np.ndarray = np.linspace(0.01, 0.99, 99)) -> np.ndarray:
    """Per behaviour, the threshold maximising F1 on validation data (DeepEthogram).

    A frame is called when ``prob >= threshold`` (as in :func:`binarize`).

    Args:
        probs: ``(T, C)`` predicted probabilities.
        labels: ``(T, C)`` 0/1 true labels of the same frames.
        grid: ``(G,)`` candidate thresholds in ``[0, 1]``.

    Returns:
        ``(C,)`` float thresholds. Among thresholds of equal best F1 (within
        1e-12), the one closest to 0.5 wins (the lower of two equally close);
        a behaviour without positive frames gets 0.5.
    """
    probs, labels = _as_2d(probs, "probs").astype(np.float64), _as_2d(labels, "labels")
    if probs.shape != labels.shape:
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} differ in shape")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    grid = np.asarray(grid, np.float64).ravel()
    if grid.size == 0 or np.any((grid < 0) | (grid > 1)):
        raise ValueError(f"grid must hold thresholds in [0, 1], got {grid.size} values")
    labels = labels.astype(bool)
    out = np.full(probs.shape[1], 0.5)
    order = np.lexsort((grid, np.round(np.abs(grid - 0.5), 9)))  # closest to 0.5 first, lower on a tie
    for c in range(probs.shape[1]):
        y = labels[:, c]
        if not y.any():
            continue
        called = probs[:, c, None] >= grid[None, :]  # (T, G)
        tp = (called & y[:, None]).sum(0)
        fp = called.sum(0) - tp
        fn = y.sum() - tp
        f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
        best = f1[order] >= f1.max() - 1e-12
        out[c] = grid[order[np.argmax(best)]]
    return out


def binarize(probs: np.ndarray, thresholds) -> np.ndarray:
    """``(T, C)`` probabilities -> ``(T, C)`` bool calls, ``prob >= threshold`` per behaviour.

    ``thresholds`` is one float or ``(C,)``.
    """
    probs = _as_2d(probs, "probs")
    thresholds = np.asarray(thresholds, np.float64)
    if thresholds.ndim and thresholds.shape != (probs.shape[1],):
        raise ValueError(f"thresholds must be one value or ({probs.shape[1]},), got {thresholds.shape}")
    return probs >= thresholds


# --------------------------------------------------------------------------- bouts


def remove_short_bouts(calls: np.ndarray, min_frames, fill_gaps=0,
                       video_ids: np.ndarray | None = None) -> np.ndarray:
    """Drop bouts shorter than a per-behaviour minimum (DeepEthogram postprocessing).

    Each behaviour is treated on its own. With ``fill_gaps`` > 0, gaps (runs
    of False) shorter than ``fill_gaps`` frames lying between two bouts of
    the same behaviour are first called True, joining the bouts; gaps at the
    start or end of a video are never filled. Then every bout shorter than
    ``min_frames`` is set to False (its frames are not given to any other
    behaviour: use :func:`add_background` afterwards). Bouts cut off by the
    start or end of a video are judged on the frames they have.

    Args:
        calls: ``(T, C)`` bool.
        min_frames: minimum bout length in frames, one int or ``(C,)``
            (0 or 1: keep every bout).
        fill_gaps: gaps of fewer frames than this are closed first, one int
            or ``(C,)``; 0 (default): no gap filling.
        video_ids: optional ``(T,)`` video of each frame.

    Returns:
        ``(T, C)`` bool, a new array.
    """
    calls = _as_2d(calls, "calls").astype(bool)
    n_c = calls.shape[1]
    min_frames = _per_class(min_frames, n_c, "min_frames")
    fill_gaps = _per_class(fill_gaps, n_c, "fill_gaps")
    new = _new_video(video_ids, len(calls))
    out = calls.copy()
    T = len(calls)
    for c in range(n_c):
        x = out[:, c]
        if fill_gaps[c] > 0:
            g0, g1 = run_lengths(~x, video_ids)
            inner = (g0 > 0) & (g1 < T)  # a bout on both sides...
            if new is not None:  # ...of the same video
                inner &= ~new[g0] & ~new[np.minimum(g1, T - 1)]
            fill = inner & (g1 - g0 < fill_gaps[c])
            for a, b in zip(g0[fill], g1[fill]):
                x[a:b] = True
        s0, s1 = run_lengths(x, video_ids)
        short = s1 - s0 < min_frames[c]
        for a, b in zip(s0[short], s1[short]):
            x[a:b] = False
    return out


def min_bout_lengths(labels: np.ndarray, quantile: float = 0.05,
                     video_ids: np.ndarray | None = None) -> np.ndarray:
    """Default minimum bout length per behaviour from the training labels (DeepEthogram).

    Args:
        labels: ``(T, C)`` 0/1 training labels.
        quantile: which quantile of each behaviour's bout lengths, in [0, 1].
        video_ids: optional ``(T,)`` video of each frame; bouts do not run
            across videos.

    Returns:
        ``(C,)`` int64 frames: the ``quantile`` of the bout lengths (the
        observed length at or below it, ``np.quantile(method="lower")``), at
        least 1; 1 for a behaviour without bouts.
    """
    labels = _as_2d(labels, "labels")
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    out = np.ones(labels.shape[1], np.int64)
    for c in range(labels.shape[1]):
        s0, s1 = run_lengths(labels[:, c] != 0, video_ids)
        if len(s0):
            out[c] = max(1, int(np.quantile(s1 - s0, quantile, method="lower")))
    return out


def add_background(calls: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Append a ``background`` column: True where no behaviour is called.

    Args:
        calls: ``(T, C)`` bool; names: the ``C`` behaviour names (not
            including ``background``).

    Returns:
        ``(calls (T, C + 1) bool, names + ["background"])``.
    """
    calls, names = _calls_and_names(calls, names)
    if BACKGROUND in names:
        raise ValueError(f"names already hold {BACKGROUND!r}: {names}")
    return np.column_stack([calls, ~calls.any(axis=1)]), names + [BACKGROUND]


def postprocess(probs: np.ndarray, thresholds, min_frames, names: Sequence[str], background: bool = True,
                fill_gaps=0, video_ids: np.ndarray | None = None) -> pd.DataFrame:
    """Threshold, remove short bouts and add the background column.

    Args:
        probs: ``(T, C)`` probabilities; thresholds: one or ``(C,)``
            (:func:`choose_thresholds`); min_frames: one or ``(C,)`` frames
            (:func:`min_bout_lengths`); names: the ``C`` behaviours.
        background: append the ``background`` column.
        fill_gaps, video_ids: as in :func:`remove_short_bouts`.

    Returns:
        ``(T, C [+ 1])`` bool DataFrame, one column per behaviour, indexed by
        frame ``0 .. T-1`` (index name ``frame``).
    """
    probs = _as_2d(probs, "probs")
    names = [str(n) for n in names]
    if len(names) != probs.shape[1]:
        raise ValueError(f"{len(names)} names for {probs.shape[1]} behaviour columns")
    calls = remove_short_bouts(binarize(probs, thresholds), min_frames, fill_gaps, video_ids)
    if background:
        calls, names = add_background(calls, names)
    return pd.DataFrame(calls, columns=names, index=pd.RangeIndex(len(calls), name="frame"))


BOUT_COLUMNS = ["behaviour", "start", "stop", "n_frames", "start_s", "stop_s", "duration_s"]


def bouts(calls, names: Sequence[str] | None, fps: float, start_frame: int = 0) -> pd.DataFrame:
    """One row per bout of each behaviour of one video.

    Args:
        calls: ``(T, C)`` bool, or a DataFrame (``names=None`` takes its columns).
        names: the ``C`` behaviours.
        fps: frames per second.
        start_frame: frame number of ``calls[0]`` (for a chunk of a longer video).

    Returns:
        Columns ``behaviour, start, stop`` (exclusive frame), ``n_frames,
        start_s, stop_s, duration_s`` (``start_s = start / fps``), sorted by
        start, then by the behaviours' order in ``names``.
    """
    calls, names = _calls_and_names(calls, names)
    _check_fps(fps)
    rows = []
    for c, name in enumerate(names):
        s0, s1 = run_lengths(calls[:, c])
        rows.extend((c, name, a + start_frame, b + start_frame) for a, b in zip(s0.tolist(), s1.tolist()))
    rows.sort(key=lambda r: (r[2], r[0]))
    start = np.array([r[2] for r in rows], np.int64)
    stop = np.array([r[3] for r in rows], np.int64)
    return pd.DataFrame({
        "behaviour": pd.Series([r[1] for r in rows], dtype=object),
        "start": start, "stop": stop, "n_frames": stop - start,
        "start_s": start / fps, "stop_s": stop / fps, "duration_s": (stop - start) / fps,
    }, columns=BOUT_COLUMNS)


def _check_fps(fps: float) -> None:
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")


def time_budget(calls, names: Sequence[str] | None, fps: float) -> pd.DataFrame:
    """Time spent in each behaviour of one video.

    Args:
        calls: ``(T, C)`` bool, or a DataFrame (``names=None`` takes its columns).
        names: the ``C`` behaviours.
        fps: frames per second.

    Returns:
        One row per behaviour in ``names`` order: ``behaviour, frames,
        seconds, fraction`` (of the ``T`` frames; fractions of a
        multi-label ethogram may sum to more than 1), ``n_bouts,
        mean_bout_s, median_bout_s`` (NaN without bouts).
    """
    calls, names = _calls_and_names(calls, names)
    _check_fps(fps)
    rows = []
    for c, name in enumerate(names):
        s0, s1 = run_lengths(calls[:, c])
        lengths = (s1 - s0) / fps
        frames = int(calls[:, c].sum())
        rows.append({
            "behaviour": name, "frames": frames, "seconds": frames / fps,
            "fraction": frames / len(calls) if len(calls) else float("nan"),
            "n_bouts": len(s0),
            "mean_bout_s": float(lengths.mean()) if len(lengths) else float("nan"),
            "median_bout_s": float(np.median(lengths)) if len(lengths) else float("nan"),
        })
    return pd.DataFrame(rows, columns=["behaviour", "frames", "seconds", "fraction", "n_bouts",
                                       "mean_bout_s", "median_bout_s"])


def states(calls) -> np.ndarray:
    """Exclusive state sequence of an ethogram: ``(T,)`` int, the behaviour of each frame, -1 for none.

    ``calls`` is ``(T, C)``: per frame the column with the largest value
    (the first on a tie, so give one call per frame, e.g. after
    :func:`add_background`); a frame whose values are all <= 0 (no call)
    gets -1.
    """
    calls = _as_2d(calls.to_numpy() if isinstance(calls, pd.DataFrame) else calls, "calls")
    values = calls.astype(np.float64)
    s = np.argmax(values, axis=1) if calls.shape[1] else np.zeros(len(calls), np.int64)
    if calls.shape[1]:
        s[values.max(axis=1) <= 0] = -1
    else:
        s[:] = -1
    return s.astype(np.int64)


def transition_matrix(calls, names: Sequence[str] | None, normalize: bool = True,
                      video_ids: np.ndarray | None = None) -> pd.DataFrame:
    """Transitions between consecutive bouts of an exclusive ethogram.

    The ethogram is reduced to one state per frame (:func:`states`: the
    argmax of ``(T, C)`` calls or probabilities, or an integer ``(T,)``
    sequence given directly, -1 or any negative value for none). Frames
    without a state are dropped first, so ``A, none, B`` counts as ``A -> B``
    and ``A, none, A`` as nothing. Each change of state from ``i`` to ``j``
    is one transition from a bout of ``i`` to the next bout, of ``j``; the
    diagonal is 0 (consecutive frames of one behaviour are one bout).
    Changes across a video boundary (``video_ids``) are not counted.

    Args:
        calls: ``(T, C)`` calls or probabilities (or a DataFrame, ``names=None``
            taking its columns), or ``(T,)`` int states in ``[0, C)``.
        names: the ``C`` behaviours.
        normalize: divide each row by its sum (the probability of the next
            behaviour given the current one); rows without transitions are NaN.

    Returns:
        ``(C, C)`` DataFrame, rows "from" and columns "to", both indexed by
        the names: counts (int) or row fractions (float).
    """
    if isinstance(calls, pd.DataFrame):
        names = list(calls.columns) if names is None else list(names)
    if names is None:
        raise ValueError("names are needed when calls is an array")
    names = [str(n) for n in names]
    arr = np.asarray(calls.to_numpy() if isinstance(calls, pd.DataFrame) else calls)
    if arr.ndim == 1:
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"a (T,) state sequence must hold integers, got {arr.dtype}")
        s = arr.astype(np.int64)
        if np.any(s >= len(names)):
            raise ValueError(f"states go up to {s.max()} but there are {len(names)} names")
    else:
        if arr.shape[1] != len(names):
            raise ValueError(f"{len(names)} names for {arr.shape[1]} behaviour columns")
        s = states(arr)
    vids = np.zeros(len(s), np.int64) if video_ids is None else np.asarray(video_ids)
    if vids.shape != s.shape:
        raise ValueError(f"video_ids must be (T,) = ({len(s)},), got {vids.shape}")
    keep = s >= 0
    s, vids = s[keep], vids[keep]
    change = (s[1:] != s[:-1]) & (vids[1:] == vids[:-1])
    counts = np.zeros((len(names), len(names)), np.int64)
    np.add.at(counts, (s[:-1][change], s[1:][change]), 1)
    if normalize:
        total = counts.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(total > 0, counts / np.maximum(total, 1), np.nan)
    else:
        values = counts
    return pd.DataFrame(values, index=pd.Index(names, name="from"), columns=pd.Index(names, name="to"))

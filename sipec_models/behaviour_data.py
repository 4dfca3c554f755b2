"""Behaviour labels and model inputs per track slot of a tracked video.

Behaviour labels name animals (``dark``, a BORIS subject, ...), while every
per-video array of the pipeline is indexed by track slot. :func:`slot_labels`
puts each labelled animal's ethogram on the slot that holds it in each frame:

* one animal in the video: slot 0;
* several: by position, with a table of the labelled animals' positions
  (``frame, animal, x, y`` in frame px; the demo's ``centroids.csv``) or
  ``x, y`` columns in the label file itself. Per frame, labelled animals
  and slot centres of mass are paired by optimal assignment of their
  distances; pairs further apart than ``max_distance`` px are left
  unlabelled.

:func:`slot_sequences` cuts each slot into runs of frames in which it holds
an animal (the "sequences" of :class:`~sipec_models.training.behavenet.BehaviourData`:
temporal windows never reach across a gap or into another slot).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from sipec_models.ethogram import BACKGROUND
from sipec_models.io.behaviour_labels import load_behaviour_labels

log = logging.getLogger(__name__)


def read_positions(path: str | os.PathLike) -> pd.DataFrame:
    """A positions table: columns ``frame`` (int), ``animal`` (str), ``x``, ``y`` (frame px); others ignored.

    Raises:
        ValueError: naming the file: unreadable, or a missing column.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, sep=None, engine="python")
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path}: cannot read the positions table ({exc})") from None
    missing = [c for c in ("frame", "animal", "x", "y") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: positions table lacks column(s) {', '.join(missing)} "
                         f"(needs frame, animal, x, y; has {', '.join(map(str, table.columns))})")
    table = table[["frame", "animal", "x", "y"]].copy()
    table["animal"] = table["animal"].astype(str)
    return table


def _match_frame(points: np.ndarray, com: np.ndarray, max_distance: float) -> list[tuple[int, int]]:
    """Pairs ``(labelled animal index, slot)`` of one frame: optimal assignment of distances within the limit."""
    from scipy.optimize import linear_sum_assignment

    ok_p = np.flatnonzero(np.isfinite(points).all(1))
    ok_s = np.flatnonzero(np.isfinite(com).all(1))
    if not len(ok_p) or not len(ok_s):
        return []
    d = np.linalg.norm(points[ok_p, None] - com[None, ok_s], axis=-1)
    rows, cols = linear_sum_assignment(d)
    return [(int(ok_p[r]), int(ok_s[c])) for r, c in zip(rows, cols) if d[r, c] <= max_distance]


def slot_labels(labels: str | os.PathLike, com: np.ndarray, format: str = "auto", fps: float | None = None,
                positions: str | os.PathLike | None = None, frames: Sequence[int] | None = None,
                behaviours: Sequence[str] | None = None, max_distance: float = 20.0
                ) -> tuple[np.ndarray, list[str]]:
    """Behaviour labels of a video put on its track slots.

    Args:
        labels: a behaviour label file (per-frame table, BORIS export or
            onset/offset table; :func:`~sipec_models.io.behaviour_labels.load_behaviour_labels`).
        com: ``(T, A, 2)`` slot centres of mass of the video, frame px (NaN: empty slot).
        format: the label format, or ``"auto"``.
        fps: frames per second of the video (for labels in seconds).
        positions: table of the labelled animals' positions
            (:func:`read_positions`); needed when the video has several
            slots and the label file has no ``x, y`` columns.
        frames: ``[start, stop)``: only these frames count as labelled
            (default: the frames the file covers).
        behaviours: the behaviours to keep, in this order (default: all of the file's).
        max_distance: px; a labelled animal further than this from every
            slot centre is left unlabelled in that frame.

    Returns:
        ``(y (T, A, C) float32, names)``: 0/1 where slot ``a`` holds a
        labelled animal in frame ``t``, NaN elsewhere.

    Raises:
        ValueError: naming the file: unknown behaviours, frames outside the
            video, several animals but no way to match them to slots.
    """
    path = Path(labels)
    T, A = com.shape[:2]
    f, y, names, animals = load_behaviour_labels(path, format, n_frames=T, fps=fps)
    if behaviours:
        unknown = [b for b in behaviours if b not in names]
        if unknown:
            raise ValueError(f"{path}: behaviour(s) {', '.join(unknown)} not in the file (it has {', '.join(names)})")
        y = y[:, [names.index(b) for b in behaviours]]
        names = list(behaviours)
    if len(f) and (f.max() >= T or f.min() < 0):
        raise ValueError(f"{path}: labels frame {int(f.max())} but the video has {T} frames")
    keep = np.ones(len(f), bool)
    if frames is not None:
        keep = (f >= frames[0]) & (f < frames[1])
    f, y = f[keep], y[keep]
    animals = animals[keep] if animals is not None else None
    out = np.full((T, A, len(names)), np.nan, np.float32)
    n_named = len(set(animals.tolist())) if animals is not None else 0
    if A == 1 and n_named <= 1 and positions is None:
        out[f, 0] = y
        return out, names
    if animals is None:
        raise ValueError(f"{path}: labels name no animal but the video has {A} animal slots; label each animal "
                         "(an animal or Subject column) and give positions to match them to slots")
    rows, t_idx, s_idx = match_to_slots(path, f, animals, com, positions, max_distance)
    out[t_idx, s_idx] = y[rows]
    return out, names


def match_to_slots(path: Path, frames: np.ndarray, animals: np.ndarray, com: np.ndarray, positions,
                   max_distance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of a label table matched to track slots by position.

    Args:
        path: the label file (for messages; its ``x, y`` columns are the
            positions when ``positions`` is None).
        frames: ``(N,)`` frame of each label row; animals: ``(N,)`` animal name of each row.
        com: ``(T, A, 2)`` slot centres of mass, frame px (NaN: empty slot).
        positions: a positions table (:func:`read_positions`) or None.
        max_distance: px; a labelled animal further than this from every slot centre stays unmatched.

    Returns:
        ``(rows, t, slot)``: matched label rows and the frame and slot each one lands on (int arrays).

    Raises:
        ValueError: naming the file: no positions for a labelled animal, or nothing matched.
    """
    T = com.shape[0]
    pos = _label_positions(path, positions)
    names_a = list(dict.fromkeys(animals.tolist()))
    missing = sorted(set(names_a) - set(pos["animal"]))
    if missing:
        raise ValueError(f"{positions or path}: no positions for labelled animal(s) {', '.join(missing)}")
    xy = np.full((T, len(names_a), 2), np.nan)
    pos = pos[pos["animal"].isin(names_a) & (pos["frame"] >= 0) & (pos["frame"] < T)]
    xy[pos["frame"].to_numpy(int), [names_a.index(a) for a in pos["animal"]]] = pos[["x", "y"]].to_numpy(float)
    row_of = {(int(fr), str(a)): i for i, (fr, a) in enumerate(zip(frames, animals))}
    matched = []
    for t in np.unique(frames):
        for i, s in _match_frame(xy[t], com[t], max_distance):
            r = row_of.get((int(t), names_a[i]))
            if r is not None:
                matched.append((r, int(t), s))
    log.info("%s: %d of %d labelled animal-frames matched to track slots (within %.0f px)", path, len(matched),
             len(frames), max_distance)
    if not matched:
        raise ValueError(f"{path}: no labelled animal lies within {max_distance:g} px of a tracked animal; check the "
                         "positions table and max_distance")
    rows, t_idx, s_idx = (np.array(v, np.int64) for v in zip(*matched))
    return rows, t_idx, s_idx


def _label_positions(path: Path, positions) -> pd.DataFrame:
    if positions is not None:
        return read_positions(positions)
    try:
        table = read_positions(path)
    except ValueError:
        raise ValueError(f"{path}: labels of several animals need their positions to be matched to track slots: "
                         "give a positions table (frame, animal, x, y) or x, y columns in the label file") from None
    return table


def exclusive_targets(y: np.ndarray, names: Sequence[str], what: str = "labels") -> tuple[np.ndarray, list[str]]:
    """0/1 labels ``(..., C)`` (NaN unlabelled) of exclusive behaviours -> class indices ``(...)`` (-1 unlabelled).

    A labelled frame with no behaviour becomes class ``background``
    (appended to the names) when there is any such frame.

    Raises:
        ValueError: naming ``what``: a frame with two behaviours at once.
    """
    y = np.asarray(y, np.float32)
    labelled = np.isfinite(y).all(-1)
    z = np.nan_to_num(y)
    n_on = z.sum(-1)
    if (n_on[labelled] > 1).any():
        idx = np.argwhere(labelled & (n_on > 1))[0]
        raise ValueError(f"{what}: {int((labelled & (n_on > 1)).sum())} labelled frames hold several behaviours at "
                         f"once (first at index {tuple(int(i) for i in idx)}); train multi-label "
                         "(data.multilabel=true) or choose exclusive behaviours (behaviour.behaviours)")
    names = list(names)
    target = np.where(labelled, z.argmax(-1), -1).astype(np.int64)
    none = labelled & (n_on == 0)
    if none.any():
        names.append(BACKGROUND)
        target[none] = len(names) - 1
    return target, names


def slot_sequences(valid: np.ndarray) -> np.ndarray:
    """``(T, A)`` bool (slot holds an animal) -> ``(T, A)`` int64 sequence ids: one id per run of consecutive
    valid frames of a slot, -1 where invalid. Ids count slot by slot, runs in time order."""
    valid = np.asarray(valid, bool)
    T, A = valid.shape
    seq = np.full((T, A), -1, np.int64)
    next_id = 0
    for a in range(A):
        v = valid[:, a]
        start = v & ~np.concatenate([[False], v[:-1]])
        run = np.cumsum(start) - 1 + next_id
        seq[v, a] = run[v]
        next_id += int(start.sum())
    return seq


def com_speed(com: np.ndarray, fps: float, scale_px: float) -> np.ndarray:
    """Speed of each slot's centre of mass: the motion input of BehaveNet's temporal network (``tcn.motion_input``).

    A crop centred on the animal hides whether it moves; its centre of mass
    does not. Centred difference over ``t - 1, t + 1`` inside each run of
    frames the slot holds an animal (one-sided at a run's ends, 0 for a run
    of one frame), in crop sides per second, as ``log(1 + speed)``.

    Args:
        com: ``(T, A, 2)`` frame px (NaN: empty slot).
        fps: frames per second.
        scale_px: frame px of one crop side (the store's crop size).

    Returns:
        ``(T, A, 1)`` float32; NaN where the slot is empty.
    """
    com = np.asarray(com, np.float64)
    T, A = com.shape[:2]
    seq = slot_sequences(np.isfinite(com).all(-1))
    out = np.full((T, A, 1), np.nan, np.float32)
    t = np.arange(T)
    for a in range(A):
        s = seq[:, a]
        ok = s >= 0
        if not ok.any():
            continue
        prev_ok = np.r_[False, (s[1:] == s[:-1]) & ok[1:]]  # t - 1 in the same run
        next_ok = np.r_[(s[:-1] == s[1:]) & ok[:-1], False]  # t + 1 in the same run
        lo = np.where(prev_ok, t - 1, t)
        hi = np.where(next_ok, t + 1, t)
        steps = np.maximum(hi - lo, 1)
        v = np.linalg.norm(com[hi, a] - com[lo, a], axis=-1) / steps * fps / scale_px
        v = np.where(hi > lo, v, 0.0)
        out[ok, a, 0] = np.log1p(v[ok])
    return out


#: Columns every pair-label table has besides its behaviours.
PAIR_COLUMNS = ("frame", "animal_a", "animal_b")


def load_pair_labels(path: str | os.PathLike, behaviours: Sequence[str] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """A per-frame table of pair behaviours: ``frame, animal_a, animal_b`` and one 0/1 column per behaviour.

    One row per labelled frame and pair of animals (the demo's
    ``social.csv``); the order of ``animal_a`` and ``animal_b`` does not matter.

    Returns:
        ``frame (N,) int64``, ``pair (N, 2) str`` (names sorted within each
        row), ``y (N, C) float32`` and the ``C`` behaviour names.

    Raises:
        ValueError: naming the file: unreadable, missing columns, no
            behaviour column, values other than 0/1, unknown behaviours.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, sep=None, engine="python")
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path}: cannot read the pair-label table ({exc})") from None
    missing = [c for c in PAIR_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: pair-label table lacks column(s) {', '.join(missing)} (needs frame, animal_a, "
                         f"animal_b and one 0/1 column per behaviour; has {', '.join(map(str, table.columns))})")
    names = [str(c) for c in table.columns if c not in PAIR_COLUMNS]
    if behaviours:
        unknown = [b for b in behaviours if b not in names]
        if unknown:
            raise ValueError(f"{path}: behaviour(s) {', '.join(unknown)} not in the file (it has {', '.join(names)})")
        names = list(behaviours)
    if not names:
        raise ValueError(f"{path}: pair-label table has no behaviour column")
    y = table[names].to_numpy(np.float32)
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{path}: behaviour columns must hold 0 or 1")
    pair = np.sort(table[["animal_a", "animal_b"]].astype(str).to_numpy(), axis=1)
    if (pair[:, 0] == pair[:, 1]).any():
        raise ValueError(f"{path}: a row pairs an animal with itself")
    return table["frame"].to_numpy(np.int64), pair, y, names


def pair_slot_labels(labels: str | os.PathLike, com: np.ndarray, pair_slots: Sequence[Sequence[int]],
                     positions: str | os.PathLike, frames: Sequence[int] | None = None,
                     behaviours: Sequence[str] | None = None, max_distance: float = 20.0
                     ) -> tuple[np.ndarray, list[str]]:
    """Pair-behaviour labels of a video put on its pairs of track slots.

    Per labelled frame, the animals of ``positions`` are matched to the slot
    centres of mass as in :func:`slot_labels`; a labelled pair whose two
    animals both match lands on the pair of their slots.

    Args:
        labels: a pair-label table (:func:`load_pair_labels`).
        com: ``(T, A, 2)`` slot centres of mass, frame px (NaN: empty slot).
        pair_slots: the ``P`` slot pairs ``(i, j)`` of the social stores, ``i < j``.
        positions: table ``frame, animal, x, y`` of the labelled animals (:func:`read_positions`).
        frames: ``[start, stop)``: only these frames count as labelled.
        behaviours: the behaviours to keep, in this order (default: all of the file's).
        max_distance: px between a labelled animal and its slot.

    Returns:
        ``(y (T, P, C) float32, names)``: 0/1 on matched pairs, NaN elsewhere.

    Raises:
        ValueError: naming the file: frames outside the video, animals
            without positions, or no labelled pair matched to slots.
    """
    path = Path(labels)
    T = com.shape[0]
    f, pair, y, names = load_pair_labels(path, behaviours)
    if len(f) and (f.max() >= T or f.min() < 0):
        raise ValueError(f"{path}: labels frame {int(f.max())} but the video has {T} frames")
    if frames is not None:
        keep = (f >= frames[0]) & (f < frames[1])
        f, pair, y = f[keep], pair[keep], y[keep]
    pos = read_positions(positions)
    animals = list(dict.fromkeys(pair.ravel().tolist()))
    missing = sorted(set(animals) - set(pos["animal"]))
    if missing:
        raise ValueError(f"{positions}: no positions for labelled animal(s) {', '.join(missing)}")
    xy = np.full((T, len(animals), 2), np.nan)
    pos = pos[pos["animal"].isin(animals) & (pos["frame"] >= 0) & (pos["frame"] < T)]
    xy[pos["frame"].to_numpy(int), [animals.index(a) for a in pos["animal"]]] = pos[["x", "y"]].to_numpy(float)
    index = {tuple(sorted(int(s) for s in p)): k for k, p in enumerate(pair_slots)}
    out = np.full((T, len(pair_slots), len(names)), np.nan, np.float32)
    slot_of: dict[int, dict[str, int]] = {}
    matched = 0
    for r, t in enumerate(f):
        if t not in slot_of:
            slot_of[t] = {animals[i]: s for i, s in _match_frame(xy[t], com[t], max_distance)}
        sa, sb = slot_of[t].get(pair[r, 0]), slot_of[t].get(pair[r, 1])
        if sa is None or sb is None:
            continue
        k = index.get(tuple(sorted((sa, sb))))
        if k is not None:
            out[t, k] = y[r]
            matched += 1
    log.info("%s: %d of %d labelled pair-frames matched to pairs of track slots (within %.0f px)", path, matched,
             len(f), max_distance)
    if matched == 0:
        raise ValueError(f"{path}: no labelled pair has both animals within {max_distance:g} px of tracked animals; "
                         "check the positions table and behaviour.max_distance")
    return out, names

"""Frame-to-frame tracking of segmented instances, chunk stitching and an identity-switch metric.

SIPEC (Marks et al., Methods, "Tracking") links detections greedily: each
animal's box in a frame is assigned to the box in the previous frame with
the largest spatial overlap. :func:`link_frames` implements that rule
(``method="greedy"``) and an optimal assignment (``method="hungarian"``,
:func:`scipy.optimize.linear_sum_assignment`), both falling back to centre
distance when boxes do not overlap.

Shapes: ``T`` frames, ``I`` instance slots per frame, ``N`` animals/tracks.
Boxes are ``x0, y0, x1, y1`` in frame pixels (``x1, y1`` exclusive), centres
``x, y`` in pixels; empty instance slots hold NaN boxes and get track -1.

Typical use in the pipeline: each chunk job calls :func:`track_chunk` on its
own frames (``local_track``), the track job calls :func:`stitch_chunks` to map
chunk-local ids to global ones and :func:`instances_to_slots` to build the
per-animal arrays of the video store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

METHODS = ("greedy", "hungarian")

#: Cost of an infeasible pair in the optimal assignment (larger than any feasible cost).
_INFEASIBLE = 1e6


@dataclass(frozen=True)
class TrackingConfig:
    """Tracking options (the ``tracking`` section of the pipeline config).

    Attributes:
        method: ``"greedy"`` (SIPEC: largest overlap first) or ``"hungarian"``
            (optimal assignment).
        max_distance: px a centre may move between two observations of one
            animal and still be linked when their boxes do not overlap.
        max_gap: frames a track may go unseen and still be continued; used
            only when the number of animals is unknown (with a known number,
            every animal keeps its track slot for the whole video).
    """

    method: str = "greedy"
    max_distance: float = 50.0
    max_gap: int = 5

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"tracking method must be one of {METHODS}, not {self.method!r}")
        if not self.max_distance > 0:
            raise ValueError(f"tracking max_distance must be > 0 px, not {self.max_distance!r}")
        if self.max_gap < 0:
            raise ValueError(f"tracking max_gap must be >= 0 frames, not {self.max_gap!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "TrackingConfig":
        """Build from a mapping; raises ValueError naming an unknown key or a value of the wrong type."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise ValueError(f"unknown tracking option {key!r} (known: {', '.join(sorted(known))})")
        types = {"method": (str,), "max_distance": (int, float), "max_gap": (int,)}
        for key, value in d.items():
            if isinstance(value, bool) or not isinstance(value, types[key]):
                raise ValueError(f"tracking option {key!r} must be {types[key][-1].__name__}, not {value!r}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of boxes ``(N, 4)`` and ``(M, 4)`` -> ``(N, M)``.

    Boxes are ``x0, y0, x1, y1`` with exclusive ``x1, y1``; NaN boxes give 0.
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)[:, None, :]
    b = np.asarray(b, np.float64).reshape(-1, 4)[None, :, :]
    w = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    h = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
    return np.nan_to_num(iou, nan=0.0, posinf=0.0, neginf=0.0)


def _centres(box: np.ndarray, com: np.ndarray | None) -> np.ndarray:
    if com is not None:
        return np.asarray(com, np.float64).reshape(-1, 2)
    box = np.asarray(box, np.float64).reshape(-1, 4)
    return np.stack([(box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2], axis=1)


def link_frames(
    prev: np.ndarray,
    curr: np.ndarray,
    method: str = "greedy",
    prev_com: np.ndarray | None = None,
    curr_com: np.ndarray | None = None,
    max_distance: float = 50.0,
) -> np.ndarray:
    """Assign current instances to previous ones by box overlap, then by centre distance.

    Args:
        prev: ``(N, 4)`` boxes of the previous observations.
        curr: ``(M, 4)`` boxes of the current instances.
        method: ``"greedy"``: SIPEC's rule. All pairs with overlapping boxes
            are taken in order of decreasing IoU (ties: nearer centres first,
            then lower indices), each instance at most once; then the
            remaining pairs whose centres lie within ``max_distance`` px, in
            order of increasing distance. ``"hungarian"``: one optimal
            assignment over both kinds of pairs, cost ``1 - IoU`` for
            overlapping boxes and ``1 + distance / max_distance`` for
            non-overlapping ones within ``max_distance`` (so any overlap
            beats any distance); it links as many instances as possible,
            then minimises the summed cost.
        prev_com, curr_com: ``(N, 2)``/``(M, 2)`` centres in px (default: box centres).
        max_distance: px; pairs further apart whose boxes do not overlap are
            never linked (``np.inf`` links everything left).

    Returns:
        ``(M,)`` int: index into ``prev`` of the instance each current one is
        linked to, or -1.
    """
    if method not in METHODS:
        raise ValueError(f"link method must be one of {METHODS}, not {method!r}")
    prev = np.asarray(prev, np.float64).reshape(-1, 4)
    curr = np.asarray(curr, np.float64).reshape(-1, 4)
    match = np.full(len(curr), -1, np.int64)
    if len(prev) == 0 or len(curr) == 0:
        return match
    iou = box_iou(prev, curr)
    pc, cc = _centres(prev, prev_com), _centres(curr, curr_com)
    dist = np.linalg.norm(pc[:, None, :] - cc[None, :, :], axis=-1)
    dist = np.where(np.isfinite(dist), dist, np.inf)
    overlap = iou > 0
    near = ~overlap & (dist <= max_distance)

    if method == "hungarian":
        cost = np.full(iou.shape, _INFEASIBLE)
        cost[overlap] = 1.0 - iou[overlap]
        if np.isfinite(max_distance):
            cost[near] = 1.0 + dist[near] / max_distance
        else:
            # No distance limit: a bounded cost, increasing with distance, in [1, 2).
            cost[near] = 1.0 + dist[near] / (1.0 + dist[near])
        rows, cols = linear_sum_assignment(cost)
        ok = cost[rows, cols] < _INFEASIBLE
        match[cols[ok]] = rows[ok]
        return match

    used_prev = np.zeros(len(prev), bool)
    io, jo = np.nonzero(overlap)
    by_overlap = np.lexsort((io, jo, dist[io, jo], -iou[io, jo]))
    idn, jdn = np.nonzero(near)
    by_distance = np.lexsort((idn, jdn, dist[idn, jdn]))
    pairs_i = np.concatenate([io[by_overlap], idn[by_distance]])
    pairs_j = np.concatenate([jo[by_overlap], jdn[by_distance]])
    for i, j in zip(pairs_i, pairs_j):
        if match[j] < 0 and not used_prev[i]:
            match[j] = i
            used_prev[i] = True
    return match


class _SlotTracker:
    """Tracker state with a fixed number of track slots (the number of animals is known).

    Each slot remembers the box and centre of its animal's last observation.
    A frame's instances are linked to the slots seen so far with
    :func:`link_frames`; instances left over first fill slots never seen yet
    (in slot order), then are linked to the remaining slots by distance to
    their last position, with no distance limit: an animal that was missed
    keeps its slot. Instances beyond the number of slots get -1.
    """

    def __init__(self, n_slots: int, method: str, max_distance: float):
        self.box = np.full((n_slots, 4), np.nan)
        self.com = np.full((n_slots, 2), np.nan)
        self.seen = np.zeros(n_slots, bool)
        self.method = method
        self.max_distance = max_distance

    def step(self, box: np.ndarray, com: np.ndarray) -> np.ndarray:
        """Link ``(M, 4)`` boxes / ``(M, 2)`` centres of one frame; return ``(M,)`` slot ids (-1: none)."""
        out = np.full(len(box), -1, np.int64)
        seen = np.flatnonzero(self.seen)
        if seen.size:
            m = link_frames(self.box[seen], box, self.method, self.com[seen], com, self.max_distance)
            out[m >= 0] = seen[m[m >= 0]]
        left = np.flatnonzero(out < 0)
        fresh = np.flatnonzero(~self.seen)
        n_new = min(len(left), len(fresh))
        out[left[:n_new]] = fresh[:n_new]
        left = left[n_new:]
        free = np.setdiff1d(seen, out)
        if left.size and free.size:
            m = link_frames(self.box[free], box[left], self.method, self.com[free], com[left], np.inf)
            out[left[m >= 0]] = free[m[m >= 0]]
        ok = out >= 0
        self.box[out[ok]] = box[ok]
        self.com[out[ok]] = com[ok]
        self.seen[out[ok]] = True
        return out


class _OpenTracker:
    """Tracker state when the number of animals is unknown: tracks start and end.

    A frame's instances are linked with :func:`link_frames` to the tracks seen
    in the last ``max_gap + 1`` frames; unlinked instances start new tracks
    with the next free id.
    """

    def __init__(self, method: str, max_distance: float, max_gap: int, next_id: int = 0):
        self.box: dict[int, np.ndarray] = {}
        self.com: dict[int, np.ndarray] = {}
        self.last: dict[int, int] = {}
        self.method, self.max_distance, self.max_gap = method, max_distance, max_gap
        self.next_id = next_id

    def active(self, t: int) -> list[int]:
        return [k for k, last in self.last.items() if t - last <= self.max_gap + 1]

    def step(self, t: int, box: np.ndarray, com: np.ndarray) -> np.ndarray:
        ids = self.active(t)
        out = np.full(len(box), -1, np.int64)
        if ids:
            m = link_frames(np.array([self.box[k] for k in ids]), box, self.method,
                            np.array([self.com[k] for k in ids]), com, self.max_distance)
            out[m >= 0] = np.asarray(ids)[m[m >= 0]]
        for j in np.flatnonzero(out < 0):
            out[j] = self.next_id
            self.next_id += 1
        self.observe(t, out, box, com)
        return out

    def observe(self, t: int | np.ndarray, ids: np.ndarray, box: np.ndarray, com: np.ndarray) -> None:
        """Record observations of tracks ``ids`` at frame(s) ``t`` (scalar or one per id)."""
        for k, tk, b, c in zip(ids, np.broadcast_to(t, np.shape(ids)), box, com):
            self.box[int(k)], self.com[int(k)], self.last[int(k)] = b, c, int(tk)


def _valid(box: np.ndarray) -> np.ndarray:
    return np.isfinite(box).all(axis=-1)


def track_chunk(
    box: np.ndarray,
    com: np.ndarray | None = None,
    n_animals: int | None = None,
    method: str = "greedy",
    max_distance: float = 50.0,
    max_gap: int = 5,
) -> np.ndarray:
    """Link instances frame to frame inside one chunk.

    Args:
        box: ``(T, I, 4)`` float boxes (NaN rows are empty slots).
        com: ``(T, I, 2)`` centres in px (default: box centres).
        n_animals: when known, exactly ``n_animals`` track slots are kept
            (ids ``0..n_animals-1``); an animal that is missed for some
            frames keeps its slot and is re-linked to the nearest unclaimed
            instance (by distance to its last position) when it comes back,
            so tracks do not fragment. Instances beyond ``n_animals`` in a
            frame get -1. When ``None``, unlinked instances start new tracks
            and tracks unseen for more than ``max_gap`` frames end.
        method, max_distance: see :func:`link_frames`.
        max_gap: frames, only used when ``n_animals`` is None.

    Returns:
        ``(T, I)`` int32 track ids, -1 for empty or unassigned slots.
    """
    box = np.asarray(box, np.float64)
    if box.ndim != 3 or box.shape[-1] != 4:
        raise ValueError(f"box must be (T, I, 4), got {box.shape}")
    com = _centres(box, None).reshape(box.shape[:2] + (2,)) if com is None else np.asarray(com, np.float64)
    valid = _valid(box)
    out = np.full(box.shape[:2], -1, np.int32)
    if n_animals:
        tracker = _SlotTracker(n_animals, method, max_distance)
    else:
        tracker = _OpenTracker(method, max_distance, max_gap)
    for t in range(box.shape[0]):
        idx = np.flatnonzero(valid[t])
        if idx.size:
            ids = tracker.step(box[t, idx], com[t, idx]) if n_animals else tracker.step(t, box[t, idx], com[t, idx])
            out[t, idx] = ids
    return out


def stitch_chunks(
    chunk_results: Sequence[Mapping[str, np.ndarray]],
    n_animals: int | None = None,
    method: str = "greedy",
    max_distance: float = 50.0,
    max_gap: int = 5,
) -> list[np.ndarray]:
    """Map each chunk's local track ids to global ids across consecutive chunks.

    For chunk ``k + 1`` every local track's first observation (normally in
    its first frame) is linked with :func:`link_frames` to the last
    observation of every global track before it (normally the last frame of
    chunk ``k``), by the same rules as :func:`track_chunk`; with
    ``n_animals`` known, local tracks left over fill global slots never seen
    yet, then the remaining slots by distance. So when every animal is
    detected in the first frame of each chunk, a chunked run gives exactly
    the tracks of an unchunked :func:`track_chunk` run (up to exact ties in
    overlap or distance); an animal missed at a chunk start is re-linked at
    its first detection in the chunk.

    Args:
        chunk_results: per chunk, in frame order, a mapping with ``box``
            ``(T_k, I, 4)``, ``com`` ``(T_k, I, 2)`` (optional) and
            ``local_track`` ``(T_k, I)`` int (-1 = none).
        n_animals, method, max_distance, max_gap: as for :func:`track_chunk`
            (use the values the chunks were tracked with).

    Returns:
        Per chunk, ``(T_k, I)`` int32 global track ids (-1 = none); with
        ``n_animals`` known these are the slots ``0..n_animals-1``.
    """
    out: list[np.ndarray] = []
    slots = _SlotTracker(n_animals, method, max_distance) if n_animals else None
    open_ = None if n_animals else _OpenTracker(method, max_distance, max_gap)
    t0 = 0
    for k, chunk in enumerate(chunk_results):
        local = np.asarray(chunk["local_track"])
        box = np.asarray(chunk["box"], np.float64)
        com = chunk.get("com")
        com = _centres(box, None).reshape(box.shape[:2] + (2,)) if com is None else np.asarray(com, np.float64)
        if local.shape != box.shape[:2]:
            raise ValueError(f"chunk {k}: local_track {local.shape} does not match box {box.shape}")
        # First observation of every local track, in order of (frame, instance).
        tt, ii = np.nonzero(local >= 0)
        ids, first = np.unique(local[tt, ii], return_index=True)
        order = np.argsort(tt[first] * local.shape[1] + ii[first], kind="stable")
        ids, first = ids[order], first[order]
        fb, fc = box[tt[first], ii[first]], com[tt[first], ii[first]]
        if n_animals:
            if ids.size and ids.max() >= n_animals:
                raise ValueError(f"chunk {k}: local track id {ids.max()} >= n_animals={n_animals}")
            glob = slots.step(fb, fc)
        else:
            glob = open_.step(t0 + int(tt[first].min()) if ids.size else t0, fb, fc)
        mapping = np.full(int(local.max(initial=-1)) + 2, -1, np.int64)
        mapping[ids] = glob
        g = mapping[local].astype(np.int32)  # local -1 maps to mapping[-1] == -1
        # Remember each global track's last observation in this chunk.
        tt, ii = np.nonzero(g >= 0)
        last_rev = np.unique(g[tt, ii][::-1], return_index=True)
        gid, last = last_rev[0], len(tt) - 1 - last_rev[1]
        if n_animals:
            slots.box[gid], slots.com[gid] = box[tt[last], ii[last]], com[tt[last], ii[last]]
            slots.seen[gid] = True
        else:
            open_.observe(t0 + tt[last], gid, box[tt[last], ii[last]], com[tt[last], ii[last]])
        out.append(g)
        t0 += local.shape[0]
    return out


def identity_switches(pred: np.ndarray, truth: np.ndarray, max_distance: float | None = None) -> np.ndarray:
    """Count, per predicted track, how often the ground-truth animal nearest to it changes.

    Definition: for track ``n``, take the frames where the track has a
    position and every true animal has a position (all other frames are
    ignored; with ``max_distance`` set, also the frames where the nearest true
    animal is further than ``max_distance`` px). In each such frame the track
    is attributed to the nearest true animal (Euclidean distance of centres).
    The track's switch count is the number of consecutive pairs of these
    frames whose attributed animals differ. A perfect tracker scores 0 for
    every track; a track that follows animal A, then B, then A again scores 2.

    Args:
        pred: ``(T, N, 2)`` centres of the ``N`` predicted tracks, px (NaN = missing).
        truth: ``(T, G, 2)`` centres of the ``G`` true animals, px (NaN = missing).
        max_distance: optional px cut-off for the attribution (None: none).

    Returns:
        ``(N,)`` int switch counts; ``.sum()`` is the total.
    """
    pred = np.asarray(pred, np.float64)
    truth = np.asarray(truth, np.float64)
    if pred.ndim != 3 or truth.ndim != 3 or len(pred) != len(truth) or (pred.shape[2], truth.shape[2]) != (2, 2):
        raise ValueError(f"pred (T, N, 2) and truth (T, G, 2) must share T; got {pred.shape} and {truth.shape}")
    truth_ok = np.isfinite(truth).all(axis=(1, 2))
    dist = np.linalg.norm(pred[:, :, None, :] - truth[:, None, :, :], axis=-1)  # (T, N, G)
    nearest = np.argmin(np.where(np.isfinite(dist), dist, np.inf), axis=2)
    ok = np.isfinite(pred).all(axis=2) & truth_ok[:, None]
    if max_distance is not None:
        ok &= np.take_along_axis(dist, nearest[..., None], axis=2)[..., 0] <= max_distance
    counts = np.zeros(pred.shape[1], np.int64)
    for n in range(pred.shape[1]):
        seq = nearest[ok[:, n], n]
        counts[n] = int(np.count_nonzero(seq[1:] != seq[:-1]))
    return counts


#: Fill value of empty slots for integer id arrays (all other integer and bool arrays use 0, floats NaN).
_ID_ARRAYS = ("local_track", "track")


def _fill_value(name: str, dtype: np.dtype):
    if np.issubdtype(dtype, np.floating):
        return np.nan
    if name in _ID_ARRAYS:
        return -1
    return 0


def instances_to_slots(
    track: np.ndarray,
    arrays: Mapping[str, np.ndarray],
    n_slots: int | None = None,
) -> dict[str, np.ndarray]:
    """Reorder per-instance arrays ``(T, I, ...)`` into per-animal arrays ``(T, A, ...)``.

    Args:
        track: ``(T, I)`` global track ids (from :func:`stitch_chunks`), -1 = none.
        arrays: name -> ``(T, I, ...)`` per-instance array (``box``, ``com``,
            ``mask``, ...). Arrays of shape ``(T,)`` (per frame, e.g.
            ``n_found``) are passed through unchanged.
        n_slots: number of animal slots ``A``. When given, track id ``k``
            goes to slot ``k`` (ids must be ``< n_slots``: the ids of a
            tracker run with ``n_animals``). When None, the distinct ids are
            sorted and slot ``a`` holds the ``a``-th id.

    Returns:
        The same names with shape ``(T, A, ...)``, plus ``track`` ``(T, A)``
        int32: the global id held in each slot (-1 where the animal was not
        found). Empty slots hold NaN (float), -1 (``local_track``, ``track``)
        or 0 (other integer and bool arrays).

    Raises:
        ValueError: mismatched shapes, ids ``>= n_slots``, or one id twice in a frame.
    """
    track = np.asarray(track)
    if track.ndim != 2:
        raise ValueError(f"track must be (T, I), got {track.shape}")
    n_frames = track.shape[0]
    tt, ii = np.nonzero(track >= 0)
    ids = track[tt, ii].astype(np.int64)
    if n_slots is None:
        uniq = np.unique(ids)
        n_slots = len(uniq)
        slot = np.searchsorted(uniq, ids)
        slot_id = uniq
    else:
        if ids.size and ids.max() >= n_slots:
            raise ValueError(f"track id {ids.max()} does not fit {n_slots} slots")
        slot = ids
        slot_id = np.arange(n_slots)
    if len(np.unique(tt * max(n_slots, 1) + slot)) != len(tt):
        raise ValueError("a track id occurs twice in one frame")
    out: dict[str, np.ndarray] = {}
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.shape == (n_frames,):
            out[name] = a
            continue
        if a.shape[:2] != track.shape:
            raise ValueError(f"array {name!r} has shape {a.shape}; expected ({n_frames}, {track.shape[1]}, ...)")
        res = np.full((n_frames, n_slots) + a.shape[2:], _fill_value(name, a.dtype), a.dtype)
        res[tt, slot] = a[tt, ii]
        out[name] = res
    track_out = np.full((n_frames, n_slots), -1, np.int32)
    track_out[tt, slot] = slot_id[slot]
    out["track"] = track_out
    return out

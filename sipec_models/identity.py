"""Identity labels, crops for SIPEC:IdNet, identity assignment, track smoothing and scores.

Units and conventions: frame pixels ``x`` (column), ``y`` (row); boxes
``x0, y0, x1, y1``; an *animal slot* is the ``animal`` index of a video store
(a stitched track, ``0..n_animals-1``); identities are indices into a list of
identity names (``-1``: none).

Label tables
    :func:`load_identity_table` reads a CSV with a ``frame`` and an
    ``identity`` column and one way to locate the animal: ``x0, y0, x1, y1``
    (a box), ``x, y`` (a point), or ``instance`` (an annotation id of a COCO
    file, e.g. the demo's ``masks_coco.json``).
    :func:`identities_from_slp` reads a SLEAP file (track name = identity).
    Both return a :class:`pandas.DataFrame` with columns ``frame, identity,
    x0, y0, x1, y1, x, y`` (NaN where unknown), which
    :func:`match_labels_to_slots` matches to the segmented animals.

Crops
    SIPEC scales the cut-outs "to the same average size". We keep one fixed
    window (``window`` px, centred on the segmentation window) for every
    crop of a video and resize it to the network input (``out_size``), so
    an animal's size stays an identity cue (e.g. female flies are larger);
    no crop is rescaled to its own animal's size. Pixels outside the
    (dilated) mask are 0. For the recurrent network, the mask of frame
    ``t + k`` is dilated by ``base + |k| * step`` px (SIPEC: "the masks of
    past or future frames are dilated with a factor that increases with
    distance in time"), widening the field of view away from ``t``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment

#: Columns of a normalised label table.
LABEL_COLUMNS = ("frame", "identity", "x0", "y0", "x1", "y1", "x", "y")

_EPS = 1e-9


# --------------------------------------------------------------------------- label import


def _normalised(df: pd.DataFrame) -> pd.DataFrame:
    for c in LABEL_COLUMNS:
        if c not in df:
            df[c] = np.nan
    out = df.loc[:, list(LABEL_COLUMNS)].copy()
    out["frame"] = out["frame"].astype(np.int64)
    out["identity"] = out["identity"].astype(str)
    for c in LABEL_COLUMNS[2:]:
        out[c] = out[c].astype(np.float64)
    return out.reset_index(drop=True)


def load_identity_table(path: str | os.PathLike, coco: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read an identity label table (CSV).

    Required columns: ``frame`` (0-based video frame) and ``identity`` (a
    name), plus one way to locate the animal, tried in this order:
    ``x0, y0, x1, y1`` (box, px), ``x, y`` (a point on the animal, px), or
    ``instance`` (an annotation ``id`` of the COCO file ``coco``, default
    ``masks_coco.json`` beside the CSV, as the demo writes them; the
    annotation's ``bbox`` ``[x, y, w, h]`` becomes the box).

    Returns:
        DataFrame with columns :data:`LABEL_COLUMNS` (NaN where unknown).

    Raises:
        FileNotFoundError: the file (or the COCO file for ``instance``) is missing.
        ValueError: required columns are missing (the message names the file
            and the columns), or an ``instance`` is not in the COCO file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: identity label table does not exist")
    df = pd.read_csv(path)
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ("frame", "identity") if c not in df]
    if missing:
        raise ValueError(f"{path}: identity table lacks column(s) {', '.join(missing)} "
                         f"(has {', '.join(df.columns)})")
    box, point = ("x0", "y0", "x1", "y1"), ("x", "y")
    if all(c in df for c in box) or all(c in df for c in point):
        return _normalised(df)
    if "instance" not in df:
        raise ValueError(
            f"{path}: identity table needs a box (x0, y0, x1, y1), a point (x, y) or an instance column "
            f"to locate each animal; it has {', '.join(df.columns)}")
    coco = Path(coco) if coco is not None else path.parent / "masks_coco.json"
    if not coco.is_file():
        raise FileNotFoundError(f"{path}: the instance column refers to COCO annotations, but {coco} does not exist")
    data = json.loads(coco.read_text())
    bbox_of = {int(ann["id"]): ann["bbox"] for ann in data["annotations"]}
    boxes = []
    for f, inst in zip(df["frame"].astype(int), df["instance"].astype(int)):
        if inst not in bbox_of:
            raise ValueError(f"{path}: frame {f} instance {inst} is not an annotation id of {coco}")
        x, y, w, h = bbox_of[inst]
        boxes.append((x, y, x + w, y + h))
    df[list(box)] = np.asarray(boxes, np.float64).reshape(-1, 4)
    return _normalised(df)


def identities_from_slp(path: str | os.PathLike, which: str = "all") -> pd.DataFrame:
    """Identity labels from a SLEAP ``.slp`` file: track name = identity.

    Per instance with a track, the box around its keypoints and their
    centroid (NaN keypoints ignored; instances without any finite keypoint
    or without a track are skipped).

    Args:
        path: ``.slp`` file.
        which: ``"user"`` (human-labelled instances), ``"predicted"``, or ``"all"``.

    Returns:
        DataFrame with columns :data:`LABEL_COLUMNS`.
    """
    import sleap_io

    if which not in ("all", "user", "predicted"):
        raise ValueError(f"which must be 'all', 'user' or 'predicted', not {which!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: SLEAP file does not exist")
    labels = sleap_io.load_slp(str(path))
    rows = []
    for lf in labels.labeled_frames:
        insts = {"all": lf.instances, "user": lf.user_instances, "predicted": lf.predicted_instances}[which]
        for inst in insts:
            if inst.track is None:
                continue
            pts = np.asarray(inst.numpy(), np.float64)[:, :2]
            pts = pts[np.isfinite(pts).all(axis=1)]
            if not len(pts):
                continue
            lo, hi = pts.min(axis=0), pts.max(axis=0)
            c = pts.mean(axis=0)
            rows.append((int(lf.frame_idx), inst.track.name, lo[0], lo[1], hi[0], hi[1], c[0], c[1]))
    return _normalised(pd.DataFrame(rows, columns=list(LABEL_COLUMNS)))


# --------------------------------------------------------------------------- matching


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` IoU of boxes ``a (N, 4)`` and ``b (M, 4)``."""
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, _EPS), 0.0)


def match_labels_to_slots(
    labels: pd.DataFrame,
    box: np.ndarray,
    com: np.ndarray,
    frame_offset: int = 0,
    min_iou: float = 0.05,
    max_distance: float | None = None,
    margin: float = 0.0,
) -> np.ndarray:
    """Match each label to an animal slot of its frame (Hungarian per frame).

    Labels with a box are matched on box IoU (the label box grown by
    ``margin`` px; pairs under ``min_iou`` are not matched); labels with only
    a point on the distance from the point to the slot's centre of mass
    (pairs further than ``max_distance`` px, default: the slot box's
    diagonal, are not matched).

    Args:
        labels: table from :func:`load_identity_table` / :func:`identities_from_slp`.
        box: ``(T, A, 4)`` slot boxes (NaN: empty slot).
        com: ``(T, A, 2)`` slot centres, px.
        frame_offset: video frame of ``box[0]`` (labels outside
            ``[frame_offset, frame_offset + T)`` stay unmatched).

    Returns:
        ``(len(labels),)`` int slot index per label, -1 when unmatched.
    """
    box = np.asarray(box, np.float64)
    com = np.asarray(com, np.float64)
    T = len(box)
    out = np.full(len(labels), -1, np.int64)
    frames = labels["frame"].to_numpy() - frame_offset
    lbox = labels[["x0", "y0", "x1", "y1"]].to_numpy(np.float64) + np.array([-margin, -margin, margin, margin])
    lpt = labels[["x", "y"]].to_numpy(np.float64)
    has_box = np.isfinite(lbox).all(axis=1)
    lpt = np.where(np.isfinite(lpt).all(axis=1, keepdims=True) | ~has_box[:, None], lpt,
                   (lbox[:, :2] + lbox[:, 2:]) / 2)
    order = np.argsort(frames, kind="stable")
    bounds = np.flatnonzero(np.diff(frames[order])) + 1
    for idx in np.split(order, bounds):
        if not len(idx):
            continue
        t = frames[idx[0]]
        if not 0 <= t < T:
            continue
        slots = np.flatnonzero(np.isfinite(box[t, :, 0]))
        if not len(slots):
            continue
        sb, sc = box[t, slots], com[t, slots]
        cost = np.full((len(idx), len(slots)), 1e6)
        ok = np.zeros_like(cost, bool)
        hb = has_box[idx]
        if hb.any():
            iou = _iou(lbox[idx[hb]], sb)
            cost[hb] = -iou
            ok[hb] = iou >= min_iou
        if (~hb).any():
            d = np.linalg.norm(lpt[idx[~hb], None, :] - sc[None], axis=-1)
            diag = np.linalg.norm(sb[:, 2:] - sb[:, :2], axis=-1)
            limit = diag[None, :] if max_distance is None else max_distance
            # Distance costs scaled below 0 so they compare with IoU costs only within their rows.
            cost[~hb] = d / (1.0 + d.max()) - 1.0
            ok[~hb] = np.isfinite(d) & (d <= limit)
        cost = np.where(ok, cost, 1e6)
        rows, cols = linear_sum_assignment(cost)
        good = ok[rows, cols]
        out[idx[rows[good]]] = slots[cols[good]]
    return out


# --------------------------------------------------------------------------- crops


def window_origin(mask_origin, mask_size: int, window: int) -> np.ndarray:
    """Top-left ``(x, y)`` of a ``window`` square centred like the ``mask_size`` mask window at ``mask_origin``."""
    return np.asarray(mask_origin, np.int64) + (mask_size // 2 - window // 2)


def extract_window(frame: np.ndarray, origin, window: int) -> np.ndarray:
    """``(window, window)`` pixels of ``frame (H, W)`` at top-left ``origin (x, y)``; 0 outside the frame."""
    ox, oy = int(origin[0]), int(origin[1])
    out = np.zeros((window, window) + frame.shape[2:], frame.dtype)
    fy0, fx0 = max(0, oy), max(0, ox)
    fy1, fx1 = min(frame.shape[0], oy + window), min(frame.shape[1], ox + window)
    if fy1 > fy0 and fx1 > fx0:
        out[fy0 - oy:fy1 - oy, fx0 - ox:fx1 - ox] = frame[fy0:fy1, fx0:fx1]
    return out


def mask_in_window(mask_window: np.ndarray, window: int) -> np.ndarray:
    """The ``(S, S)`` mask placed in the concentric ``(window, window)`` square (cut or zero-padded)."""
    S = mask_window.shape[0]
    out = np.zeros((window, window), bool)
    off = S // 2 - window // 2  # mask coordinate of window pixel 0
    s0, s1 = max(0, off), min(S, off + window)
    if s1 > s0:
        out[s0 - off:s1 - off, s0 - off:s1 - off] = mask_window[s0:s1, s0:s1]
    return out


def mask_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (px) of each pixel to the mask (0 inside); ``inf`` everywhere for an empty mask."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.full(mask.shape, np.inf, np.float32)
    return ndi.distance_transform_edt(~mask).astype(np.float32)


def resize_crops(crops: np.ndarray, out_size: int) -> np.ndarray:
    """Resize ``(..., W, W)`` uint8 crops to ``(..., out_size, out_size)`` (bilinear, antialiased), uint8."""
    import torch
    import torch.nn.functional as F

    crops = np.asarray(crops)
    lead, W = crops.shape[:-2], crops.shape[-1]
    if W == out_size:
        return crops.astype(np.uint8, copy=True)
    x = torch.from_numpy(crops.reshape(-1, 1, W, W).astype(np.float32))
    if not len(x):
        return np.zeros(lead + (out_size, out_size), np.uint8)
    y = F.interpolate(x, size=(out_size, out_size), mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).numpy().reshape(lead + (out_size, out_size))


def identity_crop(
    frame: np.ndarray,
    mask_window: np.ndarray,
    origin,
    dilation_px: float,
    out_size: int,
    window: int | None = None,
) -> np.ndarray:
    """One IdNet input crop.

    Args:
        frame: ``(H, W)`` uint8 grey frame.
        mask_window: ``(S, S)`` bool mask of the animal in its segmentation
            window (the store's ``mask``), whose top-left corner in frame
            pixels is ``origin`` (``(x, y)``, may be negative).
        dilation_px: the mask is grown by this many px (Euclidean) before
            pixels outside it are set to 0.
        out_size: side of the returned crop, px.
        window: side (px) of the frame window cut out around the animal,
            concentric with the mask window (default ``S``). Fixed per
            model, so an animal's size in the crop reflects its real size.

    Returns:
        ``(out_size, out_size)`` uint8.
    """
    S = mask_window.shape[0]
    window = int(window or S)
    pixels = extract_window(np.asarray(frame), window_origin(origin, S, window), window)
    dist = mask_distance(mask_in_window(np.asarray(mask_window, bool), window))
    pixels[dist > dilation_px] = 0
    return resize_crops(pixels, out_size)


def dilations(half_window: int, dilation_base_px: float, dilation_step_px: float) -> np.ndarray:
    """``(2 * half_window + 1,)`` dilation (px) of the masks of frames ``t - h .. t + h``: ``base + |k| * step``."""
    k = np.arange(-half_window, half_window + 1)
    return dilation_base_px + np.abs(k) * dilation_step_px


def fill_origins(origins: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Origins ``(T, A, 2)`` with each slot's empty frames (``valid (T, A)`` False) given the origin of the
    nearest frame where the slot has a mask (earlier frame on ties); slots never valid keep theirs."""
    origins = np.array(origins, copy=True)
    T, A = valid.shape
    for a in range(A):
        idx = np.flatnonzero(valid[:, a])
        if not len(idx) or len(idx) == T:
            continue
        pos = np.searchsorted(idx, np.arange(T))
        before = idx[np.clip(pos - 1, 0, len(idx) - 1)]
        after = idx[np.clip(pos, 0, len(idx) - 1)]
        nearest = np.where(np.abs(np.arange(T) - before) <= np.abs(after - np.arange(T)), before, after)
        origins[:, a] = origins[nearest, a]
    return origins


def windows_from_frames(frames: np.ndarray, masks: np.ndarray, origins: np.ndarray,
                        window: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cut the windows of one or more animal slots out of frames.

    Args:
        frames: ``(T, H, W)`` uint8.
        masks: ``(T, S, S)`` or ``(T, A, S, S)`` bool mask windows (all False: empty slot).
        origins: ``(T, 2)`` or ``(T, A, 2)`` mask window corners ``(x, y)``.
        window: side of the cut-out (default ``S``).

    Returns:
        ``(pixels, dist)``: ``(T, [A,] window, window)`` uint8 pixels and
        float32 distance to the mask (:func:`mask_distance`; ``inf`` where
        the slot has no mask). In frames where a slot has no mask its
        pixels are cut at the window position of the nearest frame where
        it has one (:func:`fill_origins`); zeros if it never has one.
    """
    masks = np.asarray(masks, bool)
    origins = np.asarray(origins)
    single = masks.ndim == 3
    if single:
        masks, origins = masks[:, None], origins[:, None]
    T, A, S = masks.shape[:3]
    window = int(window or S)
    valid = masks.any(axis=(2, 3))
    origins = fill_origins(origins, valid)
    pixels = np.zeros((T, A, window, window), np.uint8)
    dist = np.full((T, A, window, window), np.inf, np.float32)
    for a in range(A):
        if not valid[:, a].any():
            continue
        for t in range(T):
            pixels[t, a] = extract_window(frames[t], window_origin(origins[t, a], S, window), window)
            if valid[t, a]:
                dist[t, a] = mask_distance(mask_in_window(masks[t, a], window))
    if single:
        return pixels[:, 0], dist[:, 0]
    return pixels, dist


def sequence_from_windows(
    pixels: np.ndarray, dist: np.ndarray, t: int, half_window: int,
    dilation_step_px: float, dilation_base_px: float = 0.0,
) -> np.ndarray:
    """The ``2h+1`` masked windows of one animal slot around frame ``t`` (before resizing).

    Args:
        pixels: ``(T, W, W)`` uint8 window pixels of one slot (:func:`windows_from_frames`).
        dist: ``(T, W, W)`` distance to its mask (``inf``: no mask in that frame).
        t: centre frame (index into ``pixels``); it must have a mask.

    Frame ``t + k`` is masked with its own mask dilated by
    ``dilation_base_px + |k| * dilation_step_px``. Edge choices: a
    neighbour outside ``[0, T)`` repeats the nearest end frame (the
    sequence is clamped); a neighbour frame in which the slot has no mask
    (missed by the segmentation) is masked with the mask of frame ``t``,
    dilated for the neighbour's distance ``|k|``: the animal moves little in
    a few frames and the wider dilation covers the motion.

    Returns:
        ``(2h+1, W, W)`` uint8.
    """
    T = len(pixels)
    if not np.isfinite(dist[t]).any():
        raise ValueError(f"frame {t} has no mask for this animal")
    dil = dilations(half_window, dilation_base_px, dilation_step_px)
    out = np.zeros((len(dil),) + pixels.shape[1:], np.uint8)
    for j, k in enumerate(range(-half_window, half_window + 1)):
        s = min(max(t + k, 0), T - 1)
        d = dist[s] if np.isfinite(dist[s]).any() else dist[t]
        out[j] = np.where(d <= dil[j], pixels[s], 0)
    return out


def sequence_crops(
    frames: np.ndarray,
    masks: np.ndarray,
    origins: np.ndarray,
    t: int,
    half_window: int,
    dilation_step_px: float,
    out_size: int,
    dilation_base_px: float = 0.0,
    window: int | None = None,
) -> np.ndarray:
    """Crops of one animal in frames ``t - half_window .. t + half_window`` for the recurrent IdNet.

    Args:
        frames: ``(T, H, W)`` uint8 grey frames.
        masks: ``(T, S, S)`` bool mask windows of this animal slot (all
            False where the slot is empty).
        origins: ``(T, 2)`` mask window corners ``(x, y)`` px.
        t: index of the centre frame in ``frames`` (must have a mask).
        half_window: ``h``; the sequence has ``2h+1`` crops.
        dilation_step_px: extra dilation (px) per frame of distance from ``t``.
        out_size: side of each returned crop.
        dilation_base_px: dilation of the mask of frame ``t``.
        window: frame window side (default ``S``).

    The mask of frame ``t + k`` is dilated by ``base + |k| * step``. A
    neighbour frame in which the slot has no mask is masked with the mask of
    frame ``t`` (dilated for its distance) on its own pixels, cut where the
    slot's nearest mask was; neighbours beyond the ends of ``frames`` repeat
    the end frame (see :func:`sequence_from_windows`).

    Returns:
        ``(2h+1, out_size, out_size)`` uint8.
    """
    masks = np.asarray(masks, bool)
    origins = np.asarray(origins)
    lo, hi = max(0, t - half_window), min(len(frames), t + half_window + 1)
    pixels, dist = windows_from_frames(frames[lo:hi], masks[lo:hi], origins[lo:hi], window)
    seq = sequence_from_windows(pixels, dist, t - lo, half_window, dilation_step_px, dilation_base_px)
    return resize_crops(seq, out_size)


# --------------------------------------------------------------------------- assignment and smoothing


def assign_identities(prob: np.ndarray) -> np.ndarray:
    """Give each animal of each frame an identity, never one identity to two animals of a frame.

    Per frame, the Hungarian algorithm on ``-log p`` over the slots with
    finite probabilities (the most likely joint assignment under
    independent per-animal posteriors). With more animals than identities,
    the least likely animals get -1; with fewer, identities stay unused.

    Args:
        prob: ``(T, A, K)`` probabilities (NaN rows: empty slots).

    Returns:
        ``(T, A)`` int identity index, -1 for empty or unassigned slots.
    """
    prob = np.asarray(prob, np.float64)
    T, A, K = prob.shape
    out = np.full((T, A), -1, np.int64)
    cost_all = -np.log(np.clip(prob, _EPS, None))
    valid = np.isfinite(prob).all(axis=2)
    for t in range(T):
        slots = np.flatnonzero(valid[t])
        if not len(slots):
            continue
        rows, cols = linear_sum_assignment(cost_all[t, slots])
        out[t, slots[rows]] = cols
    return out


def track_runs(track: np.ndarray) -> list[tuple[int, int, int]]:
    """Contiguous runs ``(slot, start, stop)`` of one track id in one slot (frames ``[start, stop)``)."""
    track = np.asarray(track)
    runs = []
    T, A = track.shape
    for a in range(A):
        col = track[:, a]
        start = None
        for t in range(T + 1):
            cur = col[t] if t < T else -1
            if start is not None and (cur < 0 or cur != col[start]):
                runs.append((a, start, t))
                start = None
            if start is None and t < T and cur >= 0:
                start = t
    return runs


def smooth_along_tracks(
    prob: np.ndarray, track: np.ndarray, window: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """SIPEC-style smoothing of identity probabilities along tracks, then :func:`assign_identities`.

    A *run* is a maximal stretch of consecutive frames in which a slot holds
    the same track id (``track >= 0``) and has finite probabilities; a
    missed frame or a change of id ends it. Within each run the
    log-probabilities are averaged (a geometric mean of the per-frame
    posteriors, i.e. evidence accumulated as if the frames were
    independent) over the whole run (``window=None``) or over a centred
    moving window of ``window`` frames clipped to the run (limits the damage
    when the tracker swaps two animals inside a run), renormalised, and
    identities re-assigned per frame.

    Args:
        prob: ``(T, A, K)`` probabilities (NaN: empty slot).
        track: ``(T, A)`` track id per slot (-1: empty).
        window: moving-window length in frames, or None for whole runs.

    Returns:
        ``(identity, smoothed)``: ``(T, A)`` int identities (-1 empty) and
        ``(T, A, K)`` smoothed probabilities.
    """
    prob = np.asarray(prob, np.float64)
    track = np.where(np.isfinite(prob).all(axis=2), np.asarray(track), -1)
    logp = np.log(np.clip(prob, _EPS, None))
    smoothed = prob.copy()
    for a, s, e in track_runs(track):
        seg = logp[s:e, a]
        if window is None or window >= e - s:
            mean = np.broadcast_to(seg.mean(axis=0), seg.shape)
        else:
            c = np.concatenate([np.zeros((1, seg.shape[1])), np.cumsum(seg, axis=0)])
            idx = np.arange(e - s)
            lo = np.clip(idx - window // 2, 0, None)
            hi = np.clip(lo + window, None, e - s)
            lo = np.clip(hi - window, 0, None)
            mean = (c[hi] - c[lo]) / (hi - lo)[:, None]
        p = np.exp(mean - mean.max(axis=1, keepdims=True))
        smoothed[s:e, a] = p / p.sum(axis=1, keepdims=True)
    return assign_identities(smoothed), smoothed


# --------------------------------------------------------------------------- scores


def identity_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of labelled entries (``truth >= 0``) whose predicted identity equals the truth (NaN if none)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    ok = truth >= 0
    return float((pred[ok] == truth[ok]).mean()) if ok.any() else float("nan")


def shuffled_chance(pred: np.ndarray, truth: np.ndarray, n: int = 200, mode: str = "relabel",
                    min_shift: int | None = None, seed: int = 0) -> dict:
    """Accuracy of ``pred`` against shuffled truth: the chance level for :func:`identity_accuracy`.

    ``mode="relabel"`` (default) renames the identities of the truth by a
    permutation of the identity names (all ``K!`` of them when at most
    ``n``, else ``n`` random ones): the score of a model trained on
    shuffled identity labels, whose animals are told apart but named at
    random; ``1 / K`` for balanced labels. ``mode="shift"`` circularly
    shifts the truth along time (axis 0) by at least ``min_shift`` frames
    (default ``T // 10``) and ``mode="permute"`` permutes the frames; both
    keep identity frequencies but say little when each track keeps one
    identity for the whole video (the shifted truth then equals the truth).

    Returns:
        ``{"mean", "std", "p95", "n", "mode"}`` over the shuffles.
    """
    from itertools import islice, permutations
    from math import factorial

    pred, truth = np.asarray(pred), np.asarray(truth)
    rng = np.random.default_rng(seed)
    T = len(truth)
    min_shift = max(1, T // 10) if min_shift is None else min_shift
    accs = []
    if mode == "relabel":
        K = int(max(pred.max(initial=-1), truth.max(initial=-1))) + 1
        perms = (list(islice(permutations(range(K)), n)) if factorial(K) <= n
                 else [tuple(rng.permutation(K)) for _ in range(n)])
        for perm in perms:
            lut = np.asarray(perm + (-1,))  # index -1 maps to -1
            accs.append(identity_accuracy(pred, np.where(truth >= 0, lut[truth], -1)))
    else:
        for _ in range(n):
            if mode == "shift":
                hi = max(min_shift + 1, T - min_shift)
                shuffled = np.roll(truth, int(rng.integers(min_shift, hi)) if T > 1 else 0, axis=0)
            elif mode == "permute":
                shuffled = truth[rng.permutation(T)]
            else:
                raise ValueError(f"mode must be 'relabel', 'shift' or 'permute', not {mode!r}")
            accs.append(identity_accuracy(pred, shuffled))
    accs = np.asarray(accs)
    return {"mean": float(np.nanmean(accs)), "std": float(np.nanstd(accs)),
            "p95": float(np.nanpercentile(accs, 95)), "n": int(len(accs)), "mode": mode}


def identity_changes(identity: np.ndarray, track: np.ndarray | None = None) -> np.ndarray:
    """Per slot, how often the identity changes between consecutive frames of the same track run.

    Args:
        identity: ``(T, A)`` identity indices (-1 ignored).
        track: ``(T, A)`` track ids (default: each slot is one track).

    Returns:
        ``(A,)`` int counts.
    """
    identity = np.asarray(identity)
    track = np.zeros_like(identity) if track is None else np.asarray(track)
    counts = np.zeros(identity.shape[1], np.int64)
    for a, s, e in track_runs(np.where(identity >= 0, track, -1)):
        ids = identity[s:e, a]
        counts[a] += int((ids[1:] != ids[:-1]).sum())
    return counts


def truth_per_slot(labels: pd.DataFrame, slots: np.ndarray, names: Sequence[str], shape: tuple[int, int],
                   frame_offset: int = 0) -> np.ndarray:
    """``(T, A)`` int truth identity index per slot from matched labels (-1: none; unknown names ignored)."""
    out = np.full(shape, -1, np.int64)
    index = {n: i for i, n in enumerate(names)}
    for f, ident, s in zip(labels["frame"].to_numpy(), labels["identity"].to_numpy(), slots):
        t = f - frame_offset
        if s >= 0 and 0 <= t < shape[0] and ident in index:
            out[t, s] = index[ident]
    return out

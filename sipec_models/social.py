"""Social interaction events between pairs of animals (SIPEC Methods, "Generation and annotation").

SIPEC dilates each animal's mask and, where the dilated masks of two animals
overlap beyond a threshold, records an interaction: the centre of mass of the
two masks together is recomputed and the frame is cropped around it, giving
a "pair" crop the behaviour classifier can take as input.

Here, per frame and pair of animal slots ``(i, j)`` of the consolidated video
store:

* ``overlap = |D_i ∩ D_j| / min(|D_i|, |D_j|)`` with ``D`` the mask dilated by
  ``dilation_px`` (a disk), so 0 means the dilated masks do not touch and 1
  means one lies inside the other;
* an event frame where ``overlap >= overlap_threshold``;
* ``pair_com``: centre of mass of the union of the two (undilated) masks;
* ``pair_crop``: the raw grey frame, ``crop_size`` square, centred there
  (stored only for event frames).

Consecutive event frames of the same pair form a bout (:func:`event_bouts`);
:func:`event_table` names the pair by identity when identities are known.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm import tqdm

from sipec_models.inference.ingest import load_probe, plan_chunk
from sipec_models.io.store import Field, open_store, provenance, write_store
from sipec_models.io.video import iter_frames

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SocialConfig:
    """Options of the ``social`` config section.

    Attributes:
        dilation_px: radius of the disk each mask is dilated by, px.
        overlap_threshold: ``|D_i ∩ D_j| / min(|D_i|, |D_j|)`` at or above
            which a frame is an interaction of the pair, in (0, 1].
        crop_size: side of the square pair crop, px.
        min_frames: bouts shorter than this many frames are dropped from the
            event table (the per-frame arrays keep them).
        max_gap: event frames of a pair separated by at most this many
            non-event frames belong to one bout.
    """

    dilation_px: int = 5
    overlap_threshold: float = 0.05
    crop_size: int = 128
    min_frames: int = 1
    max_gap: int = 0

    def __post_init__(self):
        if self.dilation_px < 0:
            raise ValueError(f"social.dilation_px must be >= 0, got {self.dilation_px}")
        if not 0 < self.overlap_threshold <= 1:
            raise ValueError(f"social.overlap_threshold must be in (0, 1], got {self.overlap_threshold}")
        if self.crop_size < 8:
            raise ValueError(f"social.crop_size must be >= 8, got {self.crop_size}")
        if self.min_frames < 1 or self.max_gap < 0:
            raise ValueError("social.min_frames must be >= 1 and social.max_gap >= 0")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "SocialConfig":
        d = dict(d or {})
        d.pop("enabled", None)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown social option(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius


def pair_overlap(mask_a: np.ndarray, origin_a, mask_b: np.ndarray, origin_b, dilation_px: int
                 ) -> tuple[float, tuple[float, float] | None]:
    """Overlap of two dilated masks and the centre of mass of their union.

    Args:
        mask_a, mask_b: ``(S, S)`` bool masks in their crop windows.
        origin_a, origin_b: window corners ``(x, y)`` in frame pixels.
        dilation_px: disk radius, px.

    Returns:
        ``(overlap, com)``: overlap in [0, 1] (see module docstring; 0 when a
        mask is empty) and the union's centre of mass ``(x, y)`` in frame px
        (None when both masks are empty).
    """
    (ax, ay), (bx, by) = (int(origin_a[0]), int(origin_a[1])), (int(origin_b[0]), int(origin_b[1]))
    sa, sb = mask_a.shape, mask_b.shape
    pad = dilation_px + 1
    x0, y0 = min(ax, bx) - pad, min(ay, by) - pad
    x1, y1 = max(ax + sa[1], bx + sb[1]) + pad, max(ay + sa[0], by + sb[0]) + pad
    canvas_a = np.zeros((y1 - y0, x1 - x0), bool)
    canvas_b = np.zeros_like(canvas_a)
    canvas_a[ay - y0:ay - y0 + sa[0], ax - x0:ax - x0 + sa[1]] = mask_a
    canvas_b[by - y0:by - y0 + sb[0], bx - x0:bx - x0 + sb[1]] = mask_b
    union = canvas_a | canvas_b
    com = None
    if union.any():
        ys, xs = np.nonzero(union)
        com = (float(xs.mean() + x0), float(ys.mean() + y0))
    if not canvas_a.any() or not canvas_b.any():
        return 0.0, com
    if dilation_px > 0:
        disk = _disk(dilation_px)
        canvas_a = ndimage.binary_dilation(canvas_a, disk)
        canvas_b = ndimage.binary_dilation(canvas_b, disk)
    inter = int((canvas_a & canvas_b).sum())
    return inter / min(int(canvas_a.sum()), int(canvas_b.sum())), com


def square_crop(frame: np.ndarray, centre: tuple[float, float], size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """``size`` square of ``frame`` centred on ``centre`` (x, y); zeros beyond the frame.

    Returns ``(crop, (x0, y0))`` with the window's top-left corner in frame px.
    """
    x0 = int(np.floor(centre[0] + 0.5)) - size // 2
    y0 = int(np.floor(centre[1] + 0.5)) - size // 2
    crop = np.zeros((size, size) + frame.shape[2:], frame.dtype)
    fy0, fx0 = max(0, y0), max(0, x0)
    fy1, fx1 = min(frame.shape[0], y0 + size), min(frame.shape[1], x0 + size)
    if fy1 > fy0 and fx1 > fx0:
        crop[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0] = frame[fy0:fy1, fx0:fx1]
    return crop, (x0, y0)


def social_arrays(frames, mask: np.ndarray, origin: np.ndarray, cfg: SocialConfig, progress: bool = False,
                  desc: str = "social") -> dict[str, np.ndarray]:
    """Per-frame pair overlaps, events, centres and crops.

    Args:
        frames: iterable of ``T`` grey ``(H, W)`` uint8 frames (only decoded
            when needed for a crop; pass the video iterator).
        mask: ``(T, A, S, S)`` bool masks per animal slot.
        origin: ``(T, A, 2)`` window corners ``(x, y)``, px.
        cfg: options.

    Returns:
        ``pair_overlap`` (T, P) float32, ``pair_event`` (T, P) bool,
        ``pair_com`` (T, P, 2) float32 px (NaN when the pair is not both
        present), ``pair_crop`` (T, P, C, C) uint8 (zeros unless an event),
        ``pair_crop_origin`` (T, P, 2) int32 px, with ``P = A (A - 1) / 2``
        pairs in the order of :func:`pairs`.
    """
    T, A = mask.shape[:2]
    P, C = len(pairs(A)), cfg.crop_size
    out = {
        "pair_overlap": np.zeros((T, P), np.float32),
        "pair_event": np.zeros((T, P), bool),
        "pair_com": np.full((T, P, 2), np.nan, np.float32),
        "pair_crop": np.zeros((T, P, C, C), np.uint8),
        "pair_crop_origin": np.zeros((T, P, 2), np.int32),
    }
    present = mask.reshape(T, A, -1).any(axis=2)
    t = -1
    for t, frame in enumerate(tqdm(frames, total=T, disable=not progress, desc=desc, unit="frame")):
        if t >= T:
            raise ValueError(f"more frames than masks ({T})")
        for p, (i, j) in enumerate(pairs(A)):
            if not (present[t, i] and present[t, j]):
                continue
            overlap, com = pair_overlap(mask[t, i], origin[t, i], mask[t, j], origin[t, j], cfg.dilation_px)
            out["pair_overlap"][t, p] = overlap
            out["pair_com"][t, p] = com
            if overlap >= cfg.overlap_threshold:
                out["pair_event"][t, p] = True
                out["pair_crop"][t, p], out["pair_crop_origin"][t, p] = square_crop(frame, com, C)
    if t + 1 != T:
        raise ValueError(f"expected {T} frames, got {t + 1}")
    return out


def pairs(n_animals: int) -> list[tuple[int, int]]:
    """Slot pairs ``(i, j)``, ``i < j``, in the order of the ``pair`` dimension."""
    return list(combinations(range(n_animals), 2))


def run_social(video, store, probe, plan, chunk: int, options: Mapping[str, Any], out) -> Path:
    """The ``social`` rule: pair events of frames ``[start, stop)`` of chunk ``chunk``.

    Reads masks and window corners from the consolidated video ``store`` and
    the frames from ``video`` (for the crops); writes a chunk store ``out``
    with the arrays of :func:`social_arrays` and the attribute ``pairs``.
    """
    cfg = SocialConfig.from_dict(options)
    info, checksum = load_probe(probe)
    start, stop = plan_chunk(plan, chunk)
    group = open_store(store)
    mask = group["mask"][start:stop]
    origin = group["crop_origin"][start:stop]
    arrays = social_arrays(iter_frames(video, start, stop, gray=True, info=info), mask, origin, cfg,
                           progress=True, desc=f"social {Path(str(video)).name} [{start}, {stop})")
    dims = {
        "pair_overlap": (("frame", "pair"), "1"),
        "pair_event": (("frame", "pair"), "bool"),
        "pair_com": (("frame", "pair", "xy"), "px"),
        "pair_crop": (("frame", "pair", "y", "x"), "grey level"),
        "pair_crop_origin": (("frame", "pair", "xy"), "px"),
    }
    fields = {k: Field(v, *dims[k]) for k, v in arrays.items()}
    attrs = {
        "chunk": chunk, "frame_start": start, "frame_stop": stop,
        "pairs": [list(p) for p in pairs(mask.shape[1])],
        "provenance": provenance(video, checksum, {"social": cfg.to_dict()}),
    }
    write_store(out, fields, attrs)
    log.info("chunk %d [%d, %d): %d event frames over %d pairs", chunk, start, stop,
             int(arrays["pair_event"].any(axis=1).sum()), arrays["pair_event"].shape[1])
    return Path(out)


def event_bouts(event: np.ndarray, max_gap: int = 0, min_frames: int = 1) -> list[tuple[int, int]]:
    """Bouts ``[start, stop)`` of a boolean sequence, bridging gaps of up to ``max_gap`` frames."""
    idx = np.flatnonzero(np.asarray(event, bool))
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > max_gap + 1)
    starts = np.r_[idx[0], idx[breaks + 1]]
    stops = np.r_[idx[breaks], idx[-1]] + 1
    return [(int(a), int(b)) for a, b in zip(starts, stops) if b - a >= min_frames]


def event_table(event: np.ndarray, overlap: np.ndarray, pair_slots: Sequence[Sequence[int]],
                slot_names: np.ndarray, fps: float, video_id: str, cfg: SocialConfig) -> pd.DataFrame:
    """One row per interaction bout.

    Args:
        event: ``(T, P)`` bool per-frame events; ``overlap`` ``(T, P)`` float.
        pair_slots: the ``P`` slot pairs.
        slot_names: ``(T, A)`` object array naming the animal in each slot per
            frame (identities when identified, else track names); a bout is
            split where the pair's names change.
        fps: frames per second.

    Returns:
        Columns ``video, animal_a, animal_b, start_frame, stop_frame``
        (exclusive), ``n_frames, start_s, duration_s, mean_overlap,
        max_overlap``, sorted by start.
    """
    rows = []
    for p, (i, j) in enumerate(pair_slots):
        key = ["\x00".join(sorted((str(a), str(b)))) for a, b in zip(slot_names[:, i], slot_names[:, j])]
        for start, stop in event_bouts(event[:, p], cfg.max_gap, 1):
            # Split where the pair's names change within the bout.
            cuts = [start] + [t for t in range(start + 1, stop) if key[t] != key[t - 1]] + [stop]
            for a, b in zip(cuts[:-1], cuts[1:]):
                if b - a < cfg.min_frames:
                    continue
                names = sorted([str(slot_names[a, i]), str(slot_names[a, j])])
                ov = overlap[a:b, p]
                rows.append({
                    "video": video_id, "animal_a": names[0], "animal_b": names[1],
                    "start_frame": a, "stop_frame": b, "n_frames": b - a,
                    "start_s": a / fps, "duration_s": (b - a) / fps,
                    "mean_overlap": float(ov.mean()), "max_overlap": float(ov.max()),
                })
    columns = ["video", "animal_a", "animal_b", "start_frame", "stop_frame", "n_frames", "start_s",
               "duration_s", "mean_overlap", "max_overlap"]
    return pd.DataFrame(rows, columns=columns).sort_values(["start_frame", "animal_a", "animal_b"],
                                                            ignore_index=True)


def read_social_chunks(paths: Sequence[str | Path], n_frames: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Concatenate the per-chunk ``pair_event`` and ``pair_overlap`` of a video.

    Returns ``(event (T, P) bool, overlap (T, P) float32, pairs)``.
    """
    event = overlap = None
    pair_slots = None
    for p in paths:
        g = open_store(p)
        s, e = g.attrs["frame_start"], g.attrs["frame_stop"]
        if event is None:
            pair_slots = [tuple(x) for x in g.attrs["pairs"]]
            event = np.zeros((n_frames, len(pair_slots)), bool)
            overlap = np.zeros((n_frames, len(pair_slots)), np.float32)
        event[s:e] = g["pair_event"][...]
        overlap[s:e] = g["pair_overlap"][...]
    if event is None:
        raise ValueError("no social chunk stores given")
    return event, overlap, pair_slots


def read_social_frames(paths: Sequence[str | Path], start: int, stop: int,
                       fields: Sequence[str] = ("pair_event", "pair_com", "pair_crop"),
                       pair: int | None = None) -> dict[str, np.ndarray]:
    """Frames ``[start, stop)`` of a video's social chunk stores, stitched across chunks.

    Args:
        paths: the video's social chunk stores (any order).
        fields: arrays of :func:`social_arrays` to read.
        pair: read only this pair (drops the ``pair`` dimension).

    Returns:
        ``{field: array}`` with ``stop - start`` frames; frames no store
        covers are zeros (``pair_com``: NaN), as if no event were found.

    Raises:
        ValueError: no stores, or stores of different pairs (naming one).
    """
    if not paths:
        raise ValueError("no social chunk stores given")
    out: dict[str, np.ndarray] = {}
    pair_slots = None
    for p in paths:
        g = open_store(p)
        s, e = int(g.attrs["frame_start"]), int(g.attrs["frame_stop"])
        slots = [tuple(x) for x in g.attrs["pairs"]]
        if pair_slots is None:
            pair_slots = slots
            for k in fields:
                shape = g[k].shape[1:] if pair is None else g[k].shape[2:]
                fill = np.nan if k == "pair_com" else 0
                out[k] = np.full((stop - start,) + tuple(shape), fill, g[k].dtype)
        elif slots != pair_slots:
            raise ValueError(f"{p}: pairs {slots} differ from the other chunks' {pair_slots}; re-run its social job")
        lo, hi = max(s, start), min(e, stop)
        if lo >= hi:
            continue
        for k in fields:
            out[k][lo - start:hi - start] = g[k][lo - s:hi - s] if pair is None else g[k][lo - s:hi - s, pair]
    return out


def social_pairs(paths: Sequence[str | Path]) -> list[tuple[int, int]]:
    """The slot pairs of a video's social chunk stores."""
    if not paths:
        raise ValueError("no social chunk stores given")
    return [tuple(x) for x in open_store(paths[0]).attrs["pairs"]]

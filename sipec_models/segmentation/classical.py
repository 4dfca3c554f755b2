"""Classical instance segmentation: background model, threshold, components, split of merged blobs.

SIPEC's no-training fallback for simple scenes (a fixed camera over an
arena whose animals differ in brightness from the floor):

1. **Background** (:func:`estimate_background`): a per-pixel quantile of
   evenly spaced frames. The median is the classical choice, but animals
   that rest in one place for more than half of the video then become part
   of it; so by default the quantile leans away from the animals
   (the 5th percentile for animals lighter than the floor, the 95th for
   darker ones), which tolerates an animal resting at one spot for up to
   95 % of the sampled frames, at the cost of a background biased by about
   1.6 noise standard deviations away from the animals.
2. **Threshold** (hysteresis): a pixel is foreground when it differs from
   the background by more than ``threshold`` grey levels in the animals'
   direction (``polarity``), and a blob is kept only when it also holds a
   pixel beyond ``seed_threshold``. The low threshold sits just above the
   background noise, so faint wings, legs and tails stay in the mask; the
   seed threshold (Otsu's, by default) rejects noise blobs that have no
   bright core. All three may be decided automatically from sample frames
   of the video (:func:`calibrate`).
3. **Components**: 8-connected components of the foreground, opened with a
   disk of ``open_radius`` (removes noise and thin legs), closed with a disk
   of ``close_radius`` (bridges small gaps), holes filled, blobs under
   ``min_area`` dropped. Labelling runs only in windows around the seed
   pixels and morphology only inside the components' bounding boxes, which
   keeps 1024 x 1024 frames fast.
4. **Split**: when the number of animals is known and fewer blobs than
   animals are found, blobs large enough to hold several animals (area
   relative to the single-animal area) are split by k-means on their pixel
   coordinates, seeded with the animals' centres in the previous frame, and
   weighted by appearance: each seed carries its animal's grey-level
   histogram (from the last frame it was segmented on its own), and a pixel
   goes to the part whose animal best explains both its position and its
   grey level (``split_appearance``), so the split does not drift when two
   differently coloured animals stay merged while passing each other.
   Fragments much smaller than one animal (``fragment_ratio``) do not count
   as animals in this decision.

Units: pixel coordinates are ``x`` (column) and ``y`` (row) in frame pixels,
boxes ``x0, y0, x1, y1`` with exclusive ``x1, y1``, areas in pixels²,
thresholds in grey levels (0..255).
"""

from __future__ import annotations

import os
import sys
from collections import deque
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from tqdm import tqdm

from sipec_models.io.video import VideoError, VideoInfo, iter_frames, probe
from sipec_models.segmentation.flags import AT_BORDER, EXTRA, MERGED_SPLIT
from sipec_models.tracking import TrackingConfig, track_chunk

POLARITIES = ("auto", "dark", "light")

#: Background quantile used for ``background_quantile=None``: 0.05 for light animals, 0.95 for dark.
RESTING_QUANTILE = 0.05

#: Sample frames are read by one sequential decode (instead of one seek each)
#: when they are at most this many frames apart: a seek decodes from the
#: previous keyframe, about half a GOP (often 125 frames) on average.
_SEQUENTIAL_MAX_STEP = 100

#: The automatic mask threshold is this many times the background noise (at least ``min_threshold``).
NOISE_SIGMAS = 5.0

#: Number of sample frames :func:`calibrate` reads by default.
CALIBRATION_SAMPLES = 10

#: Single-animal areas remembered by :func:`segment_chunk` for the running median.
_AREA_MEMORY = 250

_EIGHT = np.ones((3, 3), bool)

#: Grid cell (px) for grouping seed pixels into labelling windows.
_CELL = 32

#: Bins of the grey-level histograms (:func:`grey_histogram`), each 256 / HIST_BINS grey levels wide.
HIST_BINS = 32

#: Weight of the uniform distribution mixed into :func:`grey_histogram` (bounds its log-ratios).
_HIST_FLOOR = 0.05


def grey_histogram(values: np.ndarray) -> np.ndarray:
    """Smoothed, normalised grey-level histogram ``(HIST_BINS,)`` of uint8 ``values``.

    The counts are smoothed with a ``[1, 2, 1] / 4`` kernel over neighbouring
    bins and mixed with :data:`_HIST_FLOOR` of a uniform distribution, so no
    bin is ever 0 and two histograms' log-ratios stay bounded (about 6).
    """
    values = np.asarray(values)
    counts = np.bincount((values.astype(np.int64) * HIST_BINS) >> 8 if values.size else values.astype(np.int64),
                         minlength=HIST_BINS).astype(np.float64)[:HIST_BINS]
    padded = np.concatenate([counts[:1], counts, counts[-1:]])
    smooth = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
    total = smooth.sum()
    if total <= 0:
        return np.full(HIST_BINS, 1.0 / HIST_BINS)
    return (1 - _HIST_FLOOR) * smooth / total + _HIST_FLOOR / HIST_BINS


@dataclass(frozen=True)
class ClassicalConfig:
    """Options of the classical segmenter; the defaults suit a light arena with darker animals.

    Attributes:
        polarity: ``"dark"`` (animals darker than the background), ``"light"``,
            or ``"auto"``: decided from the background and sample frames
            (:func:`decide_polarity`).
        threshold: grey levels (0..255): a pixel is foreground when it differs
            from the background by more than this, in the animals' direction.
            ``None``: automatic, :data:`NOISE_SIGMAS` times the background
            noise, at least ``min_threshold`` (:func:`auto_thresholds`).
        seed_threshold: grey levels; a blob is kept only if one of its pixels
            differs from the background by more than this (hysteresis).
            ``None``: automatic, Otsu's threshold on the difference images
            (never below ``threshold``). Set it equal to ``threshold`` to
            turn hysteresis off.
        min_threshold: grey levels; floor of the automatic ``threshold``.
        min_area: px²; blobs smaller than this are noise.
        max_area: px²; instances larger than this are dropped (None: no limit).
            Applied after splitting, so merged animals are kept.
        open_radius: px; radius of the disk the foreground is opened with
            (removes specks and thin appendages; 0 = off).
        close_radius: px; radius of the disk the opened foreground is closed
            with (bridges gaps up to about twice this; 0 = off).
        fill_holes: fill enclosed holes of each blob (translucent wings, glare).
        split_merged: split blobs that hold several animals when the number
            of animals is known and fewer blobs than animals were found.
        split_area_ratio: a blob can hold ``k >= 2`` animals when its area is
            at least ``k - 2 + split_area_ratio`` single-animal areas
            (touching animals overlap, so two of them cover less than twice
            one's area).
        animal_area: px²; area of one animal, for splitting. ``None``: the
            running median area of blobs in frames where exactly
            ``n_animals`` blobs were found (until one is known, blobs are
            split whenever animals are missing).
        background_samples: frames sampled (evenly spaced over the video) for
            the background.
        background_quantile: per-pixel quantile of the sample frames used as
            background (0.5 = median). ``None``: :data:`RESTING_QUANTILE` for
            light animals, ``1 - RESTING_QUANTILE`` for dark ones.
        split_appearance: weight (>= 0) of the animals' appearance when a
            merged blob is split. Each animal's grey-level histogram is
            remembered from the last frame where it was segmented on its own;
            a pixel of a merged blob then goes to the animal maximising
            ``split_appearance * log p_animal(grey) - d² / (2 s²)`` (``d``: px
            to the animal's centre, ``s²``: the spatial variance of one
            animal, ``area / 2π``) instead of simply to the nearest centre.
            Animals that look alike have similar histograms, so the term
            vanishes and the split is the positional k-means. 0 = off.
        fragment_ratio: blobs smaller than this fraction of the single-animal
            area are fragments (a detached tail, a split gone wrong): they do
            not count as animals when deciding whether merged blobs must be
            split, and they never count towards the running single-animal
            area. They are still returned (last, as the smallest). 0 = off.
    """

    polarity: str = "auto"
    threshold: float | None = None
    seed_threshold: float | None = None
    min_threshold: float = 10.0
    min_area: int = 40
    max_area: int | None = None
    open_radius: int = 1
    close_radius: int = 2
    fill_holes: bool = True
    split_merged: bool = True
    split_area_ratio: float = 1.4
    animal_area: float | None = None
    background_samples: int = 50
    background_quantile: float | None = None
    split_appearance: float = 1.0
    fragment_ratio: float = 0.25

    def __post_init__(self):
        checks = [
            (self.polarity in POLARITIES, "polarity", f"one of {POLARITIES}"),
            (self.threshold is None or 0 <= self.threshold < 255, "threshold", "in [0, 255) grey levels or null"),
            (self.seed_threshold is None or 0 <= self.seed_threshold < 255, "seed_threshold",
             "in [0, 255) grey levels or null"),
            (self.seed_threshold is None or self.threshold is None or self.seed_threshold >= self.threshold,
             "seed_threshold", ">= threshold"),
            (0 <= self.min_threshold < 255, "min_threshold", "in [0, 255) grey levels"),
            (self.min_area >= 1, "min_area", ">= 1 px²"),
            (self.max_area is None or self.max_area >= self.min_area, "max_area", ">= min_area or null"),
            (self.open_radius >= 0, "open_radius", ">= 0 px"),
            (self.close_radius >= 0, "close_radius", ">= 0 px"),
            (self.split_area_ratio >= 1, "split_area_ratio", ">= 1"),
            (self.animal_area is None or self.animal_area > 0, "animal_area", "> 0 px² or null"),
            (self.background_samples >= 1, "background_samples", ">= 1"),
            (self.background_quantile is None or 0 <= self.background_quantile <= 1,
             "background_quantile", "in [0, 1] or null"),
            (self.split_appearance >= 0, "split_appearance", ">= 0"),
            (0 <= self.fragment_ratio < 1, "fragment_ratio", "in [0, 1)"),
        ]
        for ok, name, what in checks:
            if not ok:
                raise ValueError(f"classical segmentation option {name!r} must be {what}, not {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "ClassicalConfig":
        """Build from a mapping (the ``segmentation.classical`` config section).

        Raises:
            ValueError: naming an unknown key, a value of the wrong type, or
                one out of range.
        """
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise ValueError(
                    f"unknown classical segmentation option {key!r} (known: {', '.join(sorted(known))})")
        for key, value in d.items():
            kind = _OPTION_TYPES[key]
            if value is None and kind.endswith("?"):
                continue
            base = kind.rstrip("?")
            ok = {
                "str": isinstance(value, str),
                "bool": isinstance(value, bool),
                "int": isinstance(value, int) and not isinstance(value, bool),
                "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            }[base]
            if not ok:
                wanted = base + (" or null" if kind.endswith("?") else "")
                raise ValueError(f"classical segmentation option {key!r} must be {wanted}, not {value!r}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def resolved(self) -> bool:
        """True when polarity and thresholds are fixed (nothing left to calibrate)."""
        return self.polarity != "auto" and self.threshold is not None and self.seed_threshold is not None


#: Option -> type name ("?" = may be null), checked by :meth:`ClassicalConfig.from_dict`.
_OPTION_TYPES = {
    "polarity": "str", "threshold": "float?", "seed_threshold": "float?", "min_threshold": "float", "min_area": "int",
    "max_area": "int?", "open_radius": "int", "close_radius": "int", "fill_holes": "bool",
    "split_merged": "bool", "split_area_ratio": "float", "animal_area": "float?",
    "background_samples": "int", "background_quantile": "float?", "split_appearance": "float",
    "fragment_ratio": "float",
}


@dataclass
class Instance:
    """One segmented animal in one frame.

    Attributes:
        box: ``(x0, y0, x1, y1)`` int frame pixels, ``x1, y1`` exclusive.
        mask: ``(y1 - y0, x1 - x0)`` bool mask inside ``box``.
        com: ``(x, y)`` centre of mass of the mask, px.
        area: mask area, px².
        score: confidence in [0, 1]: ``1 - exp(-c / seed_threshold)`` for
            the mean contrast ``c`` (grey levels) of the mask against the
            background, times, when the single-animal area ``ref`` is known,
            the area ratio ``min(area, ref) / max(area, ref)``.
        flags: bit field of :mod:`sipec_models.segmentation.flags`.
        appearance: ``(HIST_BINS,)`` float grey-level histogram of the
            animal (sums to 1, smoothed; :func:`grey_histogram`): of the
            instance's own pixels, or, for a part of a split blob, the
            histogram of the animal it was seeded with (so that it is not
            contaminated by a wrong split). ``None`` when unknown.
    """

    box: tuple[int, int, int, int]
    mask: np.ndarray
    com: tuple[float, float]
    area: int
    score: float
    flags: int = 0
    appearance: np.ndarray | None = None

    def full_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask as a full-frame ``(H, W)`` bool array."""
        out = np.zeros(shape, bool)
        x0, y0, x1, y1 = self.box
        out[y0:y1, x0:x1] = self.mask
        return out


# --------------------------------------------------------------------------- background


def _sample_indices(n_frames: int, n_samples: int) -> np.ndarray:
    return np.unique(np.linspace(0, n_frames - 1, min(n_samples, n_frames)).round().astype(int))


def _read_samples(path, indices: np.ndarray, info: VideoInfo, progress: bool, desc: str) -> np.ndarray:
    """Decode the grey frames at ``indices`` -> ``(S, H, W)`` uint8."""
    out = np.empty((len(indices), info.height, info.width), np.uint8)
    bar = tqdm(total=len(indices), disable=not progress, file=sys.stderr, desc=desc, unit="frame")
    step = (indices[-1] - indices[0]) / max(len(indices) - 1, 1)
    got = 0
    if step <= _SEQUENTIAL_MAX_STEP:
        wanted = {int(i): k for k, i in enumerate(indices)}
        for i, frame in enumerate(iter_frames(path, int(indices[0]), int(indices[-1]) + 1, gray=True, info=info),
                                  start=int(indices[0])):
            if i in wanted:
                out[wanted[i]] = frame
                got += 1
                bar.update()
    else:
        for k, i in enumerate(indices):
            frame = next(iter_frames(path, int(i), int(i) + 1, gray=True, info=info), None)
            if frame is None:
                break
            out[k] = frame
            got += 1
            bar.update()
    bar.close()
    if got != len(indices):
        raise VideoError(f"{path}: could decode only {got} of {len(indices)} sample frames")
    return out


def decide_polarity(background: np.ndarray, samples: np.ndarray) -> str:
    """Decide whether the animals are ``"light"`` or ``"dark"`` relative to the background.

    Compares the extreme differences of the sample frames from the
    background (the 0.01 % and 99.99 % quantiles): when one direction
    exceeds the other by 1.5x, the animals lie that way. Otherwise (e.g. a
    median background that contains resting animals, which leaves ghosts of
    the opposite sign) the headroom decides: animals are light on a
    background darker than mid-grey (median below 128), dark otherwise.

    Args:
        background: ``(H, W)`` float grey background.
        samples: ``(S, H, W)`` uint8 grey frames (at most
            :data:`CALIBRATION_SAMPLES` of them, evenly spaced, are used).
    """
    subset = samples[_sample_indices(len(samples), CALIBRATION_SAMPLES)]
    d = subset.astype(np.float32) - np.asarray(background, np.float32)
    lo, hi = np.quantile(d, [1e-4, 1 - 1e-4])
    light, dark = max(hi, 0.0), max(-lo, 0.0)
    if light >= 1.5 * dark and light > 0:
        return "light"
    if dark >= 1.5 * light and dark > 0:
        return "dark"
    return "light" if np.median(background) < 128 else "dark"


def estimate_background(
    path: str | os.PathLike,
    info: VideoInfo | None = None,
    n_samples: int = 50,
    progress: bool = False,
    polarity: str = "auto",
    quantile: float | None = None,
) -> np.ndarray:
    """Background image: a per-pixel quantile of ``n_samples`` evenly spaced grey frames.

    Args:
        path: video file.
        info: :class:`VideoInfo` (probed if omitted).
        n_samples: frames sampled, evenly spaced over the whole video.
        progress: tqdm bar on stderr.
        polarity: ``"light"``/``"dark"`` animals, or ``"auto"``
            (:func:`decide_polarity` against the median of the samples).
            Only used to pick the quantile when ``quantile`` is None.
        quantile: per-pixel quantile (0.5 = median). ``None``:
            :data:`RESTING_QUANTILE` for light animals, ``1 -
            RESTING_QUANTILE`` for dark ones, so that an animal resting at one
            spot for most of the video does not become background.

    Returns:
        ``(H, W)`` float32 grey background, 0..255.
    """
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {POLARITIES}, not {polarity!r}")
    info = info or probe(path)
    samples = _read_samples(path, _sample_indices(info.n_frames, n_samples), info, progress, "background")
    if quantile is None:
        if polarity == "auto":
            polarity = decide_polarity(_pixel_quantile(samples, 0.5), samples)
        quantile = RESTING_QUANTILE if polarity == "light" else 1 - RESTING_QUANTILE
    return _pixel_quantile(samples, quantile)


def _pixel_quantile(samples: np.ndarray, q: float, rows: int = 64) -> np.ndarray:
    """Per-pixel quantile over axis 0 of ``(S, H, W)`` -> ``(H, W)`` float32, in row blocks to bound memory."""
    out = np.empty(samples.shape[1:], np.float32)
    for r in range(0, samples.shape[1], rows):
        out[r:r + rows] = np.quantile(samples[:, r:r + rows], q, axis=0)
    return out


def auto_thresholds(background: np.ndarray, samples: np.ndarray, polarity: str,
                    floor: float = 10.0) -> tuple[float, float]:
    """Automatic mask and seed thresholds (grey levels) from sample frames.

    The differences of the sample frames from the background are taken in
    the animals' direction. The background noise ``sigma`` is the
    root-mean-square deviation of the values below their median from the
    median (animals only add to the upper tail, so the lower half is pure
    noise). The mask threshold is ``max(floor, NOISE_SIGMAS * sigma)``; the
    seed threshold is Otsu's threshold on the pooled histogram of the
    differences (clipped to 0..255), which separates the animals' bright
    cores from everything else, and never below the mask threshold.

    Args:
        background: ``(H, W)`` float grey background.
        samples: ``(S, H, W)`` uint8 grey frames.
        polarity: ``"light"`` or ``"dark"``.
        floor: lowest mask threshold returned, grey levels.

    Returns:
        ``(threshold, seed_threshold)``.
    """
    d = (samples.astype(np.float32) - np.asarray(background, np.float32)) * _sign(polarity)
    med = np.median(d)
    below = d[d < med] - med
    sigma = float(np.sqrt(np.mean(below ** 2))) if below.size else 0.0
    threshold = max(float(floor), NOISE_SIGMAS * sigma)
    counts = np.bincount(np.clip(d, 0, 255).astype(np.uint8).ravel(), minlength=256)
    seed = threshold
    if np.count_nonzero(counts) >= 2:
        seed = max(seed, float(threshold_otsu(hist=(counts, np.arange(256)))))
    return threshold, seed


def calibrate(
    path: str | os.PathLike,
    background: np.ndarray,
    cfg: ClassicalConfig,
    info: VideoInfo | None = None,
    n_samples: int = CALIBRATION_SAMPLES,
    progress: bool = False,
) -> ClassicalConfig:
    """Resolve ``polarity="auto"`` and automatic thresholds from sample frames of the whole video.

    The samples are evenly spaced over the video, so every chunk of one video
    resolves to the same values. Returns ``cfg`` itself when nothing is left
    to resolve, else a copy with ``polarity``, ``threshold`` and
    ``seed_threshold`` fixed (record it as the configuration actually used).
    """
    if cfg.resolved:
        return cfg
    info = info or probe(path)
    samples = _read_samples(path, _sample_indices(info.n_frames, n_samples), info, progress, "calibrate")
    return _resolve(cfg, background, samples)


def _resolve(cfg: ClassicalConfig, background: np.ndarray, samples: np.ndarray) -> ClassicalConfig:
    """Fill in the automatic options of ``cfg`` from ``(S, H, W)`` sample frames."""
    polarity = decide_polarity(background, samples) if cfg.polarity == "auto" else cfg.polarity
    threshold, seed = auto_thresholds(background, samples, polarity, cfg.min_threshold)
    if cfg.threshold is not None:
        threshold = cfg.threshold
    elif cfg.seed_threshold is not None:
        threshold = min(threshold, cfg.seed_threshold)
    seed = max(seed, threshold) if cfg.seed_threshold is None else cfg.seed_threshold
    return replace(cfg, polarity=polarity, threshold=round(float(threshold), 2), seed_threshold=round(float(seed), 2))


def _sign(polarity: str) -> int:
    if polarity not in ("light", "dark"):
        raise ValueError(f"polarity must be 'light' or 'dark' here, not {polarity!r}")
    return 1 if polarity == "light" else -1


# --------------------------------------------------------------------------- segmentation


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius


class ClassicalSegmenter:
    """Segments grey frames against one background with a resolved configuration.

    Build once per video (it precomputes the per-pixel threshold image) and
    call :meth:`segment` per frame; :func:`segment_frame` is the one-shot form.

    Args:
        background: ``(H, W)`` float grey background.
        cfg: configuration with ``polarity``, ``threshold`` and
            ``seed_threshold`` resolved (see :func:`calibrate`).
    """

    def __init__(self, background: np.ndarray, cfg: ClassicalConfig):
        if not cfg.resolved:
            raise ValueError("ClassicalSegmenter needs resolved polarity and thresholds; use calibrate() first")
        self.cfg = cfg
        self.background = np.asarray(background, np.float32)
        if self.background.ndim != 2:
            raise ValueError(f"background must be (H, W) grey, got {self.background.shape}")
        self.sign = _sign(cfg.polarity)
        # Integer frames compare exactly against these uint8 limits:
        # light: frame > bg + thr  <=>  frame > floor(bg + thr);
        # dark:  frame < bg - thr  <=>  frame < ceil(bg - thr).
        self.limit = self._limit(cfg.threshold)
        self.seed_limit = self._limit(cfg.seed_threshold) if cfg.seed_threshold > cfg.threshold else None
        self.open_se = _disk(cfg.open_radius) if cfg.open_radius else None
        self.close_se = _disk(cfg.close_radius) if cfg.close_radius else None

    def _limit(self, threshold: float) -> np.ndarray:
        if self.sign > 0:
            return np.clip(np.floor(self.background + threshold), 0, 255).astype(np.uint8)
        return np.clip(np.ceil(self.background - threshold), 0, 255).astype(np.uint8)

    def foreground(self, frame: np.ndarray, seed: bool = False) -> np.ndarray:
        """``(H, W)`` bool: pixels beyond the threshold (``seed``: the seed threshold) in the animals' direction."""
        limit = self.seed_limit if seed and self.seed_limit is not None else self.limit
        return frame > limit if self.sign > 0 else frame < limit

    def foreground_in(self, frame: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """:meth:`foreground` of the window ``[y0:y1, x0:x1]``."""
        sub, limit = frame[y0:y1, x0:x1], self.limit[y0:y1, x0:x1]
        return sub > limit if self.sign > 0 else sub < limit

    def blobs(self, frame: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
        """Blobs of one frame after morphology and the ``min_area`` filter.

        Returns:
            ``(y0, x0, mask)`` per blob: the mask ``(h, w)`` bool covers
            rows ``y0..y0+h-1`` and columns ``x0..x0+w-1``, tight around the blob.
        """
        frame = np.asarray(frame)
        if frame.shape != self.background.shape or frame.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 {self.background.shape}, got {frame.dtype} {frame.shape}")
        side = 2 * self.cfg.open_radius + 1
        pieces = []  # (y0, x0, mask) of opened components
        for y0, x0, comp in self._components(frame):
            if comp.shape[0] < side or comp.shape[1] < side:
                continue  # cannot contain the opening disk: vanishes
            if self.open_se is not None:
                # Opening acts on each 8-connected component separately, so its box suffices.
                comp = ndi.binary_opening(comp, self.open_se)
                if not comp.any():
                    continue
            pieces.append((y0, x0, comp))
        blobs = []
        for group in self._groups(pieces):
            blobs.extend(self._close_group(group, frame.shape))
        return [b for b in blobs if np.count_nonzero(b[2]) >= self.cfg.min_area]

    def _components(self, frame: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
        """8-connected foreground components holding a seed pixel -> ``(y0, x0, mask)``, tight.

        Labelling runs only in windows around clusters of seed pixels
        (:data:`_CELL`-pixel grid cells, grown by one cell); a window is
        enlarged until none of its seeded components touches a window edge
        inside the frame, so the result equals labelling the whole frame,
        at a fraction of the cost on large frames.
        """
        H, W = frame.shape
        seed = self.foreground(frame, seed=True)
        idx = np.flatnonzero(seed)
        if not idx.size:
            return []
        c = _CELL
        grid = np.zeros((-(-H // c), -(-W // c)), bool)
        grid[idx // W // c, idx % W // c] = True
        cells, _ = ndi.label(ndi.binary_dilation(grid, _EIGHT), structure=_EIGHT)
        found: dict[tuple[int, int], tuple[int, int, np.ndarray]] = {}
        for sl in ndi.find_objects(cells):
            y0, y1 = sl[0].start * c, min(H, sl[0].stop * c)
            x0, x1 = sl[1].start * c, min(W, sl[1].stop * c)
            while True:
                labels, _ = ndi.label(self.foreground_in(frame, y0, y1, x0, x1), structure=_EIGHT)
                objects = ndi.find_objects(labels)
                keep = np.unique(labels[seed[y0:y1, x0:x1]])
                keep = keep[keep > 0]
                h, w = y1 - y0, x1 - x0
                cut = [k for k in keep if (objects[k - 1][0].start == 0 < y0 or objects[k - 1][1].start == 0 < x0
                                           or (objects[k - 1][0].stop == h and y1 < H)
                                           or (objects[k - 1][1].stop == w and x1 < W))]
                if not cut:
                    break
                g = max(c, h // 2, w // 2)
                y0, y1, x0, x1 = max(0, y0 - g), min(H, y1 + g), max(0, x0 - g), min(W, x1 + g)
            for k in keep:
                sy, sx = objects[k - 1]
                comp = labels[sy, sx] == k
                # The first pixel in raster order identifies a component seen from two windows.
                key = (y0 + sy.start, x0 + sx.start + int(np.argmax(comp[0])))
                found.setdefault(key, (y0 + sy.start, x0 + sx.start, comp))
        return list(found.values())

    def _groups(self, pieces):
        """Group pieces whose boxes, grown by the closing radius + 1, overlap (only those can be joined)."""
        r = self.cfg.close_radius
        if not pieces or not r:
            return [[p] for p in pieces]
        boxes = np.array([(y, x, y + m.shape[0], x + m.shape[1]) for y, x, m in pieces])
        grown = boxes + np.array([-r - 1, -r - 1, r + 1, r + 1])
        touch = ((grown[:, None, 0] < grown[None, :, 2]) & (grown[None, :, 0] < grown[:, None, 2])
                 & (grown[:, None, 1] < grown[None, :, 3]) & (grown[None, :, 1] < grown[:, None, 3]))
        n_groups, group_of = _connected(touch)
        return [[p for p, g in zip(pieces, group_of) if g == k] for k in range(n_groups)]

    def _close_group(self, group, shape):
        """Closing, hole filling and labelling of one group of pieces -> tight blobs."""
        m = self.cfg.close_radius + 1
        y0 = min(y for y, _, _ in group) - m
        x0 = min(x for _, x, _ in group) - m
        y1 = max(y + p.shape[0] for y, _, p in group) + m
        x1 = max(x + p.shape[1] for _, x, p in group) + m
        canvas = np.zeros((y1 - y0, x1 - x0), bool)
        for y, x, p in group:
            canvas[y - y0:y - y0 + p.shape[0], x - x0:x - x0 + p.shape[1]] |= p
        if self.close_se is not None:
            canvas = ndi.binary_closing(canvas, self.close_se)
            # Closing must not reach beyond the frame.
            canvas[:max(0, -y0)] = False
            canvas[:, :max(0, -x0)] = False
            canvas[max(0, shape[0] - y0):] = False
            canvas[:, max(0, shape[1] - x0):] = False
        labels, _ = ndi.label(canvas, structure=_EIGHT)
        out = []
        for k, sl in enumerate(ndi.find_objects(labels), start=1):
            mask = labels[sl] == k
            if self.cfg.fill_holes:
                mask = ndi.binary_fill_holes(mask)
            out.append((y0 + sl[0].start, x0 + sl[1].start, mask))
        return out

    def segment(
        self,
        frame: np.ndarray,
        n_animals: int | None = None,
        prev_centres: np.ndarray | None = None,
        ref_area: float | None = None,
        prev_appearance: np.ndarray | None = None,
    ) -> list[Instance]:
        """Segment one ``(H, W)`` uint8 grey frame; see :func:`segment_frame`."""
        blobs = self.blobs(frame)
        ref_area = self.cfg.animal_area or ref_area
        areas = [int(np.count_nonzero(b[2])) for b in blobs]
        parts = [1] * len(blobs)
        # Fragments (much smaller than one animal) do not count as animals for the split decision.
        real = [b for b, a in enumerate(areas) if not (ref_area and a < self.cfg.fragment_ratio * ref_area)]
        if self.cfg.split_merged and n_animals and len(real) < n_animals:
            real_parts = _allocate_parts([areas[b] for b in real], n_animals, ref_area, self.cfg.split_area_ratio)
            for b, k in zip(real, real_parts):
                parts[b] = k
        instances = []
        if any(k > 1 for k in parts):
            seed_idx = _seed_indices_per_blob(blobs, prev_centres)
            prev = (np.asarray(prev_centres, np.float64).reshape(-1, 2) if prev_centres is not None
                    else np.empty((0, 2)))
            hists = None
            if prev_appearance is not None and self.cfg.split_appearance > 0:
                hists = np.asarray(prev_appearance, np.float64).reshape(len(prev), -1)
        for b, (y0, x0, mask) in enumerate(blobs):
            if parts[b] == 1:
                instances.append(self._instance(frame, y0, x0, mask, 0, ref_area))
                continue
            idx = seed_idx[b]
            seed_hists = hists[idx] if hists is not None else None
            grey = frame[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]]
            sigma2 = (ref_area or areas[b] / parts[b]) / (2 * np.pi)
            split = _split_blob(y0, x0, mask, parts[b], prev[idx], grey=grey, seed_hists=seed_hists,
                                weight=self.cfg.split_appearance, sigma2=sigma2, return_seeds=True)
            for py0, px0, pmask, j in split:
                inst = self._instance(frame, py0, px0, pmask, MERGED_SPLIT, ref_area)
                if j is not None and seed_hists is not None and np.isfinite(seed_hists[j]).all():
                    inst.appearance = seed_hists[j].copy()
                instances.append(inst)
        if self.cfg.max_area is not None:
            instances = [i for i in instances if i.area <= self.cfg.max_area]
        instances.sort(key=lambda i: (-i.area, i.box[1], i.box[0]))
        return instances

    def _instance(self, frame, y0, x0, mask, flags, ref_area) -> Instance:
        h, w = mask.shape
        ys, xs = np.nonzero(mask)
        area = len(ys)
        H, W = frame.shape
        if y0 == 0 or x0 == 0 or y0 + h == H or x0 + w == W:
            flags |= AT_BORDER
        diff = (frame[y0:y0 + h, x0:x0 + w][ys, xs].astype(np.float32) - self.background[y0:y0 + h, x0:x0 + w][ys, xs])
        contrast = max(float(np.mean(diff * self.sign)), 0.0)
        score = 1.0 - np.exp(-contrast / max(self.cfg.seed_threshold, 1.0))
        if ref_area:
            score *= min(area, ref_area) / max(area, ref_area)
        return Instance(
            box=(int(x0), int(y0), int(x0 + w), int(y0 + h)), mask=mask,
            com=(float(x0 + xs.mean()), float(y0 + ys.mean())), area=int(area),
            score=float(np.clip(score, 0, 1)), flags=int(flags),
            appearance=grey_histogram(frame[y0:y0 + h, x0:x0 + w][ys, xs]),
        )


def _connected(adjacency: np.ndarray) -> tuple[int, np.ndarray]:
    """Connected components of a small symmetric boolean adjacency matrix."""
    n = len(adjacency)
    group = np.full(n, -1)
    count = 0
    for start in range(n):
        if group[start] >= 0:
            continue
        stack = [start]
        group[start] = count
        while stack:
            i = stack.pop()
            for j in np.flatnonzero(adjacency[i] & (group < 0)):
                group[j] = count
                stack.append(j)
        count += 1
    return count, group


def _allocate_parts(areas: list[int], n_animals: int, ref_area: float | None, ratio: float) -> list[int]:
    """How many animals each blob holds, so that the total approaches ``n_animals``.

    One animal at a time goes to the blob with the largest area per animal,
    among those that can hold one more: with a known single-animal area
    ``ref``, a blob can hold ``k >= 2`` animals when ``area >= (k - 2 +
    ratio) * ref``; without one, any blob can.
    """
    parts = [1] * len(areas)
    missing = n_animals - len(areas)
    while missing > 0 and areas:
        best, best_key = None, 0.0
        for b, a in enumerate(areas):
            if ref_area and a < (parts[b] - 1 + ratio) * ref_area:
                continue
            if a / parts[b] > best_key:
                best, best_key = b, a / parts[b]
        if best is None:
            break
        parts[best] += 1
        missing -= 1
    return parts


def _seeds_per_blob(blobs, prev_centres) -> list[np.ndarray]:
    """Previous centres ``(K, 2)`` (x, y) handed to the blob whose box is nearest (0 inside it)."""
    prev = np.asarray(prev_centres, np.float64).reshape(-1, 2) if prev_centres is not None else np.empty((0, 2))
    return [prev[idx] for idx in _seed_indices_per_blob(blobs, prev_centres)]


def _seed_indices_per_blob(blobs, prev_centres) -> list[np.ndarray]:
    """Indices into ``prev_centres`` (finite rows only) handed to the blob whose box is nearest (0 inside it)."""
    out = [np.empty(0, np.int64) for _ in blobs]
    if prev_centres is None or not blobs:
        return out
    prev = np.asarray(prev_centres, np.float64).reshape(-1, 2)
    ok = np.flatnonzero(np.isfinite(prev).all(axis=1))
    if not ok.size:
        return out
    prev = prev[ok]
    boxes = np.array([(x, y, x + m.shape[1], y + m.shape[0]) for y, x, m in blobs], np.float64)
    dx = np.maximum(np.maximum(boxes[None, :, 0] - prev[:, None, 0], prev[:, None, 0] - boxes[None, :, 2]), 0)
    dy = np.maximum(np.maximum(boxes[None, :, 1] - prev[:, None, 1], prev[:, None, 1] - boxes[None, :, 3]), 0)
    owner = np.argmin(np.hypot(dx, dy), axis=1)
    for b in range(len(blobs)):
        out[b] = ok[owner == b]
    return out


def _split_blob(y0: int, x0: int, mask: np.ndarray, k: int, seeds: np.ndarray, iterations: int = 20,
                grey: np.ndarray | None = None, seed_hists: np.ndarray | None = None, weight: float = 0.0,
                sigma2: float | None = None, return_seeds: bool = False):
    """Split one blob into ``k`` parts by k-means on its pixel coordinates, optionally with appearance.

    Seeds are the previous centres that belong to the blob (the ``k`` most
    spread out when there are more); missing seeds are added by
    farthest-point selection among the pixels (deterministic).

    With ``grey`` (the blob's ``mask.shape`` uint8 pixels), ``seed_hists``
    (one :func:`grey_histogram` per seed) and ``weight > 0``, and when every
    one of the ``k`` centres comes from a seed with a histogram, a pixel of
    grey level ``g`` at distance ``d`` from centre ``j`` goes to the ``j``
    maximising ``weight * log h_j(g) - d² / (2 sigma2)``; centres are then
    re-estimated as the means of their pixels, as in k-means (hard EM with
    a fixed appearance model). Pixels cut off from their part's largest
    8-connected piece go to the best other part.

    Returns:
        ``(y0, x0, mask)`` per non-empty part, tight; with ``return_seeds``
        ``(y0, x0, mask, j)`` with ``j`` the index into ``seeds`` the part
        grew from (``None`` for a centre added by farthest-point selection).
    """
    ys, xs = np.nonzero(mask)
    pts = np.column_stack([xs + x0, ys + y0]).astype(np.float64)
    seeds = np.asarray(seeds, np.float64).reshape(-1, 2)
    centres, origin = _farthest_points(pts, k, seeds, return_index=True)
    log_h = None
    if (grey is not None and seed_hists is not None and weight > 0 and all(o is not None for o in origin)):
        hists = np.asarray(seed_hists, np.float64)[list(origin)]
        if np.isfinite(hists).all() and (hists > 0).all():
            bins = (np.asarray(grey)[ys, xs].astype(np.int64) * hists.shape[1]) >> 8
            log_h = weight * np.log(hists[:, bins]).T  # (P, k)
            sigma2 = float(sigma2) if sigma2 else max(len(pts) / k / (2 * np.pi), 1.0)
    for _ in range(iterations):
        d2 = ((pts[:, None, :] - centres[None]) ** 2).sum(-1)
        if log_h is None:
            label = np.argmin(d2, axis=1)
        else:
            label = np.argmax(log_h - d2 / (2 * sigma2), axis=1)
        new = np.array([pts[label == j].mean(0) if np.any(label == j) else centres[j] for j in range(k)])
        if np.allclose(new, centres, atol=0.05):
            break
        centres = new
    if log_h is not None:
        label = _keep_largest_pieces(ys, xs, mask.shape, label, log_h - d2 / (2 * sigma2))
    parts = []
    for j in range(k):
        sel = label == j
        if not sel.any():
            continue
        py, px = ys[sel], xs[sel]
        part = np.zeros((py.max() - py.min() + 1, px.max() - px.min() + 1), bool)
        part[py - py.min(), px - px.min()] = True
        item = (y0 + int(py.min()), x0 + int(px.min()), part)
        parts.append(item + (origin[j],) if return_seeds else item)
    return parts


def _keep_largest_pieces(ys, xs, shape, label, score) -> np.ndarray:
    """Relabel pixels outside their part's largest 8-connected piece to their best-scoring other part."""
    canvas = np.full(shape, -1, np.int64)
    canvas[ys, xs] = label
    label = label.copy()
    k = score.shape[1]
    for j in range(k):
        pieces, n = ndi.label(canvas == j, structure=_EIGHT)
        if n <= 1:
            continue
        sizes = np.bincount(pieces[ys, xs], minlength=n + 1)
        sizes[0] = 0
        stray = (pieces[ys, xs] > 0) & (pieces[ys, xs] != np.argmax(sizes))
        if stray.any() and k > 1:
            other = score[stray].copy()
            other[:, j] = -np.inf
            label[stray] = np.argmax(other, axis=1)
    return label


def _farthest_points(pts: np.ndarray, k: int, seeds: np.ndarray, return_index: bool = False):
    """``k`` centres: the seeds (reduced to ``k`` by farthest-point order), completed from ``pts``.

    With ``return_index``, also the index into ``seeds`` of each centre (``None`` for one taken from ``pts``).
    """
    if len(seeds) > k:
        chosen = [0]
        while len(chosen) < k:
            d = np.min(np.linalg.norm(seeds[:, None] - seeds[chosen][None], axis=-1), axis=1)
            chosen.append(int(np.argmax(d)))
        out = seeds[chosen]
        return (out, chosen) if return_index else out
    chosen = list(seeds)
    origin: list[int | None] = list(range(len(seeds)))
    if not chosen:
        # Start with the pixel farthest from the blob's centre (an end of its long axis).
        chosen.append(pts[np.argmax(np.linalg.norm(pts - pts.mean(0), axis=1))])
        origin.append(None)
    while len(chosen) < k:
        d = np.min(np.linalg.norm(pts[:, None] - np.array(chosen)[None], axis=-1), axis=1)
        chosen.append(pts[np.argmax(d)])
        origin.append(None)
    out = np.array(chosen, np.float64)
    return (out, origin) if return_index else out


def segment_frame(
    frame: np.ndarray,
    background: np.ndarray,
    cfg: ClassicalConfig,
    n_animals: int | None = None,
    prev_centres: np.ndarray | None = None,
    ref_area: float | None = None,
    prev_appearance: np.ndarray | None = None,
) -> list[Instance]:
    """Segment the animals of one frame.

    Args:
        frame: ``(H, W)`` uint8 grey frame.
        background: ``(H, W)`` float grey background (:func:`estimate_background`).
        cfg: options. An unresolved ``polarity="auto"`` or ``threshold=None``
            is resolved from this frame alone (:func:`segment_chunk` resolves
            them once per video with :func:`calibrate`). For many frames,
            build one :class:`ClassicalSegmenter` instead.
        n_animals: expected number of animals; enables splitting of merged blobs.
        prev_centres: ``(K, 2)`` centres ``(x, y)`` of the animals in the
            previous frame, px; seed the split of merged blobs.
        ref_area: px², single-animal area for the split decision (overridden
            by ``cfg.animal_area``).
        prev_appearance: ``(K, HIST_BINS)`` grey-level histograms
            (:attr:`Instance.appearance`) of the animals at ``prev_centres``
            (NaN rows: unknown); used to split merged blobs by appearance as
            well as position (``cfg.split_appearance``).

    Returns:
        Instances sorted by decreasing area (all of them: no cap at ``n_animals``).
    """
    if not cfg.resolved:
        cfg = _resolve(cfg, background, np.asarray(frame)[None])
    return ClassicalSegmenter(background, cfg).segment(frame, n_animals, prev_centres, ref_area,
                                                       prev_appearance=prev_appearance)


# --------------------------------------------------------------------------- chunks


def crop_window(com: tuple[float, float], crop_size: int) -> tuple[int, int]:
    """Top-left corner ``(x, y)`` of the ``crop_size`` square centred on ``com`` (round half up)."""
    return int(np.floor(com[0] + 0.5)) - crop_size // 2, int(np.floor(com[1] + 0.5)) - crop_size // 2


def _paste(dst: np.ndarray, src: np.ndarray, oy: int, ox: int) -> None:
    """``dst[oy:oy+h, ox:ox+w] = src``, clipped to ``dst`` (offsets may be negative)."""
    h, w = src.shape[:2]
    ys, xs = max(0, -oy), max(0, -ox)
    ye, xe = min(h, dst.shape[0] - oy), min(w, dst.shape[1] - ox)
    if ye > ys and xe > xs:
        dst[oy + ys:oy + ye, ox + xs:ox + xe] = src[ys:ye, xs:xe]


def instance_crop(inst: Instance, image: np.ndarray, crop_size: int) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
    """Square mask and masked pixels of one instance, centred on its centre of mass.

    Args:
        inst: the instance.
        image: ``(H, W)`` grey or ``(H, W, 3)`` RGB uint8 frame.
        crop_size: side ``S`` of the window, px.

    Returns:
        ``(origin, mask, crop)``: window corner ``(x, y)`` in frame pixels
        (may be negative), ``(S, S)`` bool mask and ``(S, S[, 3])`` uint8
        pixels inside the mask (0 outside it and outside the frame). Parts of
        the animal beyond the window are cut off.
    """
    ox, oy = crop_window(inst.com, crop_size)
    x0, y0, _, _ = inst.box
    mask = np.zeros((crop_size, crop_size), bool)
    _paste(mask, inst.mask, y0 - oy, x0 - ox)
    pixels = np.zeros((crop_size, crop_size) + image.shape[2:], np.uint8)
    # Frame pixels covered by the window.
    fy0, fx0 = max(0, oy), max(0, ox)
    fy1, fx1 = min(image.shape[0], oy + crop_size), min(image.shape[1], ox + crop_size)
    if fy1 > fy0 and fx1 > fx0:
        pixels[fy0 - oy:fy1 - oy, fx0 - ox:fx1 - ox] = image[fy0:fy1, fx0:fx1]
    pixels[~mask] = 0
    return (ox, oy), mask, pixels


def empty_chunk_arrays(T: int, I: int, S: int, color: str = "gray") -> dict[str, np.ndarray]:
    """The chunk-store arrays of :func:`segment_chunk` for ``T`` frames, ``I`` slots, ``S`` px crops, all empty
    (NaN for floats, 0 otherwise); ``local_track`` is added by the caller."""
    return {
        "box": np.full((T, I, 4), np.nan, np.float32),
        "com": np.full((T, I, 2), np.nan, np.float32),
        "area": np.full((T, I), np.nan, np.float32),
        "score": np.full((T, I), np.nan, np.float32),
        "flags": np.zeros((T, I), np.uint8),
        "n_found": np.zeros(T, np.int16),
        "crop_origin": np.zeros((T, I, 2), np.int32),
        "mask": np.zeros((T, I, S, S), bool),
        "crop": np.zeros((T, I, S, S) + ((3,) if color == "rgb" else ()), np.uint8),
    }


def store_instances(out: dict[str, np.ndarray], t: int, instances: list[Instance], image: np.ndarray,
                    n_animals: int) -> list[Instance]:
    """Write frame ``t``'s ``instances`` (already in priority order) into the slots of ``out``.

    Sets ``n_found``; keeps the first ``I`` instances (``I`` = slots of
    ``out``), flagging them :data:`EXTRA` when more than ``n_animals`` were
    found; crops from ``image`` (grey or RGB) with :func:`instance_crop`.
    Returns the kept instances.
    """
    I, S = out["box"].shape[1], out["mask"].shape[-1]
    out["n_found"][t] = len(instances)
    extra = EXTRA if len(instances) > n_animals else 0
    kept = instances[:I]
    for i, inst in enumerate(kept):
        out["box"][t, i] = inst.box
        out["com"][t, i] = inst.com
        out["area"][t, i] = inst.area
        out["score"][t, i] = inst.score
        out["flags"][t, i] = inst.flags | extra
        out["crop_origin"][t, i], out["mask"][t, i], out["crop"][t, i] = instance_crop(inst, image, S)
    return kept


def check_chunk_request(path, start: int, stop: int, n_animals: int, n_instances: int, crop_size: int,
                        color: str, info: VideoInfo | None, tracking) -> tuple[VideoInfo, int, TrackingConfig]:
    """Validate the arguments of a chunk segmentation (classical or SegNet).

    Returns ``(info, stop, tracking)``: the probed video, ``stop`` clipped to
    its length, and the tracking options as a :class:`TrackingConfig`.
    """
    if color not in ("gray", "rgb"):
        raise ValueError(f"color must be 'gray' or 'rgb', not {color!r}")
    if n_instances < 1 or n_animals < 1 or crop_size < 1:
        raise ValueError(f"n_animals ({n_animals}), n_instances ({n_instances}) and crop_size ({crop_size}) "
                         "must be >= 1")
    track_cfg = tracking if isinstance(tracking, TrackingConfig) else TrackingConfig.from_dict(tracking)
    info = info or probe(path)
    stop = min(stop, info.n_frames)
    if not 0 <= start <= stop:
        raise ValueError(f"{path}: invalid frame range [{start}, {stop}) for {info.n_frames} frames")
    return info, stop, track_cfg


def segment_chunk(
    path: str | os.PathLike,
    start: int,
    stop: int,
    background: np.ndarray,
    cfg: ClassicalConfig,
    n_animals: int,
    n_instances: int,
    crop_size: int,
    color: str = "gray",
    info: VideoInfo | None = None,
    progress: bool = True,
    tracking: Mapping[str, Any] | TrackingConfig | None = None,
) -> dict[str, np.ndarray]:
    """Segment frames ``[start, stop)`` and return the arrays of a chunk store.

    Frames are decoded sequentially with :func:`sipec_models.io.video.iter_frames`
    (grey; for ``color="rgb"`` the RGB frames are decoded as well, for the
    crops). Unresolved options are resolved once per video with
    :func:`calibrate`. Each frame is segmented with ``n_animals`` known,
    seeding splits with the previous frame's centres and the running median
    single-animal area. At most ``n_instances`` instances are kept per
    frame, the largest; when a frame holds more instances than expected
    (``n_animals``), its kept instances carry :data:`~sipec_models.segmentation.flags.EXTRA`.
    Finally :func:`sipec_models.tracking.track_chunk` links them (``local_track``).

    Args:
        path: video file.
        start, stop: frame range; ``stop`` is clipped to the video's length.
        background: ``(H, W)`` float grey background.
        cfg: segmenter options.
        n_animals: animals in the video.
        n_instances: instance slots per frame ``I`` (``>= n_animals`` to keep extra blobs).
        crop_size: side ``S`` of the square crops, px.
        color: ``"gray"`` crops ``(T, I, S, S)`` or ``"rgb"`` ``(T, I, S, S, 3)``.
        info: :class:`VideoInfo` (probed if omitted).
        progress: tqdm bar on stderr.
        tracking: tracking options (:class:`~sipec_models.tracking.TrackingConfig` or its dict).

    Returns:
        The chunk-store arrays of ``docs/architecture.md`` (``T = stop - start``):
        ``box`` (T, I, 4) f32, ``com`` (T, I, 2) f32, ``area`` (T, I) f32,
        ``score`` (T, I) f32, ``flags`` (T, I) u8, ``n_found`` (T,) i16
        (instances found before the cap), ``crop_origin`` (T, I, 2) i32,
        ``mask`` (T, I, S, S) bool, ``crop`` (T, I, S, S[, 3]) u8,
        ``local_track`` (T, I) i32. Empty slots: NaN, 0, or -1 (``local_track``).

    Raises:
        VideoError: fewer frames decode than the range asks for.
    """
    info, stop, track_cfg = check_chunk_request(path, start, stop, n_animals, n_instances, crop_size, color, info,
                                                tracking)
    background = np.asarray(background, np.float32)
    if background.shape != (info.height, info.width):
        raise ValueError(f"background {background.shape} does not match the video's {info.height}x{info.width} frames")
    cfg = calibrate(path, background, cfg, info=info, progress=progress)
    segmenter = ClassicalSegmenter(background, cfg)

    T, I, S = stop - start, n_instances, crop_size
    out = empty_chunk_arrays(T, I, S, color)
    grey = iter_frames(path, start, stop, gray=True, info=info)
    if color == "rgb":
        frames = zip(grey, iter_frames(path, start, stop, gray=False, info=info))
    else:
        frames = ((g, g) for g in grey)
    areas: deque[int] = deque(maxlen=_AREA_MEMORY)
    prev_centres = prev_appearance = None
    t = -1
    name = os.path.basename(os.fspath(path))
    for t, (frame, image) in enumerate(tqdm(frames, total=T, disable=not progress, file=sys.stderr,
                                             desc=f"segment {name} [{start}, {stop})", unit="frame")):
        ref_area = float(np.median(areas)) if areas else None
        instances = segmenter.segment(frame, n_animals, prev_centres, ref_area, prev_appearance=prev_appearance)
        kept = store_instances(out, t, instances, image, n_animals)
        if (len(instances) == n_animals and not any(i.flags for i in instances)
                and not (ref_area and min(i.area for i in instances) < cfg.fragment_ratio * ref_area)):
            areas.extend(i.area for i in instances)
        if kept:
            prev_centres = np.array([inst.com for inst in kept[:n_animals]])
            prev_appearance = np.array([inst.appearance for inst in kept[:n_animals]])
    if t + 1 != T:
        raise VideoError(f"{path}: expected {T} frames in [{start}, {stop}), decoded {t + 1}")
    out["local_track"] = track_chunk(out["box"], out["com"], n_animals=n_animals, method=track_cfg.method,
                                     max_distance=track_cfg.max_distance, max_gap=track_cfg.max_gap)
    return out

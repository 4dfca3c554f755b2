"""Top-down pose estimation: crops, Gaussian heatmap targets, the incomplete-label loss, decoding, augmentation.

Shared by PoseNet (:mod:`sipec_models.nets.posenet`, SIPEC) and LEAP
(:mod:`sipec_models.nets.leap`); training is in
:mod:`sipec_models.training.pose`, inference in :class:`PosePredictor`.

Coordinate frames (all ``(x, y)`` = (column, row), pixel centres on
integers, a pixel covering ``[x - 0.5, x + 0.5)``):

* **frame px**: the full video frame.
* **crop px**: a square crop of side ``S`` (the network input) centred on
  an animal's centre ``(cx, cy)`` and resized by ``scale`` (crop px per frame
  px): ``u = scale * (x - cx) + (S - 1) / 2`` (:func:`frame_to_crop`,
  :func:`crop_to_frame`). During training the centre is the centre of the
  labelled keypoints' box; at inference the segmenter's centre of mass.
* **cells**: heatmap cells at the network's ``stride`` (4 for PoseNet, 1
  for LEAP); cell ``j`` is centred on crop px ``stride * j + (stride - 1) / 2``
  (:func:`cell_to_crop`).

Targets are Gaussians of peak 1 and standard deviation ``sigma_px`` (crop
px) at each labelled keypoint, zero maps for missing ones
(:func:`gaussian_heatmaps`). :func:`pose_loss` is SIPEC's incomplete-label
loss: per-keypoint cross-entropy (or LEAP's squared error) averaged over a
map, weighted by a 0/1 visibility per keypoint, so unlabelled keypoints add
nothing to the loss or its gradient. :func:`decode_heatmaps` takes each
map's maximum and refines it to sub-cell precision with a parabola fitted
to the log confidence on the 3 cells around it along each axis (exact for
Gaussian peaks); the confidence is the peak value.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------- geometry


def box_centres(points: np.ndarray) -> np.ndarray:
    """``(..., K, 2)`` keypoints (NaN missing) -> ``(..., 2)`` centre of their bounding box (NaN if none labelled)."""
    points = np.asarray(points, np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN animals
        return (np.nanmin(points, axis=-2) + np.nanmax(points, axis=-2)) / 2


def frame_to_crop(points, centres, crop_size: int, scale: float):
    """Frame px -> crop px: ``u = scale * (x - c) + (S - 1) / 2``.

    Args:
        points: ``(..., K, 2)`` frame px (numpy or torch; NaN passes through).
        centres: ``(..., 2)`` crop centres, frame px.
        crop_size: ``S``, crop side (px).
        scale: crop px per frame px.
    """
    return scale * (points - centres[..., None, :]) + (crop_size - 1) / 2


def crop_to_frame(points, centres, crop_size: int, scale: float):
    """Crop px -> frame px (inverse of :func:`frame_to_crop`)."""
    return (points - (crop_size - 1) / 2) / scale + centres[..., None, :]


def cell_to_crop(cells, stride: int):
    """Heatmap cell coordinates -> crop px: ``u = stride * j + (stride - 1) / 2``."""
    return cells * stride + (stride - 1) / 2


def crop_to_cell(points, stride: int):
    """Crop px -> heatmap cell coordinates (inverse of :func:`cell_to_crop`)."""
    return (points - (stride - 1) / 2) / stride


def crop_frames(frames: np.ndarray | Sequence[np.ndarray], centres: np.ndarray, crop_size: int, scale: float = 1.0,
                frame_index: Sequence[int] | None = None, antialias: bool = True) -> torch.Tensor:
    """Cut square, scale-normalised crops around animal centres.

    Crop pixel ``u`` samples frame position ``x = (u - (S - 1) / 2) / scale
    + c`` (bilinear, kornia ``warp_affine`` with ``align_corners=True``, so
    keypoints map exactly with :func:`frame_to_crop`). When shrinking
    (``scale < 1``) and ``antialias``, the frame is first blurred with a
    Gaussian of sigma ``(1 / scale - 1) / 2`` frame px (scikit-image's
    ``rescale`` rule). Parts outside the frame are filled with the median
    grey of the frame window that was read.

    Args:
        frames: ``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB uint8 frames.
        centres: ``(M, 2)`` crop centres, frame px (rows with NaN give a fill-only crop).
        crop_size: ``S``, crop side (px).
        scale: crop px per frame px.
        frame_index: ``M`` indices into ``frames`` (default ``0..M-1``).
        antialias: blur before shrinking.

    Returns:
        ``(M, C, S, S)`` float32 in [0, 1], ``C`` = 1 (grey) or 3.
    """
    from kornia.filters import gaussian_blur2d
    from kornia.geometry.transform import warp_affine

    centres = np.asarray(centres, np.float64).reshape(-1, 2)
    idx = np.arange(len(centres)) if frame_index is None else np.asarray(frame_index, int)
    if len(idx) != len(centres):
        raise ValueError(f"{len(idx)} frame indices for {len(centres)} centres")
    S = int(crop_size)
    sig = max(0.0, (1.0 / scale - 1.0) / 2.0) if antialias else 0.0
    margin = 2 + int(math.ceil(3 * sig))
    half = (S - 1) / 2 / scale
    out = []
    for m, (cx, cy) in enumerate(centres):
        frame = np.asarray(frames[idx[m]])
        if frame.ndim == 2:
            frame = frame[..., None]
        H, W, C = frame.shape
        if not (np.isfinite(cx) and np.isfinite(cy)):
            out.append(torch.full((C, S, S), float(np.median(frame)) / 255.0))
            continue
        x0 = max(0, int(math.floor(cx - half)) - margin)
        y0 = max(0, int(math.floor(cy - half)) - margin)
        x1 = min(W, int(math.ceil(cx + half)) + margin + 1)
        y1 = min(H, int(math.ceil(cy + half)) + margin + 1)
        if x1 <= x0 or y1 <= y0:
            out.append(torch.full((C, S, S), float(np.median(frame)) / 255.0))
            continue
        win = frame[y0:y1, x0:x1]
        fill = float(np.median(win)) / 255.0
        t = torch.from_numpy(np.ascontiguousarray(win)).permute(2, 0, 1).float()[None] / 255.0 - fill
        if sig > 0:
            k = 2 * int(math.ceil(3 * sig)) + 1
            t = gaussian_blur2d(t, (k, k), (sig, sig), border_type="replicate")
        M = torch.tensor([[[scale, 0.0, scale * (x0 - cx) + (S - 1) / 2],
                           [0.0, scale, scale * (y0 - cy) + (S - 1) / 2]]], dtype=torch.float32)
        crop = warp_affine(t, M, (S, S), mode="bilinear", padding_mode="zeros", align_corners=True)
        out.append(crop[0] + fill)
    if not out:
        C = 3 if len(frames) and np.asarray(frames[0]).ndim == 3 else 1
        return torch.zeros((0, C, S, S))
    return torch.stack(out).clamp_(0, 1)


# --------------------------------------------------------------------------- targets, loss, decoding


def gaussian_heatmaps(points: torch.Tensor, size: tuple[int, int], stride: int, sigma_px: float) -> torch.Tensor:
    """Gaussian target maps.

    Args:
        points: ``(B, K, 2)`` keypoints in crop px (NaN = not labelled).
        size: ``(h, w)`` heatmap cells.
        stride: crop px per cell.
        sigma_px: Gaussian standard deviation, crop px.

    Returns:
        ``(B, K, h, w)`` float in [0, 1]: ``exp(-d^2 / (2 sigma^2))`` with
        ``d`` the distance (crop px) from each cell's centre to the keypoint;
        all zero for missing keypoints.
    """
    h, w = size
    dev = points.device
    xs = cell_to_crop(torch.arange(w, device=dev, dtype=torch.float32), stride).view(1, 1, 1, w)
    ys = cell_to_crop(torch.arange(h, device=dev, dtype=torch.float32), stride).view(1, 1, h, 1)
    ok = torch.isfinite(points).all(-1)
    p = torch.where(ok[..., None], points, torch.zeros_like(points)).float()
    d2 = (xs - p[..., 0, None, None]) ** 2 + (ys - p[..., 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * float(sigma_px) ** 2)) * ok[..., None, None]


def keypoint_weights(points: torch.Tensor) -> torch.Tensor:
    """``(B, K, 2)`` keypoints -> ``(B, K)`` float visibility weights: 1 labelled, 0 missing (NaN)."""
    return torch.isfinite(points).all(-1).float()


def pose_loss(output: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """SIPEC's incomplete-label heatmap loss.

    Args:
        output: ``(B, K, h, w)`` network output: logits for ``"bce"``, map values for ``"mse"``.
        target: ``(B, K, h, w)`` Gaussian targets in [0, 1].
        weights: ``(B, K)`` per-keypoint weights (0 = not labelled).
        kind: ``"bce"`` (binary cross-entropy on the soft targets, SIPEC's
            cross-entropy loss) or ``"mse"`` (squared error, LEAP).

    Returns:
        Scalar: ``sum_bk w_bk * mean_pixels(loss_bk) / max(1, sum_bk w_bk)``.
        Maps with weight 0 are multiplied out, so their gradient is exactly zero.
    """
    if kind == "bce":
        per = F.binary_cross_entropy_with_logits(output, target, reduction="none")
    elif kind == "mse":
        per = (output - target) ** 2
    else:
        raise ValueError(f"loss kind must be 'bce' or 'mse', not {kind!r}")
    per_kp = per.mean(dim=(2, 3))
    w = weights.to(per_kp.dtype)
    return (per_kp * w).sum() / w.sum().clamp(min=1.0)


def confidence_maps(output: torch.Tensor, kind: str) -> torch.Tensor:
    """Network output -> confidence maps: ``sigmoid`` of logits (``"bce"``), the values themselves (``"mse"``)."""
    return torch.sigmoid(output) if kind == "bce" else output


def decode_heatmaps(conf: torch.Tensor, stride: int, refine: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Peak of each confidence map, with sub-cell refinement.

    The peak cell ``(j, i)`` is refined along x by the vertex of the
    parabola through ``log c`` at ``j - 1, j, j + 1`` (the same along y):
    ``dx = (l[-1] - l[+1]) / (2 (l[-1] - 2 l[0] + l[+1]))``, clamped to
    ±0.5 cell and skipped at the map border or where the curve is not
    concave. For a Gaussian the log is a parabola, so the refinement is
    exact.

    Args:
        conf: ``(B, K, h, w)`` confidence maps (peak ~1 at a keypoint).
        stride: crop px per cell.
        refine: apply the sub-cell refinement.

    Returns:
        ``points (B, K, 2)`` crop px and ``confidence (B, K)`` = peak value clipped to [0, 1].
    """
    B, K, h, w = conf.shape
    flat = conf.reshape(B, K, -1).float()
    peak, arg = flat.max(dim=-1)
    iy, ix = (arg // w), (arg % w)
    x, y = ix.float(), iy.float()
    if refine:
        logc = torch.log(conf.float().clamp(min=1e-10)).reshape(B, K, -1)

        def at(yy, xx):
            return torch.gather(logc, 2, (yy * w + xx)[..., None])[..., 0]

        l0 = at(iy, ix)
        for axis in ("x", "y"):
            if axis == "x":
                ok = (ix > 0) & (ix < w - 1)
                lm, lp = at(iy, (ix - 1).clamp(0, w - 1)), at(iy, (ix + 1).clamp(0, w - 1))
            else:
                ok = (iy > 0) & (iy < h - 1)
                lm, lp = at((iy - 1).clamp(0, h - 1), ix), at((iy + 1).clamp(0, h - 1), ix)
            den = lm - 2 * l0 + lp
            ok = ok & (den < 0)
            d = torch.where(ok, 0.5 * (lm - lp) / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))
            d = d.clamp(-0.5, 0.5)
            if axis == "x":
                x = x + d
            else:
                y = y + d
    pts = cell_to_crop(torch.stack([x, y], dim=-1), stride)
    return pts, peak.clamp(0, 1)


# --------------------------------------------------------------------------- augmentation


def build_pose_augment(cfg: Mapping[str, Any]):
    """kornia ``AugmentationSequential`` over ``(image, keypoints)``, or None when every setting is off.

    ``cfg`` keys (the ``augment`` section): ``rotation_deg`` (uniform in
    ±x degrees), ``translate`` (fraction of the side, each axis), ``scale``
    (zoom ``1 ± x``), ``hflip`` / ``vflip`` (probabilities),
    ``brightness`` (additive, fraction of full scale), ``contrast``
    (factor ``1 ± x``), ``color_p`` (probability of each colour jitter).
    The affine part uses ``align_corners=True`` so that image and keypoints
    move together exactly, and border padding.
    """
    import kornia.augmentation as K

    ops = []
    rot, tr, sc = float(cfg.get("rotation_deg", 0) or 0), float(cfg.get("translate", 0) or 0), float(
        cfg.get("scale", 0) or 0)
    if rot or tr or sc:
        ops.append(K.RandomAffine(degrees=rot, translate=(tr, tr) if tr else None,
                                  scale=(1 - sc, 1 + sc) if sc else None, p=1.0, align_corners=True,
                                  padding_mode="border"))
    if cfg.get("hflip", 0):
        ops.append(K.RandomHorizontalFlip(p=float(cfg["hflip"])))
    if cfg.get("vflip", 0):
        ops.append(K.RandomVerticalFlip(p=float(cfg["vflip"])))
    if cfg.get("brightness", 0):
        b = float(cfg["brightness"])
        ops.append(K.RandomBrightness(brightness=(1 - b, 1 + b), p=float(cfg.get("color_p", 1.0))))
    if cfg.get("contrast", 0):
        c = float(cfg["contrast"])
        ops.append(K.RandomContrast(contrast=(1 - c, 1 + c), p=float(cfg.get("color_p", 1.0))))
    if not ops:
        return None
    return K.AugmentationSequential(*ops, data_keys=["input", "keypoints"])


def augment_pose(augment, images: torch.Tensor, keypoints: torch.Tensor,
                 flip_perm: Sequence[int] | np.ndarray | torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment images and keypoints together.

    kornia needs finite keypoints: missing ones (NaN) are replaced by 0
    for the transform and set back to NaN afterwards. Samples whose
    geometric transform mirrors the image (determinant < 0: one flip, not
    two) get their left/right keypoints swapped with ``flip_perm``
    (:func:`sipec_models.io.keypoints.flip_permutation`), since a mirrored
    animal's left ear is where its right ear would be.

    Args:
        augment: from :func:`build_pose_augment` (None: returned unchanged).
        images: ``(B, C, S, S)`` float in [0, 1].
        keypoints: ``(B, K, 2)`` crop px, NaN missing.
        flip_perm: ``(K,)`` node permutation of a mirror image (None: no swapping).

    Returns:
        ``(images, keypoints)`` augmented (images clamped to [0, 1]).
    """
    if augment is None:
        return images, keypoints
    ok = torch.isfinite(keypoints).all(-1)
    kp = torch.where(ok[..., None], keypoints, torch.zeros_like(keypoints))
    images, kp = augment(images, kp)
    kp = torch.where(ok[..., None], kp, torch.full_like(kp, float("nan")))
    M = getattr(augment, "transform_matrix", None)
    if flip_perm is not None and M is not None:
        det = M[:, 0, 0] * M[:, 1, 1] - M[:, 0, 1] * M[:, 1, 0]
        mirrored = det < 0
        if mirrored.any():
            perm = torch.as_tensor(np.asarray(flip_perm), dtype=torch.long, device=kp.device)
            kp = torch.where(mirrored[:, None, None].to(kp.device), kp[:, perm], kp)
    return images.clamp(0, 1), kp


# --------------------------------------------------------------------------- inference


def match_channels(frames: np.ndarray, rgb: bool) -> np.ndarray:
    """``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB uint8 -> grey (ITU-R 601 luma) or RGB (grey replicated)."""
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    if rgb and frames.ndim == 3:
        return np.repeat(frames[..., None], 3, axis=-1)
    if not rgb and frames.ndim == 4:
        return np.round(frames[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
                        ).clip(0, 255).astype(np.uint8)
    return frames


class PosePredictor:
    """Batched top-down pose inference with a trained PoseNet or LEAP.

    Args:
        model_or_path: a network from :func:`~sipec_models.training.pose.train_pose`
            (it carries ``config``) or a checkpoint path
            (:func:`~sipec_models.training.pose.load_pose`).
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
        infer: overrides of the config's ``infer`` section (``batch_size``, ``min_confidence``).
    """

    def __init__(self, model_or_path: torch.nn.Module | str | os.PathLike, device: str | torch.device | None = None,
                 infer: Mapping[str, Any] | None = None):
        from sipec_models.training.pose import load_pose

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = model_or_path if isinstance(model_or_path, torch.nn.Module) else load_pose(model_or_path)
        if not hasattr(model, "config"):
            raise ValueError("the pose model carries no config (train with train_pose or load a checkpoint)")
        self.model = model.to(device).eval()
        self.device = device
        self.config = model.config
        self.node_names = list(getattr(model, "node_names", []) or [])
        self.flip_pairs = [tuple(p) for p in getattr(model, "flip_pairs", []) or []]
        inf = {**self.config.get("infer", {}), **dict(infer or {})}
        self.batch_size = int(inf.get("batch_size", 32))
        self.min_confidence = float(inf.get("min_confidence", 0.0))
        d = self.config["data"]
        self.crop_size, self.scale, self.rgb = int(d["crop_size"]), float(d["scale"]), bool(d.get("rgb", False))
        self.kind = str(self.config["train"]["loss"])
        self.stride = int(model.stride)

    @torch.inference_mode()
    def predict_crops(self, crops: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``(M, C, S, S)`` crops in [0, 1] -> ``points (M, K, 2)`` crop px, ``confidence (M, K)``."""
        pts, conf = [], []
        for s in range(0, len(crops), self.batch_size):
            out = self.model(crops[s:s + self.batch_size].to(self.device))
            p, c = decode_heatmaps(confidence_maps(out, self.kind), self.stride)
            pts.append(p.cpu().numpy())
            conf.append(c.cpu().numpy())
        K = int(getattr(self.model, "num_keypoints", 0))
        if not pts:
            return np.zeros((0, K, 2)), np.zeros((0, K))
        return np.concatenate(pts).astype(np.float64), np.concatenate(conf).astype(np.float64)

    def predict(self, frames: np.ndarray, centres: np.ndarray, frame_index: Sequence[int] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Pose of each animal from its frame and centre.

        Args:
            frames: ``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB uint8 frames
                (converted to what the model was trained on).
            centres: ``(M, 2)`` animal centres, frame px (e.g. SegNet's
                centres of mass); NaN rows give NaN poses.
            frame_index: ``M`` indices into ``frames`` (default ``0..M-1``;
                repeat an index for several animals in one frame).

        Returns:
            ``points (M, K, 2)`` frame px (NaN where the confidence is below
            ``infer.min_confidence`` or the centre is NaN) and
            ``confidence (M, K)`` in [0, 1] (peak heatmap value).
        """
        frames = match_channels(frames, self.rgb)
        centres = np.asarray(centres, np.float64).reshape(-1, 2)
        idx = np.arange(len(centres)) if frame_index is None else np.asarray(frame_index, int)
        pts_all, conf_all = [], []
        step = max(1, self.batch_size)
        for s in range(0, len(centres), step):
            c = centres[s:s + step]
            crops = crop_frames(frames, c, self.crop_size, self.scale, idx[s:s + step])
            p, conf = self.predict_crops(crops)
            pts_all.append(crop_to_frame(p, c, self.crop_size, self.scale))
            conf_all.append(conf)
        K = int(getattr(self.model, "num_keypoints", 0))
        if not pts_all:
            return np.zeros((0, K, 2)), np.zeros((0, K))
        pts, conf = np.concatenate(pts_all), np.concatenate(conf_all)
        bad = ~np.isfinite(centres).all(1)
        conf[bad] = np.nan
        drop = bad[:, None] | (conf < self.min_confidence)
        pts[drop] = np.nan
        return pts, conf

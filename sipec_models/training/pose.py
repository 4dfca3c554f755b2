"""Training top-down pose networks (PoseNet, LEAP) on animal crops with PyTorch Lightning.

Pipeline:

1. :func:`prepare_pose_crops`: for every labelled animal (at least one
   keypoint) a square crop is cut around its centre (default: the centre
   of its keypoints' box) at ``data.scale`` crop px per frame px
   (:func:`sipec_models.pose.crop_frames`), with the keypoints moved to crop
   px (:func:`sipec_models.pose.frame_to_crop`). The crop is ``ceil(S *
   sqrt 2)`` px (rounded up to even) when the augmentation rotates or shifts,
   so the central ``S`` px stay covered; kept as uint8.
2. On the training device, :func:`sipec_models.pose.augment_pose` (kornia:
   rotation, shift, zoom, flips with left/right swap, brightness/contrast)
   transforms crop and keypoints together; the centre ``S`` window is kept.
3. Targets: Gaussians of ``train.sigma_px`` crop px at the network's stride
   (:func:`sipec_models.pose.gaussian_heatmaps`); loss: SIPEC's
   incomplete-label loss (:func:`sipec_models.pose.pose_loss`; ``bce`` for
   PoseNet as SIPEC, ``mse`` for LEAP as in the LEAP paper).
4. Adam for ``train.max_steps`` steps, learning rate multiplied by
   ``train.lr_factor`` at the fractions ``train.lr_steps`` of the run.

:func:`train_pose` runs it; :func:`save_pose` / :func:`load_pose` store the
weights with the configuration, node names and flip pairs;
:func:`run_train_pose` is the workflow entry point (label file in, checkpoint
and training summary out).
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sipec_models.io.keypoints import flip_permutation
from sipec_models.pose import (
    augment_pose, box_centres, build_pose_augment, crop_frames, frame_to_crop, gaussian_heatmaps, keypoint_weights,
    pose_loss,
)
from sipec_models.training.config import load_model_config, save_checkpoint, to_dict

#: Checkpoint format tag.
FORMAT = "sipec-pose-1"
#: Pose network families and their config names.
log = logging.getLogger(__name__)

MODELS = ("posenet", "leap")


def _cfg(cfg: DictConfig | Mapping[str, Any] | None, model: str | None) -> dict[str, Any]:
    if model is not None and model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, not {model!r}")
    if cfg is None:
        return to_dict(load_model_config(model or "posenet"))
    cfg = to_dict(cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg)))
    name = cfg.get("model", {}).get("name")
    if name not in MODELS:
        raise ValueError(f"config model.name must be one of {MODELS}, not {name!r}")
    if model is not None and model != name:
        raise ValueError(f"model={model!r} but the config is for {name!r}")
    return cfg


def build_pose_model(cfg: Mapping[str, Any], num_keypoints: int, pretrained: bool | None = None) -> torch.nn.Module:
    """The network named by ``cfg['model']['name']`` for ``num_keypoints`` keypoints.

    Both have a ``stride`` attribute (crop px per heatmap cell) and ``num_keypoints``.
    """
    m, loss = cfg["model"], cfg["train"]["loss"]
    if m["name"] == "posenet":
        from sipec_models.nets.posenet import PoseNet

        return PoseNet(num_keypoints, deconv_channels=int(m["deconv_channels"]),
                       deconv_layers=int(m["deconv_layers"]),
                       pretrained=bool(m["pretrained"]) if pretrained is None else pretrained,
                       out_bias=float(m["out_bias"]) if loss == "bce" else 0.0)
    if m["name"] == "leap":
        from sipec_models.nets.leap import LeapCNN

        return LeapCNN(num_keypoints, in_channels=3 if cfg["data"].get("rgb") else 1, filters=int(m["filters"]),
                       width_mult=float(m["width_mult"]))
    raise ValueError(f"unknown pose model {m['name']!r} (one of {MODELS})")


def training_crop_size(cfg: Mapping[str, Any]) -> int:
    """Side (px) of the stored training crops: ``S``, or ``ceil(S * sqrt 2)`` rounded to even with rotation/shift."""
    S, a = int(cfg["data"]["crop_size"]), cfg["augment"]
    if float(a.get("rotation_deg", 0) or 0) or float(a.get("translate", 0) or 0) or float(a.get("scale", 0) or 0):
        return int(math.ceil(S * math.sqrt(2) / 2)) * 2
    return S


def prepare_pose_crops(images: np.ndarray, keypoints: np.ndarray, crop_size: int, scale: float,
                       centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One crop per labelled animal.

    Args:
        images: ``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB uint8 frames.
        keypoints: ``(N, K, 2)`` (one animal per frame) or ``(N, A, K, 2)``
            frame px, NaN missing; animals with no labelled keypoint are skipped.
        crop_size: side of the crops, px.
        scale: crop px per frame px.
        centres: ``(N, 2)`` / ``(N, A, 2)`` crop centres (default: keypoint box centres).

    Returns:
        ``crops (M, C, side, side)`` uint8, ``points (M, K, 2)`` crop px
        (NaN missing), ``frame (M,)`` the frame each crop came from.
    """
    images = np.asarray(images)
    kp = np.asarray(keypoints, np.float64)
    if kp.ndim == 3:
        kp = kp[:, None]
    if kp.ndim != 4 or kp.shape[-1] != 2 or len(kp) != len(images):
        raise ValueError(f"keypoints must be (N, K, 2) or (N, A, K, 2) with N = {len(images)} frames, "
                         f"got {np.shape(keypoints)}")
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be (N, H, W) or (N, H, W, 3) uint8, got {images.shape}")
    if centres is None:
        cen = box_centres(kp)
    else:
        cen = np.asarray(centres, np.float64).reshape(kp.shape[0], kp.shape[1], 2)
    labelled = np.isfinite(kp).all(-1).any(-1) & np.isfinite(cen).all(-1)
    fi, ai = np.nonzero(labelled)
    c = cen[fi, ai]
    crops = crop_frames(images, c, crop_size, scale, frame_index=fi)
    pts = frame_to_crop(kp[fi, ai], c, crop_size, scale)
    return (crops * 255).round().clamp(0, 255).to(torch.uint8).numpy(), pts, fi


class PoseCropDataset(torch.utils.data.Dataset):
    """Random training samples: item ``i`` = ``(crop (C, side, side) float in [0, 1], keypoints (K, 2) float32)``.

    The crop is drawn uniformly, deterministically in ``(seed, i)``.
    """

    def __init__(self, crops: np.ndarray, points: np.ndarray, length: int, seed: int = 0):
        self.crops, self.points, self.length, self.seed = crops, points.astype(np.float32), length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        n = int(np.random.default_rng((self.seed, i)).integers(len(self.crops)))
        return torch.from_numpy(self.crops[n]).float() / 255.0, torch.from_numpy(self.points[n])


def lr_factor(step: int, max_steps: int, lr_steps: Sequence[float], factor: float) -> float:
    """Step decay: ``factor ** (number of fractions in lr_steps passed at this step)``."""
    return factor ** sum(step >= f * max_steps for f in lr_steps)


def make_pose_module() -> type:
    """The Lightning module class (built lazily: inference and checkpoint loading need no Lightning import)."""
    import pytorch_lightning as pl

    class PoseModule(pl.LightningModule):
        """Lightning wrapper: augmentation on the device, centre window, Gaussian targets, incomplete-label loss,
        Adam."""

        def __init__(self, cfg: Mapping[str, Any], num_keypoints: int, flip_pairs: Sequence[tuple[int, int]] = ()):
            super().__init__()
            self.cfg = to_dict(cfg)
            self.net = build_pose_model(self.cfg, num_keypoints)
            self.augment = build_pose_augment(self.cfg["augment"])
            self.flip_perm = flip_permutation(num_keypoints, flip_pairs) if flip_pairs else None
            self.history: list[dict[str, float]] = []

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            images, points = batch
            t = self.cfg["train"]
            with torch.no_grad():
                images, points = augment_pose(self.augment, images, points, self.flip_perm)
                C, S = images.shape[-1], int(self.cfg["data"]["crop_size"])
                o = (C - S) // 2
                images = images[..., o:o + S, o:o + S]
                points = points - o
            out = self.net(images)
            target = gaussian_heatmaps(points, tuple(out.shape[-2:]), int(self.net.stride), float(t["sigma_px"]))
            loss = pose_loss(out, target, keypoint_weights(points), str(t["loss"]))
            self.history.append({"loss": float(loss.detach())})
            return loss

        def configure_optimizers(self):
            t = self.cfg["train"]
            opt = torch.optim.Adam(self.net.parameters(), lr=float(t["lr"]), weight_decay=float(t["weight_decay"]))
            total, steps, factor = max(1, int(t["max_steps"])), list(t["lr_steps"] or []), float(t["lr_factor"])
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, steps, factor))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return PoseModule


def train_pose(images: np.ndarray, keypoints: np.ndarray, cfg: DictConfig | Mapping[str, Any] | None = None,
               model: str | None = None, centres: np.ndarray | None = None,
               flip_pairs: Sequence[tuple[int, int]] = (), node_names: Sequence[str] | None = None,
               progress: bool = False) -> torch.nn.Module:
    """Train PoseNet or LEAP on labelled frames (top-down: one crop per animal).

    Args:
        images: ``(N, H, W)`` grey (or ``(N, H, W, 3)`` RGB with ``data.rgb``) uint8 frames.
        keypoints: ``(N, K, 2)`` or ``(N, A, K, 2)`` frame px, NaN for unlabelled keypoints.
        cfg: the model config (``config/models/posenet.yaml`` or ``leap.yaml``;
            default: that of ``model``).
        model: ``"posenet"`` or ``"leap"`` (default: the config's ``model.name``).
        centres: crop centres per animal, frame px (default: keypoint box centres).
        flip_pairs: ``(left, right)`` node indices swapped when an augmentation mirrors the crop.
        node_names: ``K`` names, stored with the model.
        progress: Lightning progress bar.

    Returns:
        The trained network in eval mode on the CPU, with attributes
        ``config`` (plain dict), ``history`` (per-step losses),
        ``node_names``, ``flip_pairs``, ``training_seed`` and
        ``training_peak`` (median peak confidence on its training crops).
        A run that collapsed (``training_peak < train.min_peak``) is
        repeated from the next seed up to ``train.restarts`` times.
    """
    from sipec_models.pose import match_channels

    cfg = _cfg(cfg, model)
    d, t = cfg["data"], cfg["train"]
    mult = 32 if cfg["model"]["name"] == "posenet" else 4
    if int(d["crop_size"]) % mult:
        raise ValueError(f"data.crop_size must be a multiple of {mult} for {cfg['model']['name']}, "
                         f"not {d['crop_size']}")
    kp = np.asarray(keypoints, np.float64)
    K = kp.shape[-2]
    if node_names is not None and len(node_names) != K:
        raise ValueError(f"{len(node_names)} node names for {K} keypoints")
    images = match_channels(images, bool(d.get("rgb", False)))
    crops, pts, _ = prepare_pose_crops(images, kp, training_crop_size(cfg), float(d["scale"]), centres)
    if not len(crops):
        raise ValueError("no labelled animals to train on (every animal's keypoints are NaN)")
    restarts, min_peak = int(t.get("restarts", 0)), float(t.get("min_peak", 0.0))
    for attempt in range(restarts + 1):
        seed = int(t["seed"]) + attempt
        module = _fit_pose(cfg, crops, pts, K, flip_pairs, seed, progress)
        peak = _median_peak(module.net, cfg, crops)
        if peak >= min_peak:
            break
        log.warning("%s training (seed %d) collapsed: median peak confidence %.3f on its own training crops "
                    "(< train.min_peak %.3f)%s", cfg["model"]["name"], seed, peak, min_peak,
                    "; restarting with the next seed" if attempt < restarts else "; no restarts left")
    net = module.net.cpu().eval()
    net.config = cfg
    net.history = module.history
    net.training_seed, net.training_peak = seed, peak
    net.node_names = list(node_names) if node_names is not None else [f"node{k}" for k in range(K)]
    net.flip_pairs = [tuple(map(int, p)) for p in flip_pairs]
    return net



def _fit_pose(cfg: Mapping[str, Any], crops: np.ndarray, pts: np.ndarray, K: int, flip_pairs, seed: int,
              progress: bool):
    """One training run (Lightning) from seed ``seed``; returns the module (its ``net`` and ``history``)."""
    import pytorch_lightning as pl

    t = cfg["train"]
    pl.seed_everything(seed, workers=True, verbose=False)
    steps, bs = int(t["max_steps"]), int(t["batch_size"])
    data = PoseCropDataset(crops, pts, steps * bs, seed)
    loader = torch.utils.data.DataLoader(data, batch_size=bs, shuffle=False, num_workers=0)
    module = make_pose_module()(cfg, K, list(flip_pairs))
    trainer = pl.Trainer(max_steps=steps, max_epochs=-1, accelerator="auto", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                         num_sanity_val_steps=0, deterministic=False)
    trainer.fit(module, loader)
    return module


@torch.inference_mode()
def _median_peak(net: torch.nn.Module, cfg: Mapping[str, Any], crops: np.ndarray, n: int = 64) -> float:
    """Median peak confidence of the keypoints on the centres of (up to ``n``) ``(M, C, side, side)`` training crops.

    A network stuck on the all-zero plateau (seen with LEAP's mean-squared
    error on small Gaussians) has peaks near 0 everywhere.
    """
    from sipec_models.pose import PosePredictor

    S = int(cfg["data"]["crop_size"])
    o = (crops.shape[-1] - S) // 2  # crops (M, C, side, side) uint8
    sel = crops[np.linspace(0, len(crops) - 1, min(n, len(crops))).astype(int), :, o:o + S, o:o + S]
    x = torch.from_numpy(np.ascontiguousarray(sel)).float() / 255.0
    was_training = net.training
    net.config = cfg
    net.cpu().eval()
    _, conf = PosePredictor(net, device="cpu").predict_crops(x)
    net.train(was_training)
    return float(np.median(conf)) if conf.size else 0.0


def save_pose(model: torch.nn.Module, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> None:
    """Write ``{format, config, num_keypoints, node_names, flip_pairs, state_dict, meta}`` atomically."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise ValueError("save_pose needs a model with a config (from train_pose or load_pose)")
    payload = {"format": FORMAT, "config": to_dict(cfg), "num_keypoints": int(model.num_keypoints),
               "node_names": list(getattr(model, "node_names", [])),
               "flip_pairs": [list(p) for p in getattr(model, "flip_pairs", [])],
               "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "meta": dict(meta or {})}
    save_checkpoint(payload, path)


def load_pose(path: str | os.PathLike, device: str | torch.device | None = None) -> torch.nn.Module:
    """Load a :func:`save_pose` checkpoint: eval-mode network with ``config``, ``node_names``, ``flip_pairs``, ``meta``.

    Raises:
        ValueError: unreadable, or not a pose checkpoint.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read checkpoint ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a pose checkpoint (format {FORMAT!r})")
    cfg, K = payload["config"], int(payload["num_keypoints"])
    names = list(payload.get("node_names", []))
    if names and len(names) != K:
        raise ValueError(f"{path}: names {len(names)} nodes ({names}) but its network has {K} keypoints")
    model = build_pose_model(cfg, K, pretrained=False)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        detail = [d.strip() for d in str(exc).strip().splitlines()]
        raise ValueError(f"{path}: weights do not fit its config ({cfg['model']['name']}, {K} keypoints, "
                         f"{'RGB' if cfg['data'].get('rgb') else 'grey'} input): {' '.join(detail[1:3]) or detail[0]}"
                         ) from None
    model.config = cfg
    model.node_names = names
    model.flip_pairs = [tuple(p) for p in payload.get("flip_pairs", [])]
    model.meta = payload.get("meta", {})
    return model.to(device or "cpu").eval()



def load_pose_training_data(labels: str | os.PathLike, video: str | os.PathLike | None = None,
                            frames: Sequence[int] | None = None, gray: bool = True):
    """Labelled frames with at least one labelled animal, their pixels and keypoints.

    Args:
        labels: anything :func:`~sipec_models.io.keypoints.load_keypoints` reads.
        video: the video of labelled frames without an image file (labels of one video only).
        frames: ``[start, stop)``: only labelled frames whose frame index is in this range.
        gray: ``(N, H, W)`` grey images, else ``(N, H, W, 3)`` RGB.

    Returns:
        ``(labels, images, keypoints)``: the :class:`KeypointLabels` holding
        only the kept frames (in file order), ``(N, H, W[, 3])`` uint8 images
        and ``(N, A, K, 2)`` keypoints, frame px, NaN unlabelled.

    Raises:
        ValueError: naming ``labels``: no labelled animal (in ``frames``),
            labels of several videos with ``video``.
    """
    from sipec_models.io.keypoints import load_keypoints, read_pose_images

    kl = load_keypoints(labels, video=video)
    if video is not None:
        videos = {f.video for f in kl.frames if f.image is None}
        if len(videos) > 1:
            raise ValueError(f"{labels}: labels of {len(videos)} videos; `video` can only stand for one")
        for f in kl.frames:
            if f.image is None:
                f.video = str(video)
    kept = [f for f in kl.frames if np.isfinite(f.points).all(-1).any()
            and (frames is None or (f.frame is not None and frames[0] <= f.frame < frames[1]))]
    if not kept:
        raise ValueError(f"{labels}: no labelled animals" + (f" in frames {list(frames)}" if frames else ""))
    kl.frames = kept
    return kl, read_pose_images(kl, gray=gray), kl.points_by_track()


def run_train_pose(labels: str | os.PathLike, out: str | os.PathLike, model: str = "posenet",
                   video: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                   frames: Sequence[int] | None = None, metrics_out: str | os.PathLike | None = None,
                   progress: bool = True) -> torch.nn.Module:
    """Workflow entry: train PoseNet or LEAP from a pose label file and save the checkpoint.

    Args:
        labels: anything :func:`~sipec_models.io.keypoints.load_keypoints` reads:
            SLEAP ``.slp``, a DeepLabCut project (folder or ``config.yaml``),
            DLC ``CollectedData_*.csv`` / ``.h5``.
        out: checkpoint path (:func:`save_pose`: weights, config, node names, flip pairs).
        model: ``"posenet"`` or ``"leap"``: the config ``config/models/<model>.yaml``.
        video: the video of the labelled frames that have no image file: for
            SLEAP files whose stored video path is not valid on this machine,
            and DLC files indexed by frame number. Only for labels of one video.
        overrides: Hydra override strings of the model config.
        frames: ``[start, stop)``: only labelled frames whose frame index is in this range.
        metrics_out: JSON with the model, node names, frame and animal counts,
            ``train_seconds`` and ``final_loss`` (mean loss of the last 20 steps).
        progress: progress bar.

    Raises:
        ValueError: naming ``labels``: unknown model, unreadable labels, no
            labelled animal (in ``frames``), labels of several videos with ``video``.
    """
    if model not in MODELS:
        raise ValueError(f"pose model must be one of {MODELS}, not {model!r}")
    cfg = load_model_config(model, overrides)
    gray = not bool(cfg.data.get("rgb", False))
    kl, images, keypoints = load_pose_training_data(labels, video, frames, gray=gray)
    kept = kl.frames
    t0 = time.perf_counter()
    net = train_pose(images, keypoints, cfg, model=model, flip_pairs=kl.skeleton.flip_pairs,
                     node_names=kl.skeleton.nodes, progress=progress)
    train_s = time.perf_counter() - t0
    n_animals = int(np.isfinite(keypoints).all(-1).any(-1).sum())
    meta = {"labels": str(labels), "video": None if video is None else str(video),
            "frames": [f.frame for f in kept], "train_seconds": train_s}
    save_pose(net, out, meta)
    if metrics_out is not None:
        from sipec_models.inference.ingest import write_json_atomic

        hist = [h["loss"] for h in net.history[-20:]]
        write_json_atomic(metrics_out, {
            "model": model, "node_names": list(kl.skeleton.nodes), "flip_pairs": [list(p) for p in net.flip_pairs],
            "n_frames": len(kept), "n_animals": n_animals, "steps": len(net.history),
            "train_seconds": train_s, "final_loss": float(np.mean(hist)) if hist else None,
        })
    return net

"""Training and use of DeepEthogram's two-stream feature extractor.

Data: a list of video samples (:class:`VideoSample`), each with

* ``frames (T, 3, H, W)``: RGB, uint8 or float in [0, 1];
* ``flows (T, 2 * n_flows, H, W)`` float32: the flow generator's 10 optic
  flows for each frame, channels ``(dx_1, dy_1, ..., dx_10, dy_10)`` in input
  pixels (``dx`` along columns, positive right; ``dy`` along rows, positive
  down), already computed;
* ``targets (T, K)`` float 0/1, NaN where unlabelled.

Training (DeepEthogram Methods "Feature extractors", "Loss functions",
"Regularization", "Augmentations", "Stopping criterion"):

* each labelled frame is one example: the RGB frame (3D arch: the
  ``n_rgb = 11`` frames centred on it, edges repeated) and its flow stack;
* loss: weighted binary focal loss (gamma 1, label smoothing 0.05, positive
  weights ``(neg/pos)^0.25`` from the training frames) of the logits being
  trained plus L2-SP (``alpha 1e-5`` towards the starting weights of
  ImageNet-pretrained parameters, ``beta 1e-3`` on the rest);
* final-layer biases start at ``log(pos/neg)``;
* curriculum (DeepEthogram code default, ``train.curriculum``): the spatial
  stream alone on its own logits, then the flow stream alone, then both end
  to end on the fused logits ``(f_spatial + f_flow) / 2``; without it only
  the last stage runs;
* Adam (lr 1e-4); the learning rate drops x0.1 when validation macro-F1 has
  not improved for ``patience`` epochs, and a stage stops below 5e-7 or
  after ``max_steps``;
* validation: the last ``val_fraction`` of each video, a contiguous block;
  each stage keeps the weights of its epoch with the best macro-F1 over the
  non-background behaviours (threshold 0.5), or its last epoch when no
  labelled frame falls in the validation blocks;
* augmentation (kornia, GPU-friendly): brightness and contrast of the frames,
  rotation up to 10 degrees and flips applied identically to the frame and
  its flows, with the flow vectors rotated and their x (left-right flip) or
  y (up-down flip) component negated.

After training, :func:`extract_features` gives each frame's two 512-d
feature vectors and logits; :func:`write_feature_store` saves them as a Zarr
store for the sequence model.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from sipec_models.deg_losses import L2SP, binary_focal_loss, class_counts, positive_weights, reference_weights
from sipec_models.nets.deg_features import (TwoStreamFeatureExtractor, build_feature_extractor,
                                            feature_extractor_from_meta)
from sipec_models.training.config import save_checkpoint

log = logging.getLogger(__name__)

FORMAT = "sipec-deg-features-1"
STAGES = ("spatial", "flow", "fused")


# --------------------------------------------------------------------------- data


@dataclass
class VideoSample:
    """One video: ``frames (T, 3, H, W)`` uint8 or float in [0, 1], ``flows (T, 2F, H, W)`` float32 px,
    ``targets (T, K)`` float 0/1 with NaN for unlabelled."""

    frames: Any
    flows: Any
    targets: Any


def _as_sample(s: Any, i: int) -> VideoSample:
    if isinstance(s, VideoSample):
        return s
    if isinstance(s, Mapping):
        try:
            return VideoSample(s["frames"], s["flows"], s["targets"])
        except KeyError as exc:
            raise ValueError(f"video sample {i} lacks {exc}: needs frames, flows and targets") from None
    if all(hasattr(s, a) for a in ("frames", "flows", "targets")):
        return VideoSample(s.frames, s.flows, s.targets)
    raise ValueError(f"video sample {i} must be a VideoSample or a mapping with frames, flows and targets")


def check_samples(samples: Sequence[Any], n_classes: int | None = None, n_flows: int | None = None
                  ) -> list[VideoSample]:
    """Validate shapes and value ranges of video samples; returns them as :class:`VideoSample` with
    ``targets`` as float32 numpy arrays.

    Raises:
        ValueError: naming the sample: wrong shapes, frames and flows of different size or length,
            float frames outside [0, 1], labels other than 0/1/NaN.
    """
    out = []
    if not len(samples):
        raise ValueError("no video samples given")
    for i, raw in enumerate(samples):
        s = _as_sample(raw, i)
        fr, fl = s.frames, s.flows
        y = np.asarray(s.targets, np.float32)
        if fr.ndim != 4 or fr.shape[1] != 3:
            raise ValueError(f"video sample {i}: frames must be (T, 3, H, W) RGB, got {tuple(fr.shape)}")
        if fl.ndim != 4 or fl.shape[1] % 2 or (n_flows is not None and fl.shape[1] != 2 * n_flows):
            want = f"(T, {2 * n_flows}, H, W)" if n_flows else "(T, 2F, H, W)"
            raise ValueError(f"video sample {i}: flows must be {want} (dx, dy) stacks, got {tuple(fl.shape)}")
        if fl.shape[0] != fr.shape[0] or tuple(fl.shape[2:]) != tuple(fr.shape[2:]):
            raise ValueError(f"video sample {i}: frames {tuple(fr.shape)} and flows {tuple(fl.shape)} differ in "
                             "length or size")
        if y.ndim != 2 or y.shape[0] != fr.shape[0] or (n_classes is not None and y.shape[1] != n_classes):
            want = f"({fr.shape[0]}, {n_classes})" if n_classes else f"({fr.shape[0]}, K)"
            raise ValueError(f"video sample {i}: targets must be {want}, got {y.shape}")
        ok = np.isfinite(y)
        if not np.isin(y[ok], (0, 1)).all():
            raise ValueError(f"video sample {i}: targets must be 0, 1 or NaN (unlabelled)")
        if np.dtype(fr.dtype) != np.uint8:
            lo, hi = float(np.min(fr)), float(np.max(fr))
            if lo < 0 or hi > 1:
                raise ValueError(f"video sample {i}: float frames must be in [0, 1], got [{lo:.3g}, {hi:.3g}] "
                                 "(pass uint8 for 0-255 images)")
        out.append(VideoSample(fr, fl, y))
    K = {s.targets.shape[1] for s in out}
    if len(K) > 1:
        raise ValueError(f"video samples have different numbers of behaviours: {sorted(K)}")
    return out


def validation_mask(n_frames: int, fraction: float) -> np.ndarray:
    """``(T,)`` bool: the last ``fraction`` of a video (at least one frame when ``fraction > 0``)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    n_val = max(1, int(round(n_frames * fraction))) if fraction > 0 and n_frames > 1 else 0
    mask = np.zeros(n_frames, bool)
    if n_val:
        mask[n_frames - n_val:] = True
    return mask


def split_frames(samples: Sequence[VideoSample], val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Labelled frames of the training and validation parts: ``(n, 2)`` int64 ``(video, frame)`` pairs each.

    A frame is labelled when at least one behaviour has a label (the
    others, NaN, are ignored by the loss).
    """
    train, val = [], []
    for v, s in enumerate(samples):
        labelled = np.isfinite(s.targets).any(1)
        is_val = validation_mask(len(labelled), val_fraction)
        for part, mask in ((train, labelled & ~is_val), (val, labelled & is_val)):
            t = np.flatnonzero(mask)
            part.append(np.stack([np.full(len(t), v), t], 1))
    return (np.concatenate(train).astype(np.int64), np.concatenate(val).astype(np.int64))


def rgb_statistics(samples: Sequence[VideoSample], max_frames: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of frames in [0, 1] (DeepEthogram standardises input with them).

    Uses at most about ``max_frames`` frames spread evenly over all videos.

    Returns:
        ``mean (3,)`` and ``std (3,)`` float32 (std at least 1e-3).
    """
    total = sum(len(s.frames) for s in samples)
    step = max(1, math.ceil(total / max_frames))
    acc = np.zeros(3)
    acc2 = np.zeros(3)
    n = 0
    for s in samples:
        for t in range(0, len(s.frames), step):
            x = np.asarray(s.frames[t], np.float64)
            if np.dtype(s.frames.dtype) == np.uint8:
                x = x / 255.0
            x = x.reshape(3, -1)
            acc += x.sum(1)
            acc2 += (x ** 2).sum(1)
            n += x.shape[1]
    mean = acc / n
    std = np.sqrt(np.maximum(acc2 / n - mean ** 2, 0))
    return mean.astype(np.float32), np.maximum(std, 1e-3).astype(np.float32)


def clip_indices(t: int, n_frames: int, n_rgb: int) -> np.ndarray:
    """``(n_rgb,)`` frame indices centred on ``t`` (``t - n_rgb // 2`` ...), clamped to the video."""
    return np.clip(np.arange(n_rgb) - n_rgb // 2 + t, 0, n_frames - 1)


def _frames_tensor(frames: Any, idx: np.ndarray) -> torch.Tensor:
    """``(len(idx), 3, H, W)`` float in [0, 1] from a numpy, memmap or Zarr frame array."""
    x = torch.from_numpy(np.stack([np.asarray(frames[int(i)]) for i in idx]))
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def gather_batch(samples: Sequence[VideoSample], pairs: np.ndarray, n_rgb: int = 1
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs and targets of ``(video, frame)`` pairs.

    Returns:
        frames ``(B, 3, H, W)`` (``n_rgb > 1``: ``(B, 3, n_rgb, H, W)``) float in [0, 1],
        flows ``(B, 2F, H, W)`` float32, targets ``(B, K)`` float32 (NaN unlabelled).
    """
    frames, flows, ys = [], [], []
    for v, t in pairs:
        s = samples[int(v)]
        if n_rgb == 1:
            frames.append(_frames_tensor(s.frames, np.array([t]))[0])
        else:
            frames.append(_frames_tensor(s.frames, clip_indices(int(t), len(s.frames), n_rgb)).transpose(0, 1))
        flows.append(torch.from_numpy(np.asarray(s.flows[int(t)], np.float32)))
        ys.append(torch.from_numpy(s.targets[int(t)]))
    return torch.stack(frames), torch.stack(flows), torch.stack(ys)


# --------------------------------------------------------------------------- augmentation


def hflip_flows(flows: torch.Tensor) -> torch.Tensor:
    """Left-right flip of ``(N, 2F, H, W)`` flow stacks: mirror the columns and negate every ``dx``."""
    out = flows.flip(-1).clone()
    out[:, 0::2] = -out[:, 0::2]
    return out


def vflip_flows(flows: torch.Tensor) -> torch.Tensor:
    """Up-down flip of ``(N, 2F, H, W)`` flow stacks: mirror the rows and negate every ``dy``."""
    out = flows.flip(-2).clone()
    out[:, 1::2] = -out[:, 1::2]
    return out


def rotate_flows(flows: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    """Rotate ``(N, 2F, H, W)`` flow stacks as :func:`kornia.geometry.transform.rotate` rotates images.

    Kornia turns images counter-clockwise as displayed (y axis down) by
    ``angle_deg (N,)``; the flow fields are resampled the same way and each
    vector ``(dx, dy)`` is turned with them: ``dx' = dx cos a + dy sin a``,
    ``dy' = -dx sin a + dy cos a``. Pixels rotated in from outside get zero flow.
    """
    from kornia.geometry.transform import rotate

    N, C, H, W = flows.shape
    out = rotate(flows, angle_deg.to(flows))
    a = torch.deg2rad(angle_deg.to(flows)).view(N, 1, 1, 1)
    dx, dy = out[:, 0::2], out[:, 1::2]
    res = torch.empty_like(out)
    res[:, 0::2] = dx * torch.cos(a) + dy * torch.sin(a)
    res[:, 1::2] = -dx * torch.sin(a) + dy * torch.cos(a)
    return res


class Augment(nn.Module):
    """Random training augmentation of frames and their flow stacks (DeepEthogram "Augmentations").

    Per example: brightness x ``U(1 - b, 1 + b)`` and contrast x ``U(1 - c,
    1 + c)`` around the mean grey level (frames only); one rotation angle
    ``U(-deg, deg)`` and the same left-right / up-down flips for the frame
    and its flows, the flow vectors turned and negated to match
    (:func:`rotate_flows`, :func:`hflip_flows`, :func:`vflip_flows`).

    Call with frames ``(N, 3, H, W)`` or ``(N, 3, T, H, W)`` in [0, 1] and
    flows ``(N, 2F, H, W)``; returns both augmented.
    """

    def __init__(self, brightness: float = 0.25, contrast: float = 0.1, rotation_deg: float = 10.0,
                 hflip: float = 0.5, vflip: float = 0.0):
        super().__init__()
        for name, v in (("brightness", brightness), ("contrast", contrast)):
            if not 0 <= v < 1:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        for name, v in (("hflip", hflip), ("vflip", vflip)):
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must be a probability, got {v}")
        if rotation_deg < 0:
            raise ValueError(f"rotation_deg must be >= 0, got {rotation_deg}")
        self.brightness, self.contrast, self.rotation_deg = brightness, contrast, rotation_deg
        self.hflip, self.vflip = hflip, vflip

    def forward(self, frames: torch.Tensor, flows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from kornia.enhance import adjust_contrast_with_mean_subtraction
        from kornia.geometry.transform import rotate

        N = frames.shape[0]
        shape = frames.shape
        x = frames.reshape(N, 3, -1, *shape[-2:]).transpose(1, 2).reshape(-1, 3, *shape[-2:])  # (N*T, 3, H, W)
        T = x.shape[0] // N
        dev = frames.device
        if self.brightness:
            b = 1 + (torch.rand(N, device=dev) * 2 - 1) * self.brightness
            x = (x * b.repeat_interleave(T).view(-1, 1, 1, 1)).clamp(0, 1)
        if self.contrast:
            c = 1 + (torch.rand(N, device=dev) * 2 - 1) * self.contrast
            x = adjust_contrast_with_mean_subtraction(x, c.repeat_interleave(T))
        x = x.reshape(N, T * 3, *shape[-2:])
        if self.rotation_deg:
            angle = (torch.rand(N, device=dev) * 2 - 1) * self.rotation_deg
            x = rotate(x, angle)
            flows = rotate_flows(flows, angle)
        for p, flip_img, flip_flow in ((self.hflip, lambda z: z.flip(-1), hflip_flows),
                                       (self.vflip, lambda z: z.flip(-2), vflip_flows)):
            if p:
                m = torch.rand(N, device=dev) < p
                if m.any():
                    x = torch.where(m.view(-1, 1, 1, 1), flip_img(x), x)
                    flows = torch.where(m.view(-1, 1, 1, 1), flip_flow(flows), flows)
        x = x.reshape(N, T, 3, *shape[-2:]).transpose(1, 2).reshape(shape)
        return x, flows


# --------------------------------------------------------------------------- scores


def macro_f1_non_background(probs, targets, names: Sequence[str], background: str = "background",
                            thresholds=0.5) -> float:
    """Mean F1 over the behaviours other than ``background`` (DeepEthogram's model-selection score).

    Args:
        probs: ``(N, K)`` probabilities.
        targets: ``(N, K)`` 0/1 labels, NaN where unlabelled (left out of that behaviour's F1).
        names: the K behaviour names.
        background: name of the class left out (absent: all classes count).
        thresholds: a frame is called when ``prob >= threshold``; scalar or ``(K,)``.

    Returns:
        The mean over the non-background behaviours that have labelled
        frames of their F1 (0 when neither true nor called), NaN when there
        are none.
    """
    from sipec_models.behaviour_metrics import macro_f1

    probs, y = np.asarray(probs, np.float64), np.asarray(targets, np.float64)
    if probs.ndim != 2 or probs.shape != y.shape or len(names) != probs.shape[1]:
        raise ValueError(f"probs {probs.shape} and targets {y.shape} must both be (N, {len(names)})")
    thr = np.broadcast_to(np.asarray(thresholds, np.float64), (probs.shape[1],))
    f1 = []
    for k, name in enumerate(names):
        ok = np.isfinite(y[:, k])
        if str(name) == background or not ok.any():
            continue
        f1.append(macro_f1(y[ok, k:k + 1].astype(np.int8), (probs[ok, k:k + 1] >= thr[k]).astype(np.int8)))
    return float(np.mean(f1)) if f1 else float("nan")


# --------------------------------------------------------------------------- training


def _stage_logits(model: TwoStreamFeatureExtractor, stage: str, frames: torch.Tensor, flows: torch.Tensor
                  ) -> torch.Tensor:
    if stage == "spatial":
        return model.spatial(model.spatial_input(frames))
    if stage == "flow":
        return model.flow(model.flow_input(flows))
    return model(frames, flows)


def _set_stage(model: TwoStreamFeatureExtractor, stage: str) -> list[nn.Parameter]:
    """Freeze what the stage does not train (frozen streams in eval mode); return the trainable parameters."""
    active = {"spatial": [model.spatial], "flow": [model.flow], "fused": [model.spatial, model.flow]}[stage]
    for stream in (model.spatial, model.flow):
        on = stream in active
        stream.train(on)
        for p in stream.parameters():
            p.requires_grad_(on)
    return [p for s in active for p in s.parameters()]


@torch.no_grad()
def predict_probs(model: TwoStreamFeatureExtractor, samples: Sequence[VideoSample], pairs: np.ndarray,
                  batch_size: int, device, stage: str = "fused") -> np.ndarray:
    """``(n, K)`` sigmoid probabilities of a stage's logits for ``(video, frame)`` pairs (eval mode)."""
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(pairs), batch_size):
        fr, fl, _ = gather_batch(samples, pairs[i:i + batch_size], model.n_rgb)
        out.append(torch.sigmoid(_stage_logits(model, stage, fr.to(device), fl.to(device))).float().cpu())
    model.train(was)
    return torch.cat(out).numpy() if out else np.zeros((0, model.n_classes), np.float32)


def _targets(samples: Sequence[VideoSample], pairs: np.ndarray) -> np.ndarray:
    if not len(pairs):
        return np.zeros((0, samples[0].targets.shape[1]), np.float32)
    return np.stack([samples[int(v)].targets[int(t)] for v, t in pairs])


def _train_stage(model: TwoStreamFeatureExtractor, stage: str, samples: Sequence[VideoSample], train: np.ndarray,
                 val: np.ndarray, names: Sequence[str], cfg: Mapping[str, Any], pos_weight: torch.Tensor,
                 reg: L2SP, augment: Augment | None, device, rng: np.random.Generator, progress: bool) -> list[dict]:
    from tqdm.auto import tqdm

    tr, lc = cfg["train"], cfg["loss"]
    bs = int(tr["batch_size"])
    params = _set_stage(model, stage)
    opt = torch.optim.Adam(params, lr=float(tr["lr"]))
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=float(tr["reduce_factor"]),
                                                       patience=int(tr["patience"]))
    steps_per_epoch = tr.get("steps_per_epoch") or math.ceil(len(train) / bs)
    y_val = _targets(samples, val)
    background = str(cfg.get("background", "background"))
    history, best, best_state, step = [], -math.inf, None, 0
    for epoch in range(int(tr["epochs"])):
        _set_stage(model, stage)
        order, pos, losses = rng.permutation(len(train)), 0, []
        bar = tqdm(range(int(steps_per_epoch)), desc=f"features {stage} epoch {epoch + 1}", disable=not progress,
                   leave=False)
        for _ in bar:
            if pos >= len(order):
                order, pos = rng.permutation(len(train)), 0
            idx = train[order[pos:pos + bs]]
            pos += bs
            fr, fl, y = gather_batch(samples, idx, model.n_rgb)
            fr, fl, y = fr.to(device), fl.to(device), y.to(device)
            if augment is not None:
                fr, fl = augment(fr, fl)
            logits = _stage_logits(model, stage, fr, fl)
            data = binary_focal_loss(logits, y, pos_weight, gamma=float(lc["gamma"]),
                                     label_smoothing=float(lc["label_smoothing"]), reduction=str(lc["reduction"]))
            loss = data + reg(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            step += 1
            if step >= int(tr["max_steps"]):
                break
        rec = {"stage": stage, "epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None,
               "lr": opt.param_groups[0]["lr"], "steps": step}
        if len(val):
            probs = predict_probs(model, samples, val, max(bs, 64), device, stage)
            f1 = macro_f1_non_background(probs, y_val, names, background)
            rec["val_macro_f1"] = f1
            score = f1 if np.isfinite(f1) else -1.0
            if score > best:
                best, best_state = score, copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            sched.step(score)
        history.append(rec)
        log.info("feature extractor %s epoch %d: %s", stage, epoch + 1, rec)
        if step >= int(tr["max_steps"]) or opt.param_groups[0]["lr"] < float(tr["min_lr"]):
            break
    if best_state is not None:
        model.load_state_dict(best_state)
        history.append({"stage": stage, "best_val_macro_f1": best})
    return history


def _resolve_cfg(cfg_features: Mapping[str, Any] | None) -> dict:
    from sipec_models.training.config import load_model_config, to_dict

    if cfg_features is None:
        cfg_features = load_model_config("deepethogram").features
    return to_dict(cfg_features)


def train_feature_extractor(samples: Sequence[Any], names: Sequence[str], cfg_features: Mapping[str, Any] | None = None,
                            checkpoint: str | os.PathLike | None = None, device: str | torch.device | None = None,
                            seed: int = 0, progress: bool = True, model: TwoStreamFeatureExtractor | None = None
                            ) -> tuple[TwoStreamFeatureExtractor, dict]:
    """Train the two-stream extractor on per-frame multi-label targets.

    Args:
        samples: video samples (:class:`VideoSample` or mappings with
            ``frames``, ``flows``, ``targets``; see the module docstring).
        names: the K behaviour names (``cfg.background``, default
            ``"background"``, is left out of the validation score).
        cfg_features: the ``features`` section of the ``deepethogram`` model
            config (default: ``config/models/deg_features/base.yaml`` as
            composed into ``deepethogram.yaml``).
        checkpoint: where to save the trained model (atomic; see :func:`save_feature_extractor`).
        device: default CUDA when available.
        seed: seed of weights, batch order and augmentation.
        progress: tqdm progress bars.
        model: an extractor to train instead of one built from the config
            (its biases are still set from the class counts).

    Returns:
        The trained model (best validation epoch of the last stage, eval
        mode, on the CPU) and the history: per-epoch records, class counts,
        positive weights, validation thresholds chosen by F1.

    Raises:
        ValueError: bad samples (:func:`check_samples`), no labelled training frame.
    """
    from sipec_models.ethogram import choose_thresholds

    cfg = _resolve_cfg(cfg_features)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    names = [str(n) for n in names]
    n_flows = int(cfg.get("n_flows", 10)) if model is None else model.n_flows
    samples = check_samples(samples, len(names), n_flows)
    tr = cfg["train"]
    train, val = split_frames(samples, float(tr["val_fraction"]))
    if not len(train):
        raise ValueError("no labelled frame outside the validation blocks: label more frames or lower "
                         "train.val_fraction")
    pos, neg = class_counts(_targets(samples, train))
    if model is None:
        model = build_feature_extractor(cfg, len(names))
    model.init_bias(pos, neg)
    model.set_normalization(*rgb_statistics(samples))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    pw = torch.from_numpy(positive_weights(pos, neg, float(cfg["loss"]["pos_weight_beta"]))).to(device)
    rc = cfg["regularization"]
    reg = L2SP(model, reference_weights(model, model.pretrained_parameter_names()), float(rc["alpha"]),
               float(rc["beta"])).to(device)
    ac = cfg.get("augment") or {}
    augment = Augment(float(ac.get("brightness", 0)), float(ac.get("contrast", 0)),
                      float(ac.get("rotation_deg", 0)), float(ac.get("hflip", 0)),
                      float(ac.get("vflip", 0))) if ac.get("enabled", True) else None
    stages = STAGES if bool(tr.get("curriculum", True)) else ("fused",)
    log.info("DeepEthogram features (%s/%s): %d training and %d validation frames, stages %s, behaviours %s",
             model.meta.get("arch"), model.meta.get("backbone"), len(train), len(val), stages, names)
    history: dict[str, Any] = {"epochs": [], "n_train": int(len(train)), "n_val": int(len(val)),
                               "pos": pos.tolist(), "neg": neg.tolist(), "pos_weight": pw.cpu().tolist()}
    for stage in stages:
        history["epochs"] += _train_stage(model, stage, samples, train, val, names, cfg, pw, reg, augment, device,
                                          rng, progress)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    if len(val):
        probs = predict_probs(model, samples, val, 64, device)
        y = _targets(samples, val)
        full = np.isfinite(y).all(1)
        history["val_macro_f1"] = macro_f1_non_background(probs, y, names, str(cfg.get("background", "background")))
        history["thresholds"] = choose_thresholds(probs[full], y[full].astype(np.uint8)).tolist() if full.any() \
            else None
    model.cpu()
    if checkpoint is not None:
        save_feature_extractor(model, checkpoint, names, cfg, history)
    return model, history


# --------------------------------------------------------------------------- checkpoints, extraction, stores


def save_feature_extractor(model: TwoStreamFeatureExtractor, path: str | os.PathLike, names: Sequence[str],
                           config: Mapping[str, Any] | None = None, history: Mapping[str, Any] | None = None) -> None:
    """Write weights, model description, behaviour names, config and history to ``path`` (atomic)."""
    save_checkpoint({"format": FORMAT, "meta": model.meta, "names": list(names), "config": dict(config or {}),
                     "history": dict(history or {}),
                     "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, path)


def load_feature_extractor(path: str | os.PathLike) -> tuple[TwoStreamFeatureExtractor, dict]:
    """Load a :func:`save_feature_extractor` checkpoint: the model (eval mode, CPU) and the checkpoint dict.

    Raises:
        ValueError: naming ``path``: unreadable or not a feature-extractor checkpoint.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path}: cannot read the feature-extractor checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a DeepEthogram feature-extractor checkpoint (format {FORMAT!r})")
    model = feature_extractor_from_meta(ckpt["meta"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


@torch.no_grad()
def extract_features(model: TwoStreamFeatureExtractor, frames, flows, batch_size: int = 64,
                     device: str | torch.device | None = None) -> dict[str, np.ndarray]:
    """Features and logits of every frame of one video (eval mode, no augmentation).

    Args:
        model: a trained extractor.
        frames: ``(T, 3, H, W)`` uint8 or float in [0, 1] (3D arch: the
            ``n_rgb`` frames centred on each frame are used, edges repeated).
        flows: ``(T, 2 * n_flows, H, W)`` float32 px.
        batch_size: frames per forward pass.
        device: default: where the model is.

    Returns:
        ``spatial (T, 512)``, ``flow (T, 512)`` float32 features and fused
        ``logits (T, K)`` float32.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    T = len(frames)
    sample = check_samples([VideoSample(frames, flows, np.zeros((T, model.n_classes), np.float32))],
                           model.n_classes, model.n_flows)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was = model.training
    model.eval().to(device)
    pairs = np.stack([np.zeros(T, np.int64), np.arange(T)], 1)
    out: dict[str, list[np.ndarray]] = {"spatial": [], "flow": [], "logits": []}
    for i in range(0, T, batch_size):
        fr, fl, _ = gather_batch(sample, pairs[i:i + batch_size], model.n_rgb)
        o = model.outputs(fr.to(device), fl.to(device))
        out["spatial"].append(o.spatial.float().cpu().numpy())
        out["flow"].append(o.flow.float().cpu().numpy())
        out["logits"].append(o.logits.float().cpu().numpy())
    model.train(was)
    empty = {"spatial": model.feature_dim, "flow": model.feature_dim, "logits": model.n_classes}
    return {k: (np.concatenate(v) if v else np.zeros((0, empty[k]), np.float32)).astype(np.float32)
            for k, v in out.items()}


#: Arrays of a feature store: dimension names and units.
FEATURE_FIELDS = {"spatial": (("frame", "feature"), "1"), "flow": (("frame", "feature"), "1"),
                  "logits": (("frame", "behaviour"), "logit")}


def write_feature_store(out: str | os.PathLike, features: Mapping[str, np.ndarray], attrs: Mapping[str, Any],
                        frame_chunk: int | None = None) -> Path:
    """Write :func:`extract_features` output as a Zarr v3 store (atomic, consolidated).

    Arrays ``spatial`` and ``flow`` ``(frame, feature)`` and ``logits``
    ``(frame, behaviour)`` (unit ``logit``), float32.

    Args:
        out: the store directory.
        features: the dict of :func:`extract_features` (all three arrays).
        attrs: store attributes, e.g. ``{"behaviours": names, "provenance": ...}``.
        frame_chunk: Zarr chunk length along ``frame`` (default one chunk).

    Raises:
        ValueError: a missing or unknown array, wrong dimensions, different frame counts.
    """
    from sipec_models.io.store import Field, write_store

    if set(features) != set(FEATURE_FIELDS):
        raise ValueError(f"features must hold exactly {sorted(FEATURE_FIELDS)}, got {sorted(features)}")
    fields = {}
    for name, (dims, units) in FEATURE_FIELDS.items():
        a = np.asarray(features[name], np.float32)
        if a.ndim != 2:
            raise ValueError(f"feature array {name!r} must be 2-D {dims}, got shape {a.shape}")
        fields[name] = Field(a, dims, units)
    lengths = {n: f.data.shape[0] for n, f in fields.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"feature arrays differ in frame count: {lengths}")
    return write_store(out, fields, attrs, frame_chunk=frame_chunk)

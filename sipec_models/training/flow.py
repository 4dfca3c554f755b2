"""Training DeepEthogram's flow generator on unlabelled videos, and running it.

Pipeline (config: section ``flow`` of ``config/models/deepethogram.yaml``,
defaults in ``config/models/deg_flow/base.yaml``):

1. Each video is decoded once and resized to ``data.input_size`` ``(H, W)``
   (bilinear, anti-aliased), grey (``C = 1``) or RGB (``C = 3``,
   ``data.rgb``), kept in memory as uint8 ``(T, C, H, W)``
   (:func:`read_video_frames`). Memory: ``T * C * H * W`` bytes per video;
   videos longer than ``flow.train.max_frames_per_video`` are read as evenly
   spaced contiguous blocks of ``flow.train.block_frames`` frames.
2. Validation is a contiguous time block: the last ``data.val_fraction`` of
   every video's frames (:func:`split_video`). Windows of ``flow.n_frames``
   consecutive frames never cross a block or split boundary, so no frame is
   shared between training and validation windows.
3. Training (:func:`train_flow_generator`): Adam, ``flow.train.steps_per_epoch``
   random windows batches per epoch, the same augmentation on all frames
   of a window (:func:`augment_windows`), the multi-scale MotionNet loss
   (:func:`sipec_models.flow_loss.flow_loss`) plus L2-SP toward the initial
   weights. After each epoch the loss on up to ``flow.train.val_windows``
   evenly spaced validation windows decides the best epoch (DeepEthogram:
   minimum validation loss), whose weights are saved atomically; the
   learning rate drops x ``lr_factor`` after ``lr_patience`` epochs without
   improvement, and training stops below ``min_lr`` (``lr_schedule: plateau``,
   DeepEthogram; ``cosine``: per-step cosine decay to ``min_lr``, for short runs).
   Sparse-motion videos can be trained on crops (``flow.augment.crop_size``)
   drawn preferentially where things move (``flow.train.motion_sampling``,
   :class:`WindowSampler`).
4. Inference (:func:`flows_for_frames`): for every frame ``t`` the 10 flows
   of the window centred on it, upsampled to the frame size and in input
   pixels, as float32 (no 8-bit compression).

:func:`run_train_flow` is the workflow entry point; :func:`load_flow_generator`
reads its checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sipec_models.flow_loss import (
    FlowLossConfig, flow_loss, l2sp, l2sp_reference, output_sizes, resize_images, zero_flow_loss,
)
from sipec_models.nets.flow import FlowGenerator, build_flow_generator, upsample_flow
from sipec_models.training.config import load_model_config, save_checkpoint, to_dict

#: Checkpoint format tag.
FORMAT = "sipec-deg-flow-1"


# ----------------------------------------------------------------------------- frames


@dataclass
class Clip:
    """Contiguous frames of one video held in memory.

    Attributes:
        video: source path.
        start: index of ``frames[0]`` in the video.
        frames: ``(T, C, H, W)`` uint8 at the network's input size.
    """

    video: str
    start: int
    frames: np.ndarray


def read_video_frames(path: str | os.PathLike, size: Sequence[int], rgb: bool = True, start: int = 0,
                      stop: int | None = None, info=None, chunk: int = 16) -> np.ndarray:
    """Decode frames ``[start, stop)`` and resize them to ``size``.

    Args:
        path: video file (read with :func:`sipec_models.io.video.iter_frames`).
        size: ``(H, W)`` px of the output.
        rgb: 3 colour channels, else 1 grey channel.
        info: :class:`~sipec_models.io.video.VideoInfo` (probed if omitted).
        chunk: frames resized together (memory: ``chunk`` float frames at the source size).

    Returns:
        ``(T, C, H, W)`` uint8.
    """
    from sipec_models.io.video import iter_frames

    H, W = int(size[0]), int(size[1])
    if H < 1 or W < 1:
        raise ValueError(f"input size must be positive, got {list(size)}")
    out, buf = [], []

    def flush():
        x = torch.from_numpy(np.stack(buf)).float()
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
        out.append(resize_images(x, (H, W)).round().clamp(0, 255).to(torch.uint8).numpy())
        buf.clear()

    for frame in iter_frames(path, start, stop, gray=not rgb, info=info):
        buf.append(frame)
        if len(buf) == chunk:
            flush()
    if buf:
        flush()
    if not out:
        return np.zeros((0, 3 if rgb else 1, H, W), np.uint8)
    return np.concatenate(out)


def split_video(n_frames: int, val_fraction: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(train, val)`` frame ranges ``[lo, hi)``: the last ``val_fraction`` of the video is validation."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(val_fraction * n_frames))
    return (0, n_frames - n_val), (n_frames - n_val, n_frames)


def plan_blocks(lo: int, hi: int, budget: int, block: int) -> list[tuple[int, int]]:
    """Frame ranges to read from ``[lo, hi)``: all of it, or evenly spaced blocks totalling about ``budget``."""
    n = hi - lo
    if n <= 0:
        return []
    if n <= budget:
        return [(lo, hi)]
    block = max(1, min(block, budget))
    k = max(1, budget // block)
    starts = np.linspace(lo, hi - block, k).round().astype(int)
    return [(int(s), int(s) + block) for s in starts]


def load_clips(videos: Sequence[str | os.PathLike], size: Sequence[int], rgb: bool, val_fraction: float,
               max_frames: int, block_frames: int) -> tuple[list[Clip], list[Clip]]:
    """Decode the training and validation frames of every video (see :func:`split_video`, :func:`plan_blocks`)."""
    from sipec_models.io.video import probe

    train, val = [], []
    for video in videos:
        info = probe(video)
        (tlo, thi), (vlo, vhi) = split_video(info.n_frames, val_fraction)
        budget_val = int(round(max_frames * val_fraction))
        plan = [("train", r) for r in plan_blocks(tlo, thi, max_frames - budget_val, block_frames)]
        plan += [("val", r) for r in plan_blocks(vlo, vhi, max(1, budget_val), block_frames)]
        if len(plan) == 2 and plan[0][1][1] == plan[1][1][0]:
            # Both splits fit: one sequential decode, cut in memory.
            frames = read_video_frames(video, size, rgb, tlo, vhi, info=info)
            train.append(Clip(str(video), tlo, frames[:thi - tlo]))
            val.append(Clip(str(video), vlo, frames[vlo - tlo:]))
            continue
        for split, (a, b) in plan:
            clip = Clip(str(video), a, read_video_frames(video, size, rgb, a, b, info=info))
            (train if split == "train" else val).append(clip)
    return train, val


def window_index(clips: Sequence[Clip], n_frames: int) -> np.ndarray:
    """``(K, 2)`` int: ``(clip, first frame)`` of every window of ``n_frames`` consecutive frames inside a clip."""
    rows = [(i, s) for i, c in enumerate(clips) for s in range(len(c.frames) - n_frames + 1)]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


def gather_windows(clips: Sequence[Clip], index: np.ndarray, n_frames: int) -> torch.Tensor:
    """``(B, T, C, H, W)`` float in [0, 1] for the windows ``index`` (rows of :func:`window_index`)."""
    x = np.stack([clips[int(c)].frames[int(s):int(s) + n_frames] for c, s in index])
    return torch.from_numpy(x).float().div_(255.0)


def channel_stats(clips: Sequence[Clip], max_frames: int = 2000) -> tuple[list[float], list[float]]:
    """Channel means and standard deviations of the frames in [0, 1] (evenly sampled, at most ``max_frames``)."""
    frames = np.concatenate([c.frames for c in clips])
    if len(frames) > max_frames:
        frames = frames[np.linspace(0, len(frames) - 1, max_frames).round().astype(int)]
    x = torch.from_numpy(frames).float().div_(255.0)
    mean = x.mean((0, 2, 3))
    std = x.std((0, 2, 3)).clamp(min=1e-3)
    return mean.tolist(), std.tolist()


def motion_maps(clip: Clip, pool: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Per frame pair ``(k, k + 1)`` of a clip: motion energy and where it peaks.

    Returns:
        ``energy`` ``(T - 1,)``: mean absolute frame difference (intensity 0-1);
        ``centre`` ``(T - 1, 2)`` int: ``(row, col)`` px of the maximum of the
        difference box-filtered over ``pool`` x ``pool`` px (the moving animal).
    """
    f = torch.from_numpy(clip.frames).float().div_(255.0)
    if len(f) < 2:
        return np.zeros(0), np.zeros((0, 2), np.int64)
    d = (f[1:] - f[:-1]).abs().mean(1, keepdim=True)  # (T-1, 1, H, W)
    energy = d.mean((1, 2, 3)).numpy()
    smooth = torch.nn.functional.avg_pool2d(d, pool, stride=1, padding=pool // 2, count_include_pad=False)
    flat = smooth.flatten(1).argmax(1)
    W = d.shape[-1]
    centre = torch.stack([flat // W, flat % W], 1).numpy().astype(np.int64)
    return energy, centre


class WindowSampler:
    """Draws training windows, optionally favouring windows with motion, and crops them.

    With probability ``motion_sampling`` a window is drawn with probability
    proportional to its motion energy (sum over its frame pairs of
    :func:`motion_maps`) and its crop is centred on the motion peak of its
    middle pair (+- a quarter crop of jitter); otherwise the window is uniform
    and the crop uniform (ours: in sparse-motion videos, e.g. one small animal
    in a static arena, almost every uniformly drawn pixel is static and
    training on CPU budgets learns little). ``crop_size`` ``None``: full frames.
    """

    def __init__(self, clips: Sequence[Clip], n_frames: int, motion_sampling: float = 0.0,
                 crop_size: Sequence[int] | None = None, seed: int = 0):
        if not 0 <= motion_sampling <= 1:
            raise ValueError(f"flow.train.motion_sampling must be in [0, 1], got {motion_sampling}")
        self.clips, self.n = list(clips), int(n_frames)
        self.index = window_index(self.clips, self.n)
        self.p_motion = float(motion_sampling)
        self.rng = np.random.default_rng(seed)
        H, W = self.clips[0].frames.shape[-2:]
        self.size = (H, W)
        self.crop = None if crop_size is None else (int(crop_size[0]), int(crop_size[1]))
        if self.crop is not None and not (0 < self.crop[0] <= H and 0 < self.crop[1] <= W):
            raise ValueError(f"flow.augment.crop_size {list(self.crop)} must fit the {H}x{W} frames")
        self.weights = self.centres = None
        if self.p_motion > 0 and len(self.index):
            maps = [motion_maps(c) for c in self.clips]
            energy = np.array([maps[c][0][s:s + self.n - 1].sum() for c, s in self.index])
            total = energy.sum()
            self.weights = energy / total if total > 0 else np.full(len(energy), 1 / len(energy))
            mid = (self.n - 1) // 2
            self.centres = np.array([maps[c][1][s + mid] for c, s in self.index]).reshape(-1, 2)

    def sample(self, batch_size: int) -> torch.Tensor:
        """``(B, T, C, h, w)`` float in [0, 1] (``(h, w)`` = crop size or frame size)."""
        motion = self.rng.random(batch_size) < self.p_motion if self.weights is not None else \
            np.zeros(batch_size, bool)
        uniform = self.rng.integers(len(self.index), size=batch_size)
        weighted = self.rng.choice(len(self.index), size=batch_size, p=self.weights) if motion.any() else uniform
        rows = np.where(motion, weighted, uniform)
        x = gather_windows(self.clips, self.index[rows], self.n)
        if self.crop is None:
            return x
        (H, W), (h, w) = self.size, self.crop
        out = []
        for b, r in enumerate(rows):
            if motion[b]:
                cy = int(self.centres[r][0]) + int(self.rng.integers(-(h // 4), h // 4 + 1))
                cx = int(self.centres[r][1]) + int(self.rng.integers(-(w // 4), w // 4 + 1))
                y0, x0 = int(np.clip(cy - h // 2, 0, H - h)), int(np.clip(cx - w // 2, 0, W - w))
            else:
                y0, x0 = int(self.rng.integers(H - h + 1)), int(self.rng.integers(W - w + 1))
            out.append(x[b, ..., y0:y0 + h, x0:x0 + w])
        return torch.stack(out)


# ----------------------------------------------------------------------------- augmentation


def augment_windows(x: torch.Tensor, cfg: Mapping[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
    """Random flips, rotation, brightness and contrast, the same for every frame of a window.

    Args:
        x: ``(B, T, C, H, W)`` float in [0, 1].
        cfg: ``flow.augment``: ``hflip``, ``vflip`` (probabilities), ``rotation_deg``
            (uniform in [-r, r] degrees), ``brightness`` (factor in [1 - b, 1 + b]),
            ``contrast`` (factor in [1 - c, 1 + c] about the window's mean).

    Returns:
        Tensor of the same shape, clamped to [0, 1].
    """
    if x.ndim != 5:
        raise ValueError(f"windows must be (B, T, C, H, W), got {tuple(x.shape)}")
    B, T, C, H, W = x.shape
    g = generator

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(B, generator=g)).to(x.device)

    def coin(p: float) -> torch.Tensor:
        return (torch.rand(B, generator=g) < p).to(x.device).view(B, 1, 1, 1, 1)

    if float(cfg.get("hflip", 0)) > 0:
        x = torch.where(coin(float(cfg["hflip"])), x.flip(-1), x)
    if float(cfg.get("vflip", 0)) > 0:
        x = torch.where(coin(float(cfg["vflip"])), x.flip(-2), x)
    r = float(cfg.get("rotation_deg", 0))
    if r > 0:
        a = uniform(-r, r) * (math.pi / 180)
        cos, sin = torch.cos(a), torch.sin(a)
        zero = torch.zeros_like(a)
        # Rotation in pixel space expressed in normalised coordinates (non-square frames stay undistorted).
        theta = torch.stack([torch.stack([cos, -sin * H / W, zero], -1),
                             torch.stack([sin * W / H, cos, zero], -1)], 1)
        grid = torch.nn.functional.affine_grid(theta, (B, T * C, H, W), align_corners=False)
        x = torch.nn.functional.grid_sample(x.reshape(B, T * C, H, W), grid, mode="bilinear",
                                            padding_mode="border", align_corners=False).reshape(B, T, C, H, W)
    b = float(cfg.get("brightness", 0))
    if b > 0:
        x = x * uniform(1 - b, 1 + b).view(B, 1, 1, 1, 1)
    c = float(cfg.get("contrast", 0))
    if c > 0:
        mean = x.mean((1, 2, 3, 4), keepdim=True)
        x = (x - mean) * uniform(1 - c, 1 + c).view(B, 1, 1, 1, 1) + mean
    return x.clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- training


def _cfg(cfg: DictConfig | Mapping[str, Any] | None) -> DictConfig:
    if cfg is None:
        return load_model_config("deepethogram")
    return cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def evaluate(model: FlowGenerator, clips: Sequence[Clip], index: np.ndarray, loss_cfg: FlowLossConfig,
             batch_size: int = 8, zero_flow: bool = False) -> dict[str, float]:
    """Mean loss components over the windows ``index`` (eval mode; ``zero_flow``: the zero-flow baseline)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums: dict[str, float] = {}
    n = 0
    for i in range(0, len(index), batch_size):
        x = gather_windows(clips, index[i:i + batch_size], model.n_frames).to(device)
        if zero_flow:
            losses = zero_flow_loss(x, output_sizes(x.shape[-2:], model.scales), loss_cfg)
        else:
            losses = flow_loss(x, model(x.transpose(1, 2)), loss_cfg)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(x)
        n += len(x)
    model.train(was_training)
    return {k: v / max(n, 1) for k, v in sums.items()}


def _even_subset(index: np.ndarray, k: int) -> np.ndarray:
    if len(index) <= k:
        return index
    return index[np.linspace(0, len(index) - 1, k).round().astype(int)]


def checkpoint_payload(model: FlowGenerator, cfg: DictConfig | Mapping[str, Any], input_size: Sequence[int],
                       extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict: format, arch, sizes, input statistics, state dict, config, plus ``extra``."""
    return {
        "format": FORMAT,
        "arch": model.arch,
        "in_channels": model.in_channels,
        "n_frames": model.n_frames,
        "input_size": [int(v) for v in input_size],
        "input_mean": model.input_mean.tolist(),
        "input_std": model.input_std.tolist(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "config": to_dict(cfg),
        **dict(extra or {}),
    }


def train_flow_generator(train_clips: Sequence[Clip], val_clips: Sequence[Clip],
                         cfg: DictConfig | Mapping[str, Any] | None = None, out: str | os.PathLike | None = None,
                         progress: bool = True, device: str | torch.device | None = None,
                         extra: Mapping[str, Any] | None = None) -> tuple[FlowGenerator, dict]:
    """Train a flow generator on in-memory clips; keep the best epoch.

    Args:
        train_clips, val_clips: frames ``(T, C, H, W)`` uint8 (:func:`load_clips`);
            all the same ``C``, ``H``, ``W``. ``val_clips`` may be empty (then
            the last epoch is kept).
        cfg: the full ``deepethogram`` config (its ``flow`` and ``seed`` are used).
        out: when given, the best epoch's checkpoint is written here (atomically)
            each time the validation loss improves.
        progress: tqdm bar per epoch.
        device: torch device (default: CUDA when available, else CPU).
        extra: more entries for the checkpoint payload (e.g. videos, splits).

    Returns:
        ``(model, history)``: the model (eval mode, best weights, on ``device``)
        and ``{"epochs": [...], "best_epoch", "best_val_loss", "zero_flow_val",
        "n_train_windows", "n_val_windows", "train_seconds"}``; each epoch
        entry holds ``epoch`` (1-based), ``lr``, ``train`` (mean components
        of the epoch's training batches, ``l2sp`` included) and ``val``.

    Raises:
        ValueError: no training window, mismatched frame shapes.
    """
    from tqdm.auto import tqdm

    cfg = _cfg(cfg)
    fc = cfg.flow
    tr = fc.train
    n_frames = int(fc.n_frames)
    shapes = {c.frames.shape[1:] for c in list(train_clips) + list(val_clips) if len(c.frames)}
    if len(shapes) > 1:
        raise ValueError(f"all clips must share (C, H, W); got {sorted(shapes)}")
    train_index = window_index(train_clips, n_frames)
    if not len(train_index):
        raise ValueError(f"no training window of {n_frames} consecutive frames: the videos are too short "
                         f"(or data.val_fraction too large)")
    val_index = _even_subset(window_index(val_clips, n_frames), int(tr.val_windows))
    C, H, W = next(iter(shapes))
    for key in ("epochs", "steps_per_epoch", "batch_size"):
        if int(tr[key]) < 1:
            raise ValueError(f"flow.train.{key} must be >= 1, got {tr[key]}")
    device = _device(device)
    seed = int(tr.seed) + int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)

    model = build_flow_generator(fc, C)
    mean, std = channel_stats(train_clips)
    model.set_input_stats(mean, std)
    model.to(device).train()
    loss_cfg = FlowLossConfig.from_cfg(fc)
    reference = l2sp_reference(model)
    opt = torch.optim.Adam(model.parameters(), lr=float(tr.lr))
    bs, steps = int(tr.batch_size), int(tr.steps_per_epoch)
    schedule = str(tr.get("lr_schedule", "plateau"))
    if schedule == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=float(tr.lr_factor),
                                                           patience=int(tr.lr_patience))
    elif schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, int(tr.epochs) * steps),
                                                           eta_min=float(tr.min_lr))
    else:
        raise ValueError(f"flow.train.lr_schedule must be 'plateau' or 'cosine', got {schedule!r}")
    aug = to_dict(fc.augment)
    crop = aug.pop("crop_size", None)
    m = model.size_multiple
    for side in [H, W] + list(crop or []):
        if int(side) % m:
            raise ValueError(f"{model.arch} needs frame and crop sizes that are multiples of {m} px; got frames "
                             f"{H}x{W}, flow.augment.crop_size {crop} (set data.input_size / crop_size)")
    sampler = WindowSampler(train_clips, n_frames, float(tr.get("motion_sampling", 0.0)), crop, seed)
    zero_val = evaluate(model, val_clips, val_index, loss_cfg, bs, zero_flow=True) if len(val_index) else None

    history: dict[str, Any] = {"epochs": [], "best_epoch": None, "best_val_loss": None, "zero_flow_val": zero_val,
                               "n_train_windows": int(len(train_index)), "n_val_windows": int(len(val_index))}
    best_state, best = None, math.inf
    t_start = time.perf_counter()
    for epoch in range(1, int(tr.epochs) + 1):
        sums: dict[str, float] = {}
        bar = tqdm(range(steps), desc=f"flow {model.arch} epoch {epoch}/{int(tr.epochs)}", disable=not progress,
                   leave=False, dynamic_ncols=True)
        for _ in bar:
            x = augment_windows(sampler.sample(bs).to(device), aug, gen)
            losses = flow_loss(x, model(x.transpose(1, 2)), loss_cfg)
            losses["l2sp"] = l2sp(model, reference, loss_cfg.l2sp_alpha)
            loss = losses["total"] + losses["l2sp"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"flow loss became {float(loss)} at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if schedule == "cosine":
                sched.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        bar.close()
        train_mean = {k: v / steps for k, v in sums.items()}
        val = evaluate(model, val_clips, val_index, loss_cfg, bs) if len(val_index) else None
        score = val["total"] if val is not None else train_mean["total"]
        lr = opt.param_groups[0]["lr"]
        history["epochs"].append({"epoch": epoch, "lr": lr, "train": train_mean, "val": val,
                                  "seconds": time.perf_counter() - t_start})
        if progress:
            msg = f"flow epoch {epoch}: train {train_mean['total']:.4f}"
            if val is not None:
                msg += f", val {val['total']:.4f} (zero flow {zero_val['total']:.4f})"
            tqdm.write(msg)
        if score < best or val is None:
            best = score
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            history["best_epoch"], history["best_val_loss"] = epoch, (score if val is not None else None)
            if out is not None:
                save_checkpoint(checkpoint_payload(model, cfg, (H, W), {**dict(extra or {}), "history": history}), out)
        if schedule == "plateau":
            sched.step(score)
        if schedule == "plateau" and opt.param_groups[0]["lr"] < float(tr.min_lr):
            break
    history["train_seconds"] = time.perf_counter() - t_start
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    model.history = history
    model.input_size = (H, W)
    return model, history


def load_flow_generator(path: str | os.PathLike, device: str | torch.device | None = "cpu") -> FlowGenerator:
    """A flow generator from a :func:`run_train_flow` checkpoint, in eval mode.

    The model gets attributes ``input_size`` ``(H, W)`` (the size it was trained
    at: resize frames to it), ``config`` (the full config dict) and ``meta``
    (the rest of the payload: history, videos, ...).

    Raises:
        ValueError: unreadable file or not a flow-generator checkpoint.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read checkpoint ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a flow-generator checkpoint (format {FORMAT!r})")
    cfg_flow = dict(payload["config"]["flow"])
    cfg_flow["arch"], cfg_flow["n_frames"] = payload["arch"], payload["n_frames"]
    model = build_flow_generator(cfg_flow, int(payload["in_channels"]))
    model.load_state_dict(payload["state_dict"])
    model.input_size = tuple(payload["input_size"])
    model.config = payload["config"]
    model.meta = {k: v for k, v in payload.items() if k not in ("state_dict", "config")}
    return model.to(device or "cpu").eval()


# ----------------------------------------------------------------------------- inference


@torch.no_grad()
def flows_for_frames(model: FlowGenerator, frames: torch.Tensor | np.ndarray, start: int = 0,
                     stop: int | None = None, batch_size: int = 8) -> torch.Tensor:
    """Per-frame flow stacks for the flow feature extractor.

    For frame ``t`` the network sees the ``n_frames`` (11) frames centred on
    it, ``t - 5 .. t + 5`` (``(n - 1) // 2`` before, the rest after); indices
    outside ``frames`` are clipped to its first or last frame (edge
    replication: the flows there are near zero). To process a long video in
    chunks, pass each chunk with 5 frames of context on both sides and ask for
    the interior with ``start`` / ``stop``.

    Args:
        model: a flow generator (eval mode is set).
        frames: ``(T, C, H, W)`` float in [0, 1] (uint8 is divided by 255) at the
            size the model was trained on (``model.input_size``); ``H``, ``W``
            multiples of ``model.size_multiple``. ``C = 1`` frames are repeated for
            an RGB model; ``C = 3`` frames are averaged for a grey model.
        start, stop: frames of ``frames`` to return flows for (default: all).
        batch_size: windows per forward pass.

    Returns:
        ``(stop - start, 2 * (n_frames - 1), H, W)`` float32 on the CPU: channels
        ``[dx_0, dy_0, dx_1, dy_1, ...]``, flow ``k`` from window frame ``k`` to
        ``k + 1``, in pixels of ``frames`` (upsampled from the finest output).
    """
    x = torch.as_tensor(frames)
    if x.ndim != 4:
        raise ValueError(f"frames must be (T, C, H, W), got {tuple(x.shape)}")
    x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
    T, C, H, W = x.shape
    if C != model.in_channels:
        if C == 1:
            x = x.expand(T, model.in_channels, H, W)
        elif model.in_channels == 1:
            x = x.mean(1, keepdim=True)
        else:
            raise ValueError(f"frames have {C} channels, the model takes {model.in_channels}")
    stop = T if stop is None else int(stop)
    if not 0 <= start <= stop <= T:
        raise ValueError(f"invalid frame range [{start}, {stop}) for {T} frames")
    model.eval()
    device = next(model.parameters()).device
    n = model.n_frames
    offsets = torch.arange(n) - (n - 1) // 2
    out = torch.zeros((stop - start, model.out_channels, H, W), dtype=torch.float32)
    for i in range(start, stop, batch_size):
        centres = torch.arange(i, min(i + batch_size, stop))
        idx = (centres[:, None] + offsets[None, :]).clamp(0, T - 1)  # (B, n)
        clip = x[idx].to(device).transpose(1, 2)  # (B, C, n, H, W)
        flow = model(clip)[0]
        out[i - start:i - start + len(centres)] = upsample_flow(flow, (H, W)).float().cpu()
    return out


# ----------------------------------------------------------------------------- workflow entry


def run_train_flow(videos: Sequence[str | os.PathLike], out: str | os.PathLike, overrides: Iterable[str] = (),
                   metrics_out: str | os.PathLike | None = None, progress: bool = True,
                   device: str | torch.device | None = None) -> dict[str, Any]:
    """Workflow entry: train the flow generator on ``videos`` (no labels) and save the best checkpoint.

    Args:
        videos: video files; every one is split in time (last ``data.val_fraction`` = validation).
        out: checkpoint path (``.pt``), written atomically at each improvement. Payload:
            ``format``, ``arch``, ``in_channels``, ``n_frames``, ``input_size``,
            ``input_mean``/``input_std``, ``state_dict``, ``config`` (the full
            DeepEthogram config as a dict), ``history`` (per-epoch train and
            validation losses, best epoch, zero-flow validation baseline),
            ``videos``, ``splits``.
        overrides: Hydra overrides of ``config/models/deepethogram.yaml``
            (e.g. ``deg_preset=medium``, ``flow.train.epochs=2``).
        metrics_out: optional JSON with the returned summary.
        progress: tqdm bars.
        device: torch device (default: CUDA when available).

    Returns:
        Summary dict: ``checkpoint``, ``arch``, ``input_size``, ``in_channels``,
        ``best_epoch``, ``best_val_loss``, ``zero_flow_val_loss``,
        ``n_train_windows``, ``n_val_windows``, ``train_seconds``, ``epochs``
        (per-epoch history).
    """
    if not videos:
        raise ValueError("run_train_flow needs at least one video")
    cfg = load_model_config("deepethogram", overrides)
    size = [int(v) for v in cfg.data.input_size]
    if len(size) != 2:
        raise ValueError(f"data.input_size must be [H, W], got {size}")
    tr = cfg.flow.train
    train_clips, val_clips = load_clips(videos, size, bool(cfg.data.rgb), float(cfg.data.val_fraction),
                                        int(tr.max_frames_per_video), int(tr.block_frames))
    splits = [{"video": c.video, "split": s, "start": c.start, "stop": c.start + len(c.frames)}
              for s, cs in (("train", train_clips), ("val", val_clips)) for c in cs]
    extra = {"videos": [str(v) for v in videos], "splits": splits}
    model, history = train_flow_generator(train_clips, val_clips, cfg, out=out, progress=progress, device=device,
                                          extra=extra)
    # Once more with the complete history (training time, later epochs); the weights are the best epoch's.
    save_checkpoint(checkpoint_payload(model, cfg, size, {**extra, "history": history}), out)
    zero = history["zero_flow_val"]
    summary = {
        "checkpoint": str(out), "arch": model.arch, "input_size": size, "in_channels": model.in_channels,
        "best_epoch": history["best_epoch"], "best_val_loss": history["best_val_loss"],
        "zero_flow_val_loss": None if zero is None else zero["total"],
        "n_train_windows": history["n_train_windows"], "n_val_windows": history["n_val_windows"],
        "train_seconds": history["train_seconds"], "epochs": history["epochs"],
    }
    if metrics_out is not None:
        Path(metrics_out).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics_out).write_text(json.dumps(summary, indent=2) + "\n")
    return summary

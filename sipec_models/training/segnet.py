"""Training SegNet (:mod:`sipec_models.nets.segnet`) from a few labelled frames.

Pipeline:

1. Frames ``(N, H, W)`` uint8 and instance masks (``N`` arrays ``(M_n, H, W)``
   bool) are resized by ``data.input_scale`` to network resolution once
   (:func:`prepare`).
2. :class:`CropDataset` draws random square crops (most centred near a
   labelled animal), a little larger than ``data.crop_size`` so that rotation
   leaves no empty corners.
3. On the training device, :func:`build_augment` (kornia) rotates and flips
   image and masks jointly and jitters brightness/contrast; the centre
   ``crop_size`` window is kept; :func:`make_targets` turns the augmented
   masks into the heads' targets.
4. Losses: BCE on the foreground map, CenterNet's penalty-reduced focal loss
   on the centre heatmap, L1 on the offsets at foreground cells.

:func:`train_segnet` runs it for ``train.max_steps`` steps with PyTorch
Lightning; :func:`save_segnet` / :func:`load_segnet` store the weights with
the configuration; :func:`run_train_segnet` is the workflow entry point.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from sipec_models.nets.segnet import STRIDE, SegNet
from sipec_models.training.config import load_model_config, save_checkpoint, to_dict

#: Checkpoint format tag.
FORMAT = "sipec-segnet-1"


def _cfg(cfg: DictConfig | Mapping[str, Any] | None) -> DictConfig:
    if cfg is None:
        return load_model_config("segnet")
    return cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))


def network_size(h: int, w: int, input_scale: float) -> tuple[int, int]:
    """``(Hn, Wn)``: frame size ``(h, w)`` px scaled by ``input_scale`` (rounded, >= 1)."""
    return max(1, int(round(h * input_scale))), max(1, int(round(w * input_scale)))


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, C, H, W)`` float -> ``(B, C, *size)`` (bilinear, anti-aliased when shrinking)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def prepare(images: np.ndarray, masks: Sequence[np.ndarray], input_scale: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Resize frames ``(N, H, W)`` uint8 and masks (``(M_n, H, W)`` bool each) by ``input_scale``."""
    images = np.asarray(images)
    if images.ndim != 3 or len(images) != len(masks):
        raise ValueError(f"images must be (N, H, W) with one mask array per image; got {images.shape} "
                         f"and {len(masks)} mask arrays")
    size = network_size(images.shape[1], images.shape[2], input_scale)
    out_img, out_masks = [], []
    for img, m in zip(images, masks):
        m = np.asarray(m, bool).reshape(-1, *img.shape)
        t = torch.from_numpy(img).float()[None, None]
        out_img.append(resize_images(t, size)[0, 0].round().clamp(0, 255).byte().numpy())
        if len(m):
            mm = resize_images(torch.from_numpy(m).float()[None], size)[0] > 0.5
            out_masks.append(mm.numpy())
        else:
            out_masks.append(np.zeros((0,) + size, bool))
    return np.stack(out_img), out_masks


class CropDataset(torch.utils.data.Dataset):
    """Random training crops: item ``i`` is ``(image (1, C, C) float in [0, 1], masks (M, C, C) float)``.

    ``C`` = ``ceil(crop_size * sqrt(2))`` rounded up to even (room for
    rotation). Crops are centred near a random animal's pixel with
    probability ``animal_crop_prob``, else uniformly. Parts outside the
    frame are filled with the frame's median grey (no mask). Deterministic
    in ``(seed, i)``.
    """

    def __init__(self, images: np.ndarray, masks: Sequence[np.ndarray], crop_size: int, length: int,
                 animal_crop_prob: float = 0.8, seed: int = 0):
        self.images, self.masks = images, list(masks)
        self.crop = crop_size
        self.big = int(math.ceil(crop_size * math.sqrt(2) / 2)) * 2
        self.length, self.p, self.seed = length, animal_crop_prob, seed
        self.fill = [float(np.median(im)) for im in images]
        self.pixels = [np.argwhere(m.any(0)) if len(m) else np.zeros((0, 2), int) for m in self.masks]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        rng = np.random.default_rng((self.seed, i))
        n = int(rng.integers(len(self.images)))
        img, m = self.images[n], self.masks[n]
        H, W = img.shape
        if len(self.pixels[n]) and rng.random() < self.p:
            cy, cx = self.pixels[n][rng.integers(len(self.pixels[n]))]
            cy += rng.integers(-self.crop // 4, self.crop // 4 + 1)
            cx += rng.integers(-self.crop // 4, self.crop // 4 + 1)
        else:
            cy, cx = rng.integers(H), rng.integers(W)
        C = self.big
        y0, x0 = int(cy) - C // 2, int(cx) - C // 2
        out_img = np.full((C, C), self.fill[n], np.float32)
        out_m = np.zeros((len(m), C, C), np.float32)
        sy0, sx0, sy1, sx1 = max(0, y0), max(0, x0), min(H, y0 + C), min(W, x0 + C)
        if sy1 > sy0 and sx1 > sx0:
            out_img[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[sy0:sy1, sx0:sx1]
            out_m[:, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = m[:, sy0:sy1, sx0:sx1]
        return torch.from_numpy(out_img / 255.0)[None], torch.from_numpy(out_m)


def collate(items):
    """Stack crops; pad each sample's masks to the batch's largest instance count with empty masks."""
    images = torch.stack([im for im, _ in items])
    n = max(1, max(m.shape[0] for _, m in items))
    C = images.shape[-1]
    masks = torch.zeros((len(items), n, C, C))
    for b, (_, m) in enumerate(items):
        masks[b, :m.shape[0]] = m
    return images, masks


def build_augment(cfg: Mapping[str, Any]):
    """kornia ``AugmentationSequential`` over ``(image, mask)``: rotation, flips, brightness, contrast."""
    import kornia.augmentation as K

    ops = []
    if cfg.get("rotation_deg", 0):
        ops.append(K.RandomRotation(degrees=float(cfg["rotation_deg"]), p=1.0))
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
    return K.AugmentationSequential(*ops, data_keys=["input", "mask"])


def make_targets(masks: torch.Tensor, center_sigma: float = 0.15, min_sigma_px: float = 4.0) -> dict[str, torch.Tensor]:
    """Head targets from instance masks.

    Args:
        masks: ``(B, M, H, W)`` bool/float instance masks at network-input
            resolution (``H``, ``W`` multiples of ``STRIDE``); empty masks are padding.
        center_sigma: Gaussian sigma as a fraction of ``sqrt(area)`` (px).
        min_sigma_px: lower bound of sigma, px.

    Returns:
        ``fg`` ``(B, 1, h, w)`` fraction of each output cell covered by
        animals; ``center`` ``(B, 1, h, w)`` max over animals of a Gaussian
        (peak exactly 1 at the cell holding the animal's centre of mass);
        ``offset`` ``(B, 2, h, w)`` ``(dx, dy)`` in cells from each cell's
        centre to the centre of mass of the animal covering most of it;
        ``offset_weight`` ``(B, 1, h, w)`` 1 where cells are >= half foreground.
    """
    masks = (masks > 0.5).float()
    B, M, H, W = masks.shape
    h, w = H // STRIDE, W // STRIDE
    frac = F.avg_pool2d(masks, STRIDE)  # (B, M, h, w)
    fg = frac.sum(1, keepdim=True).clamp(max=1.0)
    area = masks.sum((2, 3))  # (B, M) px
    valid = area > 0
    xs = torch.arange(W, device=masks.device, dtype=torch.float32)
    ys = torch.arange(H, device=masks.device, dtype=torch.float32)
    safe = area.clamp(min=1)
    com_x = (masks.sum(2) * xs).sum(-1) / safe  # (B, M) px
    com_y = (masks.sum(3) * ys).sum(-1) / safe
    gx = (com_x - (STRIDE - 1) / 2) / STRIDE  # cells
    gy = (com_y - (STRIDE - 1) / 2) / STRIDE
    jj = torch.arange(w, device=masks.device, dtype=torch.float32).view(1, 1, 1, w)
    ii = torch.arange(h, device=masks.device, dtype=torch.float32).view(1, 1, h, 1)
    rx = gx.round().clamp(0, w - 1)[..., None, None]
    ry = gy.round().clamp(0, h - 1)[..., None, None]
    sigma = torch.clamp(center_sigma * area.sqrt(), min=min_sigma_px)[..., None, None] / STRIDE
    gauss = torch.exp(-((jj - rx) ** 2 + (ii - ry) ** 2) / (2 * sigma ** 2)) * valid[..., None, None]
    center = gauss.max(1, keepdim=True).values if M else torch.zeros_like(fg)
    owner = frac.argmax(1)  # (B, h, w)
    dx = torch.gather(gx, 1, owner.view(B, -1)).view(B, h, w) - jj.view(1, 1, w)
    dy = torch.gather(gy, 1, owner.view(B, -1)).view(B, h, w) - ii.view(1, h, 1)
    offset = torch.stack([dx, dy], 1)
    weight = (fg >= 0.5).float()
    return {"fg": fg, "center": center, "offset": offset * weight, "offset_weight": weight}


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (Zhou et al. 2019), summed and divided by the number of peaks."""
    logp, log1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = logp.exp()
    pos = (target >= 1.0 - 1e-6).float()
    pos_loss = pos * (1 - p) ** alpha * logp
    neg_loss = (1 - pos) * (1 - target) ** beta * p ** alpha * log1mp
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def segnet_losses(out: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                  cfg: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``fg`` (BCE), ``center`` (focal), ``offset`` (L1 on foreground cells, cells) and weighted ``total``."""
    fg = F.binary_cross_entropy_with_logits(out["fg"], targets["fg"])
    center = focal_loss(out["center"], targets["center"])
    wgt = targets["offset_weight"]
    offset = (torch.abs(out["offset"] - targets["offset"]) * wgt).sum() / (2 * wgt.sum()).clamp(min=1)
    total = float(cfg["loss_fg"]) * fg + float(cfg["loss_center"]) * center + float(cfg["loss_offset"]) * offset
    return {"fg": fg, "center": center, "offset": offset, "total": total}


def build_model(cfg: DictConfig | Mapping[str, Any], pretrained: bool | None = None) -> SegNet:
    m = cfg["model"]
    return SegNet(width=int(m["width"]), head_width=int(m["head_width"]),
                  pretrained=bool(m["pretrained"]) if pretrained is None else pretrained)


class SegNetModule(pl.LightningModule):
    """Lightning wrapper: augmentation on the device, targets, losses, AdamW with warm-up + cosine decay."""

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__()
        self.cfg = to_dict(cfg)
        self.net = build_model(self.cfg)
        self.augment = build_augment(self.cfg["augment"])
        self.history: list[dict[str, float]] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        images, masks = batch
        with torch.no_grad():
            if self.augment is not None:
                images, masks = self.augment(images, masks)
            C, S = images.shape[-1], int(self.cfg["data"]["crop_size"])
            o = (C - S) // 2
            images = images[..., o:o + S, o:o + S].clamp(0, 1)
            masks = masks[..., o:o + S, o:o + S]
            t = self.cfg["train"]
            targets = make_targets(masks, float(t["center_sigma"]), float(t["min_sigma_px"]))
        losses = segnet_losses(self.net(images), targets, self.cfg["train"])
        self.history.append({k: float(v.detach()) for k, v in losses.items()})
        return losses["total"]

    def configure_optimizers(self):
        t = self.cfg["train"]
        opt = torch.optim.AdamW(self.net.parameters(), lr=float(t["lr"]), weight_decay=float(t["weight_decay"]))
        warm, total = int(t["warmup_steps"]), max(1, int(t["max_steps"]))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def train_segnet(images: np.ndarray, masks: Sequence[np.ndarray], cfg: DictConfig | Mapping[str, Any] | None = None,
                 progress: bool = True) -> SegNet:
    """Train SegNet on labelled frames.

    Args:
        images: ``(N, H, W)`` uint8 grey frames (original resolution).
        masks: ``N`` arrays ``(M_n, H, W)`` bool, one mask per animal.
        cfg: the ``segnet`` model config (default: ``config/models/segnet.yaml``).
        progress: Lightning progress bar.

    Returns:
        The trained :class:`SegNet` in eval mode on the CPU, with attributes
        ``config`` (plain dict) and ``history`` (per-step losses).
    """
    cfg = to_dict(_cfg(cfg))
    d, t = cfg["data"], cfg["train"]
    if int(d["crop_size"]) % 32:
        raise ValueError(f"data.crop_size must be a multiple of 32, not {d['crop_size']}")
    pl.seed_everything(int(t["seed"]), workers=True, verbose=False)
    imgs, ms = prepare(images, masks, float(d["input_scale"]))
    steps, bs = int(t["max_steps"]), int(t["batch_size"])
    data = CropDataset(imgs, ms, int(d["crop_size"]), steps * bs, float(d["animal_crop_prob"]), int(t["seed"]))
    loader = torch.utils.data.DataLoader(data, batch_size=bs, shuffle=False, num_workers=0, collate_fn=collate)
    module = SegNetModule(cfg)
    trainer = pl.Trainer(max_steps=steps, max_epochs=-1, accelerator="auto", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                         num_sanity_val_steps=0, deterministic=False)
    trainer.fit(module, loader)
    net = module.net.cpu().eval()
    net.config = cfg
    net.history = module.history
    return net


def save_segnet(model: SegNet, path: str | os.PathLike, cfg: DictConfig | Mapping[str, Any] | None = None,
                meta: Mapping[str, Any] | None = None) -> None:
    """Write ``{format, config, state_dict, meta}`` to ``path`` atomically (temp file + rename)."""
    cfg = to_dict(_cfg(cfg)) if cfg is not None else getattr(model, "config", None)
    if cfg is None:
        raise ValueError("save_segnet needs the model's config")
    payload = {"format": FORMAT, "config": cfg, "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
               "meta": dict(meta or {})}
    save_checkpoint(payload, path)


def load_segnet(path: str | os.PathLike, device: str | torch.device | None = None) -> SegNet:
    """Load a :func:`save_segnet` checkpoint: eval-mode :class:`SegNet` with ``config`` and ``meta`` attributes.

    Raises:
        ValueError: not a SegNet checkpoint.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read checkpoint ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a SegNet checkpoint (format {FORMAT!r})")
    model = build_model(payload["config"], pretrained=False)
    model.load_state_dict(payload["state_dict"])
    model.config = payload["config"]
    model.meta = payload.get("meta", {})
    return model.to(device or "cpu").eval()


def run_train_segnet(labels_json: str | os.PathLike, out: str | os.PathLike, video: str | os.PathLike | None = None,
                     image_root: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                     frames: Sequence[int] | None = None, metrics_out: str | os.PathLike | None = None,
                     progress: bool = True) -> SegNet:
    """Workflow entry: train SegNet from a COCO/VIA label file and save the checkpoint.

    Args:
        labels_json: instance-mask labels (:func:`sipec_models.io.masks.load_instance_masks`).
        out: checkpoint path.
        video: read labelled frames from this video by frame index; else
            image files under ``image_root`` (default: the label file's folder).
        overrides: Hydra override strings for ``config/models/segnet.yaml``.
        frames: ``[start, stop)``: only labels whose frame index is in this range.
        metrics_out: JSON with frame counts, training time, final losses, and
            the mask AP@0.5 on ``train.val_fraction`` held-out frames (when > 0).
        progress: progress bar.
    """
    from sipec_models.io.masks import load_instance_masks, read_label_images

    cfg = load_model_config("segnet", overrides)
    labels = load_instance_masks(labels_json)
    if frames is not None:
        lo, hi = frames
        labels = [lf for lf in labels if lf.frame is not None and lo <= lf.frame < hi]
    labels = [lf for lf in labels if len(lf.masks)]
    if not labels:
        raise ValueError(f"{labels_json}: no labelled frames with masks" + (f" in {list(frames)}" if frames else ""))
    images = read_label_images(labels, video=video,
                               image_root=None if video is not None else (image_root or Path(labels_json).parent))
    masks = [lf.masks for lf in labels]
    n_val = int(round(float(cfg.train.val_fraction) * len(labels)))
    rng = np.random.default_rng(int(cfg.train.seed))
    order = rng.permutation(len(labels))
    val, tr = np.sort(order[:n_val]), np.sort(order[n_val:])
    if not len(tr):
        raise ValueError(f"{labels_json}: train.val_fraction leaves no training frames")
    t0 = time.perf_counter()
    model = train_segnet(images[tr], [masks[i] for i in tr], cfg, progress=progress)
    train_s = time.perf_counter() - t0
    meta = {"labels": str(labels_json), "video": None if video is None else str(video),
            "train_frames": [labels[i].frame for i in tr], "val_frames": [labels[i].frame for i in val],
            "train_seconds": train_s}
    save_segnet(model, out, cfg, meta)
    if metrics_out is not None:
        from sipec_models.metrics import average_precision
        from sipec_models.segmentation.segnet import SegNetSegmenter

        hist = model.history[-20:]
        metrics = {"n_train_frames": int(len(tr)), "n_val_frames": int(len(val)), "train_seconds": train_s,
                   "final_losses": {k: float(np.mean([h[k] for h in hist])) for k in hist[0]} if hist else {},
                   "val_mask_ap50": None}
        if len(val):
            seg = SegNetSegmenter(model)
            preds = seg.segment_batch(images[val])
            metrics["val_mask_ap50"] = average_precision(
                [(np.array([i.score for i in p]), np.array([i.full_mask(images.shape[1:]) for i in p]).reshape(
                    -1, *images.shape[1:])) for p in preds], [masks[i] for i in val], 0.5, kind="mask")
        Path(metrics_out).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics_out).write_text(json.dumps(metrics, indent=2))
    return model

"""Training of SIPEC:IdNet: frame network, then recurrent network; checkpoints; the ``train_idnet`` workflow step.

Data flow: identity labels (:mod:`sipec_models.identity`) are matched to the
animal slots of a segmented video store; for each matched (frame, slot) the
sequence of ``2h+1`` crops around it (:func:`collect_sequences`) is cut from
the video frames with the stored masks (dilated more the further a frame is
from the centre) and kept as uint8. The frame network (:class:`DenseNetId`)
trains on the centre crops, the recurrent network (:class:`RecurrentIdNet`)
on whole sequences with the frame network frozen.

Optimisation follows SIPEC's Methods: Adam, weighted cross-entropy (class
weights ``N / (K * n_c)`` from label frequencies), learning-rate schedule
``L_{E+1} = L_E / k^E`` (so ``L_E = L_0 / k^{E(E-1)/2}`` for 0-based epochs
``E``; :func:`lr_factor`), frame network lr 2.5e-4, k 1.5, batch 16;
recurrent lr 5e-5, k 1.25, batch 6. (SIPEC's published code instead divides
the base lr by ``k^E`` with a floor of 1e-7; ``schedule: code`` selects that.)
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm import tqdm

from sipec_models.identity import (
    identities_from_slp, load_identity_table, match_labels_to_slots, resize_crops, sequence_from_windows,
    windows_from_frames,
)
from sipec_models.nets.idnet import DenseNetId, RecurrentIdNet
from sipec_models.training.config import load_model_config, to_dict

log = logging.getLogger(__name__)

#: Floor of the learning rate (SIPEC's code: ``scheduler_lower_lr``).
MIN_LR = 1e-7


# --------------------------------------------------------------------------- crops


@dataclass(frozen=True)
class CropSettings:
    """How crops are made; saved with the model so inference cuts identical crops.

    Attributes:
        window: frame window side, px (None: the store's ``crop_size``).
        out_size: network input side, px.
        half_window: ``h``; sequences of ``2h+1`` frames (0: frame network only).
        dilation_base_px, dilation_step_px: the mask of frame ``t+k`` is
            dilated by ``base + |k| * step`` px.
    """

    window: int | None = 64
    out_size: int = 64
    half_window: int = 2
    dilation_base_px: float = 2.0
    dilation_step_px: float = 3.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CropSettings":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_config(cls, crop_cfg: Mapping[str, Any], store_crop_size: int) -> "CropSettings":
        """From the ``crop`` section of ``config/models/idnet.yaml``; ``window: null`` takes the store's crop side
        ``store_crop_size`` (px)."""
        c = crop_cfg
        return cls(window=int(c["window"] or store_crop_size), out_size=int(c["out_size"]),
                   half_window=int(c["half_window"]), dilation_base_px=float(c["dilation_base_px"]),
                   dilation_step_px=float(c["dilation_step_px"]))


def sequences_from_block(frames: np.ndarray, masks: np.ndarray, origins: np.ndarray,
                         items: Sequence[tuple[int, int]], crop: CropSettings) -> np.ndarray:
    """Sequences of crops for ``items`` from a block of frames with aligned masks.

    Args:
        frames: ``(F, H, W)`` uint8 grey frames.
        masks: ``(F, A, S, S)`` bool mask windows (the store's ``mask`` for these frames).
        origins: ``(F, A, 2)`` window corners ``(x, y)``.
        items: ``(t, slot)`` pairs, ``t`` an index into ``frames`` where the slot has a mask.
        crop: crop settings.

    Returns:
        ``(N, 2h+1, out_size, out_size)`` uint8 (neighbours beyond the block repeat its end frames).
    """
    h = crop.half_window
    n = len(items)
    S = masks.shape[-1]
    out = np.zeros((n, 2 * h + 1, crop.out_size, crop.out_size), np.uint8)
    if not n:
        return out
    slots = sorted({a for _, a in items})
    for a in slots:
        idx = [i for i, (_, s) in enumerate(items) if s == a]
        ts = np.array([items[i][0] for i in idx])
        lo, hi = max(0, ts.min() - h), min(len(frames), ts.max() + h + 1)
        pixels, dist = windows_from_frames(frames[lo:hi], masks[lo:hi, a], origins[lo:hi, a], crop.window or S)
        for i, t in zip(idx, ts):
            seq = sequence_from_windows(pixels, dist, int(t) - lo, h, crop.dilation_step_px, crop.dilation_base_px)
            out[i] = resize_crops(seq, crop.out_size)
    return out


def collect_sequences(video, masks, origins, items: Sequence[tuple[int, int]], crop: CropSettings,
                      frame_offset: int = 0, block: int = 128, info=None, progress: bool = False,
                      n_frames: int | None = None) -> np.ndarray:
    """Sequences of crops for ``items`` (video frame, slot), reading the video block by block.

    Args:
        video: video file.
        masks: ``(T, A, S, S)`` mask windows (numpy or Zarr array) of video frames
            ``frame_offset .. frame_offset + T``.
        origins: ``(T, A, 2)`` window corners.
        items: ``(frame, slot)`` pairs (video frame numbers).
        block: frames decoded at a time (plus ``h`` on each side).
        n_frames: frames available in ``masks`` (default ``len(masks)``); neighbours beyond repeat the end.

    Returns:
        ``(N, 2h+1, out_size, out_size)`` uint8 in the order of ``items``.
    """
    from sipec_models.io.video import probe, read_frames

    info = info or probe(video)
    h = crop.half_window
    T = masks.shape[0] if n_frames is None else n_frames
    out = np.zeros((len(items), 2 * h + 1, crop.out_size, crop.out_size), np.uint8)
    frames_of = np.array([f for f, _ in items], np.int64) - frame_offset
    if np.any((frames_of < 0) | (frames_of >= T)):
        raise ValueError(f"items outside the store's frames [{frame_offset}, {frame_offset + T})")
    blocks = sorted(set((frames_of // block).tolist()))
    for b in tqdm(blocks, disable=not progress, file=sys.stderr, desc="identity crops", unit="block"):
        sel = np.flatnonzero(frames_of // block == b)
        start, stop = b * block, min(T, (b + 1) * block)
        lo, hi = max(0, start - h), min(T, stop + h)
        frames, first = read_frames(video, frame_offset + lo, frame_offset + hi, gray=True, info=info)
        assert first == frame_offset + lo
        m = np.asarray(masks[lo:hi])
        o = np.asarray(origins[lo:hi])
        out[sel] = sequences_from_block(frames, m, o, [(int(frames_of[i] - lo), items[i][1]) for i in sel], crop)
    return out


# --------------------------------------------------------------------------- datasets and augmentation


class SequenceDataset(Dataset):
    """Crop sequences ``(N, T, S, S)`` uint8 and identity indices ``(N,)``.

    ``centre_only=True`` yields ``(1, S, S)`` float crops of the centre frame
    (frame network); otherwise ``(T, 1, S, S)`` float sequences. Values in [0, 1].
    """

    def __init__(self, seq: np.ndarray, label: np.ndarray, centre_only: bool = False):
        self.seq = torch.from_numpy(np.ascontiguousarray(seq))
        self.label = torch.from_numpy(np.asarray(label, np.int64))
        self.centre_only = centre_only

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i):
        s = self.seq[i]
        if self.centre_only:
            return s[s.shape[0] // 2][None].float() / 255.0, self.label[i]
        return s[:, None].float() / 255.0, self.label[i]


class Augment(torch.nn.Module):
    """Random rotation, horizontal and vertical flips (kornia) and brightness/contrast of animal pixels.

    Input ``(B, C, H, W)`` in [0, 1]; all ``C`` channels (for sequences: the
    time steps) get the same transform. Brightness and contrast change only
    non-zero (animal) pixels, so the masked-out background stays 0.
    ``vertical_flip=False`` keeps up and down (side views, where rearing
    is defined by gravity).
    """

    def __init__(self, rotation_deg: float = 180.0, brightness: float = 0.1, contrast: float = 0.2,
                 vertical_flip: bool = True):
        super().__init__()
        import kornia.augmentation as K

        self.geometric = K.AugmentationSequential(
            K.RandomRotation(degrees=rotation_deg, p=1.0),
            K.RandomHorizontalFlip(p=0.5),
            *([K.RandomVerticalFlip(p=0.5)] if vertical_flip else []),
        )
        self.brightness, self.contrast = brightness, contrast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.geometric(x)
        B = x.shape[0]
        b = (torch.rand(B, 1, 1, 1, device=x.device) * 2 - 1) * self.brightness
        c = 1 + (torch.rand(B, 1, 1, 1, device=x.device) * 2 - 1) * self.contrast
        fg = x > 1e-3
        mean = (x * fg).sum(dim=(1, 2, 3), keepdim=True) / fg.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1)
        y = ((x - mean) * c + mean + b).clamp(0, 1)
        return torch.where(fg, y, x)


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Weighted cross-entropy weights ``N / (K * n_c)`` (0 for classes without labels)."""
    counts = np.bincount(np.asarray(labels), minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def lr_factor(epoch: int, k: float, schedule: str = "paper") -> float:
    """Learning-rate multiplier of 0-based epoch ``epoch``.

    ``"paper"``: SIPEC Eq. 2, ``L_{E+1} = L_E / k^E``, hence ``L_E = L_0 / k^{E(E-1)/2}``.
    ``"code"``: SIPEC's published scheduler, ``L_E = L_0 / k^E``.
    """
    if schedule == "paper":
        return float(k ** (-(epoch * (epoch - 1)) / 2))
    if schedule == "code":
        return float(k ** (-epoch))
    raise ValueError(f"schedule must be 'paper' or 'code', not {schedule!r}")


# --------------------------------------------------------------------------- Lightning modules


def _lightning():
    import pytorch_lightning as pl

    return pl


class _IdModule:
    """Shared optimiser/scheduler/metrics code of the two LightningModules (mixin)."""

    def _configure(self, params):
        opt = torch.optim.Adam(params, lr=self.lr)
        k, schedule, lr0 = self.k, self.schedule, self.lr
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda e: max(lr_factor(e, k, schedule), MIN_LR / lr0))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def _step(self, batch, train: bool):
        x, y = batch
        if train and self.augment is not None:
            x = self._augment(x)
        logits = self.net.forward_features(x) if getattr(self, "on_features", False) else self.net(x)
        loss = F.cross_entropy(logits, y, weight=self.weights.to(logits.device))
        acc = (logits.argmax(1) == y).float().mean()
        prefix = "train" if train else "val"
        self.log(f"{prefix}_loss", loss, prog_bar=False, on_epoch=True, on_step=False, batch_size=len(y))
        self.log(f"{prefix}_acc", acc, prog_bar=True, on_epoch=True, on_step=False, batch_size=len(y))
        return loss


def make_modules():
    """The LightningModule classes (built lazily so importing this module stays light)."""
    pl = _lightning()

    class FrameIdModule(_IdModule, pl.LightningModule):
        """Frame network training: weighted cross-entropy, Adam, SIPEC schedule, kornia augmentation."""

        def __init__(self, net: DenseNetId, weights: torch.Tensor, lr: float, k: float, schedule: str = "paper",
                     augment: Augment | None = None):
            super().__init__()
            self.net, self.lr, self.k, self.schedule, self.augment = net, lr, k, schedule, augment
            self.register_buffer("weights", weights)

        def _augment(self, x):
            return self.augment(x)

        def training_step(self, batch, batch_idx):
            return self._step(batch, True)

        def validation_step(self, batch, batch_idx):
            self._step(batch, False)

        def configure_optimizers(self):
            return self._configure(self.net.parameters())

    class RecurrentIdModule(_IdModule, pl.LightningModule):
        """Recurrent network training: frame network frozen; same loss, SIPEC recurrent lr and k."""

        def __init__(self, net: RecurrentIdNet, weights: torch.Tensor, lr: float, k: float,
                     schedule: str = "paper", augment: Augment | None = None, on_features: bool = False):
            super().__init__()
            self.net, self.lr, self.k, self.schedule, self.augment = net, lr, k, schedule, augment
            self.on_features = on_features  # batches hold precomputed frame features (B, T, n_features)
            self.register_buffer("weights", weights)

        def _augment(self, x):
            B, T = x.shape[:2]  # (B, T, 1, H, W): time steps as channels, one transform per sequence
            return self.augment(x[:, :, 0]).reshape(B, T, 1, *x.shape[-2:])

        def training_step(self, batch, batch_idx):
            return self._step(batch, True)

        def validation_step(self, batch, batch_idx):
            self._step(batch, False)

        def configure_optimizers(self):
            return self._configure([p for p in self.net.parameters() if p.requires_grad])

    return FrameIdModule, RecurrentIdModule


def _fit(module, train: Dataset, val: Dataset | None, batch_size: int, epochs: int, seed: int) -> dict:
    pl = _lightning()

    class _EpochLog(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            m = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            log.info("%s epoch %d/%d done (lr now %.3g) %s", type(pl_module).__name__,
                     trainer.current_epoch + 1, epochs, lr, m)
    g = torch.Generator().manual_seed(seed)
    train_dl = DataLoader(train, batch_size=batch_size, shuffle=True, generator=g, drop_last=len(train) > batch_size)
    val_dl = DataLoader(val, batch_size=max(64, batch_size)) if val is not None and len(val) else None
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         deterministic=False, callbacks=[_EpochLog()])
    with warnings.catch_warnings():
        # Intentional: the frozen frame network stays in eval mode; no SLURM launcher; no validation set.
        for msg in (".*module\\(s\\) in eval mode.*", ".*srun.*", ".*val_dataloader.*", ".*LeafSpec.*"):
            warnings.filterwarnings("ignore", message=msg)
        trainer.fit(module, train_dl, val_dl)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


# --------------------------------------------------------------------------- training


@dataclass
class IdData:
    """Training material: ``seq (N, 2h+1, S, S)`` uint8 crops and ``label (N,)`` identity indices."""

    seq: np.ndarray
    label: np.ndarray


def _frame_net_kwargs(cfg: Mapping[str, Any], n_classes: int) -> dict:
    f = cfg["frame_net"]
    return dict(n_classes=n_classes, in_channels=1, growth=int(f["growth"]), block_layers=tuple(f["block_layers"]),
                init_features=int(f["init_features"]), bn_size=int(f["bn_size"]),
                compression=float(f["compression"]), dropout=float(f["dropout"]))


def _recurrent_kwargs(cfg: Mapping[str, Any], n_classes: int) -> dict:
    r = cfg["recurrent"]
    return dict(n_classes=n_classes, hidden=int(r["hidden"]), gru_layers=int(r["layers"]),
                bidirectional=bool(r["bidirectional"]), alpha=float(r["alpha"]), dropout=float(r["dropout"]))


def train_idnet(train: IdData, names: Sequence[str], cfg: Mapping[str, Any] | None = None,
                val: IdData | None = None) -> tuple[DenseNetId, RecurrentIdNet | None, dict]:
    """Train the frame network, then (``crop.half_window > 0``) the recurrent network.

    Args:
        train: crop sequences and identity indices (into ``names``).
        names: identity names ``K``.
        cfg: the ``idnet`` model config (plain dict or DictConfig; default: ``config/models/idnet.yaml``).
        val: optional held-out data, for the reported accuracies.

    Returns:
        ``(frame_net, recurrent_net or None, metrics)``; networks in eval mode.
    """
    cfg = to_dict(cfg if cfg is not None else load_model_config("idnet"))
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    np.random.seed(seed)
    tr, rt = cfg["train"], cfg["recurrent_train"]
    if int(tr.get("num_threads", 0)):
        torch.set_num_threads(int(tr["num_threads"]))
    K = len(names)
    weights = class_weights(train.label, K) if tr.get("weighted_loss", True) else torch.ones(K)
    FrameIdModule, RecurrentIdModule = make_modules()
    aug = Augment(tr["rotation_deg"], tr["brightness"], tr["contrast"])
    frame_net = DenseNetId(**_frame_net_kwargs(cfg, K))
    metrics: dict[str, Any] = {"n_train": int(len(train.label)), "n_val": int(len(val.label)) if val else 0,
                               "train_label_counts": np.bincount(train.label, minlength=K).tolist()}
    module = FrameIdModule(frame_net, weights, float(tr["lr"]), float(tr["k"]), tr.get("schedule", "paper"),
                           aug if tr.get("augment", True) else None)
    m = _fit(module, SequenceDataset(train.seq, train.label, True),
             SequenceDataset(val.seq, val.label, True) if val else None,
             int(tr["batch_size"]), int(tr["epochs"]), seed)
    metrics["frame"] = m
    frame_net.eval()
    recurrent = None
    if train.seq.shape[1] > 1 and int(rt["epochs"]) > 0:
        recurrent = RecurrentIdNet(frame_net, **_recurrent_kwargs(cfg, K))
        augment = bool(rt.get("augment", True))
        if augment:
            data = SequenceDataset(train.seq, train.label)
            vdata = SequenceDataset(val.seq, val.label) if val else None
        else:
            # Without augmentation the frozen frame network's features are fixed: compute them once.
            data = TensorDataset(frame_features(frame_net, train.seq), torch.from_numpy(train.label.astype(np.int64)))
            vdata = (TensorDataset(frame_features(frame_net, val.seq), torch.from_numpy(val.label.astype(np.int64)))
                     if val else None)
        module = RecurrentIdModule(recurrent, weights, float(rt["lr"]), float(rt["k"]), rt.get("schedule", "paper"),
                                   aug if augment else None, on_features=not augment)
        m = _fit(module, data, vdata, int(rt["batch_size"]), int(rt["epochs"]), seed)
        metrics["recurrent"] = m
        recurrent.eval()
    return frame_net, recurrent, metrics


@torch.inference_mode()
def frame_features(frame_net: DenseNetId, seq: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """``(N, T, n_features)`` frame-network features of crop sequences ``(N, T, S, S)`` uint8."""
    frame_net.eval()
    N, T = seq.shape[:2]
    out = []
    flat = seq.reshape(N * T, 1, *seq.shape[2:])
    for i in range(0, len(flat), batch_size):
        out.append(frame_net.features(torch.from_numpy(np.ascontiguousarray(flat[i:i + batch_size])).float() / 255.0))
    feats = torch.cat(out) if out else torch.zeros(0, frame_net.n_features)
    return feats.reshape(N, T, -1).clone()


@torch.inference_mode()
def predict_proba(frame_net: DenseNetId, recurrent: RecurrentIdNet | None, seq: np.ndarray,
                  batch_size: int = 64, use_recurrent: bool = True) -> np.ndarray:
    """``(N, K)`` identity probabilities of crop sequences ``(N, 2h+1, S, S)`` uint8.

    With ``use_recurrent`` and a recurrent network, the whole sequence is used;
    otherwise the frame network on the centre crop.
    """
    frame_net.eval()
    out = []
    c = seq.shape[1] // 2
    for i in range(0, len(seq), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(seq[i:i + batch_size])).float() / 255.0
        if recurrent is not None and use_recurrent:
            recurrent.eval()
            logits = recurrent(x[:, :, None])
        else:
            logits = frame_net(x[:, c:c + 1])
        out.append(torch.softmax(logits, dim=1).numpy())
    K = frame_net.n_classes
    return np.concatenate(out) if out else np.zeros((0, K), np.float32)


# --------------------------------------------------------------------------- checkpoints


def save_idnet(path: str | os.PathLike, frame_net: DenseNetId, recurrent: RecurrentIdNet | None,
               names: Sequence[str], cfg: Mapping[str, Any], crop: CropSettings,
               metrics: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically: config, identity names, crop settings, both state dicts, metrics."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = to_dict(cfg)
    K = len(names)
    payload = {
        "format": "sipec_models.idnet/1",
        "config": cfg,
        "identity_names": list(names),
        "crop": crop.to_dict(),
        "frame_net_kwargs": _frame_net_kwargs(cfg, K),
        "frame_net": frame_net.state_dict(),
        "recurrent_kwargs": _recurrent_kwargs(cfg, K) if recurrent is not None else None,
        "recurrent": ({k: v for k, v in recurrent.state_dict().items() if not k.startswith("frame_net.")}
                      if recurrent is not None else None),
        "metrics": dict(metrics or {}),
    }
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@dataclass
class IdNetModel:
    """A loaded IdNet: networks (eval mode), identity names, crop settings, config."""

    frame_net: DenseNetId
    recurrent: RecurrentIdNet | None
    names: list[str]
    crop: CropSettings
    config: dict
    metrics: dict


def load_idnet(path: str | os.PathLike, device=None) -> IdNetModel:
    """Load a checkpoint written by :func:`save_idnet` (networks in eval mode on ``device``, default CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: IdNet checkpoint does not exist")
    data = torch.load(path, map_location="cpu", weights_only=False)
    if data.get("format") != "sipec_models.idnet/1":
        raise ValueError(f"{path}: not an IdNet checkpoint (format {data.get('format')!r})")
    frame_net = DenseNetId(**data["frame_net_kwargs"])
    frame_net.load_state_dict(data["frame_net"])
    recurrent = None
    if data.get("recurrent") is not None:
        recurrent = RecurrentIdNet(frame_net, **data["recurrent_kwargs"])
        res = recurrent.load_state_dict(data["recurrent"], strict=False)
        bad = [k for k in res.missing_keys if not k.startswith("frame_net.")] + list(res.unexpected_keys)
        if bad:
            raise ValueError(f"{path}: recurrent network weights do not fit the architecture: {bad[:5]}")
    device = torch.device(device or "cpu")
    frame_net.to(device).eval()
    if recurrent is not None:
        recurrent.to(device).eval()
    return IdNetModel(frame_net, recurrent, list(data["identity_names"]), CropSettings.from_dict(data["crop"]),
                      data["config"], data.get("metrics", {}))


# --------------------------------------------------------------------------- workflow step


def load_labels(path, fmt: str):
    """Identity labels of a source: ``fmt`` ``"table"`` (CSV, :func:`load_identity_table`) or ``"slp"``."""
    if fmt == "table":
        return load_identity_table(path)
    if fmt == "slp":
        return identities_from_slp(path)
    raise ValueError(f"{path}: label format must be 'table' or 'slp', not {fmt!r}")


def source_samples(source: Mapping[str, Any], cfg: Mapping[str, Any]) -> tuple[list[tuple[int, int]], list[str], dict]:
    """Match one source's labels to its store's slots.

    Returns:
        ``(items, identities, stats)``: matched ``(frame, slot)`` pairs, their
        identity names, and counts (labels, matched, in range).
    """
    from sipec_models.io.store import open_store

    store = open_store(source["store"])
    labels = load_labels(source["labels"], source.get("format", "table"))
    frames = source.get("frames")
    if frames is not None:
        labels = labels[(labels["frame"] >= frames[0]) & (labels["frame"] < frames[1])].reset_index(drop=True)
    box, com = store["box"][...], store["com"][...]
    # Only animals whose mask reaches their crop window can give crops (a fragmented detection may not).
    has_mask = store["mask"][...].any(axis=(2, 3))
    box = np.where(has_mask[..., None], box, np.nan)
    slots = match_labels_to_slots(labels, box, com, 0, min_iou=float(cfg["match"]["min_iou"]),
                                  margin=float(cfg["match"]["margin_px"]))
    ok = slots >= 0
    items = [(int(f), int(s)) for f, s in zip(labels["frame"].to_numpy()[ok], slots[ok])]
    stats = {"labels": int(len(labels)), "matched": int(ok.sum())}
    if len(labels) and ok.mean() < 0.5:
        log.warning("%s: only %d of %d labels matched a segmented animal", source["labels"], ok.sum(), len(labels))
    return items, labels["identity"].to_numpy()[ok].tolist(), stats


def run_train_idnet(sources: Iterable[Mapping[str, Any]], out, overrides: Sequence[str] = (),
                    metrics_out=None) -> Path:
    """The ``train_idnet`` workflow step: labels -> matched crops -> frame + recurrent IdNet -> checkpoint ``out``.

    Args:
        sources: dicts ``{video, store, labels, format: "table"|"slp", frames: [start, stop] or None}``;
            ``store`` is the segmented per-video ``<video>.zarr``.
        out: checkpoint path (``.pt``).
        overrides: Hydra overrides of ``config/models/idnet.yaml``.
        metrics_out: optional JSON with sample counts and training/validation accuracies.

    The last ``train.val_fraction`` of each source's labelled frames (a
    contiguous block, so neighbouring frames do not leak) is held out for
    the reported validation accuracy.
    """
    import json

    from sipec_models.inference.ingest import write_json_atomic
    from sipec_models.io.store import open_store

    cfg = to_dict(load_model_config("idnet", overrides))
    sources = list(sources)
    if not sources:
        raise ValueError("run_train_idnet: no sources given")
    per_source, all_names, stats = [], set(), []
    for src in sources:
        items, idents, st = source_samples(src, cfg)
        st["video"] = str(src["video"])
        stats.append(st)
        per_source.append((src, items, idents))
        all_names.update(idents)
    names = sorted(all_names)
    if len(names) < 2:
        raise ValueError(f"need labels of at least 2 identities to train IdNet; found {names}")
    crop = CropSettings.from_config(cfg["crop"], int(open_store(sources[0]["store"]).attrs["crop_size"]))
    index = {n: i for i, n in enumerate(names)}
    tr_seq, tr_lab, va_seq, va_lab = [], [], [], []
    vf = float(cfg["train"]["val_fraction"])
    for src, items, idents in per_source:
        if not items:
            continue
        store = open_store(src["store"])
        seq = collect_sequences(src["video"], store["mask"], store["crop_origin"], items, crop, progress=True,
                                n_frames=int(store.attrs["n_frames"]))
        lab = np.array([index[n] for n in idents], np.int64)
        frames = np.array([f for f, _ in items])
        cut = np.quantile(frames, 1 - vf) if vf > 0 and len(np.unique(frames)) > 10 else np.inf
        held = frames >= cut
        tr_seq.append(seq[~held]), tr_lab.append(lab[~held])
        va_seq.append(seq[held]), va_lab.append(lab[held])
    if not tr_seq:
        raise ValueError("no label matched a segmented animal in any source; check the label positions and frames")
    train = IdData(np.concatenate(tr_seq), np.concatenate(tr_lab))
    val = IdData(np.concatenate(va_seq), np.concatenate(va_lab)) if sum(len(v) for v in va_lab) else None
    frame_net, recurrent, metrics = train_idnet(train, names, cfg, val)
    metrics["sources"] = stats
    metrics["identity_names"] = names
    save_idnet(out, frame_net, recurrent, names, cfg, crop, metrics)
    if metrics_out:
        write_json_atomic(metrics_out, json.loads(json.dumps(metrics, default=float)))
    log.info("IdNet trained on %d crops of %d identities; wrote %s", len(train.label), len(names), out)
    return Path(out)

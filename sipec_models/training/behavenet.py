"""Training of SIPEC:BehaveNet: the frame recognition network, then the temporal convolution network.

Data: per-frame crops of one animal, ``crops (N, S, S)`` (grey) or ``(N, S, S, 3)``
(RGB) uint8, their labels and ``sequence (N,)``: the id of the continuous
piece of video each frame belongs to (a video and animal, or a clip); the
frames of a sequence are consecutive in time and stored in order. Temporal
windows ``[t - n, t + n]`` never cross a sequence border: at its ends the
first or last frame is repeated (:func:`feature_windows`).

Labels: exclusive behaviours ``(N,)`` int class indices (``-1`` unlabelled),
or with ``data.multilabel`` ``(N, K)`` 0/1 (NaN unlabelled).

Stages (SIPEC Methods):

1. The frame network (:class:`~sipec_models.nets.behavenet.XceptionFRN`) is
   trained frame by frame: Adam (lr 3.5e-4), gradient clipping at norm 0.5,
   batch 36, the focal loss (gamma 3, alpha 0.5; :mod:`sipec_models.losses`),
   kornia augmentation.
2. Its classifier is dropped and its weights frozen; its features are
   computed once per frame.
3. The temporal network (:class:`~sipec_models.nets.behavenet.TemporalConvNet`)
   is trained on windows of those features: Adam (lr 1e-4), clipping 0.5,
   batch 16, the same loss.

Each stage keeps the weights of its best epoch by validation macro-F1 (the
last ``data.val_fraction`` of every training sequence, a contiguous block,
is held out for that), or its last epoch without validation frames.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from sipec_models.nets.behavenet import EfficientNetFRN, TemporalConvNet, XceptionFRN
from sipec_models.training.config import load_model_config, save_checkpoint, to_dict

log = logging.getLogger(__name__)

FORMAT = "sipec-behavenet-1"


@dataclass
class BehaviourData:
    """Per-frame crops of animals with behaviour labels.

    Attributes:
        crops: ``(N, S, S)`` or ``(N, S, S, 3)`` uint8.
        labels: ``(N,)`` int (``-1`` unlabelled) or ``(N, K)`` float 0/1 (NaN unlabelled).
        sequence: ``(N,)`` id of each frame's continuous sequence (frames of one sequence consecutive, in order).
        motion: optional ``(N, M)`` float32 motion features of each frame
            (:func:`sipec_models.behaviour_data.com_speed`), given to the
            temporal network beside the frame features when the config's
            ``tcn.motion_input`` is true.
    """

    crops: np.ndarray
    labels: np.ndarray
    sequence: np.ndarray
    motion: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.crops)
        if len(self.labels) != n or len(self.sequence) != n:
            raise ValueError(f"crops, labels and sequence must have one entry per frame: {n}, {len(self.labels)}, "
                             f"{len(self.sequence)}")
        if self.motion is not None and (np.ndim(self.motion) != 2 or len(self.motion) != n):
            raise ValueError(f"motion must be (N, M) with N = {n} frames, got shape {np.shape(self.motion)}")
        _ = sequence_bounds(self.sequence)  # checks that sequences are contiguous

    def subset(self, index: np.ndarray) -> "BehaviourData":
        return BehaviourData(self.crops[index], self.labels[index], self.sequence[index],
                             None if self.motion is None else self.motion[index])


#: Motion features per frame given to the temporal network with ``tcn.motion_input`` (the animal's speed).
MOTION_FEATURES = 1


def motion_width(cfg: Mapping[str, Any]) -> int:
    """``M``: motion features the temporal network of a config takes (0 without ``tcn.motion_input``)."""
    return MOTION_FEATURES if bool(cfg["tcn"].get("motion_input", False)) else 0


def _join_motion(features: torch.Tensor, motion: np.ndarray | None, cfg: Mapping[str, Any]) -> torch.Tensor:
    """Frame features ``(N, F)`` -> ``(N, F + M)`` with the motion features, as the config's TCN expects."""
    m = motion_width(cfg)
    if not m:
        return features
    if motion is None:
        raise ValueError("this BehaveNet's temporal network takes motion features (tcn.motion_input): pass motion")
    motion = torch.as_tensor(np.asarray(motion, np.float32))
    if motion.shape != (len(features), m):
        raise ValueError(f"motion must be ({len(features)}, {m}), got {tuple(motion.shape)}")
    return torch.cat([features, motion.to(features.device, features.dtype)], dim=1)


# --------------------------------------------------------------------------- windows and splits


def sequence_bounds(sequence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(start, stop)`` ``(N,)`` each: the index range of the sequence every frame belongs to.

    Raises:
        ValueError: a sequence id appears in two separate runs (frames of a sequence must be consecutive).
    """
    seq = np.asarray(sequence)
    n = len(seq)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    change = np.flatnonzero(seq[1:] != seq[:-1]) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [n]])
    ids = seq[starts]
    if len(set(ids.tolist())) != len(ids):
        raise ValueError("the frames of each sequence must be consecutive (a sequence id appears in two runs)")
    run = np.repeat(np.arange(len(starts)), stops - starts)
    return starts[run], stops[run]


def window_index(sequence: np.ndarray, half_window: int) -> np.ndarray:
    """``(N, 2n + 1)`` frame indices of ``[t - n, t + n]`` for every frame, clamped to its sequence."""
    start, stop = sequence_bounds(sequence)
    t = np.arange(len(start))[:, None] + np.arange(-half_window, half_window + 1)[None]
    return np.clip(t, start[:, None], stop[:, None] - 1)


def feature_windows(features: torch.Tensor, sequence: np.ndarray, half_window: int) -> torch.Tensor:
    """Frame features ``(N, F)`` -> windows ``(N, 2n + 1, F)`` (ends of a sequence repeat its edge frame)."""
    return features[torch.from_numpy(window_index(sequence, half_window))]


def validation_split(sequence: np.ndarray, fraction: float) -> np.ndarray:
    """``(N,)`` bool: the last ``fraction`` of each sequence (at least one frame when ``fraction > 0``)."""
    start, stop = sequence_bounds(sequence)
    n_val = np.where(fraction > 0, np.maximum(1, np.round((stop - start) * fraction)), 0)
    return np.arange(len(start)) >= stop - n_val


# --------------------------------------------------------------------------- loss and scores


def behaviour_loss(logits: torch.Tensor, target: torch.Tensor, multilabel: bool, gamma: float,
                   alpha: float) -> torch.Tensor:
    """SIPEC's focal loss: multi-class (``target (B,)`` int, -1 ignored) or binary per behaviour (``(B, K)``)."""
    from sipec_models.losses import binary_focal_loss, focal_loss

    if multilabel:
        return binary_focal_loss(logits, target, gamma=gamma, alpha=alpha)
    return focal_loss(logits, target, gamma=gamma, alpha=alpha)


def probabilities(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)


def macro_f1_score(prob: np.ndarray, labels: np.ndarray, multilabel: bool) -> float:
    """Macro F1 over behaviours present in ``labels`` (argmax for exclusive labels, 0.5 threshold otherwise)."""
    from sklearn.metrics import f1_score

    if multilabel:
        keep = np.isfinite(labels).all(1)
        y, p = labels[keep].astype(int), (prob[keep] >= 0.5).astype(int)
        present = y.any(0)
        return float(f1_score(y[:, present], p[:, present], average="macro", zero_division=0)) if present.any() \
            else float("nan")
    keep = labels >= 0
    y, p = labels[keep], prob[keep].argmax(1)
    return float(f1_score(y, p, labels=np.unique(y), average="macro", zero_division=0)) if keep.any() else float("nan")


# --------------------------------------------------------------------------- Lightning


def _module_class():
    import pytorch_lightning as pl

    class BehaviourModule(pl.LightningModule):
        """One stage: ``net`` on batches ``(x, y)``, focal loss, Adam; validation macro-F1 per epoch."""

        def __init__(self, net: torch.nn.Module, lr: float, multilabel: bool, gamma: float, alpha: float,
                     augment: torch.nn.Module | None = None, epoch_callback: Callable[[dict], None] | None = None):
            super().__init__()
            self.net, self.lr, self.multilabel, self.gamma, self.alpha = net, lr, multilabel, gamma, alpha
            self.augment, self.epoch_callback = augment, epoch_callback
            self._val: list[tuple[torch.Tensor, torch.Tensor]] = []
            self.history: list[dict] = []
            self.best_f1, self.best_state = -1.0, None

        def training_step(self, batch, batch_idx):
            x, y = batch
            if self.augment is not None:
                x = self.augment(x)
            loss = behaviour_loss(self.net(x), y, self.multilabel, self.gamma, self.alpha)
            self.log("train_loss", loss, on_epoch=True, on_step=False, batch_size=len(y))
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self._val.append((probabilities(self.net(x), self.multilabel).cpu(), y.cpu()))

        def on_validation_epoch_end(self):
            if not self._val or self.trainer.sanity_checking:
                self._val.clear()
                return
            prob = torch.cat([p for p, _ in self._val]).numpy()
            y = torch.cat([t for _, t in self._val]).numpy()
            self._val.clear()
            f1 = macro_f1_score(prob, y, self.multilabel)
            self.log("val_macro_f1", f1)
            if np.isfinite(f1) and f1 > self.best_f1:
                self.best_f1, self.best_state = f1, copy.deepcopy(self.net.state_dict())
            if self.epoch_callback is not None:
                self.epoch_callback({"epoch": self.current_epoch + 1, "val_macro_f1": f1, "prob": prob, "labels": y})

        def on_train_epoch_end(self):
            m = {k: float(v) for k, v in self.trainer.callback_metrics.items()}
            self.history.append({"epoch": self.current_epoch, **m})
            log.info("%s epoch %d: %s", type(self.net).__name__, self.current_epoch + 1,
                     {k: round(v, 4) for k, v in m.items()})

        def configure_optimizers(self):
            return torch.optim.Adam([p for p in self.net.parameters() if p.requires_grad], lr=self.lr)

    return BehaviourModule


def _fit(net: torch.nn.Module, train: TensorDataset, val: TensorDataset | None, stage: Mapping[str, Any],
         multilabel: bool, loss: Mapping[str, Any], seed: int, augment=None, progress: bool = False,
         epoch_callback: Callable[[dict], None] | None = None) -> list[dict]:
    """Train ``net`` in place; load the best validation epoch's weights. Returns the per-epoch history.

    ``epoch_callback(m)`` is called after every validation epoch with ``m = {epoch (1-based), val_macro_f1,
    prob (V, K) validation probabilities, labels (V,) or (V, K) validation labels}`` (Ray Tune's reports).
    """
    import pytorch_lightning as pl

    module = _module_class()(net, float(stage["lr"]), multilabel, float(loss["gamma"]), float(loss["alpha"]),
                             augment, epoch_callback)
    g = torch.Generator().manual_seed(seed)
    bs = int(stage["batch_size"])
    train_dl = DataLoader(train, batch_size=bs, shuffle=True, generator=g, drop_last=len(train) > bs)
    val_dl = DataLoader(val, batch_size=256) if val is not None and len(val) else None
    trainer = pl.Trainer(max_epochs=int(stage["epochs"]), accelerator="auto", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                         num_sanity_val_steps=0, gradient_clip_val=float(stage["clip_norm"]),
                         gradient_clip_algorithm="norm")
    with warnings.catch_warnings():
        for msg in (".*does not have many workers.*", ".*srun.*", ".*LeafSpec.*", ".*treespec.*",
                    ".*module\\(s\\) in eval mode.*"):
            warnings.filterwarnings("ignore", message=msg)
        trainer.fit(module, train_dl, val_dl)
    net.cpu()
    if module.best_state is not None:
        net.load_state_dict(module.best_state)
    net.eval()
    return module.history + [{"best_val_macro_f1": module.best_f1 if module.best_state is not None else None}]


# --------------------------------------------------------------------------- model


class BehaveNetModel:
    """A trained BehaveNet: frozen frame network, temporal network, behaviour names and config.

    Attributes:
        frame_net: :class:`XceptionFRN` or :class:`EfficientNetFRN` (eval mode).
        tcn: :class:`TemporalConvNet` or None (frame network only: ``tcn_train.epochs: 0``).
        names: ``K`` behaviour names.
        config: the model config (plain dict).
        history: per-stage training histories.
    """

    def __init__(self, frame_net: XceptionFRN | EfficientNetFRN, tcn: TemporalConvNet | None, names: Sequence[str],
                 config: Mapping[str, Any], history: Mapping[str, Any] | None = None):
        self.frame_net, self.tcn = frame_net.eval(), (tcn.eval() if tcn is not None else None)
        self.names, self.config, self.history = list(names), to_dict(config), dict(history or {})

    @property
    def multilabel(self) -> bool:
        return bool(self.config["data"]["multilabel"])

    @property
    def half_window(self) -> int:
        """``n``: frames of context on each side the temporal network needs (0 without it)."""
        return int(self.tcn.half_window) if self.tcn is not None else 0

    def to(self, device) -> "BehaveNetModel":
        self.frame_net.to(device)
        if self.tcn is not None:
            self.tcn.to(device)
        return self

    @torch.inference_mode()
    def frame_features(self, crops: np.ndarray, batch_size: int | None = None) -> torch.Tensor:
        """``(N, F)`` frame-network features of ``(N, S, S[, 3])`` uint8 crops (resized to the model's side)."""
        device = next(self.frame_net.parameters()).device
        bs = int(batch_size or self.config["infer"]["batch_size"])
        out = []
        for s in range(0, len(crops), bs):
            x = crops_to_tensor(crops[s:s + bs], self.config).to(device)
            out.append(self.frame_net.features(x).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.frame_net.num_features)

    @property
    def motion_input(self) -> bool:
        """The temporal network also takes motion features (``tcn.motion_input``)."""
        return self.tcn is not None and motion_width(self.config) > 0

    @torch.inference_mode()
    def predict_proba(self, crops: np.ndarray, sequence: np.ndarray | None = None,
                      motion: np.ndarray | None = None, flip_average: bool | None = None) -> np.ndarray:
        """``(N, K)`` behaviour probabilities of every frame.

        Args:
            crops: ``(N, S, S[, 3])`` uint8 crops in time order.
            sequence: ``(N,)`` sequence ids (default: one sequence). Windows
                repeat a sequence's first and last frame at its ends.
            motion: ``(N, M)`` motion features (needed when :attr:`motion_input`).
            flip_average: average the probabilities of the crops and of their
                left-right mirror images (test-time augmentation; twice the
                frame-network work). Default: the config's ``infer.flip_average``.
        """
        sequence = np.zeros(len(crops), np.int64) if sequence is None else np.asarray(sequence)
        if flip_average is None:
            flip_average = bool(self.config.get("infer", {}).get("flip_average", False))
        p = self.predict_from_features(self.frame_features(crops), sequence, motion)
        if flip_average:
            mirrored = np.asarray(crops)[:, :, ::-1]
            p = 0.5 * (p + self.predict_from_features(self.frame_features(mirrored), sequence, motion))
        return p

    @torch.inference_mode()
    def predict_from_features(self, features: torch.Tensor, sequence: np.ndarray,
                              motion: np.ndarray | None = None) -> np.ndarray:
        """``(N, K)`` probabilities from precomputed frame features ``(N, F)`` (and motion ``(N, M)``)."""
        if self.tcn is None:
            logits = self.frame_net.classifier(features.to(self.frame_net.classifier.weight.device))
        else:
            device = next(self.tcn.parameters()).device
            features = _join_motion(features, motion, self.config)
            wins = feature_windows(features, sequence, self.tcn.half_window)
            logits = torch.cat([self.tcn(wins[s:s + 1024].to(device)).cpu() for s in range(0, len(wins), 1024)]) \
                if len(wins) else torch.zeros(0, len(self.names))
        return probabilities(logits.float().cpu(), self.multilabel).numpy()


def crops_to_tensor(crops: np.ndarray, cfg: Mapping[str, Any]) -> torch.Tensor:
    """``(N, S, S[, 3])`` uint8 -> ``(N, C, s, s)`` float in [0, 1] at the config's ``data.crop_size`` and channels."""
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(crops))
    rgb = bool(cfg["data"]["rgb"])
    if x.ndim == 3:
        x = x[:, None]
        if rgb:
            x = x.expand(-1, 3, -1, -1)
    else:
        x = x.permute(0, 3, 1, 2)
        if not rgb:  # ITU-R BT.601 luma
            x = 0.299 * x[:, 0:1].float() + 0.587 * x[:, 1:2].float() + 0.114 * x[:, 2:3].float()
    x = x.float() / 255.0
    size = int(cfg["data"]["crop_size"])
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def build_frame_net(cfg: Mapping[str, Any], num_classes: int,
                    load_pretrained: bool = True) -> XceptionFRN | EfficientNetFRN:
    """The frame network of a config's ``frame_net`` section.

    ``frame_net.backbone``: ``xception`` (default; SIPEC's network, trained
    from scratch) or ``efficientnet_lite0`` (ImageNet EfficientNet-Lite0,
    its weights loaded when ``frame_net.pretrained`` and ``load_pretrained``:
    checkpoints pass False, their weights replace them; ``frame_net.frozen_blocks``
    leading blocks keep the ImageNet weights).
    """
    fn = cfg["frame_net"]
    backbone = str(fn.get("backbone", "xception"))
    if backbone == "efficientnet_lite0":
        return EfficientNetFRN(num_classes, in_channels=3 if cfg["data"]["rgb"] else 1,
                               pretrained=bool(fn.get("pretrained", True)) and load_pretrained,
                               dropout=float(fn["dropout"]), frozen_blocks=int(fn.get("frozen_blocks", 0)))
    if backbone != "xception":
        raise ValueError(f"frame_net.backbone must be xception or efficientnet_lite0, got {backbone!r}")
    return XceptionFRN(num_classes, in_channels=3 if cfg["data"]["rgb"] else 1, stem_channels=fn["stem_channels"],
                       entry_channels=fn["entry_channels"], middle_blocks=int(fn["middle_blocks"]),
                       exit_channels=fn["exit_channels"], width_mult=float(fn["width_mult"]),
                       dropout=float(fn["dropout"]))


def build_tcn(cfg: Mapping[str, Any], num_features: int, num_classes: int) -> TemporalConvNet:
    """The temporal network of a config's ``tcn`` section."""
    tn = cfg["tcn"]
    return TemporalConvNet(num_features, num_classes, half_window=int(tn["half_window"]), channels=tn["channels"],
                           kernel_size=int(tn["kernel_size"]), dropout=float(tn["dropout"]),
                           input_dropout=float(tn["input_dropout"]))


def _labels_tensor(labels: np.ndarray, multilabel: bool) -> torch.Tensor:
    if multilabel:
        return torch.from_numpy(np.asarray(labels, np.float32))
    return torch.from_numpy(np.asarray(labels, np.int64))


def train_behavenet(data: BehaviourData, names: Sequence[str], cfg: Mapping[str, Any] | None = None,
                    progress: bool = False) -> BehaveNetModel:
    """Train the frame network, then (``tcn_train.epochs > 0``) the temporal network.

    Args:
        data: training crops, labels and sequence ids (the last
            ``data.val_fraction`` of each sequence becomes the validation block).
        names: ``K`` behaviour names (label ``k`` is ``names[k]``).
        cfg: the ``behavenet`` model config (default ``config/models/behavenet.yaml``).
        progress: Lightning progress bars.

    Returns:
        The trained :class:`BehaveNetModel` on the CPU.
    """
    import pytorch_lightning as pl

    cfg = to_dict(cfg if cfg is not None else load_model_config("behavenet"))
    seed = int(cfg.get("seed", 0))
    pl.seed_everything(seed, workers=True, verbose=False)
    multilabel, K = bool(cfg["data"]["multilabel"]), len(names)
    labels = np.asarray(data.labels)
    if multilabel and (labels.ndim != 2 or labels.shape[1] != K):
        raise ValueError(f"multi-label training needs labels (N, {K}), got {labels.shape}")
    if not multilabel and (labels.ndim != 1 or labels.max(initial=-1) >= K):
        raise ValueError(f"exclusive behaviours need labels (N,) in -1..{K - 1}, got shape {labels.shape}, "
                         f"max {labels.max(initial=-1)}")
    is_val = validation_split(data.sequence, float(cfg["data"]["val_fraction"]))
    x = crops_to_tensor(data.crops, cfg)
    y = _labels_tensor(labels, multilabel)
    frame_net = build_frame_net(cfg, K)
    ft = cfg["frame_train"]
    augment = None
    if ft.get("augment", True):
        from sipec_models.training.idnet import Augment

        augment = Augment(float(ft["rotation_deg"]), float(ft["brightness"]), float(ft["contrast"]),
                          vertical_flip=bool(ft.get("vertical_flip", True)))
    train_set = TensorDataset(x[~is_val], y[~is_val])
    val_set = TensorDataset(x[is_val], y[is_val]) if is_val.any() else None
    history = {"frame": _fit(frame_net, train_set, val_set, ft, multilabel, cfg["loss"], seed, augment, progress),
               "n_train": int((~is_val).sum()), "n_val": int(is_val.sum())}
    for p in frame_net.parameters():
        p.requires_grad_(False)
    tcn = None
    if int(cfg["tcn_train"]["epochs"]) > 0:
        feats = _join_motion(BehaveNetModel(frame_net, None, names, cfg).frame_features(data.crops), data.motion, cfg)
        tcn = build_tcn(cfg, frame_net.num_features + motion_width(cfg), K)
        # Windows are cut from each whole sequence, then split: validation windows may look back into
        # training frames (the labels of those frames are not used), as at inference.
        wins = feature_windows(feats, data.sequence, tcn.half_window)
        history["tcn"] = _fit(tcn, TensorDataset(wins[~is_val], y[~is_val]),
                              TensorDataset(wins[is_val], y[is_val]) if is_val.any() else None,
                              cfg["tcn_train"], multilabel, cfg["loss"], seed, None, progress)
    return BehaveNetModel(frame_net, tcn, names, cfg, history)


# --------------------------------------------------------------------------- checkpoints


def save_behavenet(model: BehaveNetModel, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> None:
    """Write weights, config, behaviour names and training history to ``path`` (atomic)."""
    save_checkpoint({
        "format": FORMAT, "config": model.config, "names": model.names, "history": model.history,
        "frame_net": model.frame_net.state_dict(),
        "tcn": model.tcn.state_dict() if model.tcn is not None else None, "meta": dict(meta or {}),
    }, path)


def load_behavenet(path: str | os.PathLike, device: str | torch.device | None = None) -> BehaveNetModel:
    """Load a :func:`save_behavenet` checkpoint (CUDA when available unless ``device`` says otherwise).

    Raises:
        ValueError: naming ``path``: not a BehaveNet checkpoint.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path}: cannot read the BehaveNet checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a BehaveNet checkpoint (format {FORMAT!r})")
    cfg, names = ckpt["config"], ckpt["names"]
    frame_net = build_frame_net(cfg, len(names), load_pretrained=False)
    frame_net.load_state_dict(ckpt["frame_net"])
    tcn = None
    if ckpt["tcn"] is not None:
        tcn = build_tcn(cfg, frame_net.num_features + motion_width(cfg), len(names))
        tcn.load_state_dict(ckpt["tcn"])
    model = BehaveNetModel(frame_net, tcn, names, cfg, ckpt.get("history"))
    model.meta = ckpt.get("meta", {})
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model.to(device)

"""Training the pose-based behaviour classifier (Sturman et al. 2020; SIPEC's baseline) with PyTorch Lightning.

Pipeline:

1. :func:`features_from_keypoints`: per-frame pose features in cm and
   seconds (:func:`sipec_models.pose_features.pose_features`, settings from
   the config's ``features``).
2. :func:`train_pose_classifier`: the features of each frame are stacked
   with those of its neighbours (``features.half_width`` steps each side,
   :func:`~sipec_models.pose_features.stack_window`; windows stop at video
   boundaries). The validation block is the last contiguous
   ``train.val_fraction`` of the frames, taken from the end of the longest
   video (:func:`validation_block`; frames are never shuffled between
   training and validation); training frames whose window reaches into it
   are left out. An MLP (:class:`~sipec_models.nets.pose_mlp.PoseMLP`,
   inputs standardised with the training frames' statistics) is trained
   with Adam on the focal loss (multi-class, or multi-label per behaviour;
   :mod:`sipec_models.losses`), evaluated on the validation block after
   every epoch, stopped early when the monitored score has not improved
   for ``train.patience`` epochs, and the best epoch's weights restored.
3. With ``train.refit``, a fresh network is then trained on every labelled
   frame (validation block included) for the best epoch count.
4. Postprocessing settings, stored with the model. ``postprocess.tune_on:
   validation`` (DeepEthogram): the threshold per behaviour maximising F1
   on the validation block (:func:`sipec_models.ethogram.choose_thresholds`)
   and the minimum bout length per behaviour from the training labels
   (:func:`sipec_models.ethogram.min_bout_lengths`, bouts cut off by a
   video's ends left out). ``tune_on: crossfit``: threshold and minimum
   bout chosen together (:func:`tune_postprocessing`) to maximise F1 of
   out-of-fold predictions of the training frames
   (:func:`crossfit_probs`: ``crossfit_folds`` contiguous time blocks, each
   predicted by a network trained on the others); a validation block of a
   few bouts gives noisy thresholds, the out-of-fold predictions of all
   training bouts steadier ones.

:func:`predict_proba` and :func:`predict_calls` apply a model to the
features of a video; :func:`save_pose_classifier` /
:func:`load_pose_classifier` write and read self-contained checkpoints.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sipec_models.ethogram import binarize, choose_thresholds, min_bout_lengths, remove_short_bouts, run_lengths
from sipec_models.losses import binary_focal_loss, focal_loss
from sipec_models.nets.pose_mlp import PoseMLP
from sipec_models.pose_features import pose_features, stack_window, window_offsets
from sipec_models.training.config import load_model_config, save_checkpoint, to_dict

log = logging.getLogger(__name__)

#: Checkpoint format tag.
FORMAT = "sipec-pose-classifier-1"
#: Threshold grid of the validation F1 (as :func:`~sipec_models.ethogram.choose_thresholds`).
GRID = np.linspace(0.01, 0.99, 99)


def _cfg(cfg: DictConfig | Mapping[str, Any] | None) -> dict[str, Any]:
    if cfg is None:
        return to_dict(load_model_config("pose_classifier"))
    return to_dict(cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg)))


# --------------------------------------------------------------------------- features


def features_from_keypoints(points: np.ndarray, fps: float, px_per_cm: float,
                            cfg: DictConfig | Mapping[str, Any] | None = None,
                            node_names: Sequence[str] | None = None,
                            scores: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """Per-frame pose features of one video with the settings of ``cfg['features']``.

    Args:
        points: ``(T, K, 2)`` keypoints, image px (NaN missing).
        fps: frames per second; px_per_cm: image px per cm.
        cfg: the ``pose_classifier`` config (default: ``config/models/pose_classifier.yaml``).
        node_names: the ``K`` node names (needed when the config names nodes).
        scores: optional ``(T, K)`` detection likelihoods.

    Returns:
        ``(features (T, F) float32, names)``, as :func:`~sipec_models.pose_features.pose_features`.
    """
    f = _cfg(cfg)["features"]
    pairs = f.get("pairs", "all")
    return pose_features(
        points, fps, px_per_cm, node_names, body_axis=tuple(f["body_axis"]), centre=f.get("centre"),
        pairs=pairs if isinstance(pairs, str) or pairs is None else [tuple(p) for p in pairs],
        triplets=[tuple(t) for t in f.get("triplets") or ()], segments=[tuple(s) for s in f.get("segments") or ()],
        speed_window_s=f.get("speed_window_s", 0.1), scores=scores, min_score=float(f.get("min_score", 0.1)),
        max_gap_s=f.get("max_gap_s"), log_offset=f.get("log_offset"), groups=f.get("groups"),
        smooth_s=f.get("smooth_s"))


# --------------------------------------------------------------------------- splits and labels


def validation_block(n: int, val_fraction: float, video_ids: np.ndarray | None = None) -> np.ndarray:
    """The validation frames: the last ``round(val_fraction * n)`` frames of the longest video.

    Args:
        n: number of frames ``T``.
        val_fraction: in ``[0, 1)``.
        video_ids: optional ``(T,)`` video of each frame (the frames of a
            video contiguous); the block is cut from the end of the longest
            video (the first of equally long ones), at most all of it but one frame.

    Returns:
        ``(T,)`` bool mask, one contiguous run of True (none for ``val_fraction = 0``).
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    vid = np.zeros(n, np.int64) if video_ids is None else np.asarray(video_ids)
    if vid.shape != (n,):
        raise ValueError(f"video_ids must be (T,) = ({n},), got {vid.shape}")
    mask = np.zeros(n, bool)
    k = int(round(val_fraction * n))
    if k == 0 or n == 0:
        return mask
    change = np.flatnonzero(vid[1:] != vid[:-1]) + 1
    starts, stops = np.concatenate([[0], change]), np.concatenate([change, [n]])
    longest = int(np.argmax(stops - starts))
    k = min(k, stops[longest] - starts[longest] - 1)
    mask[stops[longest] - k:stops[longest]] = True
    return mask


def _purge(val: np.ndarray, reach: int, video_ids: np.ndarray | None) -> np.ndarray:
    """Training mask: frames not in ``val`` and more than ``reach`` frames from any validation frame of their video."""
    n = len(val)
    near = val.copy()
    if reach > 0 and val.any():
        vid = np.zeros(n, np.int64) if video_ids is None else np.asarray(video_ids)
        idx = np.flatnonzero(val)
        for shift in range(1, reach + 1):
            for j in (idx - shift, idx + shift):
                ok = (j >= 0) & (j < n)
                j, src = j[ok], idx[ok]
                same = vid[j] == vid[src]
                near[j[same]] = True
    return ~near


def _targets(labels: np.ndarray, n: int, multilabel: bool, n_classes: int | None) -> tuple[np.ndarray, int, bool]:
    """``(targets, C, multilabel)``: ``(T,)`` int64 (-1 unlabelled) or ``(T, C)`` float32 (NaN unlabelled)."""
    y = np.asarray(labels)
    if len(y) != n:
        raise ValueError(f"{n} frames of features but {len(y)} of labels")
    if y.ndim == 1:
        yf = y.astype(np.float64)
        if not np.all(yf == np.round(yf)) or (yf < -1).any():
            raise ValueError("(T,) labels must be integer classes >= 0, or -1 for unlabelled frames")
        y = yf.astype(np.int64)
        C = int(n_classes) if n_classes is not None else int(y.max()) + 1
        if C < 1 or y.max() >= C:
            raise ValueError(f"labels hold class {int(y.max())} but there are {C} behaviours")
        if not multilabel:
            return y, C, False
        out = np.full((n, C), np.nan, np.float32)
        ok = y >= 0
        out[ok] = np.eye(C, dtype=np.float32)[y[ok]]
        return out, C, True
    if y.ndim == 2:
        y = y.astype(np.float32)
        ok = np.isfinite(y)
        if not np.isin(y[ok], (0, 1)).all():
            raise ValueError("(T, C) labels must be 0/1, NaN for unlabelled")
        if n_classes is not None and y.shape[1] != n_classes:
            raise ValueError(f"{y.shape[1]} label columns for {n_classes} behaviour names")
        return y, y.shape[1], True
    raise ValueError(f"labels must be (T,) classes or (T, C) 0/1, got shape {y.shape}")


def _one_hot(y: np.ndarray, C: int) -> tuple[np.ndarray, np.ndarray]:
    """``(T, C)`` 0/1 int labels and ``(T,)`` bool: frames fully labelled."""
    if y.ndim == 1:
        ok = y >= 0
        out = np.zeros((len(y), C), np.int64)
        out[ok, y[ok]] = 1
        return out, ok
    ok = np.isfinite(y).all(1)
    return np.nan_to_num(y).astype(np.int64), ok


def _f1_curve(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(G,)`` F1 of calling ``p >= GRID[g]`` against ``(T,)`` bool labels ``y``."""
    called = p[:, None] >= GRID[None, :]
    tp = (called & y[:, None]).sum(0)
    return 2 * tp / np.maximum(called.sum(0) + y.sum(), 1)


def best_f1(probs: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """Per behaviour, the largest F1 over the thresholds :data:`GRID` (NaN for a behaviour without positives).

    Args:
        probs: ``(T, C)`` probabilities; onehot: ``(T, C)`` 0/1 labels.

    Returns:
        ``(C,)`` float.
    """
    out = np.full(probs.shape[1], np.nan)
    for c in range(probs.shape[1]):
        yc = onehot[:, c].astype(bool)
        if yc.any():
            out[c] = _f1_curve(probs[:, c], yc).max()
    return out


def select_thresholds(probs: np.ndarray, onehot: np.ndarray, tolerance: float = 0.0,
                      fixed: float | None = None) -> np.ndarray:
    """Per behaviour, the calling threshold from validation probabilities (DeepEthogram: best F1).

    Args:
        probs: ``(T, C)`` validation probabilities; onehot: ``(T, C)`` 0/1 labels.
        tolerance: 0: :func:`~sipec_models.ethogram.choose_thresholds` (the
            F1-maximising threshold, closest to 0.5 among ties). ``> 0``: the
            threshold closest to 0.5 among those whose F1 is within
            ``tolerance`` of the best, which is steadier when the validation
            block holds few bouts.
        fixed: a threshold used for every behaviour instead (no selection).

    Returns:
        ``(C,)`` float thresholds (0.5 for a behaviour without positive frames).
    """
    C = probs.shape[1]
    if fixed is not None:
        if not 0 <= fixed <= 1:
            raise ValueError(f"a fixed threshold must be in [0, 1], got {fixed}")
        return np.full(C, float(fixed))
    if tolerance < 0:
        raise ValueError(f"threshold tolerance must be >= 0, got {tolerance}")
    if tolerance == 0:
        return choose_thresholds(probs, onehot, GRID)
    out = np.full(C, 0.5)
    order = np.lexsort((GRID, np.round(np.abs(GRID - 0.5), 9)))  # closest to 0.5 first, lower on a tie
    for c in range(C):
        yc = onehot[:, c].astype(bool)
        if yc.any():
            f1 = _f1_curve(probs[:, c], yc)
            out[c] = GRID[order[np.argmax(f1[order] >= f1.max() - tolerance)]]
    return out


def _min_bout_frames(onehot: np.ndarray, quantile: float, video_ids: np.ndarray | None) -> np.ndarray:
    """:func:`~sipec_models.ethogram.min_bout_lengths` of the bouts not cut off by the start or end of a video.

    A bout touching a video's first or last frame may be longer than what
    was labelled (e.g. a training piece ending at a held-out block), so it
    is left out, unless a behaviour has only such bouts.
    """
    n = len(onehot)
    vid = np.zeros(n, np.int64) if video_ids is None else np.asarray(video_ids)
    edge = np.zeros(n, bool)
    edge[[0, n - 1]] = True
    change = np.flatnonzero(vid[1:] != vid[:-1]) + 1
    edge[change] = edge[change - 1] = True
    whole = onehot.copy()
    for c in range(onehot.shape[1]):
        s0, s1 = run_lengths(onehot[:, c] != 0, video_ids)
        cut = edge[s0] | edge[s1 - 1]
        if cut.any() and not cut.all():
            for a, b in zip(s0[cut], s1[cut]):
                whole[a:b, c] = 0
    return min_bout_lengths(whole, quantile, video_ids)


def tune_postprocessing(probs: np.ndarray, onehot: np.ndarray, video_ids: np.ndarray | None,
                        min_frame_candidates: Sequence[int], tolerance: float = 0.0,
                        fixed: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per behaviour, the threshold and minimum bout length maximising F1 of the postprocessed calls.

    Calls are ``prob >= threshold`` with bouts shorter than the minimum
    removed (:func:`~sipec_models.ethogram.remove_short_bouts`), scored
    against the labels frame by frame.

    Args:
        probs: ``(T, C)`` probabilities (e.g. out-of-fold predictions); onehot: ``(T, C)`` 0/1 labels.
        video_ids: optional ``(T,)`` pieces of contiguous frames (bouts stop at their edges).
        min_frame_candidates: minimum bout lengths (frames) to try.
        tolerance: among settings within ``tolerance`` of the best F1, the
            threshold closest to 0.5 wins (then the shorter minimum).
        fixed: a fixed threshold (only the minimum bout length is tuned).

    Returns:
        ``(thresholds (C,), min_frames (C,) int64, f1 (C,))``; a behaviour
        without positive frames gets 0.5 (or ``fixed``), the smallest
        candidate and F1 NaN.
    """
    C = probs.shape[1]
    cands = sorted({max(1, int(v)) for v in min_frame_candidates})
    if not cands:
        raise ValueError("no minimum bout length candidates")
    grid = GRID if fixed is None else np.array([float(fixed)])
    thresholds = np.full(C, 0.5 if fixed is None else float(fixed))
    mins = np.full(C, cands[0], np.int64)
    f1_best = np.full(C, np.nan)
    for c in range(C):
        yc = onehot[:, c].astype(bool)
        if not yc.any():
            continue
        called = probs[:, c, None] >= grid[None, :]  # (T, G)
        rows = []  # (f1, |thr - 0.5|, min frames, threshold)
        for mf in cands:
            kept = remove_short_bouts(called, mf, 0, video_ids) if mf > 1 else called
            tp = (kept & yc[:, None]).sum(0)
            f1 = 2 * tp / np.maximum(kept.sum(0) + yc.sum(), 1)
            rows += [(float(v), abs(float(g) - 0.5), mf, float(g)) for v, g in zip(f1, grid)]
        top = max(r[0] for r in rows)
        best = min((r for r in rows if r[0] >= top - tolerance - 1e-12), key=lambda r: (r[1], r[3], r[2]))
        thresholds[c], mins[c], f1_best[c] = best[3], best[2], best[0]
    return thresholds, mins, f1_best


def crossfit_probs(features: np.ndarray, labels: np.ndarray, cfg: Mapping[str, Any],
                   video_ids: np.ndarray | None, fps: float | None, names: Sequence[str] | None,
                   k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities of the training frames from ``k`` contiguous time blocks.

    Each block is predicted (its windows padded at its own edges) by a
    network trained (:func:`train_pose_classifier`, thresholds from its own
    validation block, no refit) on the frames outside it, less those whose
    window would reach into it.

    Returns:
        ``(probs (T, C) float64, pieces (T,) int64)``: NaN rows where a block
        could not be predicted; ``pieces`` numbers the runs of contiguous
        frames of one block and one video (bouts stop at their edges).
    """
    x = np.asarray(features, np.float32)
    T = len(x)
    if not 2 <= k <= T:
        raise ValueError(f"cannot cut {T} frames into {k} cross-fitting blocks")
    vid = np.zeros(T, np.int64) if video_ids is None else np.unique(np.asarray(video_ids), return_inverse=True)[1]
    inner = dict(cfg)
    inner["postprocess"] = {**cfg["postprocess"], "tune_on": "validation"}
    inner["train"] = {**cfg["train"], "refit": False}
    f = cfg["features"]
    reach = int(np.abs(window_offsets(int(f["half_width"]), f.get("window_s"), fps)).max())
    blocks = np.array_split(np.arange(T), k)
    block_of = np.zeros(T, np.int64)
    for b, idx in enumerate(blocks):
        block_of[idx] = b
    pieces = np.concatenate([[0], np.cumsum((np.diff(block_of) != 0) | (np.diff(vid) != 0))]).astype(np.int64)
    probs = None
    for b, idx in enumerate(blocks):
        test = np.zeros(T, bool)
        test[idx] = True
        train = _purge(test, reach, vid)
        tr = np.flatnonzero(train)
        if len(tr) < 2:
            continue
        # Runs of contiguous training frames of one video become separate "videos" (no window across a gap).
        jumps = np.concatenate([[0], np.cumsum((np.diff(tr) != 1) | (np.diff(vid[tr]) != 0))])
        lab = np.asarray(labels)[tr]
        try:
            model = train_pose_classifier(x[tr], lab, inner, video_ids=jumps, fps=fps, names=names)
        except ValueError as exc:  # e.g. no labelled frames left
            log.warning("cross-fitting block %d/%d skipped: %s", b + 1, k, exc)
            continue
        p = predict_proba(model, x[idx], vid[idx], fps)
        if probs is None:
            probs = np.full((T, p.shape[1]), np.nan)
        probs[idx] = p
    if probs is None:
        raise ValueError("cross-fitting produced no predictions")
    return probs, pieces


def _class_weights(y: np.ndarray, C: int, multilabel: bool) -> torch.Tensor:
    """Inverse label frequency: class weights (mean 1) or, multi-label, negatives / positives per behaviour."""
    if multilabel:
        ok = np.isfinite(y)
        pos = np.nansum(np.where(ok, y, 0), 0)
        neg = ok.sum(0) - pos
        return torch.tensor(np.where(pos > 0, neg / np.maximum(pos, 1), 1.0), dtype=torch.float32)
    counts = np.bincount(y[y >= 0], minlength=C).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / C, 0.0)
    return torch.tensor(w, dtype=torch.float32)


# --------------------------------------------------------------------------- Lightning


def make_module() -> type:
    """The Lightning module class (built lazily: prediction and checkpoints need no Lightning import)."""
    import pytorch_lightning as pl

    class PoseClassifierModule(pl.LightningModule):
        """Focal loss, Adam; validation loss and best-threshold F1 each epoch; early stopping with best weights."""

        def __init__(self, net: PoseMLP, cfg: Mapping[str, Any], multilabel: bool, weight: torch.Tensor | None,
                     epoch_callback: Callable[[dict[str, Any]], None] | None = None):
            super().__init__()
            self.net, self.cfg, self.multilabel = net, dict(cfg), multilabel
            self.weight = weight
            self.epoch_callback = epoch_callback
            t = cfg["train"]
            self.monitor, self.patience, self.min_epochs = str(t["monitor"]), int(t["patience"]), int(t["min_epochs"])
            if self.monitor not in ("val_f1", "val_loss"):
                raise ValueError(f"train.monitor must be 'val_f1' or 'val_loss', not {self.monitor!r}")
            self.best: float | None = None
            self.best_epoch = -1
            self.best_state: dict[str, torch.Tensor] | None = None
            self.bad_epochs = 0
            self.history: list[dict[str, float]] = []
            self._val: list[tuple[torch.Tensor, torch.Tensor]] = []
            self._train_loss: list[float] = []

        def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            t = self.cfg["train"]
            gamma = float(t["gamma"]) if t["loss"] == "focal" else 0.0
            w = None if self.weight is None else self.weight.to(logits.device)
            if self.multilabel:
                alpha = float(t["alpha"]) if t["loss"] == "focal" else 0.5
                return binary_focal_loss(logits, y, gamma, alpha, pos_weight=w,
                                         label_smoothing=float(t.get("label_smoothing", 0.0)))
            alpha = float(t["alpha"]) if t["loss"] == "focal" else 1.0
            return focal_loss(logits, y, gamma, alpha, weight=w)

        def probs(self, logits: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.stack([self.loss(z, y) for z in self.net.member_logits(x)]).mean()
            self._train_loss.append(float(loss.detach()))
            return loss

        def on_validation_epoch_start(self):
            self._val = []

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self._val.append((self.net(x).detach().cpu(), y.cpu()))

        def on_validation_epoch_end(self):
            if not self._val:
                return
            logits = torch.cat([v[0] for v in self._val])
            y = torch.cat([v[1] for v in self._val])
            val_loss = float(self.loss(logits, y))
            onehot, ok = _one_hot(y.numpy(), logits.shape[1])
            f1 = best_f1(self.probs(logits).numpy()[ok], onehot[ok])
            val_f1 = float(np.nanmean(f1)) if np.isfinite(f1).any() else 0.0
            epoch = int(self.current_epoch)
            self.history.append({"epoch": epoch, "train_loss": float(np.mean(self._train_loss or [np.nan])),
                                 "val_loss": val_loss, "val_f1": val_f1})
            self._train_loss = []
            self.log("val_loss", val_loss, prog_bar=True)
            self.log("val_f1", val_f1, prog_bar=True)
            # val_f1 needs positives in the validation block; without any, the loss decides.
            score = val_f1 if self.monitor == "val_f1" and np.isfinite(f1).any() else -val_loss
            if self.best is None or score > self.best + 1e-9:
                self.best, self.best_epoch, self.bad_epochs = score, epoch, 0
                self.best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            elif epoch + 1 >= self.min_epochs:
                self.bad_epochs += 1
                if self.bad_epochs >= self.patience:
                    self.trainer.should_stop = True
            if self.epoch_callback is not None:
                self.epoch_callback({**self.history[-1], "val_f1_per_class": [float(v) if np.isfinite(v) else None
                                                                              for v in f1],
                                     "best_epoch": self.best_epoch, "stop": bool(self.trainer.should_stop)})

        def configure_optimizers(self):
            t = self.cfg["train"]
            return torch.optim.Adam(self.net.parameters(), lr=float(t["lr"]), weight_decay=float(t["weight_decay"]))

    return PoseClassifierModule


# --------------------------------------------------------------------------- training


def _fit(net: PoseMLP, X: np.ndarray, y: np.ndarray, tr_idx: np.ndarray, val_idx: np.ndarray, cfg: Mapping[str, Any],
         multilabel: bool, weight: torch.Tensor | None, max_epochs: int, seed: int, progress: bool,
         epoch_callback: Callable[[dict[str, Any]], None] | None = None):
    """Train ``net`` in place on the frames ``tr_idx`` (validation on ``val_idx``: early stopping, best weights)."""
    import pytorch_lightning as pl

    pl.seed_everything(seed, workers=True, verbose=False)
    t = cfg["train"]
    module = make_module()(net, cfg, multilabel, weight, epoch_callback)
    yt = torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    bs = int(t["batch_size"])
    data = torch.utils.data.TensorDataset(torch.from_numpy(X[tr_idx]), yt[tr_idx])
    loader = torch.utils.data.DataLoader(data, batch_size=bs, shuffle=True, generator=g, drop_last=len(tr_idx) > bs)
    val_loader = None
    if len(val_idx):
        val_data = torch.utils.data.TensorDataset(torch.from_numpy(X[val_idx]), yt[val_idx])
        val_loader = torch.utils.data.DataLoader(val_data, batch_size=4096)
    no_val = {} if len(val_idx) else {"limit_val_batches": 0}
    with warnings.catch_warnings():
        for msg in (".*srun.*", ".*val_dataloader.*", ".*does not have many workers.*", ".*LeafSpec.*"):
            warnings.filterwarnings("ignore", message=msg)
        trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                             num_sanity_val_steps=0, deterministic=False, **no_val)
        trainer.fit(module, loader, val_loader)
    if module.best_state is not None:
        net.load_state_dict(module.best_state)
    return module


def _build(m: Mapping[str, Any], n_in: int, n_classes: int) -> PoseMLP:
    """The network of the config's ``model`` section."""
    return PoseMLP(n_in, n_classes, hidden=m["hidden"], dropout=float(m["dropout"]),
                   batch_norm=bool(m.get("batch_norm", False)), input_dropout=float(m.get("input_dropout", 0.0)),
                   n_members=int(m.get("n_members", 1)))


def _stack(features: np.ndarray, f: Mapping[str, Any], fps: float | None, video_ids) -> np.ndarray:
    return stack_window(features, int(f["half_width"]), f.get("window_s"), fps, video_ids).astype(np.float32)


def train_pose_classifier(features: np.ndarray, labels: np.ndarray,
                          cfg: DictConfig | Mapping[str, Any] | None = None, video_ids: np.ndarray | None = None,
                          fps: float | None = None, names: Sequence[str] | None = None,
                          feature_names: Sequence[str] | None = None, val_mask: np.ndarray | None = None,
                          progress: bool = False,
                          epoch_callback: Callable[[dict[str, Any]], None] | None = None) -> PoseMLP:
    """Train the pose MLP on per-frame features, with early stopping on a contiguous validation block.

    Args:
        features: ``(T, F)`` per-frame features (:func:`features_from_keypoints`),
            frames of a video consecutive and in time order.
        labels: ``(T,)`` int classes (``-1``: unlabelled) for one behaviour
            per frame (multi-class focal loss; multi-label with
            ``train.multilabel``), or ``(T, C)`` 0/1 (NaN: unlabelled) for
            overlapping behaviours (multi-label focal loss).
        cfg: the ``pose_classifier`` config (default: ``config/models/pose_classifier.yaml``).
        video_ids: optional ``(T,)`` video of each frame (stacked windows,
            bouts and the validation block stop at video boundaries).
        fps: frames per second of the features (needed with ``features.window_s``;
            stored so that bout lengths convert to seconds).
        names: the ``C`` behaviour names (default ``behaviour0 ..``).
        feature_names: the ``F`` feature names, stored with the model.
        val_mask: optional ``(T,)`` bool validation frames, instead of the
            config's ``train.val_fraction`` block.
        progress: Lightning progress bar.
        epoch_callback: called after each validation epoch of the first
            network (not of the refit or cross-fitting networks) with that
            epoch's ``history`` entry plus ``val_f1_per_class`` (best-threshold
            F1 per behaviour, None without positives), ``best_epoch`` and
            ``stop`` (early stopping ends training after this epoch); used by
            :mod:`sipec_models.tuning` to report to Ray Tune. It may raise to
            end training (the exception propagates).

    Returns:
        The trained :class:`~sipec_models.nets.pose_mlp.PoseMLP` (best
        epoch, eval mode, CPU) with attributes ``config`` (plain dict),
        ``names``, ``feature_names``, ``multilabel``, ``fps``,
        ``thresholds`` (``(C,)``), ``min_frames`` (``(C,)`` int frames),
        ``fill_gaps`` (frames), ``history`` (per epoch: train/val loss,
        val F1), ``best_epoch``, ``val_scores`` (best-threshold F1 per
        behaviour on the validation block, of the network before any
        refit), ``crossfit`` (None, or with ``tune_on: crossfit`` the
        out-of-fold F1 per behaviour after the tuned postprocessing and the
        minimum-bout candidates).

    Raises:
        ValueError: bad shapes or values, no training frames left.
    """
    import pytorch_lightning as pl

    cfg = _cfg(cfg)
    f, t, m = cfg["features"], cfg["train"], cfg["model"]
    x = np.asarray(features, np.float32)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"features must be (T, F) with T >= 1, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features hold NaN or inf (pose_features fills gaps; fill them before training)")
    T = len(x)
    if feature_names is not None and len(feature_names) != x.shape[1]:
        raise ValueError(f"{len(feature_names)} feature names for {x.shape[1]} features")
    y, C, multilabel = _targets(labels, T, bool(t.get("multilabel", False)), None if names is None else len(names))
    names = [str(n) for n in names] if names is not None else [f"behaviour{c}" for c in range(C)]
    if video_ids is not None and np.shape(video_ids) != (T,):
        raise ValueError(f"video_ids must be (T,) = ({T},), got {np.shape(video_ids)}")
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if t["loss"] not in ("focal", "cross_entropy"):
        raise ValueError(f"train.loss must be 'focal' or 'cross_entropy', not {t['loss']!r}")
    tune_on = str(cfg["postprocess"].get("tune_on", "validation"))
    if tune_on not in ("validation", "crossfit"):
        raise ValueError(f"postprocess.tune_on must be 'validation' or 'crossfit', not {tune_on!r}")

    seed = int(cfg.get("seed", 0))
    pl.seed_everything(seed, workers=True, verbose=False)
    if int(t.get("num_threads", 0) or 0):
        torch.set_num_threads(int(t["num_threads"]))
    val = (validation_block(T, float(t["val_fraction"]), video_ids) if val_mask is None
           else np.asarray(val_mask, bool))
    if val.shape != (T,):
        raise ValueError(f"val_mask must be (T,) = ({T},), got {val.shape}")
    reach = int(np.abs(window_offsets(int(f["half_width"]), f.get("window_s"), fps)).max())
    train = _purge(val, reach, video_ids)
    labelled = (y >= 0) if y.ndim == 1 else np.isfinite(y).any(1)
    if not (train & labelled).any():
        raise ValueError("no labelled training frames left after taking out the validation block")
    X = _stack(x, f, fps, video_ids)

    cw = str(t.get("class_weight", "none"))
    if cw not in ("none", "balanced"):
        raise ValueError(f"train.class_weight must be 'none' or 'balanced', not {cw!r}")
    weight = _class_weights(y[train], C, multilabel) if cw == "balanced" else None
    tr_idx = np.flatnonzero(train & labelled)
    val_idx = np.flatnonzero(val & labelled)
    has_val = len(val_idx) > 0
    net = _build(m, X.shape[1], C)
    net.set_standardisation(X[train])
    module = _fit(net, X, y, tr_idx, val_idx, cfg, multilabel, weight, int(t["max_epochs"]), seed, progress,
                  epoch_callback)
    net = net.cpu().eval()
    epochs_run, best_epoch = len(module.history), module.best_epoch
    if bool(t.get("refit", False)) and has_val:
        # The refit network learns from every labelled frame for as many epochs as the first one needed;
        # the postprocessing settings (below) come from the first network or from cross-fitting.
        torch.manual_seed(seed + 1)
        refit = _build(m, X.shape[1], C)
        refit.set_standardisation(X)
        weight = _class_weights(y, C, multilabel) if cw == "balanced" else None
        _fit(refit, X, y, np.flatnonzero(labelled), np.array([], np.int64), cfg, multilabel, weight,
             max(1, best_epoch + 1), seed + 1, progress)
        net_final = refit.cpu().eval()
    else:
        net_final = net

    # Postprocessing settings (DeepEthogram): thresholds on the validation block, minimum bouts from the labels;
    # or both tuned on cross-fitted (out-of-fold) predictions of the training frames.
    pp = cfg["postprocess"]
    onehot, full = _one_hot(y, C)
    bout_labels = np.where(full[:, None], onehot, 0)
    fixed = pp.get("threshold")
    thresholds = np.full(C, 0.5 if fixed is None else float(fixed))
    min_frames = _min_bout_frames(bout_labels, float(pp["min_bout_quantile"]), video_ids)
    val_scores: list[float | None] = [None] * C
    if has_val:
        vi = np.flatnonzero(val & full)
        pv = _predict_stacked(net, X[vi], multilabel)
        val_scores = [None if not np.isfinite(s) else float(s) for s in best_f1(pv, onehot[vi])]
    crossfit: dict[str, Any] | None = None
    if tune_on == "crossfit":
        probs_oof, pieces = crossfit_probs(x, labels, cfg, video_ids, fps, names, int(pp.get("crossfit_folds", 4)))
        ok = full & np.isfinite(probs_oof).all(1)
        candidates = sorted({int(v) for q in pp.get("min_bout_quantiles", [0.05])
                             for v in _min_bout_frames(bout_labels, float(q), video_ids)} | {1})
        thresholds, min_frames, oof_f1 = tune_postprocessing(
            probs_oof[ok], onehot[ok], pieces[ok], candidates, float(pp.get("threshold_tolerance", 0.0) or 0.0),
            fixed)
        crossfit = {"f1": [None if not np.isfinite(v) else float(v) for v in oof_f1],
                    "min_frame_candidates": candidates}
    elif has_val:
        thresholds = select_thresholds(pv, onehot[vi], float(pp.get("threshold_tolerance", 0.0) or 0.0), fixed)
    fill_s = float(cfg["postprocess"].get("fill_gaps_s", 0.0) or 0.0)
    if fill_s > 0 and fps is None:
        raise ValueError("postprocess.fill_gaps_s needs the frame rate: pass fps")

    net = net_final
    net.config = cfg
    net.names = names
    net.feature_names = None if feature_names is None else [str(n) for n in feature_names]
    net.multilabel = multilabel
    net.fps = None if fps is None else float(fps)
    net.thresholds = np.asarray(thresholds, np.float64)
    net.min_frames = np.asarray(min_frames, np.int64)
    net.fill_gaps = int(round(fill_s * fps)) if fill_s > 0 else 0
    net.history = module.history
    net.best_epoch = best_epoch
    net.val_scores = val_scores
    net.crossfit = crossfit
    log.info("pose classifier: %d training and %d validation frames, %d inputs, best epoch %d of %d, "
             "validation F1 %s, thresholds %s, minimum bouts %s frames", len(tr_idx), len(val_idx), X.shape[1],
             best_epoch, epochs_run, val_scores, np.round(thresholds, 2).tolist(), min_frames.tolist())
    return net


@torch.inference_mode()
def _predict_stacked(net: PoseMLP, X: np.ndarray, multilabel: bool, batch_size: int = 8192) -> np.ndarray:
    out = []
    for i in range(0, len(X), batch_size):
        logits = net(torch.from_numpy(np.ascontiguousarray(X[i:i + batch_size], np.float32)))
        out.append((torch.sigmoid(logits) if multilabel else torch.softmax(logits, 1)).numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, net.n_classes))


def predict_proba(model: PoseMLP, features: np.ndarray, video_ids: np.ndarray | None = None,
                  fps: float | None = None) -> np.ndarray:
    """Behaviour probabilities of every frame.

    Args:
        model: from :func:`train_pose_classifier` or :func:`load_pose_classifier`.
        features: ``(T, F)`` per-frame features computed as for training.
        video_ids: optional ``(T,)`` video of each frame.
        fps: frame rate of the features (default: the training frame rate;
            matters with ``features.window_s``).

    Returns:
        ``(T, C)`` float64: softmax probabilities (multi-class) or one
        sigmoid per behaviour (multi-label).
    """
    x = np.asarray(features, np.float32)
    f = model.config["features"]
    n_steps = 2 * int(f["half_width"]) + 1
    if x.ndim != 2 or x.shape[1] * n_steps != model.n_in:
        raise ValueError(f"features must be (T, {model.n_in // n_steps}) for this model, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features hold NaN or inf")
    X = _stack(x, f, fps or model.fps, video_ids)
    return _predict_stacked(model.eval(), X, bool(model.multilabel))


def postprocess_probs(model: PoseMLP, probs: np.ndarray, fps: float | None = None,
                      video_ids: np.ndarray | None = None) -> np.ndarray:
    """Calls from probabilities with the model's thresholds and minimum bout lengths.

    Args:
        model: a trained model; probs: ``(T, C)`` from :func:`predict_proba`.
        fps: frame rate of ``probs``; when it differs from the training
            frame rate, the minimum bout lengths (and gap filling) are
            converted through seconds.
        video_ids: optional ``(T,)`` video of each frame.

    Returns:
        ``(T, C)`` bool.
    """
    scale = 1.0 if fps is None or model.fps is None else float(fps) / model.fps
    min_frames = np.maximum(1, np.round(np.asarray(model.min_frames) * scale)).astype(np.int64)
    fill = int(round(getattr(model, "fill_gaps", 0) * scale))
    return remove_short_bouts(binarize(probs, model.thresholds), min_frames, fill, video_ids)


def predict_calls(model: PoseMLP, features: np.ndarray, video_ids: np.ndarray | None = None,
                  fps: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(probs (T, C), calls (T, C) bool)``: :func:`predict_proba` then :func:`postprocess_probs`."""
    probs = predict_proba(model, features, video_ids, fps)
    return probs, postprocess_probs(model, probs, fps, video_ids)


# --------------------------------------------------------------------------- checkpoints


def save_pose_classifier(model: PoseMLP, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> None:
    """Write a self-contained checkpoint atomically: config, names, postprocessing settings, weights (with the
    input standardisation), history."""
    if getattr(model, "config", None) is None:
        raise ValueError("save_pose_classifier needs a model from train_pose_classifier or load_pose_classifier")
    payload = {
        "format": FORMAT, "config": to_dict(model.config), "n_in": int(model.n_in), "n_classes": int(model.n_classes),
        "names": list(model.names), "feature_names": model.feature_names, "multilabel": bool(model.multilabel),
        "fps": model.fps, "thresholds": [float(v) for v in model.thresholds],
        "min_frames": [int(v) for v in model.min_frames], "fill_gaps": int(getattr(model, "fill_gaps", 0)),
        "history": list(getattr(model, "history", [])), "best_epoch": int(getattr(model, "best_epoch", -1)),
        "val_scores": list(getattr(model, "val_scores", [])), "crossfit": getattr(model, "crossfit", None),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": dict(meta or {}),
    }
    save_checkpoint(payload, path)


def load_pose_classifier(path: str | os.PathLike) -> PoseMLP:
    """Load a :func:`save_pose_classifier` checkpoint: the eval-mode model on the CPU with all its attributes
    (and ``meta``).

    Raises:
        ValueError: unreadable, not a pose-classifier checkpoint, or weights not fitting its config.
    """
    try:
        p = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read checkpoint ({exc})") from None
    if not isinstance(p, dict) or p.get("format") != FORMAT:
        raise ValueError(f"{path}: not a pose-classifier checkpoint (format {FORMAT!r})")
    net = _build(p["config"]["model"], int(p["n_in"]), int(p["n_classes"]))
    try:
        net.load_state_dict(p["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit its config: {str(exc).splitlines()[0]}") from None
    net.config = p["config"]
    net.names = list(p["names"])
    net.feature_names = p.get("feature_names")
    net.multilabel = bool(p["multilabel"])
    net.fps = p.get("fps")
    net.thresholds = np.asarray(p["thresholds"], np.float64)
    net.min_frames = np.asarray(p["min_frames"], np.int64)
    net.fill_gaps = int(p.get("fill_gaps", 0))
    net.history = list(p.get("history", []))
    net.best_epoch = int(p.get("best_epoch", -1))
    net.val_scores = list(p.get("val_scores", []))
    net.crossfit = p.get("crossfit")
    net.meta = dict(p.get("meta", {}))
    return net.eval()

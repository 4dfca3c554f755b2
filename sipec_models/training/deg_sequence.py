"""Training and inference of DeepEthogram's TGM sequence model on cached per-frame features.

Data: per video, ``features (T, D)`` float32 (DeepEthogram: ``D = 1024``,
the 512 spatial and 512 flow features of the feature extractors,
concatenated) and ``labels (T, K)`` float 0/1 per behaviour, NaN where
unlabelled; ``names`` the ``K`` behaviours (a column named ``background``,
if present, is trained like the others but left out of the macro F1).

Training (DeepEthogram Methods, "Training protocol", "Loss functions",
"Sequence models"; defaults in ``config/models/deg_sequence/base.yaml``):

* The last ``data.val_fraction`` of each video, one contiguous block, is the
  validation set; training windows come only from the frames before it
  (never shuffled neighbours of validation frames).
* Each pass cuts the training part of every video into non-overlapping
  windows of ``train.sequence_length`` frames (DeepEthogram: 180) from a
  random offset, so window borders move from pass to pass; windows that
  stick out of the training part are padded with zero features and NaN
  (ignored) labels. Windows of all videos are shuffled into batches. An
  epoch is one pass, or several when one pass has fewer than
  ``train.min_steps_per_epoch`` batches, and at most
  ``train.max_steps_per_epoch`` batches (:func:`epoch_windows`).
* Loss: DeepEthogram's weighted binary focal loss with label smoothing
  (:func:`sipec_models.deg_losses.binary_focal_loss`), summed over frames
  and behaviours and averaged over windows as in the DeepEthogram code,
  plus plain L2 ``alpha/2 ||w||^2`` (``alpha = 0.01``,
  :func:`sipec_models.deg_losses.l2_penalty`). Positive weights and the
  initial classifier bias come from the training frames' class counts.
* Adam; after each epoch the validation block is predicted
  (:func:`sequence_probs`, with the frames before it as context), a
  threshold per behaviour is chosen to maximise its F1
  (:func:`sipec_models.ethogram.choose_thresholds`), and the macro F1 over
  the non-background behaviours present in the block
  (:func:`sipec_models.behaviour_metrics.classification_scores`) picks the
  best epoch, whose weights and thresholds are kept. The learning rate is
  divided by 10 when that F1 has not improved for ``train.patience`` epochs;
  training stops below ``train.min_lr``, after ``train.epochs`` epochs or
  after ``train.max_steps`` steps.

Inference (:func:`sequence_probs`): the model is convolutional, so a whole
video can run at once; long videos run in chunks with a halo of
``model.receptive_radius`` frames on each side, which gives exactly the
whole-video result.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from sipec_models.behaviour_metrics import classification_scores
from sipec_models.deg_losses import binary_focal_loss, class_counts, l2_penalty, positive_weights
from sipec_models.ethogram import BACKGROUND, binarize, choose_thresholds, min_bout_lengths, postprocess
from sipec_models.nets.tgm import TGMSequenceModel
from sipec_models.training.behavenet import validation_split
from sipec_models.training.config import load_model_config, save_checkpoint, to_dict

log = logging.getLogger(__name__)

FORMAT = "deg-sequence-1"


# --------------------------------------------------------------------------- data


def check_videos(features: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                 names: Sequence[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Validate per-video features and labels; return float32 copies-or-views.

    Args:
        features: per video ``(T_v, D)``, one ``D`` for all videos.
        labels: per video ``(T_v, K)`` 0/1, NaN unlabelled.
        names: the ``K`` behaviours (unique).

    Raises:
        ValueError: counts, shapes or label values do not fit.
    """
    if len(features) != len(labels):
        raise ValueError(f"{len(features)} feature arrays but {len(labels)} label arrays")
    if not len(features):
        raise ValueError("no videos given")
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise ValueError(f"behaviour names must be unique, got {names}")
    feats, labs = [], []
    d = None
    for i, (f, y) in enumerate(zip(features, labels)):
        f, y = np.asarray(f, np.float32), np.asarray(y, np.float32)
        if f.ndim != 2 or y.ndim != 2:
            raise ValueError(f"video {i}: features must be (T, D) and labels (T, K), got {f.shape} and {y.shape}")
        if len(f) != len(y):
            raise ValueError(f"video {i}: {len(f)} frames of features but {len(y)} of labels")
        if y.shape[1] != len(names):
            raise ValueError(f"video {i}: labels have {y.shape[1]} columns for {len(names)} names")
        d = f.shape[1] if d is None else d
        if f.shape[1] != d:
            raise ValueError(f"video {i}: {f.shape[1]} features per frame, earlier videos have {d}")
        if not np.isfinite(f).all():
            raise ValueError(f"video {i}: features hold NaN or inf")
        ok = np.isfinite(y)
        if not np.isin(y[ok], (0, 1)).all():
            raise ValueError(f"video {i}: labels must be 0, 1 or NaN (unlabelled)")
        feats.append(f)
        labs.append(y)
    return feats, labs


def validation_lengths(lengths: Sequence[int], fraction: float) -> np.ndarray:
    """``(V,)`` int: frames of each video's final validation block (the last ``fraction``, >= 1 frame if > 0).

    Same rule as :func:`sipec_models.training.behavenet.validation_split`.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    lengths = np.asarray(lengths, np.int64)
    ids = np.repeat(np.arange(len(lengths)), lengths)
    val = validation_split(ids, fraction)
    return np.bincount(ids[val], minlength=len(lengths)).astype(np.int64)


def training_windows(n_train: Sequence[int], length: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """One epoch of non-overlapping windows over each video's training frames, from a random offset.

    Args:
        n_train: ``(V,)`` training frames of each video (frames ``[0, n_train[v])``).
        length: window length, frames (DeepEthogram: 180).
        rng: draws each video's offset, uniform in ``[0, length)``.

    Returns:
        ``(video, start)`` pairs: window ``[start, start + length)``. ``start``
        may be negative and the window may end past ``n_train[v]``: those
        frames are padding (:func:`window_batch`). Every training frame lies
        in exactly one window.
    """
    if length < 1:
        raise ValueError(f"sequence_length must be >= 1, got {length}")
    out = []
    for v, n in enumerate(n_train):
        if n <= 0:
            continue
        start = -int(rng.integers(0, length))
        while start < n:
            if start + length > 0:
                out.append((v, start))
            start += length
    return out


def epoch_windows(n_train: Sequence[int], length: int, batch_size: int, min_steps: int, max_steps: int,
                  rng: np.random.Generator) -> list[tuple[int, int]]:
    """The shuffled windows of one epoch: passes of :func:`training_windows`, each from new random offsets.

    One pass covers every training frame once. Passes are added until the
    epoch has at least ``min_steps`` batches (so that a small data set still
    trains between two validations), and the epoch is cut at ``max_steps``
    batches (DeepEthogram code: 1000 steps per epoch).
    """
    if batch_size < 1 or min_steps < 1 or max_steps < min_steps:
        raise ValueError(f"need batch_size >= 1 and 1 <= min_steps <= max_steps, got {batch_size}, {min_steps}, "
                         f"{max_steps}")
    out: list[tuple[int, int]] = []
    while len(out) < min_steps * batch_size:
        one = training_windows(n_train, length, rng)
        if not one:
            raise ValueError("no training frames")
        out.extend(one[i] for i in rng.permutation(len(one)))
    return out[:max_steps * batch_size]


def window_batch(features: Sequence[np.ndarray], labels: Sequence[np.ndarray], windows: Sequence[tuple[int, int]],
                 length: int, n_train: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack windows into ``x (B, length, D)`` float32 and ``y (B, length, K)``.

    Frames outside ``[0, n_train[v])`` get zero features and NaN labels.
    """
    d, k = features[0].shape[1], labels[0].shape[1]
    x = np.zeros((len(windows), length, d), np.float32)
    y = np.full((len(windows), length, k), np.nan, np.float32)
    for i, (v, s) in enumerate(windows):
        a, b = max(s, 0), min(s + length, int(n_train[v]))
        x[i, a - s:b - s] = features[v][a:b]
        y[i, a - s:b - s] = labels[v][a:b]
    return torch.from_numpy(x), torch.from_numpy(y)


# --------------------------------------------------------------------------- loss, inference, scores


def sequence_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor | None, gamma: float,
                  label_smoothing: float) -> torch.Tensor:
    """DeepEthogram's sequence data loss: focal loss summed over frames and behaviours, mean over windows.

    Args:
        logits, target: ``(N, T, K)``; NaN targets (unlabelled or padding) add nothing.
        pos_weight: ``(K,)`` positive weights or None.
        gamma, label_smoothing: see :func:`sipec_models.deg_losses.binary_focal_loss`.
    """
    if logits.ndim != 3 or target.shape != logits.shape:
        raise ValueError(f"logits and target must both be (N, T, K), got {tuple(logits.shape)} and "
                         f"{tuple(target.shape)}")
    per = binary_focal_loss(logits, target, pos_weight=pos_weight, gamma=gamma, label_smoothing=label_smoothing,
                            reduction="none")
    return per.sum(dim=(1, 2)).mean()


@torch.inference_mode()
def sequence_probs(model: TGMSequenceModel, features, chunk_length: int | None = 1000, halo: int | None = None,
                   batch_size: int = 4, device: str | torch.device | None = None) -> np.ndarray:
    """Behaviour probabilities of every frame of one video.

    The video runs in chunks of ``chunk_length`` frames, each with ``halo``
    extra frames of context on both sides (fewer at the video's ends, where
    the model's zero padding takes over). With ``halo >=
    model.receptive_radius`` (the default) the result equals running the
    whole video at once, so it does not depend on where chunks start.

    Args:
        model: the sequence model (run in eval mode; its mode is restored).
        features: ``(T, D)`` float features (array or tensor).
        chunk_length: frames predicted per chunk; None: the whole video at once.
        halo: context frames each side (default ``model.receptive_radius``).
        batch_size: chunks per forward pass (chunks of equal length are batched).
        device: where to run (default: the model's device).

    Returns:
        ``(T, K)`` float32 probabilities (sigmoid of the logits).
    """
    x = torch.as_tensor(np.asarray(features, np.float32) if not torch.is_tensor(features) else features).float()
    if x.ndim != 2 or x.shape[1] != model.num_features:
        raise ValueError(f"features must be (T, D={model.num_features}), got {tuple(x.shape)}")
    halo = model.receptive_radius if halo is None else int(halo)
    if halo < 0 or (chunk_length is not None and chunk_length < 1) or batch_size < 1:
        raise ValueError(f"need halo >= 0, chunk_length >= 1 (or None) and batch_size >= 1, got {halo}, "
                         f"{chunk_length}, {batch_size}")
    T = len(x)
    out = np.zeros((T, model.num_classes), np.float32)
    if T == 0:
        return out
    device = torch.device(device) if device is not None else next(model.parameters()).device
    chunk = T if chunk_length is None else int(chunk_length)
    # (context start, context stop, predicted start, predicted stop), grouped by context length for batching
    groups: dict[int, list[tuple[int, int, int, int]]] = {}
    for s in range(0, T, chunk):
        e = min(T, s + chunk)
        a, b = max(0, s - halo), min(T, e + halo)
        groups.setdefault(b - a, []).append((a, b, s, e))
    was_training = model.training
    model.eval()
    try:
        for wins in groups.values():
            for i in range(0, len(wins), batch_size):
                part = wins[i:i + batch_size]
                xb = torch.stack([x[a:b] for a, b, _, _ in part]).to(device)
                p = torch.sigmoid(model(xb).float()).cpu().numpy()
                for j, (a, _, s, e) in enumerate(part):
                    out[s:e] = p[j, s - a:e - a]
    finally:
        model.train(was_training)
    return out


def validation_score(probs: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> dict:
    """Thresholds maximising F1 per behaviour and the resulting macro F1 (DeepEthogram's model selection).

    Only frames labelled for every behaviour count. The macro F1 covers the
    behaviours other than ``background`` that have positive frames here.

    Args:
        probs: ``(T, K)`` probabilities; labels: ``(T, K)`` 0/1, NaN unlabelled; names: ``K`` behaviours.

    Returns:
        ``{"macro_f1": float (NaN when no behaviour qualifies), "thresholds": (K,) array,
        "scores": classification_scores(...) or None, "n_frames": int}``.
    """
    names = [str(n) for n in names]
    probs, labels = np.asarray(probs), np.asarray(labels, np.float64)
    keep = np.isfinite(labels).all(axis=1)
    if not keep.any():
        return {"macro_f1": float("nan"), "thresholds": np.full(len(names), 0.5), "scores": None, "n_frames": 0}
    p, y = probs[keep], labels[keep].astype(np.int8)
    thresholds = choose_thresholds(p, y)
    absent = [n for n, present in zip(names, y.any(axis=0)) if not present]
    scores = classification_scores(y, binarize(p, thresholds).astype(np.int8), p, names,
                                   exclude=[BACKGROUND, *absent])
    f1 = scores["macro_f1"]
    return {"macro_f1": float("nan") if f1 is None else float(f1), "thresholds": thresholds, "scores": scores,
            "n_frames": int(keep.sum())}


# --------------------------------------------------------------------------- model


def build_sequence_model(cfg: Mapping[str, Any], num_features: int, num_classes: int) -> TGMSequenceModel:
    """The sequence model of a config's ``sequence`` section (``arch: tgm``, keys of ``model``)."""
    section = cfg["sequence"] if "sequence" in cfg else cfg
    if section["arch"] != "tgm":
        raise ValueError(f"unknown sequence arch {section['arch']!r}; only 'tgm' is implemented")
    return TGMSequenceModel(num_features, num_classes, **dict(section["model"]))


@dataclass
class SequenceModel:
    """A trained sequence model with its behaviours, thresholds and bout minimums.

    Attributes:
        net: :class:`TGMSequenceModel` (eval mode).
        names: ``K`` behaviours.
        thresholds: ``(K,)`` per-behaviour thresholds chosen on validation (``prob >= threshold`` is called).
        min_bout_frames: ``(K,)`` shortest bout kept in postprocessing, frames (from the training labels).
        config: the full model config (plain dict).
        history: per-epoch records and the best epoch.
    """

    net: TGMSequenceModel
    names: list[str]
    thresholds: np.ndarray
    min_bout_frames: np.ndarray
    config: dict
    history: dict = field(default_factory=dict)

    def predict_proba(self, features, device: str | torch.device | None = None) -> np.ndarray:
        """``(T, K)`` probabilities of one video's ``(T, D)`` features (:func:`sequence_probs`)."""
        infer = self.config["sequence"]["infer"]
        return sequence_probs(self.net, features, chunk_length=infer["chunk_length"],
                              batch_size=int(infer["batch_size"]), device=device)

    def predict(self, features, device: str | torch.device | None = None) -> pd.DataFrame:
        """Postprocessed calls of one video: thresholds, short-bout removal, background column.

        Returns:
            ``(T, C + 1)`` bool DataFrame (:func:`sipec_models.ethogram.postprocess`): the non-background
            behaviours, then ``background`` (no behaviour called).
        """
        probs = self.predict_proba(features, device)
        idx = [i for i, n in enumerate(self.names) if n != BACKGROUND]
        return postprocess(probs[:, idx], self.thresholds[idx], self.min_bout_frames[idx],
                           [self.names[i] for i in idx], background=True)


def _payload(model: SequenceModel, complete: bool) -> dict:
    net = model.net
    layer = net.layers[0]
    kwargs = dict(num_features=net.num_features, num_classes=net.num_classes, num_layers=len(net.layers),
                  n_gaussians=layer.n_gaussians, filter_length=layer.filter_length, c_out=layer.c_out,
                  soft_attention=layer.soft_attention, reduction=net.reduction, kernel=layer.kernel,
                  input_dropout=net.input_head.input_dropout.p, output_dropout=net.input_head.output_dropout.p,
                  hidden=0 if net.input_head.hidden is None else net.input_head.hidden.out_features)
    return {"format": FORMAT, "complete": complete, "model_kwargs": kwargs,
            "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "names": list(model.names), "thresholds": np.asarray(model.thresholds, np.float64).tolist(),
            "min_bout_frames": np.asarray(model.min_bout_frames, np.int64).tolist(),
            "config": model.config, "history": model.history}


def save_sequence_model(model: SequenceModel, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` atomically (:func:`sipec_models.training.config.save_checkpoint`)."""
    save_checkpoint(_payload(model, complete=True), path)


def load_sequence_model(path: str | os.PathLike, device: str | torch.device | None = None) -> SequenceModel:
    """Read a checkpoint of :func:`save_sequence_model` (or the best-so-far one written during training)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a DeepEthogram sequence model checkpoint (format {FORMAT!r})")
    net = TGMSequenceModel(**ckpt["model_kwargs"])
    net.load_state_dict(ckpt["state_dict"])
    net.eval()
    if device is not None:
        net.to(device)
    return SequenceModel(net, list(ckpt["names"]), np.asarray(ckpt["thresholds"], np.float64),
                         np.asarray(ckpt["min_bout_frames"], np.int64), ckpt["config"], ckpt["history"])


# --------------------------------------------------------------------------- training


def _val_probs(net: TGMSequenceModel, feats, labs, n_val, infer: Mapping[str, Any],
               device) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels of every video's validation block, with the frames before it as context."""
    r = net.receptive_radius
    probs, ys = [], []
    for f, y, nv in zip(feats, labs, n_val):
        if nv <= 0:
            continue
        a = max(0, len(f) - nv - r)  # the block's outputs depend on frames >= start - r only: exact
        probs.append(sequence_probs(net, f[a:], chunk_length=infer["chunk_length"],
                                    batch_size=int(infer["batch_size"]), device=device)[-nv:])
        ys.append(y[-nv:])
    return np.concatenate(probs), np.concatenate(ys)


def train_sequence(features: Sequence[np.ndarray], labels: Sequence[np.ndarray], names: Sequence[str],
                   cfg: Mapping[str, Any] | None = None, overrides: Sequence[str] = (),
                   out: str | os.PathLike | None = None, progress: bool = True,
                   device: str | torch.device | None = None,
                   epoch_callback: Callable[[dict], None] | None = None) -> SequenceModel:
    """Train DeepEthogram's TGM sequence model on cached features of several videos.

    Args:
        features: per video ``(T_v, D)`` float features, in time order.
        labels: per video ``(T_v, K)`` 0/1 labels, NaN unlabelled.
        names: the ``K`` behaviours (``background`` is left out of the macro F1).
        cfg: the full ``deepethogram`` model config (uses ``sequence``,
            ``data.val_fraction``, ``postprocess.min_bout_quantile``, ``seed``);
            None: ``load_model_config("deepethogram", overrides)``.
        overrides: Hydra overrides, only used when ``cfg`` is None.
        out: checkpoint path: the best model so far is written there
            (atomically) whenever it improves, and the final model at the end.
        progress: show a tqdm bar over epochs.
        device: default ``cuda`` when available, else ``cpu``.
        epoch_callback: called after every epoch with the epoch's record (``epoch`` 0-based, ``steps``,
            ``lr``, ``train_data_loss``, ``val_macro_f1`` when there are validation frames) and ``stop``
            (True when the step limit or the learning-rate floor ends training after it); Ray Tune's reports.

    Returns:
        The model at its best validation epoch (the last epoch when no
        epoch has a finite validation macro F1, e.g. without validation
        frames), with thresholds chosen on the validation blocks (on the
        training frames when the blocks have no fully labelled frame).
    """
    from tqdm.auto import tqdm

    if cfg is None:
        cfg = load_model_config("deepethogram", overrides)
    sec, tr, lo = cfg["sequence"], cfg["sequence"]["train"], cfg["sequence"]["loss"]
    names = [str(n) for n in names]
    feats, labs = check_videos(features, labels, names)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    seed = int(cfg["seed"])
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    lengths = np.array([len(f) for f in feats], np.int64)
    n_val = validation_lengths(lengths, float(cfg["data"]["val_fraction"]))
    n_train = lengths - n_val
    if n_train.sum() == 0:
        raise ValueError("no training frames: every video is shorter than its validation block")
    train_y = np.concatenate([y[:n] for y, n in zip(labs, n_train)])
    pos, neg = class_counts(train_y)
    pos_weight = torch.as_tensor(positive_weights(pos, neg, float(lo["pos_weight_beta"])), device=device)

    net = build_sequence_model(cfg, feats[0].shape[1], len(names))
    net.init_bias(pos, neg)
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=float(tr["lr"]))
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=float(tr["lr_factor"]),
                                                       patience=int(tr["patience"]))
    length, bs = int(tr["sequence_length"]), int(tr["batch_size"])
    infer = sec["infer"]
    has_val = bool(n_val.sum())
    cfg_dict = to_dict(cfg)
    min_bouts = min_bout_lengths(np.nan_to_num(train_y, nan=0.0), float(cfg["postprocess"]["min_bout_quantile"]),
                                 video_ids=np.repeat(np.arange(len(n_train)), n_train))

    records: list[dict] = []
    best = {"f1": -math.inf, "state": None, "thresholds": None, "epoch": None}
    steps = 0
    bar = tqdm(range(int(tr["epochs"])), desc="TGM sequence model", disable=not progress)
    for epoch in bar:
        net.train()
        windows = epoch_windows(n_train, length, bs, int(tr["min_steps_per_epoch"]), int(tr["max_steps_per_epoch"]),
                                rng)
        data_sum, reg_sum, n_batches = 0.0, 0.0, 0
        for i in range(0, len(windows), bs):
            x, y = window_batch(feats, labs, windows[i:i + bs], length, n_train)
            x, y = x.to(device), y.to(device)
            data = sequence_loss(net(x), y, pos_weight, float(lo["gamma"]), float(lo["label_smoothing"]))
            reg = l2_penalty(net, float(lo["l2_alpha"])).to(device)
            opt.zero_grad(set_to_none=True)
            (data + reg).backward()
            opt.step()
            data_sum, reg_sum = data_sum + float(data.detach()), reg_sum + float(reg.detach())
            n_batches, steps = n_batches + 1, steps + 1
            if steps >= int(tr["max_steps"]):
                break
        rec = {"epoch": epoch, "steps": steps, "lr": opt.param_groups[0]["lr"],
               "train_data_loss": data_sum / max(n_batches, 1), "train_l2": reg_sum / max(n_batches, 1)}
        if has_val:
            vp, vy = _val_probs(net, feats, labs, n_val, infer, device)
            score = validation_score(vp, vy, names)
            rec["val_macro_f1"] = score["macro_f1"]
            if np.isfinite(score["macro_f1"]):
                sched.step(score["macro_f1"])
                if score["macro_f1"] > best["f1"]:
                    best = {"f1": score["macro_f1"], "state": copy.deepcopy(net.state_dict()),
                            "thresholds": score["thresholds"], "epoch": epoch}
                    if out is not None:
                        snap = SequenceModel(net, names, score["thresholds"], min_bouts, cfg_dict,
                                             {"epochs": records + [rec], "best_epoch": epoch,
                                              "best_val_macro_f1": score["macro_f1"]})
                        save_checkpoint(_payload(snap, complete=False), out)
        records.append(rec)
        log.info("TGM sequence epoch %d: %s", epoch + 1, {k: round(v, 5) if isinstance(v, float) else v
                                                          for k, v in rec.items()})
        bar.set_postfix(loss=f"{rec['train_data_loss']:.3g}", val_f1=f"{rec.get('val_macro_f1', float('nan')):.3f}",
                        lr=f"{rec['lr']:.1e}")
        stop = steps >= int(tr["max_steps"]) or opt.param_groups[0]["lr"] < float(tr["min_lr"])
        if epoch_callback is not None:
            epoch_callback({**rec, "stop": bool(stop)})
        if stop:
            break
    bar.close()

    if best["state"] is not None:
        net.load_state_dict(best["state"])
        thresholds = best["thresholds"]
    else:  # no epoch had a finite validation F1: last epoch, thresholds from whatever is labelled
        score = validation_score(*_val_probs(net, feats, labs, n_val, infer, device), names) if has_val else None
        if score is None or score["n_frames"] == 0:
            tp = np.concatenate([sequence_probs(net, f, chunk_length=infer["chunk_length"],
                                                batch_size=int(infer["batch_size"]), device=device)[:n]
                                 for f, n in zip(feats, n_train)])
            score = validation_score(tp, train_y, names)
        thresholds = score["thresholds"]
    net.eval()
    history = {"epochs": records, "best_epoch": best["epoch"],
               "best_val_macro_f1": None if best["state"] is None else best["f1"],
               "pos": pos.tolist(), "neg": neg.tolist(), "n_train_frames": int(n_train.sum()),
               "n_val_frames": int(n_val.sum())}
    model = SequenceModel(net.cpu(), names, np.asarray(thresholds, np.float64), min_bouts, cfg_dict, history)
    if out is not None:
        save_sequence_model(model, out)
    return model

"""Workflow entries of the behaviour models: ``train_behavenet`` and ``train_pose_classifier``.

Both read behaviour labels of one or more tracked videos, put them on the
videos' track slots (:func:`sipec_models.behaviour_data.slot_labels`) and
train on each slot's runs of labelled frames:

* BehaveNet on the masked crops of the video store (``crop``, ``(frame,
  slot, y, x)``), with the ``half_window`` frames before and after every
  labelled run as temporal context;
* the pose classifier on keypoint features (cm and seconds) of the
  merged pose chunk stores of each video.

Each checkpoint carries its postprocessing (per-behaviour thresholds and
minimum bout lengths, :mod:`sipec_models.ethogram`), applied when the
per-animal tables are merged.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from sipec_models.behaviour_data import com_speed, exclusive_targets, slot_labels, slot_sequences
from sipec_models.ethogram import choose_thresholds, min_bout_lengths
from sipec_models.io.store import open_store
from sipec_models.training.config import load_model_config, to_dict

log = logging.getLogger(__name__)


def _source_labels(src: Mapping[str, Any], group, behaviours, max_distance) -> tuple[np.ndarray, list[str]]:
    com = group["com"][...].astype(np.float64)
    fps = float(group.attrs.get("fps") or 0) or None
    return slot_labels(src["labels"], com, format=src.get("format", "auto"), fps=fps, positions=src.get("positions"),
                       frames=src.get("frames"), behaviours=behaviours, max_distance=max_distance)


def _check_names(names: list[str], first: list[str] | None, src) -> list[str]:
    if first is not None and names != first:
        raise ValueError(f"{src['labels']}: behaviours {names} differ from the first label file's {first}; "
                         "choose them with behaviour.behaviours")
    return names


def _dilate(mask: np.ndarray, n: int) -> np.ndarray:
    """``(T,)`` bool grown by ``n`` frames on both sides."""
    if n <= 0 or not mask.any():
        return mask.copy()
    idx = np.flatnonzero(mask)
    out = np.zeros_like(mask)
    lo, hi = np.maximum(idx - n, 0), np.minimum(idx + n + 1, len(mask))
    diff = np.zeros(len(mask) + 1, np.int64)
    np.add.at(diff, lo, 1)
    np.add.at(diff, hi, -1)
    out[:] = np.cumsum(diff)[:-1] > 0
    return out


def behavenet_samples(sources: Iterable[Mapping[str, Any]], half_window: int, behaviours: Sequence[str] | None = None,
                      max_distance: float = 20.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], dict]:
    """Crops, 0/1 labels and sequence ids of every labelled run of every slot of every source.

    Args:
        sources: dicts ``{video, store, labels, format, positions, frames}``
            (``store``: the tracked ``<video>.zarr``).
        half_window: frames of context kept before and after each labelled run.

    Returns:
        ``crops (N, S, S[, 3]) uint8``, ``labels (N, C) float32`` (NaN:
        context frame without a label), ``sequence (N,) int64``, ``motion
        (N, 1) float32`` (:func:`~sipec_models.behaviour_data.com_speed`),
        the ``C`` behaviour names and per-source counts.
    """
    crops, labels, seqs, motion, names, stats, offset = [], [], [], [], None, [], 0
    for src in sources:
        group = open_store(src["store"])
        y, n = _source_labels(src, group, behaviours, max_distance)
        names = _check_names(n, names, src)
        com = group["com"][...]
        valid = np.isfinite(com).all(-1)
        speed = com_speed(com, float(group.attrs.get("fps") or 1.0), float(group["crop"].shape[-1]))
        labelled = np.isfinite(y).all(-1) & valid
        region = np.stack([_dilate(labelled[:, a], half_window) for a in range(y.shape[1])], 1) & valid
        seq = slot_sequences(region)
        for a in range(y.shape[1]):
            t = np.flatnonzero(region[:, a])
            if not len(t):
                continue
            block = group["crop"][t[0]:t[-1] + 1, a]
            crops.append(block[t - t[0]])
            labels.append(y[t, a])
            seqs.append(seq[t, a] + offset)
            motion.append(speed[t, a])
        offset += int(seq.max()) + 1 if (seq >= 0).any() else 0
        stats.append({"video": str(src["video"]), "labelled_animal_frames": int(labelled.sum()),
                      "context_frames": int(region.sum() - labelled.sum())})
    if not crops or not any(np.isfinite(lb).all(-1).any() for lb in labels):
        raise ValueError("no labelled frame of any source holds a tracked animal: check behaviour.labels and the "
                         "positions used to match labelled animals to tracks")
    return (np.concatenate(crops), np.concatenate(labels), np.concatenate(seqs), np.concatenate(motion), names,
            {"sources": stats})


def pair_samples(sources: Iterable[Mapping[str, Any]], half_window: int, behaviours: Sequence[str] | None = None,
                 max_distance: float = 20.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], dict]:
    """Pair crops, 0/1 labels and sequence ids of every labelled run of social events (SIPEC's pair input).

    A pair's crop (centred on the joint centre of mass of its two masks)
    exists on its event frames only, so each pair's runs of event frames
    are its sequences; context frames are the ``half_window`` event frames
    before and after each labelled run.

    Args:
        sources: dicts ``{video, store, social, labels, positions, frames}``
            (``store``: the tracked ``<video>.zarr``; ``social``: its social
            chunk stores; ``labels``: a pair-label table,
            :func:`~sipec_models.behaviour_data.load_pair_labels`).

    Returns:
        As :func:`behavenet_samples`, with pair crops ``(N, S, S)`` and the
        speed of the pair's joint centre of mass as ``motion``.
    """
    from sipec_models.behaviour_data import pair_slot_labels
    from sipec_models.social import read_social_frames, social_pairs

    crops, labels, seqs, motion, names, stats, offset = [], [], [], [], None, [], 0
    for src in sources:
        group = open_store(src["store"])
        T = int(group.attrs["n_frames"])
        social = list(src.get("social") or [])
        if not social:
            raise ValueError(f"{src['labels']}: pair labels of video {src['video']} need its social chunk stores "
                             "(social.enabled)")
        pair_slots = social_pairs(social)
        y, n = pair_slot_labels(src["labels"], group["com"][...].astype(np.float64), pair_slots, src["positions"],
                                frames=src.get("frames"), behaviours=behaviours, max_distance=max_distance)
        names = _check_names(n, names, src)
        arr = read_social_frames(social, 0, T, ("pair_event", "pair_com"))
        event = arr["pair_event"]
        crop_side = float(open_store(social[0])["pair_crop"].shape[-1])
        speed = com_speed(np.where(event[..., None], arr["pair_com"], np.nan), float(group.attrs.get("fps") or 1.0),
                          crop_side)
        labelled = np.isfinite(y).all(-1) & event
        region = np.stack([_dilate(labelled[:, k], half_window) for k in range(y.shape[1])], 1) & event
        seq = slot_sequences(region)
        for k in range(y.shape[1]):
            t = np.flatnonzero(region[:, k])
            if not len(t):
                continue
            block = read_social_frames(social, int(t[0]), int(t[-1]) + 1, ("pair_crop",), pair=k)["pair_crop"]
            crops.append(block[t - t[0]])
            labels.append(y[t, k])
            seqs.append(seq[t, k] + offset)
            motion.append(speed[t, k])
        offset += int(seq.max()) + 1 if (seq >= 0).any() else 0
        stats.append({"video": str(src["video"]), "labelled_pair_frames": int(labelled.sum()),
                      "context_frames": int(region.sum() - labelled.sum()),
                      "labelled_frames_without_event": int((np.isfinite(y).all(-1) & ~event).sum())})
    if not crops or not any(np.isfinite(lb).all(-1).any() for lb in labels):
        raise ValueError("no labelled pair-frame of any source is a social event: check behaviour.social.labels and "
                         "the social options (dilation_px, overlap_threshold)")
    return (np.concatenate(crops), np.concatenate(labels), np.concatenate(seqs), np.concatenate(motion), names,
            {"sources": stats})


def _onehot(target: np.ndarray, C: int) -> np.ndarray:
    out = np.zeros((len(target), C), np.uint8)
    ok = target >= 0
    out[np.flatnonzero(ok), target[ok]] = 1
    return out


def run_train_behavenet(sources: Iterable[Mapping[str, Any]], out: str | os.PathLike, overrides: Sequence[str] = (),
                        behaviours: Sequence[str] | None = None, max_distance: float = 20.0,
                        metrics_out: str | os.PathLike | None = None, progress: bool = True, pairs: bool = False):
    """The ``train_behavenet`` workflow step: labels on track slots -> BehaveNet -> checkpoint ``out``.

    With ``pairs``, the samples are the pair crops of social events and the
    labels pair labels (:func:`pair_samples`): SIPEC's social behaviour input.

    The model config is ``config/models/behavenet.yaml`` with ``overrides``.
    Exclusive behaviours (``data.multilabel: false``) get a ``background``
    class when some labelled frame has none of them. After training, the
    validation block (the last ``data.val_fraction`` of each run) gives the
    per-behaviour thresholds (multi-label; exclusive behaviours are called
    by argmax) and the training labels the minimum bout lengths
    (``postprocess.min_bout_quantile``); both go into the checkpoint's
    ``meta["postprocess"]``.

    Returns:
        The trained :class:`~sipec_models.training.behavenet.BehaveNetModel`.
    """
    from sipec_models.behaviour_metrics import macro_f1
    from sipec_models.training.behavenet import BehaviourData, save_behavenet, train_behavenet, validation_split

    cfg = to_dict(load_model_config("behavenet", overrides))
    sources = list(sources)
    if not sources:
        raise ValueError("run_train_behavenet: no label sources given")
    half = int(cfg["tcn"]["half_window"]) if int(cfg["tcn_train"]["epochs"]) > 0 else 0
    samples = pair_samples if pairs else behavenet_samples
    crops, y, seq, motion, names, stats = samples(sources, half, behaviours, max_distance)
    multilabel = bool(cfg["data"]["multilabel"])
    if multilabel:
        target = y
    else:
        target, names = exclusive_targets(y, names, what=", ".join(str(s["labels"]) for s in sources))
    log.info("BehaveNet: %d frames (%d labelled) in %d runs, behaviours %s", len(crops),
             int(np.isfinite(y).all(-1).sum()), len(np.unique(seq)), ", ".join(names))
    model = train_behavenet(BehaviourData(crops, target, seq, motion), names, cfg, progress=progress)
    # Postprocessing from the validation block and the training labels.
    probs = model.predict_proba(crops, seq, motion)
    is_val = validation_split(seq, float(cfg["data"]["val_fraction"]))
    C = len(names)
    onehot = np.nan_to_num(target).astype(np.uint8) if multilabel else _onehot(target, C)
    labelled = np.isfinite(y).all(-1)
    pp = cfg.get("postprocess", {}) or {}
    lab_val = is_val & labelled
    if multilabel and lab_val.any():
        thresholds = choose_thresholds(probs[lab_val], onehot[lab_val]).tolist()
    else:
        thresholds = None
    lab_idx = np.flatnonzero(labelled)
    min_frames = min_bout_lengths(onehot[lab_idx], float(pp.get("min_bout_quantile", 0.05)),
                                  video_ids=seq[lab_idx]).tolist()
    calls_val = (probs[lab_val] >= np.asarray(thresholds)) if thresholds is not None else \
        _onehot(probs[lab_val].argmax(1), C).astype(bool)
    val_f1 = macro_f1(onehot[lab_val], calls_val) if lab_val.any() else None
    fps = float(open_store(sources[0]["store"]).attrs.get("fps") or 0) or None
    meta = {"postprocess": {"thresholds": thresholds, "min_frames": min_frames, "fps": fps},
            "input": "pair" if pairs else "animal",
            "val_macro_f1": val_f1, "n_frames": int(len(crops)), "n_labelled": int(labelled.sum()), **stats}
    save_behavenet(model, out, meta=meta)
    model.meta = meta
    log.info("BehaveNet -> %s: validation macro-F1 %s, minimum bouts %s frames", out,
             "n/a" if val_f1 is None else f"{val_f1:.3f}", min_frames)
    if metrics_out:
        from sipec_models.inference.ingest import write_json_atomic

        write_json_atomic(metrics_out, {"model": "social_behavenet" if pairs else "behavenet", "names": names, **meta})
    return model


def pose_slot_features(points: np.ndarray, conf: np.ndarray, nodes: Sequence[str], fps: float, px_per_cm: float,
                       cfg: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pose features of every slot, computed run by run.

    Args:
        points: ``(T, A, K, 2)`` frame px; conf: ``(T, A, K)``.

    Returns:
        ``features (T, A, F) float32`` (NaN where the slot holds no animal
        or the features are not finite), ``sequence (T, A) int64`` (one id
        per run of frames with finite features, -1 elsewhere) and the
        feature names.
    """
    from sipec_models.training.pose_classifier import features_from_keypoints

    T, A = points.shape[:2]
    valid = np.isfinite(points).all(-1).any(-1)
    runs = slot_sequences(valid)
    feats, fnames = None, None
    for a in range(A):
        for r in np.unique(runs[:, a][runs[:, a] >= 0]):
            t = np.flatnonzero(runs[:, a] == r)
            f, fnames = features_from_keypoints(points[t, a], fps, px_per_cm, cfg, node_names=list(nodes),
                                                scores=conf[t, a])
            if feats is None:
                feats = np.full((T, A, f.shape[1]), np.nan, np.float32)
            feats[t, a] = f
    if feats is None:
        raise ValueError("no frame holds keypoints of any animal")
    ok = np.isfinite(feats).all(-1)
    return feats, slot_sequences(ok), list(fnames)


def run_train_pose_classifier(sources: Iterable[Mapping[str, Any]], out: str | os.PathLike,
                              overrides: Sequence[str] = (), behaviours: Sequence[str] | None = None,
                              max_distance: float = 20.0, metrics_out: str | os.PathLike | None = None,
                              progress: bool = False):
    """The ``train_pose_classifier`` workflow step: labels on track slots + pose chunk stores -> checkpoint ``out``.

    Args:
        sources: dicts ``{video, store, pose: [pose chunk stores], px_per_cm,
            labels, format, positions, frames}``.

    The classifier (``config/models/pose_classifier.yaml`` with
    ``overrides``) trains on the runs of labelled frames with finite pose
    features of every slot, each run its own sequence (windows and bouts
    stop at its ends); its thresholds and minimum bouts are chosen as the
    config says and stored with it.
    """
    from sipec_models.tables import read_pose_chunks
    from sipec_models.training.pose_classifier import save_pose_classifier, train_pose_classifier

    cfg = to_dict(load_model_config("pose_classifier", overrides))
    sources = list(sources)
    if not sources:
        raise ValueError("run_train_pose_classifier: no label sources given")
    feats, labels, vids, names, fnames, stats, offset, fps0 = [], [], [], None, None, [], 0, None
    for src in sources:
        group = open_store(src["store"])
        fps = float(group.attrs["fps"])
        fps0 = fps0 or fps
        y, n = _source_labels(src, group, behaviours, max_distance)
        names = _check_names(n, names, src)
        points, conf, nodes = read_pose_chunks(src["pose"], int(group.attrs["n_frames"]))
        f, _, fnames = pose_slot_features(points, conf, nodes, fps, float(src["px_per_cm"]), cfg)
        use = np.isfinite(f).all(-1) & np.isfinite(y).all(-1)
        seq = slot_sequences(use)
        for a in range(y.shape[1]):
            t = np.flatnonzero(use[:, a])
            feats.append(f[t, a])
            labels.append(y[t, a])
            vids.append(seq[t, a] + offset)
        offset += int(seq.max()) + 1 if (seq >= 0).any() else 0
        stats.append({"video": str(src["video"]), "labelled_animal_frames": int(use.sum())})
    X, Y, V = np.concatenate(feats), np.concatenate(labels), np.concatenate(vids)
    if not len(X):
        raise ValueError("no labelled frame of any source has pose features: check behaviour.labels and pose")
    if not bool(cfg["train"]["multilabel"]):
        Y, names = exclusive_targets(Y, names, what=", ".join(str(s["labels"]) for s in sources))
    model = train_pose_classifier(X, Y, cfg, video_ids=V, fps=fps0, names=names, feature_names=fnames,
                                  progress=progress)
    meta = {"n_labelled": int(len(X)), "sources": stats}
    save_pose_classifier(model, out, meta=meta)
    log.info("pose classifier -> %s: %d labelled frames, behaviours %s", out, len(X), ", ".join(names))
    if metrics_out:
        from sipec_models.inference.ingest import write_json_atomic

        write_json_atomic(metrics_out, {"model": "pose_classifier", "names": list(names),
                                        "val_scores": list(getattr(model, "val_scores", [])), **meta})
    return model


def read_sources(text: str) -> list[dict]:
    """The JSON list of label sources the CLI takes (a string or a file path)."""
    p = Path(text)
    raw = p.read_text() if p.suffix == ".json" and p.is_file() else text
    try:
        sources = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"behaviour label sources are not valid JSON ({exc})") from None
    if not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources):
        raise ValueError("behaviour label sources must be a JSON list of objects")
    return sources

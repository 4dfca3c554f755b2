"""The ``behave`` rule: behaviour probabilities of every animal in one chunk of a tracked video.

Two models (``behaviour.model``):

* ``behavenet``: BehaveNet on the masked crops of the video store. Its
  temporal network looks at frames ``[t - n, t + n]``, so the job reads a
  halo of ``n`` frames on each side of its chunk: the probabilities of a
  frame do not depend on where the chunk borders lie.
* ``pose_classifier``: the pose MLP on the features of the merged pose
  chunk stores; features are computed over each whole run of a slot and
  windows reach as far as the model's stacked steps, so chunk borders do
  not change its results either.

Probabilities are written per track slot; thresholds and bout
postprocessing are applied over the whole video when it is merged
(:func:`sipec_models.tables.behaviour_calls`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from sipec_models.behaviour_data import com_speed, slot_sequences
from sipec_models.inference.ingest import plan_chunk
from sipec_models.io.store import open_store, provenance, spec_field, write_store

log = logging.getLogger(__name__)

MODELS = ("behavenet", "pose_classifier", "deepethogram")


def behavenet_probs(model, crops: np.ndarray, valid: np.ndarray, motion: np.ndarray | None = None) -> np.ndarray:
    """``(T, A, C)`` BehaveNet probabilities of a block of frames (NaN where a slot is empty).

    Args:
        model: a :class:`~sipec_models.training.behavenet.BehaveNetModel`.
        crops: ``(T, A, S, S[, 3])`` uint8 masked crops per slot.
        valid: ``(T, A)`` bool, the slot holds an animal.
        motion: ``(T, A, M)`` motion features (:func:`~sipec_models.behaviour_data.com_speed`),
            needed when the model's temporal network takes them.

    Windows of the temporal network stop at the ends of each slot's runs of
    valid frames and at the ends of the block (edge frames repeat).
    """
    T, A = valid.shape
    seq = slot_sequences(valid)
    a_idx, t_idx = np.nonzero(valid.T)  # slot-major, time order within a slot: runs are consecutive
    out = np.full((T, A, len(model.names)), np.nan, np.float32)
    if len(t_idx):
        feats = model.frame_features(crops[t_idx, a_idx])
        m = motion[t_idx, a_idx] if motion is not None else None
        out[t_idx, a_idx] = model.predict_from_features(feats, seq[t_idx, a_idx], m)
    return out


def pose_classifier_probs(model, points: np.ndarray, conf: np.ndarray, nodes: Sequence[str], fps: float,
                          px_per_cm: float, start: int, stop: int) -> np.ndarray:
    """``(stop - start, A, C)`` pose-classifier probabilities of frames ``[start, stop)`` of a video.

    Args:
        points: ``(T, A, K, 2)`` keypoints of the whole video, frame px; conf: ``(T, A, K)``.
    """
    from sipec_models.pose_features import window_offsets
    from sipec_models.training.behaviour import pose_slot_features
    from sipec_models.training.pose_classifier import predict_proba

    feats, seq, _ = pose_slot_features(points, conf, nodes, fps, px_per_cm, model.config)
    f = model.config["features"]
    offs = window_offsets(int(f["half_width"]), f.get("window_s"), fps)
    reach = int(np.abs(offs).max()) if len(offs) else 0
    lo, hi = max(0, start - reach), min(len(points), stop + reach)
    A = points.shape[1]
    out = np.full((stop - start, A, len(model.names)), np.nan, np.float32)
    s = seq[lo:hi]
    a_idx, t_idx = np.nonzero((s >= 0).T)
    if len(t_idx):
        p = predict_proba(model, feats[lo:hi][t_idx, a_idx], video_ids=s[t_idx, a_idx], fps=fps)
        keep = (t_idx + lo >= start) & (t_idx + lo < stop)
        out[t_idx[keep] + lo - start, a_idx[keep]] = p[keep]
    return out


def load_behaviour_model(checkpoint: str | os.PathLike, device: str | None = None):
    """``(model_kind, model)`` of a BehaveNet or pose-classifier checkpoint.

    Raises:
        ValueError: naming the file: neither kind.
    """
    import torch

    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{checkpoint}: cannot read the behaviour checkpoint ({exc})") from None
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt == "sipec-behavenet-1":
        from sipec_models.training.behavenet import load_behavenet

        return "behavenet", load_behavenet(checkpoint, device=device)
    if fmt == "sipec-pose-classifier-1":
        from sipec_models.training.pose_classifier import load_pose_classifier

        return "pose_classifier", load_pose_classifier(checkpoint)
    from sipec_models.training.deg_sequence import FORMAT as DEG_FORMAT

    if fmt == DEG_FORMAT:
        from sipec_models.training.deg_sequence import load_sequence_model

        return "deepethogram", load_sequence_model(checkpoint, device=device)
    raise ValueError(f"{checkpoint}: not a BehaveNet, pose-classifier or DeepEthogram sequence checkpoint "
                     f"(format {fmt!r})")


def run_behave(store: str | os.PathLike, plan: str | os.PathLike, chunk: int, checkpoint: str | os.PathLike,
               out: str | os.PathLike, pose: Sequence[str | os.PathLike] = (), px_per_cm: float | None = None,
               device: str | None = None, features: Sequence[str | os.PathLike] = ()) -> Path:
    """Behaviour probabilities of the animals of chunk ``chunk``; writes the chunk store ``out`` (atomically).

    Args:
        store: the tracked video store ``<video>.zarr`` (``com``, ``crop``).
        plan: the video's chunk plan.
        checkpoint: a BehaveNet or pose-classifier checkpoint.
        pose: the video's pose chunk stores (pose classifier only).
        px_per_cm: image px per cm of the video (pose classifier only).
        features: the video's ``extract_features`` chunk stores (DeepEthogram
            only; read with a halo of the TGM's receptive radius).

    ``out`` holds ``behaviour_prob`` ``(frame, animal, behaviour)`` float32
    in [0, 1] (NaN for empty slots), attributes ``behaviour_names``,
    ``behaviour_model``, ``multilabel``, ``postprocess`` (thresholds, minimum
    bouts in frames, their fps), ``frame_start``, ``frame_stop``, ``chunk``,
    ``halo``, ``provenance``.
    """
    kind, model = load_behaviour_model(checkpoint, device)
    start, stop = plan_chunk(plan, chunk)
    group = open_store(store)
    T = int(group.attrs["n_frames"])
    if stop > T:
        raise ValueError(f"{store}: holds {T} frames but chunk {chunk} ends at {stop}")
    fps = float(group.attrs["fps"])
    if kind == "behavenet":
        n = model.half_window
        lo, hi = max(0, start - n), min(T, stop + n)
        valid = np.isfinite(group["com"][lo:hi]).all(-1)
        motion = None
        if model.motion_input:  # speeds at the halo's edges need one more frame on each side
            lo1, hi1 = max(0, lo - 1), min(T, hi + 1)
            motion = com_speed(group["com"][lo1:hi1], fps, float(group["crop"].shape[-1]))[lo - lo1:hi - lo1]
        probs = behavenet_probs(model, group["crop"][lo:hi], valid, motion)[start - lo:stop - lo]
        pp = dict(getattr(model, "meta", {}).get("postprocess") or {})
        multilabel, halo = model.multilabel, n
    elif kind == "deepethogram":
        from sipec_models.training.deepethogram import deepethogram_probs, read_deg_features

        if not features:
            raise ValueError(f"{checkpoint}: a DeepEthogram model needs the video's feature chunk stores "
                             "(extract_features)")
        n = int(model.net.receptive_radius)
        lo, hi = max(0, start - n), min(T, stop + n)
        probs = deepethogram_probs(model, read_deg_features(features, lo, hi))[start - lo:stop - lo]
        train_fps = (model.history or {}).get("fps")
        pp = {"thresholds": np.asarray(model.thresholds, float).tolist(),
              "min_frames": np.asarray(model.min_bout_frames, int).tolist(), "fps": train_fps}
        multilabel, halo = True, n
    else:
        if not pose:
            raise ValueError(f"{checkpoint}: a pose classifier needs the video's pose chunk stores (pose.enabled)")
        if not px_per_cm or px_per_cm <= 0:
            raise ValueError(f"{store}: the pose classifier needs the video's px_per_cm (behaviour.px_per_cm or a "
                             "px_per_cm column in videos.tsv)")
        from sipec_models.tables import read_pose_chunks

        points, conf, nodes = read_pose_chunks(pose, T)
        probs = pose_classifier_probs(model, points, conf, nodes, fps, float(px_per_cm), start, stop)
        pp = {"thresholds": [float(v) for v in model.thresholds], "min_frames": [int(v) for v in model.min_frames],
              "fill_gaps": int(getattr(model, "fill_gaps", 0)), "fps": model.fps}
        multilabel, halo = bool(model.multilabel), None
    prov = group.attrs.get("provenance", {}) or {}
    attrs = {"video_id": group.attrs.get("video_id", ""), "chunk": chunk, "frame_start": start, "frame_stop": stop,
             "behaviour_names": list(model.names), "behaviour_model": kind, "multilabel": bool(multilabel),
             "postprocess": pp, "halo": halo,
             "provenance": provenance(prov.get("video", ""), prov.get("video_checksum", ""),
                                      {"behaviour": {"checkpoint": str(checkpoint), "model": kind}})}
    write_store(out, {"behaviour_prob": spec_field("behaviour_prob", probs.astype(np.float32), instance_dim="animal")},
                attrs)
    log.info("chunk %d [%d, %d): %s probabilities of %d animal observations (%s)", chunk, start, stop, kind,
             int(np.isfinite(probs).all(-1).sum()), ", ".join(model.names))
    return Path(out)


def run_behave_pairs(social: Sequence[str | os.PathLike], store: str | os.PathLike, plan: str | os.PathLike,
                     chunk: int, checkpoint: str | os.PathLike, out: str | os.PathLike,
                     device: str | None = None) -> Path:
    """Pair-behaviour probabilities of chunk ``chunk`` from the social events' pair crops (SIPEC's social input).

    Args:
        social: the video's social chunk stores (``pair_event``, ``pair_com``,
            ``pair_crop``); the neighbours of chunk ``chunk`` give its halo of
            ``n`` frames, so chunk borders do not change the result.
        store: the tracked video store (frame count and fps).
        checkpoint: a BehaveNet checkpoint trained on pair crops
            (``sipec train-behavenet --pairs``).

    ``out`` holds ``behaviour_prob`` ``(frame, pair, behaviour)`` float32 in
    [0, 1] (NaN where the pair has no event) and the attributes of
    :func:`run_behave` plus ``pairs`` (the slot pair of each index).
    """
    from sipec_models.social import read_social_frames, social_pairs

    kind, model = load_behaviour_model(checkpoint, device)
    meta = dict(getattr(model, "meta", {}) or {})
    if kind != "behavenet" or meta.get("input") != "pair":
        raise ValueError(f"{checkpoint}: not a BehaveNet trained on pair crops (train it with "
                         "`sipec train-behavenet --pairs`)")
    start, stop = plan_chunk(plan, chunk)
    group = open_store(store)
    T, fps = int(group.attrs["n_frames"]), float(group.attrs["fps"])
    if stop > T:
        raise ValueError(f"{store}: holds {T} frames but chunk {chunk} ends at {stop}")
    n = model.half_window
    lo, hi = max(0, start - n - 1), min(T, stop + n + 1)  # one more frame for the speed at the halo's edges
    arr = read_social_frames(social, lo, hi)
    event = arr["pair_event"]
    motion = None
    if model.motion_input:
        motion = com_speed(np.where(event[..., None], arr["pair_com"], np.nan), fps,
                           float(arr["pair_crop"].shape[-1]))
    a, b = max(0, start - n) - lo, min(T, stop + n) - lo
    probs = behavenet_probs(model, arr["pair_crop"][a:b], event[a:b], None if motion is None else motion[a:b])
    probs = probs[start - lo - a:stop - lo - a]
    prov = group.attrs.get("provenance", {}) or {}
    attrs = {"video_id": group.attrs.get("video_id", ""), "chunk": chunk, "frame_start": start, "frame_stop": stop,
             "behaviour_names": list(model.names), "behaviour_model": "behavenet_pairs",
             "multilabel": bool(model.multilabel), "postprocess": dict(meta.get("postprocess") or {}), "halo": n,
             "pairs": [list(p) for p in social_pairs(social)],
             "provenance": provenance(prov.get("video", ""), prov.get("video_checksum", ""),
                                      {"behaviour": {"checkpoint": str(checkpoint), "model": "behavenet_pairs"}})}
    write_store(out, {"behaviour_prob": spec_field("behaviour_prob", probs.astype(np.float32), instance_dim="pair")},
                attrs)
    log.info("chunk %d [%d, %d): pair behaviour of %d pair-frames with events (%s)", chunk, start, stop,
             int(np.isfinite(probs).all(-1).sum()), ", ".join(model.names))
    return Path(out)

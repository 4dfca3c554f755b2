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

MODELS = ("behavenet", "pose_classifier")


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
    raise ValueError(f"{checkpoint}: neither a BehaveNet nor a pose-classifier checkpoint (format {fmt!r})")


def run_behave(store: str | os.PathLike, plan: str | os.PathLike, chunk: int, checkpoint: str | os.PathLike,
               out: str | os.PathLike, pose: Sequence[str | os.PathLike] = (), px_per_cm: float | None = None,
               device: str | None = None) -> Path:
    """Behaviour probabilities of the animals of chunk ``chunk``; writes the chunk store ``out`` (atomically).

    Args:
        store: the tracked video store ``<video>.zarr`` (``com``, ``crop``).
        plan: the video's chunk plan.
        checkpoint: a BehaveNet or pose-classifier checkpoint.
        pose: the video's pose chunk stores (pose classifier only).
        px_per_cm: image px per cm of the video (pose classifier only).

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

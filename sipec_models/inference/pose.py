"""The ``pose`` rule: top-down keypoints (PoseNet or LEAP) of every animal in one chunk of a tracked video."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from sipec_models.inference.ingest import plan_chunk
from sipec_models.io.store import open_store, provenance, spec_field, write_store
from sipec_models.io.video import iter_frames, probe
from sipec_models.pose import PosePredictor

log = logging.getLogger(__name__)


def pose_frames(predictor: PosePredictor, frames, com: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints of every animal slot with a centre in a block of frames.

    Args:
        predictor: a loaded pose model.
        frames: ``(T, H, W)`` grey or ``(T, H, W, 3)`` RGB uint8 frames.
        com: ``(T, A, 2)`` animal centres (centres of mass), frame px; NaN for empty slots.

    Returns:
        ``keypoints (T, A, K, 2)`` float32 frame px and ``confidence (T, A, K)``
        float32 in [0, 1]; NaN for empty slots (and for keypoints below the
        model's ``infer.min_confidence``).
    """
    T, A = com.shape[:2]
    K = len(predictor.node_names)
    points = np.full((T, A, K, 2), np.nan, np.float32)
    conf = np.full((T, A, K), np.nan, np.float32)
    t, a = np.nonzero(np.isfinite(com).all(-1))
    if len(t):
        p, c = predictor.predict(frames, com[t, a], frame_index=t)
        points[t, a], conf[t, a] = p, c
    return points, conf


def run_pose(video: str | os.PathLike, store: str | os.PathLike, plan: str | os.PathLike, chunk: int,
             checkpoint: str | os.PathLike | torch.nn.Module, out: str | os.PathLike, block: int = 64,
             device: str | None = None) -> Path:
    """Keypoints of the animals of chunk ``chunk`` of a tracked video; writes the chunk store ``out``.

    Top-down: each animal's crop is centred on its centre of mass ``com``
    from the video store ``store`` (``<video>.zarr``, written by ``track``;
    slot ``a`` is track slot ``a``, as in every per-video array), and the
    pose model ``checkpoint`` (path, or a network from
    :func:`~sipec_models.training.pose.train_pose`) finds the keypoints in
    it. Frames ``[start, stop)`` of the chunk are decoded ``block`` at a time.

    Writes ``out`` (atomically) with ``keypoints`` ``(frame, animal,
    keypoint, xy)`` float32 frame px and ``keypoint_confidence`` ``(frame,
    animal, keypoint)`` float32 in [0, 1] (peak heatmap value), NaN for
    empty slots; attributes ``node_names``, ``flip_pairs``, ``pose_model``
    (posenet or leap), ``frame_start``, ``frame_stop``, ``chunk``,
    ``n_animals``, ``provenance``.

    Raises:
        ValueError: naming the file: a chunk the plan does not have, a store
            shorter than the plan, a checkpoint that is not a pose model or
            whose weights do not fit its node count or input channels.
    """
    name = "" if isinstance(checkpoint, torch.nn.Module) else str(checkpoint)
    predictor = PosePredictor(checkpoint, device=device)
    K = int(getattr(predictor.model, "num_keypoints", 0))
    if not predictor.node_names:
        predictor.node_names = [f"node{k}" for k in range(K)]
    if len(predictor.node_names) != K:
        raise ValueError(f"{name or 'pose model'}: {len(predictor.node_names)} node names for {K} keypoints")
    start, stop = plan_chunk(plan, chunk)
    group = open_store(store)
    n_frames = int(group.attrs["n_frames"])
    if stop > n_frames:
        raise ValueError(f"{store}: holds {n_frames} frames but chunk {chunk} ends at {stop}")
    com = group["com"][start:stop].astype(np.float64)
    info = probe(video)
    points, conf = [], []
    buf: list[np.ndarray] = []
    frames = iter_frames(video, start, stop, gray=not predictor.rgb, info=info)
    for i, frame in enumerate(frames, start=1):
        buf.append(frame)
        if len(buf) == block or i == stop - start:
            s = i - len(buf)
            p, c = pose_frames(predictor, np.stack(buf), com[s:i])
            points.append(p)
            conf.append(c)
            buf = []
    got = sum(len(p) for p in points)
    if got != stop - start:
        raise ValueError(f"{video}: decoded {got} of the {stop - start} frames of chunk {chunk} [{start}, {stop})")
    points = np.concatenate(points) if points else np.zeros((0, com.shape[1], K, 2), np.float32)
    conf = np.concatenate(conf) if conf else np.zeros((0, com.shape[1], K), np.float32)
    prov = group.attrs.get("provenance", {}) or {}
    cfg = predictor.config
    attrs = {
        "video_id": group.attrs.get("video_id", Path(video).stem), "chunk": chunk, "frame_start": start,
        "frame_stop": stop, "n_animals": int(com.shape[1]), "node_names": list(predictor.node_names),
        "flip_pairs": [list(p) for p in predictor.flip_pairs], "pose_model": cfg["model"]["name"],
        "provenance": provenance(video, prov.get("video_checksum", ""), {
            "pose": {"checkpoint": name, "model": cfg["model"]["name"], "data": dict(cfg["data"]),
                     "min_confidence": predictor.min_confidence},
        }),
    }
    write_store(out, {"keypoints": spec_field("keypoints", points, instance_dim="animal"),
                      "keypoint_confidence": spec_field("keypoint_confidence", conf, instance_dim="animal")}, attrs)
    n = int(np.isfinite(conf).any(-1).sum())
    log.info("chunk %d [%d, %d): poses of %d animal observations (%d keypoints)", chunk, start, stop, n, K)
    return Path(out)

"""Workflow entries of DeepEthogram (``behaviour.model: deepethogram``): the three stages trained in series on the
animals' crops of tracked videos, then features per chunk.

DeepEthogram classifies whole frames of single-animal videos. Here each
animal is its own "video": the masked crop of one track slot
(``crop (frame, slot, y, x)`` of the video store, resized to
``data.input_size``), along each run of frames the slot holds an animal
(:func:`~sipec_models.behaviour_data.slot_sequences`). So labels, tracks,
chunks and merged tables are the same as for BehaveNet, and several animals
per video work.

* ``train_flow`` (:func:`run_train_deg_flow`): the flow generator on every
  run of every labelled video's slots, without labels; the last
  ``data.val_fraction`` of each run is held out.
* ``train_features`` (:func:`run_train_deg_features`): the two-stream
  feature extractor on the labelled frames, each with the 10 flows of the 11
  frames centred on it (computed by the trained flow generator).
* ``extract_features[chunk]`` (:func:`run_extract_deg_features`): 512
  spatial + 512 flow features per animal and frame of one chunk, read with a
  halo of 5 frames so chunk borders do not change them.
* ``train_sequence`` (:func:`run_train_deg_sequence`): the TGM sequence model
  on the extracted features of the labelled videos' runs; its checkpoint is
  the behaviour model ``behave`` runs (per-behaviour thresholds chosen on
  validation, minimum bout lengths from the training labels).

Labels are DeepEthogram's multi-label 0/1 per behaviour plus ``background``
(1 where no behaviour is labelled; added when some labelled frame has none).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sipec_models.behaviour_data import slot_sequences
from sipec_models.ethogram import BACKGROUND
from sipec_models.io.store import Field, open_store, provenance, write_store
from sipec_models.training.behaviour import _check_names, _source_labels
from sipec_models.training.config import load_model_config, to_dict

log = logging.getLogger(__name__)

#: Frames of context each side that the flows of a frame see (11 frames centred on it).
FLOW_HALO = 5


def resize_crops(crops: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``(N, S, S[, 3])`` uint8 crops -> ``(N, 3, H, W)`` uint8 at ``size = (H, W)`` (grey repeated to RGB)."""
    x = torch.as_tensor(np.asarray(crops))
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x.float(), size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous().numpy()


def multilabel_targets(y: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """0/1 labels ``(..., C)`` (NaN unlabelled) -> ``(..., C + 1)`` with DeepEthogram's ``background`` column
    (1 where a labelled frame has no behaviour), added when some labelled frame has none (as BehaveNet's
    exclusive classes); an existing ``background`` column is kept."""
    names = list(names)
    y = np.asarray(y, np.float32)
    labelled = np.isfinite(y).all(-1, keepdims=True)
    none = labelled & (np.nan_to_num(y).sum(-1, keepdims=True) == 0)
    if BACKGROUND in names or not none.any():
        return y, names
    bg = np.where(labelled, none.astype(np.float32), np.nan)
    return np.concatenate([y, bg], -1), names + [BACKGROUND]


def _runs(valid: np.ndarray) -> list[tuple[int, int, int]]:
    """``(slot, start, stop)`` of each run of valid frames of a ``(T, A)`` bool array."""
    seq = slot_sequences(valid)
    out = []
    for a in range(valid.shape[1]):
        ids = seq[:, a]
        for s in np.unique(ids[ids >= 0]):
            t = np.flatnonzero(ids == s)
            out.append((a, int(t[0]), int(t[-1]) + 1))
    return out


def _cfg(overrides: Iterable[str]):
    return load_model_config("deepethogram", list(overrides))


def flow_example(model, clips) -> tuple[np.ndarray, np.ndarray, str]:
    """The frame pair with the most change among ``clips`` and the model's flow between them.

    Returns:
        ``(pair (2, C, H, W) float in [0, 1], flow (2, H, W) px, name)``.
    """
    best = None
    for clip in clips:
        x = clip.frames.astype(np.float32)
        if len(x) < 2:
            continue
        change = np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3))
        k = int(change.argmax())
        if best is None or change[k] > best[0]:
            best = (float(change[k]), clip, k)
    if best is None:
        raise ValueError("no clip of two or more frames")
    _, clip, k = best
    half = (int(model.n_frames) - 1) // 2
    flows = _flows(model, clip.frames, k, k + 1)  # window t-5..t+5: flow `half` goes from t to t + 1
    return clip.frames[k:k + 2] / 255.0, flows[0, 2 * half:2 * half + 2], f"{clip.video} frame {clip.start + k}"


def run_train_deg_flow(sources: Sequence[Mapping[str, Any]], out: str | os.PathLike, overrides: Sequence[str] = (),
                       metrics_out: str | os.PathLike | None = None, figure: str | os.PathLike | None = None,
                       progress: bool = True) -> dict:
    """The ``train_flow`` workflow step: the flow generator on the animals' crops of the sources' videos.

    Args:
        sources: dicts with ``store`` (a tracked ``<video>.zarr``); labels are not used.
        out: checkpoint (:func:`sipec_models.training.flow.load_flow_generator` reads it).
        figure: optional PNG: the held-out frame pair with the most change, its flow and the reconstruction
            error without and with it (:func:`sipec_models.plots.flow_figure`).

    Raises:
        ValueError: no run of at least ``flow.n_frames`` frames in any source.
    """
    from sipec_models.training.flow import Clip, checkpoint_payload, train_flow_generator

    cfg = _cfg(overrides)
    size = [int(v) for v in cfg.data.input_size]
    n = int(cfg.flow.n_frames)
    val_fraction = float(cfg.data.val_fraction)
    train, val = [], []
    for src in sources:
        group = open_store(src["store"])
        valid = np.isfinite(group["com"][...]).all(-1)
        for a, s, e in _runs(valid):
            if e - s < n:
                continue
            frames = resize_crops(group["crop"][s:e, a], size)
            frames = frames[:, :3] if cfg.data.rgb else frames[:, :1]
            n_val = int(round((e - s) * val_fraction))
            if e - s - n_val >= n and n_val >= n:
                train.append(Clip(f"{src['store']}#slot{a}", s, frames[:e - s - n_val]))
                val.append(Clip(f"{src['store']}#slot{a}", e - n_val, frames[e - s - n_val:]))
            else:
                train.append(Clip(f"{src['store']}#slot{a}", s, frames))
    if not train:
        raise ValueError(f"no track of {', '.join(str(s['store']) for s in sources)} holds an animal for "
                         f"{n} consecutive frames: too short to train the flow generator")
    log.info("flow generator: %d training and %d validation runs of animal crops at %s px", len(train), len(val),
             size)
    model, history = train_flow_generator(train, val, cfg, out=out, progress=progress)
    extra = {"stores": [str(s["store"]) for s in sources], "input": "crop", "history": history}
    from sipec_models.training.config import save_checkpoint

    save_checkpoint(checkpoint_payload(model, cfg, size, extra), out)
    summary = {"checkpoint": str(out), "arch": model.arch, "input_size": size, "best_epoch": history["best_epoch"],
               "best_val_loss": history["best_val_loss"],
               "zero_flow_val_loss": (history["zero_flow_val"] or {}).get("total"),
               "n_train_windows": history["n_train_windows"], "n_val_windows": history["n_val_windows"]}
    if figure:
        from sipec_models.plots import flow_figure

        pair, flow, name = flow_example(model, val or train)
        flow_figure(pair, flow, figure, title=f"{model.arch}: {name} (held out)" if val else f"{model.arch}: {name}")
    if metrics_out:
        from sipec_models.inference.ingest import write_json_atomic

        write_json_atomic(metrics_out, summary)
    return summary


def _flows(flow_model, frames: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
    from sipec_models.training.flow import flows_for_frames

    with torch.no_grad():
        return flows_for_frames(flow_model, frames, start, stop).numpy()


def _source_targets(src: Mapping[str, Any], group, behaviours, max_distance) -> tuple[np.ndarray, list[str]]:
    """A source's labels on its track slots (as BehaveNet's) with DeepEthogram's background column."""
    return multilabel_targets(*_source_labels(src, group, behaviours, max_distance))


def run_train_deg_features(sources: Sequence[Mapping[str, Any]], flow: str | os.PathLike, out: str | os.PathLike,
                           overrides: Sequence[str] = (), behaviours: Sequence[str] | None = None,
                           max_distance: float = 20.0, metrics_out: str | os.PathLike | None = None,
                           progress: bool = True) -> dict:
    """The ``train_features`` workflow step: the two-stream feature extractor on the labelled animal-frames.

    Every run of a slot that holds labelled frames becomes one
    :class:`~sipec_models.training.deg_features.VideoSample` (its frames from
    the first to the last labelled one, unlabelled frames NaN), with flows
    from the trained flow generator ``flow`` (computed with the run's
    neighbouring frames as context).
    """
    from sipec_models.training.deg_features import VideoSample, save_feature_extractor, train_feature_extractor
    from sipec_models.training.flow import load_flow_generator

    cfg = _cfg(overrides)
    size = [int(v) for v in cfg.data.input_size]
    flow_model = load_flow_generator(flow)
    if tuple(flow_model.input_size) != tuple(size):
        raise ValueError(f"{flow}: the flow generator was trained at {flow_model.input_size} px but data.input_size "
                         f"is {size}: retrain it (train_flow) with the same overrides")
    samples, names, stats = [], None, []
    for src in sources:
        group = open_store(src["store"])
        y, n = _source_targets(src, group, behaviours, max_distance)
        names = _check_names(n, names, src)
        valid = np.isfinite(group["com"][...]).all(-1)
        labelled = np.isfinite(y).all(-1) & valid
        for a, s, e in _runs(valid):
            t = np.flatnonzero(labelled[s:e, a])
            if not len(t):
                continue
            lo, hi = s + int(t[0]), s + int(t[-1]) + 1
            clo, chi = max(s, lo - FLOW_HALO), min(e, hi + FLOW_HALO)
            frames = resize_crops(group["crop"][clo:chi, a], size)
            flows = _flows(flow_model, frames, lo - clo, hi - clo)
            samples.append(VideoSample(frames[lo - clo:hi - clo], flows, y[lo:hi, a]))
        stats.append({"video": str(src["video"]), "labelled_animal_frames": int(labelled.sum())})
    if not samples:
        raise ValueError("no labelled frame of any source holds a tracked animal: check behaviour.labels")
    log.info("feature extractor: %d runs, %d labelled frames, behaviours %s", len(samples),
             sum(int(np.isfinite(s.targets).all(-1).sum()) for s in samples), ", ".join(names))
    features_cfg = to_dict(cfg)["features"]
    model, history = train_feature_extractor(samples, names, features_cfg, progress=progress, seed=int(cfg.seed))
    save_feature_extractor(model, out, names, config=to_dict(cfg), history={**history, "sources": stats,
                                                                          "flow": str(flow)})
    summary = {"checkpoint": str(out), "names": names, "n_runs": len(samples), "sources": stats,
               "val_macro_f1": history.get("val_macro_f1"), "thresholds": history.get("thresholds"),
               "epochs": history.get("epochs")}
    if metrics_out:
        from sipec_models.inference.ingest import write_json_atomic

        write_json_atomic(metrics_out, summary)
    return summary


def deg_features_of_block(crops: np.ndarray, valid: np.ndarray, flow_model, extractor, size: Sequence[int],
                          batch_size: int = 64) -> np.ndarray:
    """``(T, A, 1024)`` float32 features (512 spatial then 512 flow; NaN where a slot is empty) of a block of
    ``(T, A, S, S)`` crops; flows see the 5 neighbouring frames of each run inside the block (edges repeated)."""
    from sipec_models.training.deg_features import extract_features

    T, A = valid.shape
    out = np.full((T, A, 2 * extractor.feature_dim), np.nan, np.float32)
    for a, s, e in _runs(valid):
        frames = resize_crops(crops[s:e, a], size)
        f = extract_features(extractor, frames, _flows(flow_model, frames), batch_size=batch_size)
        out[s:e, a] = np.concatenate([f["spatial"], f["flow"]], 1)
    return out


def run_extract_deg_features(store: str | os.PathLike, plan: str | os.PathLike, chunk: int,
                             flow: str | os.PathLike, features: str | os.PathLike, out: str | os.PathLike) -> Path:
    """The ``extract_features[chunk]`` workflow step: DeepEthogram features of every animal of one chunk.

    Writes ``deg_features`` ``(frame, animal, feature)`` float32 (512
    spatial then 512 flow features; NaN for empty slots) and attributes
    ``frame_start``, ``frame_stop``, ``chunk``, ``halo``, ``provenance``.
    """
    from sipec_models.inference.ingest import plan_chunk
    from sipec_models.training.deg_features import load_feature_extractor
    from sipec_models.training.flow import load_flow_generator

    flow_model = load_flow_generator(flow)
    extractor, ckpt = load_feature_extractor(features)
    size = list(flow_model.input_size)
    start, stop = plan_chunk(plan, chunk)
    group = open_store(store)
    T = int(group.attrs["n_frames"])
    if stop > T:
        raise ValueError(f"{store}: holds {T} frames but chunk {chunk} ends at {stop}")
    lo, hi = max(0, start - FLOW_HALO), min(T, stop + FLOW_HALO)
    valid = np.isfinite(group["com"][lo:hi]).all(-1)
    feats = deg_features_of_block(group["crop"][lo:hi], valid, flow_model, extractor, size)[start - lo:stop - lo]
    prov = group.attrs.get("provenance", {}) or {}
    attrs = {"video_id": group.attrs.get("video_id", ""), "chunk": chunk, "frame_start": start, "frame_stop": stop,
             "halo": FLOW_HALO, "behaviour_names": list(ckpt["names"]),
             "provenance": provenance(prov.get("video", ""), prov.get("video_checksum", ""),
                                      {"deepethogram": {"flow": str(flow), "features": str(features)}})}
    write_store(out, {"deg_features": Field(feats, ("frame", "animal", "feature"), "1")}, attrs)
    log.info("chunk %d [%d, %d): DeepEthogram features of %d animal-frames", chunk, start, stop,
             int(np.isfinite(feats).all(-1).sum()))
    return Path(out)


def read_deg_features(paths: Sequence[str | os.PathLike], start: int, stop: int) -> np.ndarray:
    """Frames ``[start, stop)`` of a video's ``extract_features`` chunk stores: ``(stop - start, A, D)``
    float32, NaN where no chunk covers a frame or a slot is empty."""
    if not paths:
        raise ValueError("no DeepEthogram feature chunk stores given")
    out = None
    for p in paths:
        g = open_store(p)
        s, e = int(g.attrs["frame_start"]), int(g.attrs["frame_stop"])
        if out is None:
            out = np.full((stop - start,) + tuple(g["deg_features"].shape[1:]), np.nan, np.float32)
        a, b = max(s, start), min(e, stop)
        if a < b:
            out[a - start:b - start] = g["deg_features"][a - s:b - s]
    return out


def sequence_runs(sources: Sequence[Mapping[str, Any]], behaviours: Sequence[str] | None = None,
                  max_distance: float = 20.0) -> tuple[list[np.ndarray], list[np.ndarray], list[str], list[dict]]:
    """The sequence model's training data: every run of a slot with features that holds labelled frames.

    Args:
        sources: label sources with ``features`` (the video's ``extract_features`` chunk stores).

    Returns:
        per run ``(T_r, D)`` features and ``(T_r, K)`` 0/1 labels (NaN unlabelled), the ``K`` behaviour
        names (with ``background``) and per-source counts.
    """
    feats, labs, names, stats = [], [], None, []
    for src in sources:
        group = open_store(src["store"])
        y, n = _source_targets(src, group, behaviours, max_distance)
        names = _check_names(n, names, src)
        T = int(group.attrs["n_frames"])
        x = read_deg_features(src["features"], 0, T)
        valid = np.isfinite(x).all(-1)
        for a, s, e in _runs(valid):
            if np.isfinite(y[s:e, a]).all(-1).any():
                feats.append(x[s:e, a])
                labs.append(y[s:e, a])
        stats.append({"video": str(src["video"]), "runs": len(feats)})
    if not feats:
        raise ValueError("no labelled frame of any source has DeepEthogram features: check behaviour.labels")
    return feats, labs, list(names), stats


def train_feature_stages(sources: Sequence[Mapping[str, Any]], train_sources: Sequence[Mapping[str, Any]],
                         videos: Sequence[str], workdir: str | os.PathLike, overrides: Sequence[str] = (),
                         behaviours: Sequence[str] | None = None,
                         max_distance: float = 20.0) -> dict[str, list[str]]:
    """DeepEthogram's first two stages in series, as the workflow runs them, and the features they give:
    the flow generator (unsupervised) on the videos of ``train_sources``, the feature extractor on their
    labels (``frames`` ranges respected), then the features of every video of ``train_sources`` and
    ``videos`` (one store per video, the whole video).

    Args:
        sources: one label source per video (``video``, ``store``, ...).
        train_sources: the sources to train on (possibly with ``frames`` ranges, several per video).
        videos: further videos to extract features of (e.g. test videos).
        workdir: folder for ``flow.pt``, ``features.pt`` and ``deg_features_<video>.zarr``.

    Returns:
        video -> its feature stores (``features`` of :func:`run_train_deg_sequence` and ``run_behave``).
    """
    workdir = Path(workdir)
    by_video = {s["video"]: s for s in sources}
    train_videos = list(dict.fromkeys(s["video"] for s in train_sources))
    run_train_deg_flow([by_video[v] for v in train_videos], workdir / "flow.pt", overrides=overrides, progress=False)
    run_train_deg_features(train_sources, workdir / "flow.pt", workdir / "features.pt", overrides=overrides,
                           behaviours=behaviours, max_distance=max_distance, progress=False)
    features = {}
    for v in dict.fromkeys([*train_videos, *videos]):
        T = int(open_store(by_video[v]["store"]).attrs["n_frames"])
        plan = workdir / f"plan_{v}.json"
        plan.write_text(json.dumps({"n_frames": T, "chunk_size": T, "chunks": [{"chunk": 0, "start": 0, "stop": T}]}))
        features[v] = [str(run_extract_deg_features(by_video[v]["store"], plan, 0, workdir / "flow.pt",
                                                    workdir / "features.pt", workdir / f"deg_features_{v}.zarr"))]
    return features


def run_train_deg_sequence(sources: Sequence[Mapping[str, Any]], out: str | os.PathLike,
                           overrides: Sequence[str] = (), behaviours: Sequence[str] | None = None,
                           max_distance: float = 20.0, metrics_out: str | os.PathLike | None = None,
                           progress: bool = True):
    """The ``train_sequence`` workflow step: the TGM sequence model on the extracted features of labelled runs.

    Args:
        sources: as for :func:`run_train_deg_features`, plus ``features``:
            the video's ``extract_features`` chunk stores.
        out: the behaviour checkpoint ``behave`` runs (a
            :class:`~sipec_models.training.deg_sequence.SequenceModel` with
            thresholds and minimum bouts).
    """
    from sipec_models.training.deg_sequence import save_sequence_model, train_sequence

    cfg = _cfg(overrides)
    feats, labs, names, stats = sequence_runs(sources, behaviours, max_distance)
    model = train_sequence(feats, labs, names, cfg=to_dict(cfg), progress=progress)
    fps = float(open_store(sources[0]["store"]).attrs.get("fps") or 0) or None
    model.history = {**(model.history or {}), "sources": stats, "fps": fps}
    save_sequence_model(model, out)
    summary = {"checkpoint": str(out), "names": list(model.names), "thresholds": np.asarray(model.thresholds).tolist(),
               "min_frames": np.asarray(model.min_bout_frames).tolist(), "fps": fps,
               "best_epoch": (model.history or {}).get("best_epoch"),
               "val_macro_f1": (model.history or {}).get("best_val_macro_f1"), "sources": stats}
    if metrics_out:
        from sipec_models.inference.ingest import write_json_atomic

        write_json_atomic(metrics_out, summary)
    return model


def deepethogram_probs(model, features: np.ndarray) -> np.ndarray:
    """``(T, A, K)`` sequence-model probabilities of a ``(T, A, D)`` feature block along each slot's runs of
    frames with features (NaN elsewhere); the TGM's receptive field stops at the ends of runs and block."""
    from sipec_models.training.deg_sequence import sequence_probs

    T, A = features.shape[:2]
    out = np.full((T, A, len(model.names)), np.nan, np.float32)
    for a, s, e in _runs(np.isfinite(features).all(-1)):
        out[s:e, a] = sequence_probs(model.net, features[s:e, a], chunk_length=None)
    return out

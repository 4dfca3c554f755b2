"""Background model and per-chunk segmentation (the ``background`` and ``segment`` rules)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sipec_models.inference.ingest import load_probe, plan_chunk
from sipec_models.io.store import provenance, spec_field, write_store
from sipec_models.inference.ingest import write_json_atomic
from sipec_models.segmentation.classical import ClassicalConfig, calibrate, estimate_background, segment_chunk

log = logging.getLogger(__name__)


def run_background(video, probe_json, options: Mapping[str, Any], out, calibration_out) -> ClassicalConfig:
    """Background model and calibration of the classical segmenter, once per video.

    Writes ``out`` (``.npy``, float32 ``(H, W)`` grey levels: a per-pixel
    quantile of evenly spaced frames) and ``calibration_out`` (JSON: the
    ``segmentation.classical`` options with polarity and thresholds resolved
    from frames spread over the whole video), so every chunk job segments
    with the same values.
    """
    info, _ = load_probe(probe_json)
    cfg = ClassicalConfig.from_dict(options)
    background = estimate_background(video, info=info, n_samples=cfg.background_samples, progress=True,
                                     polarity=cfg.polarity, quantile=cfg.background_quantile)
    resolved = calibrate(video, background, cfg, info=info, progress=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}.npy")
    try:
        np.save(tmp, background.astype(np.float32))
        write_json_atomic(calibration_out, resolved.to_dict())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("%s: %s animals, threshold %.1f, seed threshold %.1f grey levels", video, resolved.polarity,
             resolved.threshold, resolved.seed_threshold)
    return resolved


def load_background(path, info) -> np.ndarray:
    background = np.load(path)
    if background.shape != (info.height, info.width):
        raise ValueError(
            f"{path}: background is {background.shape[1]}x{background.shape[0]} but the video is "
            f"{info.width}x{info.height}; delete it so the workflow recomputes it"
        )
    return background


def run_segment(
    video, video_id: str, probe, plan, chunk: int, n_animals: int, options: Mapping[str, Any],
    tracking: Mapping[str, Any], out, background=None, calibration=None, model=None,
) -> Path:
    """Segment frames ``[start, stop)`` of chunk ``chunk`` and write the chunk store ``out``.

    ``options`` is the ``segmentation`` section of the config, ``tracking``
    its ``tracking`` section (the chunk-local tracks are linked here). With
    ``method: classical``, ``background`` and ``calibration`` (the resolved
    classical options from :func:`run_background`) are required; with
    ``method: segnet``, ``model`` (a SegNet checkpoint).
    """
    info, checksum = load_probe(probe)
    start, stop = plan_chunk(plan, chunk)
    method = options.get("method", "classical")
    n_instances = n_animals + int(options.get("extra_instances", 0))
    crop_size = int(options.get("crop_size", 64))
    color = options.get("color", "gray")
    if method == "classical":
        if background is None or calibration is None:
            raise ValueError("segmentation.method classical needs --background and --calibration")
        cfg = ClassicalConfig.from_dict(json.loads(Path(calibration).read_text()))
        used = {**options, "classical": cfg.to_dict()}
        arrays = segment_chunk(
            video, start, stop, load_background(background, info), cfg,
            n_animals=n_animals, n_instances=n_instances, crop_size=crop_size,
            color=color, info=info, progress=True, tracking=dict(tracking),
        )
    elif method == "segnet":
        if model is None:
            raise ValueError("segmentation.method segnet needs --model (a SegNet checkpoint)")
        from sipec_models.segmentation.segnet import segment_chunk_segnet

        used = {**options, "segnet": {**options.get("segnet", {}), "model": str(model)}}
        arrays = segment_chunk_segnet(
            video, start, stop, model, n_animals=n_animals, n_instances=n_instances, crop_size=crop_size,
            color=color, info=info, progress=True, tracking=dict(tracking),
        )
    else:
        raise ValueError(f"segmentation.method {method!r} is not available (classical or segnet)")
    fields = {name: spec_field(name, a) for name, a in arrays.items()}
    attrs = {
        "video_id": video_id, "chunk": chunk, "frame_start": start, "frame_stop": stop,
        "n_instances": n_instances, "n_animals": n_animals, "crop_size": crop_size,
        "segmenter": method, "fps": info.fps,
        "provenance": provenance(video, checksum, {"segmentation": used, "tracking": dict(tracking)}),
    }
    write_store(out, fields, attrs)
    found = arrays["n_found"]
    log.info("chunk %d [%d, %d): %d frames, mean %.2f instances/frame, %d frames with fewer than %d, %d with more",
             chunk, start, stop, stop - start, found.mean(), int((found < n_animals).sum()), n_animals,
             int((found > n_animals).sum()))
    if (found == 0).any():
        hint = (f"check the segmentation options, e.g. polarity and threshold, in {calibration}"
                if method == "classical" else f"check the SegNet model {model} and its infer.* thresholds")
        log.warning("%s: no animal found in %d of %d frames of chunk %d (%s)", video, int((found == 0).sum()),
                    len(found), chunk, hint)
    return Path(out)

"""SIPEC:IdNet on the SLEAP two-fly clip: identity accuracy against the human-labelled tracks.

Data: ``../shared/data/sleap_flies/clip.mp4`` (two flies, 1024x1024 grey,
25 fps, 1500 frames) and ``clip.slp`` (human labels on every frame; track
names ``female``/``male`` are the identity ground truth).

Steps:

1. segment the whole clip with the classical segmenter (background,
   calibration, ``segment_chunk`` with ``n_animals=2``, crop windows of
   ``--crop-size`` px) and put the instances in track slots;
2. match the SLEAP identities to the segmented animals (box around the
   labelled keypoints grown by ``--margin`` px vs segmented box, Hungarian
   on IoU per frame);
3. cut identity crop sequences (fixed ``--window`` px window, resized to
   ``--out-size``; masks of neighbour frames dilated more with distance);
4. train IdNet (frame network, then the recurrent network) on frames
   ``[0, --split)``; test on ``[--split, 1500)``: per-instance identity
   accuracy of the frame network alone and of the recurrent network (both
   with per-frame Hungarian assignment, so the two flies never share an
   identity), then with smoothing along the tracks (whole track runs and a
   moving window); identity changes along the tracks; the chance level
   (accuracy against time-shifted truth) beside each;
5. inference speed: frames/s of crops + network on decoded frames (median
   of 3 runs) and as a fraction of the decode rate of the same frames.

Anchor: SLEAP's stored predictions (``clip.predictions.slp``) agree with the
human identities on 91.9 % of instances in frames 900-1499; our goal is
>= 99.5 % without smoothing.

Run from the repository root (about 5-10 min on 2 CPU cores)::

    .venv/bin/python benchmarks/flies_idnet.py --out results/benchmarks/flies_idnet.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sipec_models.identity import (
    assign_identities, identities_from_slp, identity_accuracy, identity_changes, match_labels_to_slots,
    shuffled_chance, smooth_along_tracks, truth_per_slot,
)
from sipec_models.inference.identify import identify_frames
from sipec_models.io.video import probe, read_frames
from sipec_models.segmentation.classical import ClassicalConfig, calibrate, estimate_background, segment_chunk
from sipec_models.tracking import instances_to_slots
from sipec_models.training.config import load_model_config, to_dict
from sipec_models.training.idnet import (
    CropSettings, IdData, IdNetModel, collect_sequences, predict_proba, save_idnet, train_idnet,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sleap_flies"
FLIES = ("female", "male")
SLEAP_ANCHOR = 0.919  # clip.predictions.slp vs clip.slp identities, frames 900-1499


def segment(video: Path, info, crop_size: int, cache: Path | None) -> dict:
    """Per-slot arrays ``(T, 2, ...)`` of the classical segmentation + tracking of the whole clip."""
    keys = ("box", "com", "mask", "crop_origin", "track")
    if cache and cache.exists():
        d = np.load(cache)
        if d["mask"].shape[-1] == crop_size:
            return {k: d[k] for k in keys}
    cfg = ClassicalConfig()
    background = estimate_background(video, info, n_samples=cfg.background_samples, quantile=cfg.background_quantile,
                                     polarity=cfg.polarity)
    resolved = calibrate(video, background, cfg, info=info)
    arrays = segment_chunk(video, 0, info.n_frames, background, resolved, n_animals=2, n_instances=2,
                           crop_size=crop_size, info=info, progress=True)
    slots = instances_to_slots(arrays["local_track"], {k: arrays[k] for k in keys[:-1]}, n_slots=2)
    out = {k: slots[k] for k in keys}
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, **out)
    return out


def scores(prob: np.ndarray, truth: np.ndarray, track: np.ndarray, window: int) -> dict:
    """Accuracy (assigned, smoothed over runs, smoothed in a window), chance levels and identity changes."""
    res = {}
    variants = {
        "per_frame": assign_identities(prob),
        "smoothed_runs": smooth_along_tracks(prob, track)[0],
        f"smoothed_window_{window}": smooth_along_tracks(prob, track, window=window)[0],
    }
    argmax = np.where(np.isfinite(prob).all(axis=2), np.nan_to_num(prob).argmax(axis=2), -1)
    variants["argmax_no_assignment"] = argmax
    for name, pred in variants.items():
        res[name] = {
            "accuracy": identity_accuracy(pred, truth),
            "chance": shuffled_chance(pred, truth, n=200)["mean"],
            "identity_changes_along_tracks": int(identity_changes(pred, track).sum()),
            "errors": int(((pred != truth) & (truth >= 0)).sum()),
        }
    res["truth_identity_changes_along_tracks"] = int(identity_changes(truth, track).sum())
    res["labelled_instances"] = int((truth >= 0).sum())
    return res


def speed(video: Path, info, model: IdNetModel, seg: dict, start: int, n: int, batch: int) -> dict:
    """Median-of-3 frames/s of identification (crops + network) on decoded frames, and the decode rate."""
    h = model.crop.half_window
    t_dec, t_id = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        frames, first = read_frames(video, start, start + n, halo=h, gray=True, info=info)
        t_dec.append(time.perf_counter() - t0)
        sl = slice(first, first + len(frames))
        t0 = time.perf_counter()
        identify_frames(model, frames, seg["mask"][sl], seg["crop_origin"][sl], slice(start - first, start - first + n),
                        batch_size=batch, progress=False)
        t_id.append(time.perf_counter() - t0)
    fps, dec = n / float(np.median(t_id)), (n + 2 * h) / float(np.median(t_dec))
    return {"frames": n, "identify_frames_per_s": fps, "decode_frames_per_s": dec, "fraction_of_decode_rate": fps / dec}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--crop-size", type=int, default=128, help="segmentation mask window, px")
    ap.add_argument("--margin", type=float, default=10.0, help="px added around keypoint boxes for matching")
    ap.add_argument("--split", type=int, default=900, help="train on frames [0, split), test on [split, end)")
    ap.add_argument("--override", action="append", default=[], help="Hydra override of config/models/idnet.yaml")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--smooth-window", type=int, default=25, help="frames of the moving-window smoothing")
    ap.add_argument("--speed-frames", type=int, default=100)
    ap.add_argument("--cache", type=Path, default=Path("results/benchmarks/.flies_idnet_segmentation.npz"),
                    help="segmentation cache (re-used when present; '' to disable)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--model-out", type=Path, help="also save the trained IdNet checkpoint here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    video, slp = args.data / "clip.mp4", args.data / "clip.slp"
    if not video.exists() or not slp.exists():
        print(f"data not found: {video}, {slp}", file=sys.stderr)
        return 2
    overrides = ["crop.window=96", "crop.out_size=64", *args.override]
    cfg = to_dict(load_model_config("idnet", overrides))
    crop = CropSettings.from_dict(cfg["crop"])
    info = probe(video)
    T = info.n_frames
    timing = {}

    t0 = time.perf_counter()
    seg = segment(video, info, args.crop_size, args.cache if str(args.cache) else None)
    timing["segmentation_s"] = time.perf_counter() - t0

    labels = identities_from_slp(slp, which="user")
    labels = labels[labels["identity"].isin(FLIES)].reset_index(drop=True)
    slot_of = match_labels_to_slots(labels, seg["box"], seg["com"], margin=args.margin)
    truth = truth_per_slot(labels, slot_of, FLIES, seg["track"].shape)
    valid = seg["mask"].any(axis=(2, 3))
    items = [(t, a) for t in range(T) for a in range(2) if valid[t, a]]
    t0 = time.perf_counter()
    seq = collect_sequences(video, seg["mask"], seg["crop_origin"], items, crop, info=info, progress=True)
    timing["crops_s"] = time.perf_counter() - t0
    frames = np.array([t for t, _ in items])
    slots = np.array([a for _, a in items])
    lab = truth[frames, slots]
    train = (frames < args.split) & (lab >= 0)
    test = frames >= args.split

    t0 = time.perf_counter()
    frame_net, recurrent, metrics = train_idnet(IdData(seq[train], lab[train]), FLIES, cfg)
    timing["training_s"] = time.perf_counter() - t0
    if args.model_out:
        save_idnet(args.model_out, frame_net, recurrent, FLIES, cfg, crop, metrics)

    results = {}
    ts = slice(args.split, T)
    for name, use_rec in (("frame_net", False), ("recurrent", True)):
        if name == "recurrent" and recurrent is None:
            continue
        p = predict_proba(frame_net, recurrent, seq[test], use_recurrent=use_rec)
        prob = np.full((T, 2, 2), np.nan)
        prob[frames[test], slots[test]] = p
        results[name] = scores(prob[ts], truth[ts], seg["track"][ts], args.smooth_window)

    model = IdNetModel(frame_net, recurrent, list(FLIES), crop, cfg, metrics)
    sp = {"recurrent" if recurrent is not None else "frame_net": speed(video, info, model, seg, args.split,
                                                                      args.speed_frames, 64)}
    if recurrent is not None:
        fm = IdNetModel(frame_net, None, list(FLIES), CropSettings(**{**crop.to_dict(), "half_window": 0}), cfg, {})
        sp["frame_net"] = speed(video, info, fm, seg, args.split, args.speed_frames, 64)

    matched = slot_of >= 0
    out = {
        "video": str(video), "frames": T, "train_frames": [0, args.split], "test_frames": [args.split, T],
        "labels": int(len(labels)), "labels_matched": int(matched.sum()),
        "labels_matched_test": int(matched[labels["frame"].to_numpy() >= args.split].sum()),
        "frames_with_both_flies_segmented": float(valid.all(axis=1).mean()),
        "train_instances": int(train.sum()), "config": cfg, "crop": crop.to_dict(), "threads": args.threads,
        "train_metrics": metrics, "results": results, "speed": sp, "timing_s": timing,
        "anchors": {"sleap_predictions_identity_agreement_900_1499": SLEAP_ANCHOR, "goal_unsmoothed": 0.995},
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2, default=float) + "\n")
    rows = [("labels matched to segmented flies", f"{matched.sum()} / {len(labels)}"),
            ("frames with both flies segmented", f"{out['frames_with_both_flies_segmented']:.3f}"),
            ("train instances / test instances",
             f"{train.sum()} / {results['frame_net']['labelled_instances']}")]
    for name, r in results.items():
        for variant, v in r.items():
            if isinstance(v, dict):
                rows.append((f"{name} {variant}", f"acc {v['accuracy']:.4f} (chance {v['chance']:.3f}), "
                                                  f"errors {v['errors']}, id changes along tracks "
                                                  f"{v['identity_changes_along_tracks']}"))
        rows.append((f"{name} truth id changes along tracks", f"{r['truth_identity_changes_along_tracks']}"))
    rows.append(("anchor: SLEAP predictions vs human", f"{SLEAP_ANCHOR:.3f}; goal >= 0.995 unsmoothed"))
    for name, v in sp.items():
        rows.append((f"speed {name}", f"{v['identify_frames_per_s']:.1f} frames/s "
                                      f"({v['fraction_of_decode_rate']:.2f} of decode {v['decode_frames_per_s']:.1f})"))
    rows.append(("timing s", ", ".join(f"{k} {v:.0f}" for k, v in timing.items())))
    width = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Classical segmenter + tracker on the SLEAP two-fly clip, scored against the human keypoint labels.

Data: ``../shared/data/sleap_flies/clip.mp4`` (two flies, 1024x1024 grey,
25 fps, 1500 frames) and ``clip.slp`` (SLEAP labels for every frame: tracks
``female``/``male``, 13 nodes). There are no human masks or boxes; the truth
box of a fly is the box around its labelled keypoints grown by ``--margin``
px on every side (the keypoints lie on the body midline and at the tips of
legs and wings, so the body outline extends past the outermost ones by about
half a body width). Scores:

* **both found**: fraction of frames where both flies are detected, i.e. the
  optimal one-to-one matching (Hungarian on IoU) of predicted to truth boxes
  pairs each fly with a box of IoU >= 0.5;
* per-fly detection rate (same criterion);
* touching: frames where the segmenter split a merged blob, and frames where
  the two truth boxes overlap;
* centre error: distance (px) from the predicted centre of mass to the
  keypoint centroid, over detected flies;
* identity switches (:func:`sipec_models.tracking.identity_switches`) of the
  tracks against the truth tracks, for one unchunked run and for a chunked run
  (``segment_chunk`` per chunk, then ``stitch_chunks``);
* throughput: frames/s of ``segment_chunk`` (decode, segmentation, crops,
  tracking; one process) and of segmentation alone at 1024x1024 and at
  256x256 (the same frames block-averaged 4x4).

Run from the repository root::

    .venv/bin/python benchmarks/flies_detection.py --out results/benchmarks/flies_detection.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from sipec_models.io.video import iter_frames, probe
from sipec_models.segmentation.classical import (
    ClassicalConfig, ClassicalSegmenter, calibrate, estimate_background, segment_chunk,
)
from sipec_models.segmentation.flags import MERGED_SPLIT
from sipec_models.tracking import TrackingConfig, box_iou, identity_switches, instances_to_slots, stitch_chunks

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sleap_flies"
FLIES = ("female", "male")


def load_truth(slp: Path, n_frames: int) -> np.ndarray:
    """``(T, 2, K, 2)`` keypoints (x, y) px of the flies in :data:`FLIES` order (NaN = not labelled)."""
    import sleap_io

    labels = sleap_io.load_slp(str(slp))
    n_nodes = len(labels.skeletons[0].nodes)
    pts = np.full((n_frames, len(FLIES), n_nodes, 2), np.nan)
    for lf in labels.labeled_frames:
        for inst in lf.instances:
            if inst.track is not None and inst.track.name in FLIES and lf.frame_idx < n_frames:
                pts[lf.frame_idx, FLIES.index(inst.track.name)] = inst.numpy()
    return pts


def truth_boxes(pts: np.ndarray, margin: float) -> np.ndarray:
    """``(T, 2, 4)`` boxes around the keypoints grown by ``margin`` px (NaN when unlabelled)."""
    with np.errstate(all="ignore"):
        lo, hi = np.nanmin(pts, axis=2), np.nanmax(pts, axis=2)
    return np.concatenate([lo - margin, hi + margin], axis=-1)


def matched_iou(box: np.ndarray, tbox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one matching of predicted boxes ``(T, I, 4)`` to truth boxes ``(T, 2, 4)`` per frame.

    Returns:
        ``(iou, index)``: ``(T, 2)`` IoU of each fly's matched box (0 if none)
        and ``(T, 2)`` index of that instance (-1 if none).
    """
    iou_out = np.zeros(tbox.shape[:2])
    index = np.full(tbox.shape[:2], -1)
    for t in range(len(box)):
        p = np.flatnonzero(np.isfinite(box[t, :, 0]))
        if not p.size:
            continue
        iou = box_iou(tbox[t], box[t, p])
        rows, cols = linear_sum_assignment(-iou)
        iou_out[t, rows] = iou[rows, cols]
        index[t, rows] = p[cols]
    return iou_out, index


def boxes_overlap(tbox: np.ndarray) -> np.ndarray:
    """``(T,)`` bool: the two flies' boxes ``(T, 2, 4)`` intersect."""
    return ((np.minimum(tbox[:, 0, 2], tbox[:, 1, 2]) > np.maximum(tbox[:, 0, 0], tbox[:, 1, 0]))
            & (np.minimum(tbox[:, 0, 3], tbox[:, 1, 3]) > np.maximum(tbox[:, 0, 1], tbox[:, 1, 1])))


def score_detection(box: np.ndarray, com: np.ndarray, flags: np.ndarray, pts: np.ndarray, margin: float,
                    min_iou: float = 0.5) -> dict:
    """Detection scores of predicted instances (``box (T, I, 4)``, ``com (T, I, 2)``, ``flags (T, I)``)
    against the keypoints ``pts (T, 2, K, 2)``, with truth boxes grown by ``margin`` px."""
    tbox = truth_boxes(pts, margin)
    iou, index = matched_iou(box, tbox)
    found = iou >= min_iou
    t_idx = np.arange(len(box))[:, None]
    pred_com = np.where(index[..., None] >= 0, com[t_idx, np.maximum(index, 0)], np.nan)
    err_centroid = np.where(found, np.linalg.norm(pred_com - np.nanmean(pts, axis=2), axis=-1), np.nan)
    err_thorax = np.where(found, np.linalg.norm(pred_com - pts[:, :, 1], axis=-1), np.nan)
    inter = boxes_overlap(tbox)
    inter_kp = boxes_overlap(truth_boxes(pts, 0.0))
    split = ((flags & MERGED_SPLIT) > 0).any(axis=1)
    stats = lambda e: {"mean": float(np.nanmean(e)), "median": float(np.nanmedian(e)),  # noqa: E731
                       "p95": float(np.nanpercentile(e, 95))}
    return {
        "both_found": float(found.all(axis=1).mean()),
        "found_rate": {name: float(found[:, k].mean()) for k, name in enumerate(FLIES)},
        "matched_iou_mean": float(iou.mean()),
        "both_found_by_margin": {f"{m:g}": float((matched_iou(box, truth_boxes(pts, m))[0] >= min_iou).all(1).mean())
                                 for m in (0, 5, 10, 15, 20)},
        "frames_split": int(split.sum()),
        "frames_truth_boxes_overlap": int(inter.sum()),
        "frames_keypoint_boxes_overlap": int(inter_kp.sum()),
        "both_found_when_truth_overlaps": float(found[inter].all(axis=1).mean()) if inter.any() else None,
        "both_found_when_split": float(found[split].all(axis=1).mean()) if split.any() else None,
        "centre_error_px": stats(err_centroid),
        "thorax_error_px": stats(err_thorax),
    }


def track_positions(track: np.ndarray, com: np.ndarray, n_animals: int) -> np.ndarray:
    """``(T, n_animals, 2)`` centres per global track slot."""
    return instances_to_slots(track, {"com": com}, n_slots=n_animals)["com"]


def downsample(frame: np.ndarray, f: int) -> np.ndarray:
    h, w = frame.shape
    return frame.reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def speed(path: Path, info, background: np.ndarray, cfg: ClassicalConfig, n_frames: int) -> dict:
    """Segmentation-only frames/s (one core, decoded frames in memory) at full size and at 1/4 size."""
    frames = list(iter_frames(path, 1000, 1000 + n_frames, gray=True, info=info))
    res = {}
    for label, f in (("1024x1024", 1), ("256x256", 4)):
        seg_cfg = cfg if f == 1 else ClassicalConfig(**{**cfg.to_dict(), "min_area": max(4, cfg.min_area // f ** 2)})
        seg = ClassicalSegmenter(background if f == 1 else downsample(background, f), seg_cfg)
        imgs = frames if f == 1 else [np.round(downsample(fr, f)).astype(np.uint8) for fr in frames]
        prev, found = None, []
        t0 = time.perf_counter()
        for img in imgs:
            inst = seg.segment(img, 2, prev)
            prev = np.array([i.com for i in inst[:2]]) if inst else None
            found.append(len(inst))
        dt = time.perf_counter() - t0
        res[label] = {"frames_per_s": len(imgs) / dt, "mean_instances": float(np.mean(found))}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="folder with clip.mp4 and clip.slp")
    ap.add_argument("--margin", type=float, default=10.0, help="px added around the keypoint box (default 10)")
    ap.add_argument("--config", type=json.loads, default={}, help="ClassicalConfig overrides (JSON object)")
    ap.add_argument("--tracking", type=json.loads, default={}, help="TrackingConfig options (JSON object)")
    ap.add_argument("--chunk-size", type=int, default=300, help="frames per chunk for the chunked run")
    ap.add_argument("--frames", type=int, default=None, help="only the first N frames (quick look)")
    ap.add_argument("--crop-size", type=int, default=128)
    ap.add_argument("--speed-frames", type=int, default=200, help="frames for the segmentation-only timing (0: skip)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)

    video, slp = args.data / "clip.mp4", args.data / "clip.slp"
    if not video.exists() or not slp.exists():
        print(f"data not found: {video}, {slp}", file=sys.stderr)
        return 2
    info = probe(video)
    n_frames = min(args.frames or info.n_frames, info.n_frames)
    cfg = ClassicalConfig.from_dict(args.config)
    track_cfg = TrackingConfig.from_dict(args.tracking)
    pts = load_truth(slp, n_frames)
    tcent = np.nanmean(pts, axis=2)
    body = np.linalg.norm(pts[:, :, 0] - pts[:, :, 2], axis=-1)  # head to abdomen tip
    kp_extent = np.nanmax(pts, axis=2) - np.nanmin(pts, axis=2)

    t0 = time.perf_counter()
    background = estimate_background(video, info, n_samples=cfg.background_samples, quantile=cfg.background_quantile,
                                     polarity=cfg.polarity)
    t_bg = time.perf_counter() - t0
    t0 = time.perf_counter()
    resolved = calibrate(video, background, cfg, info=info)
    t_cal = time.perf_counter() - t0

    common = dict(background=background, cfg=resolved, n_animals=2, n_instances=2, crop_size=args.crop_size,
                  info=info, progress=False, tracking=track_cfg)
    t0 = time.perf_counter()
    whole = segment_chunk(video, 0, n_frames, **common)
    t_whole = time.perf_counter() - t0
    chunks = [segment_chunk(video, s, min(s + args.chunk_size, n_frames), **common)
              for s in range(0, n_frames, args.chunk_size)]
    stitched = np.concatenate(stitch_chunks(chunks, n_animals=2, method=track_cfg.method,
                                            max_distance=track_cfg.max_distance, max_gap=track_cfg.max_gap))
    chunk_box = np.concatenate([c["box"] for c in chunks])
    chunk_com = np.concatenate([c["com"] for c in chunks])
    chunk_flags = np.concatenate([c["flags"] for c in chunks])

    det = score_detection(whole["box"], whole["com"], whole["flags"], pts, args.margin)
    det_chunked = score_detection(chunk_box, chunk_com, chunk_flags, pts, args.margin)
    sw_whole = identity_switches(track_positions(whole["local_track"], whole["com"], 2), tcent)
    sw_chunked = identity_switches(track_positions(stitched, chunk_com, 2), tcent)
    result = {
        "video": str(video), "frames": n_frames, "margin_px": args.margin,
        "fly_size_px": {"head_to_abdomen_median": float(np.nanmedian(body)),
                        "keypoint_box_median_wh": np.nanmedian(kp_extent.reshape(-1, 2), axis=0).tolist()},
        "config": resolved.to_dict(), "tracking": track_cfg.to_dict(),
        "detection": det,
        "identity_switches": {"unchunked": sw_whole.tolist(), "chunked": sw_chunked.tolist(),
                              "chunk_size": args.chunk_size},
        "chunked_detection_both_found": det_chunked["both_found"],
        "chunked_boxes_equal_unchunked": bool(np.array_equal(chunk_box, whole["box"], equal_nan=True)),
        "timing_s": {"background": t_bg, "calibrate": t_cal, "segment_chunk_whole": t_whole},
        "segment_chunk_frames_per_s": n_frames / t_whole,
    }
    if args.speed_frames:
        result["segmentation_only"] = speed(video, info, background, resolved, args.speed_frames)

    d = result["detection"]
    rows = [
        ("frames", f"{n_frames}"),
        ("truth box margin", f"{args.margin:g} px (fly head to abdomen tip "
                             f"{result['fly_size_px']['head_to_abdomen_median']:.0f} px)"),
        ("resolved polarity / threshold / seed", f"{resolved.polarity} / {resolved.threshold:g} / "
                                                 f"{resolved.seed_threshold:g} grey levels"),
        ("both flies found (IoU>=0.5)", f"{d['both_found']:.3f}"),
        *[(f"found rate {k}", f"{v:.3f}") for k, v in d["found_rate"].items()],
        ("mean matched box IoU", f"{d['matched_iou_mean']:.3f}"),
        ("both found by margin (px: rate)", ", ".join(f"{m}: {v:.3f}" for m, v in d["both_found_by_margin"].items())),
        ("frames with a split blob", f"{d['frames_split']} (both found in {d['both_found_when_split']})"),
        ("frames where truth boxes overlap", f"{d['frames_truth_boxes_overlap']} "
                                             f"(keypoint boxes without margin: {d['frames_keypoint_boxes_overlap']})"),
        ("both found when truth boxes overlap", f"{d['both_found_when_truth_overlaps']}"),
        ("centre error mean / median / p95 px", "{mean:.2f} / {median:.2f} / {p95:.2f}".format(**d["centre_error_px"])),
        ("COM to thorax mean / median / p95 px",
         "{mean:.2f} / {median:.2f} / {p95:.2f}".format(**d["thorax_error_px"])),
        ("identity switches unchunked (per track)", f"{sw_whole.sum()} {sw_whole.tolist()}"),
        (f"identity switches chunked ({args.chunk_size})", f"{sw_chunked.sum()} {sw_chunked.tolist()}"),
        ("chunked both found", f"{det_chunked['both_found']:.3f}"),
        ("background / calibrate s", f"{t_bg:.1f} / {t_cal:.1f}"),
        ("segment_chunk frames/s (decode+all)", f"{result['segment_chunk_frames_per_s']:.1f}"),
    ]
    for label, v in result.get("segmentation_only", {}).items():
        rows.append((f"segmentation only frames/s {label}", f"{v['frames_per_s']:.0f}"))
    width = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

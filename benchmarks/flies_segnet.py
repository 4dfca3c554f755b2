"""SegNet on the SLEAP two-fly clip: trained on keypoint pseudo-masks, scored by box AP@0.5 on held-out frames.

Data: ``../shared/data/sleap_flies/clip.mp4`` (two flies, 1024x1024 grey,
25 fps, 1500 frames) and ``clip.slp`` (human SLEAP keypoints, 13 nodes, every
frame). There are **no human masks**: training masks are pseudo-labels from
:func:`sipec_models.io.masks.masks_from_keypoints` (the classical
foreground inside each fly's keypoint box + ``--margin`` px, shared pixels to
the fly with the nearest keypoint), made for ``--train-frames`` frames evenly
spaced over frames 0-899. Evaluation is **box-based**: on every test frame
900-1499, predicted instance boxes (ranked by score) against the truth box
of each fly, AP at IoU > 0.5 (:func:`sipec_models.metrics.average_precision`,
SIPEC's mAP definition). The truth box is the box around the fly's 13 human
keypoints (margin 0: leg and wing tips are keypoints, so it spans the whole
fly), and, as a looser variant, that box grown by each further
``--truth-margins`` value in px; both are reported:

* overall, and on "touching" frames (the two flies' keypoint boxes without
  margin intersect);
* chance level: the same predictions scored against the truth circularly
  shifted by ``--shift`` frames within the test range;
* the classical segmenter (:func:`~sipec_models.segmentation.classical.segment_chunk`,
  4 instance slots, its own scores) on the same frames.

Throughput (median of 3 timings of ``--speed-frames`` frames): SegNet on
frames already in memory (decode excluded), ``segment_chunk_segnet`` from the
video (decode, crops and tracking included), and video decoding alone.

Run from the repository root::

    .venv/bin/python benchmarks/flies_segnet.py --out results/benchmarks/flies_segnet.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flies_detection import boxes_overlap, load_truth, truth_boxes  # noqa: E402

from sipec_models.io.masks import masks_from_keypoints  # noqa: E402
from sipec_models.io.video import iter_frames, probe  # noqa: E402
from sipec_models.metrics import average_precision  # noqa: E402
from sipec_models.segmentation.classical import (  # noqa: E402
    ClassicalConfig, ClassicalSegmenter, calibrate, estimate_background, segment_chunk,
)
from sipec_models.segmentation.segnet import SegNetSegmenter, segment_chunk_segnet  # noqa: E402
from sipec_models.training.config import load_model_config  # noqa: E402
from sipec_models.training.segnet import load_segnet, save_segnet, train_segnet  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sleap_flies"
TRAIN_RANGE = (0, 900)
TEST_RANGE = (900, 1500)


def read_selected(video, frames, info) -> np.ndarray:
    """``(N, H, W)`` uint8 grey frames at the sorted indices ``frames`` (one sequential decode)."""
    wanted = set(int(f) for f in frames)
    lo, hi = min(wanted), max(wanted) + 1
    got = {lo + t: f for t, f in enumerate(iter_frames(video, lo, hi, gray=True, info=info)) if lo + t in wanted}
    return np.stack([got[int(f)] for f in frames])


def box_predictions(instances) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.array([i.score for i in p], float), np.array([i.box for i in p], float).reshape(-1, 4))
            for p in instances]


def ap_table(preds, tbox, touching, shift) -> dict:
    truths = list(tbox)
    n = len(truths)
    shifted = [truths[(t + shift) % n] for t in range(n)]
    idx = np.flatnonzero(touching)
    return {
        "ap50_all": average_precision(preds, truths, 0.5, kind="box"),
        "ap50_touching": average_precision([preds[i] for i in idx], [truths[i] for i in idx], 0.5, kind="box")
        if len(idx) else None,
        "ap50_chance_shifted": average_precision(preds, shifted, 0.5, kind="box"),
        "mean_instances": float(np.mean([len(s) for s, _ in preds])),
    }


def median_rate(fn, n_frames: int, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n_frames / float(np.median(times))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="folder with clip.mp4 and clip.slp")
    ap.add_argument("--margin", type=float, default=10.0,
                    help="px around the keypoint boxes inside which pseudo-masks take foreground (default 10)")
    ap.add_argument("--truth-margins", type=float, nargs="+", default=[0.0, 10.0],
                    help="px added to the keypoint boxes for the truth boxes; one AP table each (default 0 10)")
    ap.add_argument("--train-frames", type=int, default=40, help="training frames, evenly spaced over 0-899")
    ap.add_argument("--shift", type=int, default=300, help="frames the truth is shifted by for the chance level")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--speed-frames", type=int, default=32, help="frames per throughput timing (0: skip)")
    ap.add_argument("--test-frames", type=int, default=None, help="only the first N test frames (quick look)")
    ap.add_argument("--override", action="append", default=[],
                    help="Hydra override of config/models/segnet.yaml (repeatable)")
    ap.add_argument("--model", type=Path, help="use this SegNet checkpoint instead of training one")
    ap.add_argument("--save-model", type=Path, help="save the trained SegNet checkpoint here")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)

    video, slp = args.data / "clip.mp4", args.data / "clip.slp"
    if not video.exists() or not slp.exists():
        print(f"data not found: {video}, {slp}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    info = probe(video)
    pts = load_truth(slp, info.n_frames)
    t_start = time.perf_counter()

    # Classical segmenter: background, thresholds; used for pseudo-masks and as the comparison.
    background = estimate_background(video, info)
    ccfg = calibrate(video, background, ClassicalConfig(), info=info)
    classical = ClassicalSegmenter(background, ccfg)

    # Training set: pseudo-masks on evenly spaced frames of 0-899.
    train_idx = np.unique(np.linspace(TRAIN_RANGE[0], TRAIN_RANGE[1] - 1, args.train_frames).round().astype(int))
    train_images = read_selected(video, train_idx, info)
    train_masks = [masks_from_keypoints(img, classical, pts[f], args.margin) for img, f in zip(train_images, train_idx)]
    overrides = ["data.input_scale=0.5", "data.crop_size=128", "train.batch_size=8", "train.max_steps=250",
                 "train.lr=0.002", "infer.batch_size=8", *args.override]
    cfg = load_model_config("segnet", overrides)
    t0 = time.perf_counter()
    if args.model:
        model = load_segnet(args.model)
        cfg = OmegaConf.create(model.config)
        train_s = float(getattr(model, "meta", {}).get("train_seconds", float("nan")))
        print(f"loaded {args.model} (its own config; --override ignored)", file=sys.stderr)
    else:
        model = train_segnet(train_images, train_masks, cfg, progress=False)
        train_s = time.perf_counter() - t0
        print(f"trained on {len(train_idx)} frames in {train_s:.0f} s "
              f"(loss {model.history[0]['total']:.3f} -> {np.mean([h['total'] for h in model.history[-20:]]):.3f})",
              file=sys.stderr)
        if args.save_model:
            save_segnet(model, args.save_model, meta={"train_frames": train_idx.tolist(), "train_seconds": train_s})

    # Test frames: SegNet and classical predictions.
    lo, hi = TEST_RANGE
    if args.test_frames:
        hi = min(hi, lo + args.test_frames)
    seg = SegNetSegmenter(model, device="cpu")
    preds, t0 = [], time.perf_counter()
    buf = []
    for frame in iter_frames(video, lo, hi, gray=True, info=info):
        buf.append(frame)
        if len(buf) == seg.batch_size:
            preds += seg.segment_batch(np.stack(buf))
            buf = []
    if buf:
        preds += seg.segment_batch(np.stack(buf))
    infer_s = time.perf_counter() - t0
    seg_preds = box_predictions(preds)
    chunk = segment_chunk(video, lo, hi, background, ccfg, n_animals=2, n_instances=4, crop_size=64, info=info,
                          progress=False)
    cls_preds = [(s[np.isfinite(s)], b[np.isfinite(s)]) for s, b in zip(chunk["score"], chunk["box"])]

    touching = boxes_overlap(truth_boxes(pts[lo:hi], 0.0))
    results = {
        "data": str(video), "evaluation": "box AP@0.5 against keypoint boxes + truth margin (no human masks exist)",
        "pseudo_mask_margin_px": args.margin, "truth_margins_px": args.truth_margins,
        "train_frames": train_idx.tolist(), "n_train_frames": int(len(train_idx)),
        "train_seconds": train_s, "test_frames": [lo, hi], "n_test_frames": hi - lo,
        "n_touching_frames": int(touching.sum()), "shift_frames": args.shift, "threads": args.threads,
        "config": {k: dict(v) for k, v in cfg.items()},
        "segnet": {f"truth_margin_{m:g}": ap_table(seg_preds, truth_boxes(pts[lo:hi], m), touching, args.shift)
                   for m in args.truth_margins},
        "classical": {f"truth_margin_{m:g}": ap_table(cls_preds, truth_boxes(pts[lo:hi], m), touching, args.shift)
                      for m in args.truth_margins},
        "segnet_inference_seconds_test_set": infer_s,
    }

    if args.speed_frames:
        n = args.speed_frames
        frames = np.stack(list(iter_frames(video, 1000, 1000 + n, gray=True, info=info)))
        decode_fps = median_rate(lambda: sum(1 for _ in iter_frames(video, 1000, 1000 + n, gray=True, info=info)), n)
        net_fps = median_rate(lambda: [seg.forward(frames[s:s + seg.batch_size]) for s in range(0, n, seg.batch_size)],
                              n)
        seg_fps = median_rate(lambda: seg.segment_batch(frames), n)
        chunk_fps = median_rate(lambda: segment_chunk_segnet(video, 1000, 1000 + n, seg, n_animals=2, n_instances=2,
                                                             crop_size=64, info=info, progress=False), n)
        results["speed"] = {
            "frames": n, "frame_size": [info.height, info.width], "input_scale": float(cfg.data.input_scale),
            "decode_fps": decode_fps, "network_only_fps": net_fps,
            "segment_fps_decode_excluded": seg_fps, "segment_chunk_fps_decode_included": chunk_fps,
            "fraction_of_decode_rate": chunk_fps / decode_fps,
        }
    results["total_seconds"] = time.perf_counter() - t_start

    print(f"\nSegNet on {video.name}: {len(train_idx)} training frames (pseudo-masks from keypoints), "
          f"test frames {lo}-{hi - 1} ({int(touching.sum())} touching); box AP@0.5, truth = keypoint box + margin")
    print(f"{'method':<10} {'margin':>6} {'AP all':>8} {'AP touch':>9} {'chance':>8} {'inst/frame':>11}")
    for name in ("segnet", "classical"):
        for m in args.truth_margins:
            r = results[name][f"truth_margin_{m:g}"]
            touch = "n/a" if r["ap50_touching"] is None else f"{r['ap50_touching']:.3f}"
            print(f"{name:<10} {m:6g} {r['ap50_all']:8.3f} {touch:>9} {r['ap50_chance_shifted']:8.3f} "
                  f"{r['mean_instances']:11.2f}")
    if "speed" in results:
        s = results["speed"]
        print(f"speed ({args.threads} threads, {info.width}x{info.height}, input scale {s['input_scale']:g}): "
              f"network {s['network_only_fps']:.1f} fps, segmentation {s['segment_fps_decode_excluded']:.1f} fps "
              f"(decode excluded), chunk {s['segment_chunk_fps_decode_included']:.1f} fps (decode included) = "
              f"{s['fraction_of_decode_rate']:.1%} of decoding ({s['decode_fps']:.0f} fps)")
    print(f"training {train_s:.0f} s, total {results['total_seconds']:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

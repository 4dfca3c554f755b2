"""PoseNet or LEAP on the SLEAP two-fly clip: top-down pose against the human labels, beside SLEAP's predictions.

Data: ``../shared/data/sleap_flies/clip.mp4`` (two flies, 1024x1024 grey,
25 fps, 1500 frames), ``clip.slp`` (human labels on every frame: tracks
``female``/``male``, 13 nodes; a fly spans about 70 px from head to abdomen
tip and its keypoints lie within 75 px of their box centre) and
``clip.predictions.slp`` (a SLEAP model's predictions, head and thorax only).

Protocol (one model per run, ``--model posenet|leap``):

1. Training: ``--train-frames`` frames evenly spaced over frames 0-899,
   both flies (one crop each), crops centred on the keypoint box centre
   (``train_pose``'s rule; ``--train-centres classical`` centres them on the
   classical segmenter's centre of mass instead, as at test time).
2. Test: every ``--test-stride``-th frame of 900-1499, one crop per fly,
   centred on

   * ``classical`` (primary, the realistic pipeline): the classical
     segmenter's centre of mass (``segment_chunk`` on the whole clip, 2
     animals: background, calibration, split of touching flies, as in
     ``benchmarks/flies_detection.py``), matched to the flies per frame by
     Hungarian assignment on the distance to the fly's keypoint centroid
     (:func:`sipec_models.metrics.match_instances`; at most
     ``--match-distance`` px). A fly left unmatched is counted as missed
     and not scored.
   * ``oracle``: the box centre of the fly's labelled keypoints (uses the
     test labels; isolates the network from detection errors).
3. Scores (identity-agnostic: each prediction is compared with the fly its
   crop was matched to): per node median error, RMSE and PCK at 5 and 10
   px, for all 13 nodes and for head + thorax
   (:func:`sipec_models.metrics.pose_metrics`). Beside them the mean-pose
   baseline (training keypoints' mean offsets from the crop centre, placed
   at each test centre of the same kind: a chance-like level, flies point
   every way) and the SLEAP anchor for head and thorax: ``clip.predictions.slp``
   on the same frames, its instances matched to the flies per frame by
   Hungarian assignment on the mean head/thorax distance (same limit),
   unmatched flies counted as missed.
4. Speed: crops/s of the network (with heatmap decoding) on a batch of
   ``--speed-batch`` fly crops, median of 3 timings after a warm-up, with
   ``torch.set_num_threads(--threads)``; also including the cropping.

The SLEAP file comes from SLEAP's own test data (a small model): its head
and thorax are within a few px on some frames and 25-45 px off on others
(median head/thorax error about 5 px in frames 0-899 but 26 px in 900-1499;
in frame 1200, for instance, it puts the female's thorax on her head), so it
is an anchor for the order of magnitude, not a state-of-the-art SLEAP number.

Defaults (``DEFAULTS``; one torch thread, see ``--threads``): 128 px crops
at scale 0.75 (a crop covers 171 frame px, so a fly's keypoints, within 75
px of its box centre, stay inside; the classical centre lies a median 7.5
px from the keypoint centroid), 200 training frames (400 fly crops), batch
8, mirror flips with left/right swap. PoseNet: 128 deconvolution filters,
1200 steps (about 0.58 s a step); LEAP: width 0.25 (16 / 32 / 64 filters),
2000 steps (about 0.39 s a step; trained from scratch it needs more steps
than PoseNet's ImageNet encoder: after 200 steps PoseNet had 4.7 px and LEAP
9.9 px median head/thorax error with oracle centres), sigma 3 px. Measured
on the shared 2-core machine with 200-step runs (``--test-stride 10``):
segmentation of the clip 22-35 s, prediction about 6 s per 120 test fly
crops (PoseNet; LEAP 4 s), so 2 x 1200 crops at stride 1 take 1.5-2 min;
a default run takes about 15 min (PoseNet: 12 min training; LEAP: 13 min),
more when other jobs share the cores.

Run from the repository root, one model per run::

    .venv/bin/python benchmarks/flies_pose.py --model posenet --out results/benchmarks/flies_pose_posenet.json
    .venv/bin/python benchmarks/flies_pose.py --model leap --out results/benchmarks/flies_pose_leap.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dlc_pose import speed  # noqa: E402

from sipec_models.evaluation import evenly_spaced  # noqa: E402
from sipec_models.io.keypoints import load_keypoints, read_pose_images  # noqa: E402
from sipec_models.io.video import iter_frames, probe  # noqa: E402
from sipec_models.metrics import mean_pose_baseline, match_instances, pose_metrics, take_matched  # noqa: E402
from sipec_models.pose import PosePredictor, box_centres  # noqa: E402
from sipec_models.segmentation.classical import (  # noqa: E402
    ClassicalConfig, calibrate, estimate_background, segment_chunk,
)
from sipec_models.training.config import load_model_config, to_dict  # noqa: E402
from sipec_models.training.pose import train_pose  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sleap_flies"
FLIES = ("female", "male")
TRAIN_RANGE = (0, 900)
TEST_RANGE = (900, 1500)
RADII = (5.0, 10.0)
HEAD_THORAX = ("head", "thorax")
COMMON = ["data.crop_size=128", "data.scale=0.75", "train.batch_size=8", "infer.batch_size=16"]
DEFAULTS = {
    "posenet": [*COMMON, "model.deconv_channels=128", "train.max_steps=1200"],
    "leap": [*COMMON, "model.width_mult=0.25", "train.max_steps=2000", "train.sigma_px=3", "augment.hflip=0.5"],
}


def classical_centres(video: Path, info, n_frames: int) -> tuple[np.ndarray, dict]:
    """``(T, 2, 2)`` centres of mass of the classical segmenter's two largest instances per frame (NaN: none)."""
    background = estimate_background(video, info)
    cfg = calibrate(video, background, ClassicalConfig(), info=info)
    arrays = segment_chunk(video, 0, n_frames, background, cfg, n_animals=2, n_instances=2, crop_size=8, info=info,
                           progress=False)
    return arrays["com"].astype(np.float64), cfg.to_dict()


def sleap_predictions(path: Path, n_frames: int, nodes: list[str]) -> np.ndarray:
    """``(T, I, K, 2)`` SLEAP predicted instances in the truth's node order (NaN: node not predicted / no instance)."""
    pred = load_keypoints(path, instances="predicted")
    I = max((len(f.points) for f in pred.frames), default=0)
    out = np.full((n_frames, max(I, 1), len(nodes), 2), np.nan)
    cols = [pred.skeleton.nodes.index(n) if n in pred.skeleton.nodes else -1 for n in nodes]
    for f in pred.frames:
        if f.frame is not None and f.frame < n_frames:
            for i, p in enumerate(f.points):
                for k, c in enumerate(cols):
                    if c >= 0:
                        out[f.frame, i, k] = p[c]
    return out


def predict(net, video: Path, info, frames: np.ndarray, centres: np.ndarray, chunk: int = 50) -> np.ndarray:
    """``(len(frames), 2, K, 2)`` predictions of both flies from their centres (NaN rows: no prediction)."""
    pp = PosePredictor(net, device="cpu")
    K = int(net.num_keypoints)
    out = np.full((len(frames), 2, K, 2), np.nan)
    wanted = {int(f): i for i, f in enumerate(frames)}
    buf, rows = [], []

    def flush():
        if not buf:
            return
        c = centres[rows].reshape(-1, 2)
        pts, _ = pp.predict(np.stack(buf), c, np.repeat(np.arange(len(buf)), 2))
        out[rows] = pts.reshape(len(buf), 2, K, 2)
        buf.clear()
        rows.clear()

    for t, frame in enumerate(iter_frames(video, int(frames[0]), int(frames[-1]) + 1, gray=True, info=info)):
        i = wanted.get(int(frames[0]) + t)
        if i is not None:
            buf.append(frame)
            rows.append(i)
            if len(buf) == chunk:
                flush()
    flush()
    return out


def scores(pred: np.ndarray, truth: np.ndarray, nodes: list[str], ht: list[int]) -> dict:
    """All-node and head+thorax :func:`pose_metrics` of ``(T, 2, K, 2)`` predictions; missed flies counted."""
    K = truth.shape[-2]
    p, t = pred.reshape(-1, K, 2), truth.reshape(-1, K, 2)
    labelled = np.isfinite(t).all(-1).any(-1)
    missed = labelled & ~np.isfinite(p).all(-1).any(-1)
    out = {"instances": int(labelled.sum()), "missed": int(missed.sum())}
    body = (nodes.index("head"), nodes.index("abdomen")) if "abdomen" in nodes else None
    if np.isfinite(p).any():
        out["all_nodes"] = pose_metrics(p, t, RADII, nodes, body)
    out["head_thorax"] = pose_metrics(p[:, ht], t[:, ht], RADII, [nodes[k] for k in ht])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="folder with clip.mp4, clip.slp, clip.predictions.slp")
    ap.add_argument("--model", choices=("posenet", "leap"), default="posenet")
    ap.add_argument("--train-frames", type=int, default=200, help="training frames, evenly spaced over 0-899")
    ap.add_argument("--train-centres", choices=("box", "classical"), default="box",
                    help="training crop centres: keypoint box (train_pose default) or classical centre of mass")
    ap.add_argument("--test-stride", type=int, default=1, help="test every n-th frame of 900-1499")
    ap.add_argument("--test-frames", type=int, help="only the first N test frames (quick look)")
    ap.add_argument("--match-distance", type=float, default=50.0,
                    help="px: largest distance of a matched centre / SLEAP instance from the fly (default 50)")
    ap.add_argument("--override", action="append", default=[], help="Hydra override of the model config (repeatable)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a shared 2-core machine 2 threads ran up to 10x slower)")
    ap.add_argument("--speed-batch", type=int, default=16, help="crops per timed batch (0: skip the timing)")
    ap.add_argument("--out", type=Path, help="write everything as JSON here")
    args = ap.parse_args(argv)

    video, slp, sleap = args.data / "clip.mp4", args.data / "clip.slp", args.data / "clip.predictions.slp"
    missing = [str(p) for p in (video, slp, sleap) if not p.exists()]
    if missing:
        print(f"data not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    for pattern in (".*does not have many workers.*", ".*srun.*", ".*treespec.*"):
        warnings.filterwarnings("ignore", pattern)
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    t_start, timing = time.perf_counter(), {}

    info = probe(video)
    T = info.n_frames
    labels = load_keypoints(slp)
    nodes = labels.skeleton.nodes
    ht = [nodes.index(n) for n in HEAD_THORAX]
    truth = np.full((T, 2, len(nodes), 2), np.nan)
    by_track = labels.points_by_track(list(FLIES))
    for i, f in enumerate(labels.frames):
        if f.frame is not None and f.frame < T:
            truth[f.frame] = by_track[i]
    centroid = np.nanmean(truth, axis=2)

    t0 = time.perf_counter()
    com, seg_cfg = classical_centres(video, info, T)
    timing["segmentation_s"] = time.perf_counter() - t0
    match = match_instances(com, centroid, args.match_distance)
    centres = {"classical": take_matched(com, match), "oracle": box_centres(truth)}

    train_idx = TRAIN_RANGE[0] + evenly_spaced(TRAIN_RANGE[1] - TRAIN_RANGE[0], args.train_frames)
    test_idx = np.arange(*TEST_RANGE, args.test_stride)
    test_idx = test_idx[test_idx < T][:args.test_frames]
    frame_of = {f.frame: f for f in labels.frames}
    t0 = time.perf_counter()
    train_images = read_pose_images([frame_of[int(t)] for t in train_idx])
    timing["read_train_s"] = time.perf_counter() - t0

    cfg = to_dict(load_model_config(args.model, [*DEFAULTS[args.model], *args.override]))
    train_centres = centres["oracle" if args.train_centres == "box" else "classical"][train_idx]
    t0 = time.perf_counter()
    net = train_pose(train_images, truth[train_idx], cfg, model=args.model, centres=train_centres,
                     flip_pairs=labels.skeleton.flip_pairs, node_names=nodes)
    timing["training_s"] = time.perf_counter() - t0
    loss = [h["loss"] for h in net.history]

    results = {}
    tr_kp = truth[train_idx].reshape(-1, len(nodes), 2)
    for kind in ("classical", "oracle"):
        t0 = time.perf_counter()
        pred = predict(net, video, info, test_idx, centres[kind][test_idx])
        timing[f"predict_{kind}_s"] = time.perf_counter() - t0
        results[kind] = scores(pred, truth[test_idx], nodes, ht)
        c_tr, c_te = centres[kind][train_idx].reshape(-1, 2), centres[kind][test_idx].reshape(-1, 2)
        base = mean_pose_baseline(tr_kp, len(c_te), c_tr, c_te).reshape(len(test_idx), 2, len(nodes), 2)
        results[f"mean_pose/{kind}"] = scores(base, truth[test_idx], nodes, ht)

    # SLEAP anchor: head and thorax, instances matched per frame on their mean head/thorax position.
    sp = sleap_predictions(sleap, T, nodes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # empty instance slots
        sp_match = match_instances(np.nanmean(sp[:, :, ht], axis=2), np.nanmean(truth[:, :, ht], axis=2),
                                   args.match_distance)
    sleap_pred = take_matched(sp, sp_match)[test_idx]
    results["sleap_predictions"] = scores(sleap_pred, truth[test_idx], nodes, ht)
    results["sleap_predictions"].pop("all_nodes", None)

    sp_speed = {}
    if args.speed_batch:
        fr = np.stack(list(iter_frames(video, TEST_RANGE[0], TEST_RANGE[0] + args.speed_batch // 2 + 1, gray=True,
                                       info=info)))
        c = centres["oracle"][TEST_RANGE[0]:TEST_RANGE[0] + len(fr)]
        idx = np.repeat(np.arange(len(fr)), 2)
        sp_speed = speed(net, fr[idx], c.reshape(-1, 2), args.speed_batch)
    timing["total_s"] = time.perf_counter() - t_start

    classical_err = np.linalg.norm(centres["classical"] - centroid, axis=-1)[test_idx]
    out = {
        "video": str(video), "model": args.model, "config": cfg, "threads": args.threads,
        "train_frames": train_idx.tolist(), "train_centres": args.train_centres,
        "test_frames": {"first": int(test_idx[0]), "last": int(test_idx[-1]), "stride": args.test_stride,
                        "n": int(len(test_idx))},
        "match_distance_px": args.match_distance, "classical_segmenter": seg_cfg,
        "classical_centre_to_centroid_px": {"median": float(np.nanmedian(classical_err)),
                                            "p95": float(np.nanpercentile(classical_err, 95))},
        "loss_first_last": [loss[0], float(np.mean(loss[-20:]))] if loss else None,
        "results": results, "speed": sp_speed, "timing_s": timing,
        "notes": {"oracle": "crop centred on the box of the fly's labelled test keypoints",
                  "matching": "identity-agnostic: per-frame Hungarian on distance to the fly"},
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    print_table(out, nodes)
    return 0


def print_table(out: dict, nodes: list[str]) -> None:
    r, t = out["results"], out["test_frames"]

    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    print(f"\nFlies top-down pose, {out['model']}: trained on {len(out['train_frames'])} frames of 0-899 "
          f"(both flies, {out['train_centres']} centres), tested on {t['n']} frames {t['first']}-{t['last']}; "
          f"errors in px, identity-agnostic")
    print(f"{'method':<24} {'nodes':<12} {'flies':>6} {'missed':>6} {'median':>7} {'RMSE':>7} "
          f"{'PCK@5':>6} {'PCK@10':>6}")
    order = ["classical", "oracle", "mean_pose/classical", "mean_pose/oracle", "sleap_predictions"]
    for key in order:
        for part in ("all_nodes", "head_thorax"):
            m = r[key].get(part)
            if m is None:
                continue
            name = {"classical": f"{out['model']} (classical)", "oracle": f"{out['model']} (oracle)"}.get(key, key)
            print(f"{name:<24} {part:<12} {r[key]['instances']:6d} {r[key]['missed']:6d} "
                  f"{f(m['median_px'], '7.2f')} {f(m['rmse_px'], '7.2f')} {f(m['pck']['5.0'], '6.3f')} "
                  f"{f(m['pck']['10.0'], '6.3f')}")
    print(f"\nper node, {out['model']} with classical centres / oracle centres / SLEAP: median px, RMSE px, PCK@10")
    for n in nodes:
        cells = []
        for key in ("classical", "oracle", "sleap_predictions"):
            part = "head_thorax" if key == "sleap_predictions" else "all_nodes"
            k = r[key].get(part, {}).get("per_keypoint", {}).get(n)
            cells.append("-" if k is None else f"{f(k['median_px'], '.2f')}, {f(k['rmse_px'], '.2f')}, "
                                               f"{f(k['pck']['10.0'], '.3f')}")
        print(f"  {n:<10} " + " | ".join(f"{c:<20}" for c in cells))
    c = out["classical_centre_to_centroid_px"]
    print(f"classical centre to keypoint centroid: median {c['median']:.1f} px, p95 {c['p95']:.1f} px")
    if out["speed"]:
        s = out["speed"]
        print(f"speed: {s['network_crops_per_s']:.1f} fly crops/s network (batch {s['batch']}, {s['crop_size']} px, "
              f"{s['threads']} threads), {s['with_cropping_crops_per_s']:.1f} with cropping")
    print("timing s: " + ", ".join(f"{k} {v:.0f}" for k, v in out["timing_s"].items()))


if __name__ == "__main__":
    sys.exit(main())

"""PoseNet and LEAP on the DeepLabCut open-field mouse: time-block cross-validation against human labels.

Data: ``../shared/data/dlc_openfield`` (DeepLabCut project; 116 labelled
frames ``labeled-data/m4s1/img0000..0115.png``, 640x480 grey, one mouse,
4 keypoints snout / leftear / rightear / tailbase, none missing; the mouse
is about 100-145 px from snout to tail base and its keypoints lie within
72 px of their box centre).

Protocol:

1. The frames, in image-number order, are cut into ``--folds`` contiguous
   blocks (:func:`sipec_models.evaluation.time_block_folds`; time blocks,
   never shuffled, so neighbouring near-identical frames do not leak
   between training and test). Per fold both models are trained
   (:func:`sipec_models.training.pose.train_pose`, same folds, same
   settings: the per-model defaults below plus ``--override``) on the other
   blocks and predict the held-out block top-down.
2. Crop centres at test time (``--centres``):

   * ``oracle`` (primary): the centre of the box around the *labelled*
     keypoints, the same rule as the training crops. This is an oracle
     centre (it uses the test labels to place the crop) and isolates the
     pose network from detection errors.
   * ``classical``: the classical segmenter's centre of mass of the largest
     blob (:class:`~sipec_models.segmentation.classical.ClassicalSegmenter`,
     one animal; background = per-pixel 95th percentile of the 116 labelled
     images themselves, as the mouse is dark and their source video is not
     in the data set; thresholds from :func:`auto_thresholds` on the same
     images; no labels used). The blob includes the thick tail base, so this
     centre lies about 30 px (median) behind the keypoint box centre. Both
     centres are scored with the same networks, trained on box centres as
     ``train_pose`` does by default (``--train-centres classical`` trains on
     the classical centres of the training frames instead, so that training
     and test crops match in the realistic pipeline).
3. Scores on the held-out block (:func:`sipec_models.metrics.pose_metrics`):
   RMSE and median error (px; overall and per keypoint), PCK at 2, 5 and 10
   px, mean error as a fraction of the body length (snout to tail base),
   each as mean ± s.e.m. over folds; beside them the mean-pose baseline
   (:func:`~sipec_models.metrics.mean_pose_baseline`: the training blocks'
   mean keypoint offsets from the crop centre placed at each test centre), a
   chance-like level.
4. Speed (first fold's models, ``torch.set_num_threads(--threads)``): crops
   of one animal per second through the network (with heatmap decoding) on a
   batch of ``--speed-batch`` crops, median of 3 timings after a warm-up,
   and the same including the cropping from full frames; the LEAP/PoseNet
   speed ratio and error (RMSE, median) ratios.
5. Optional label-count ablation (``--label-counts 10 25 50``): per fold
   and model, training on random subsets of that many frames of the
   training blocks (the same subsets for both models), scored on the same
   test block with oracle centres (classical ones with ``--train-centres
   classical``); rows ``model, fold, n_train, rmse,
   median, pck, chance`` (pck at ``--ablation-radius`` px, chance = the
   mean-pose baseline's) to ``--ablation-csv``, a figure (PCK against
   labelled frames, 95 % of the peak marked) to ``--figure``; the full
   training set is the last point.

Defaults (``DEFAULTS``, the same as ``evaluation.pose_models`` in
``config/dlc_openfield.yaml``; the mouse spans about 100-145 frame px and
its keypoints lie within 72 px of their box centre): both crops cover 192
frame px, batch 8, mirror flips with left/right ear swap.

* PoseNet: 128 px crops at scale 2/3 (stride-4 heatmaps: 6 frame px a
  cell), 128 deconvolution filters (a quarter of the cost of Simple
  Baselines' 256), 800 steps. On fold 2: 96 px crops at scale 0.5 and 400
  steps gave 4.3 px median; 128 px at 2/3 with 400 steps 3.96 px; with 800
  steps 2.76 px (about 340 s with 2 threads).
* LEAP: 64 px crops at scale 1/3 (stride-1 maps: 3 frame px a cell), a
  quarter of LEAP's filters (16 / 32 / 64; width 0.5 stayed on the
  all-zero plateau, an eighth confused the ears: 5.7 px median), 1500
  steps, Gaussian sigma 2 crop px (LEAP's 5 px at 192 px boxes, scaled to
  the 64 px crop). On fold 2: 1.84 px median (about 100 s with 2 threads);
  96 px crops at scale 0.5 with 600 steps gave 2.06 px at a third of the
  speed.

The step counts differ because each model gets what its accuracy needs
within a CPU budget.

``--speed-only`` times the untrained networks of these configs (speed does
not depend on the weights) and skips training: a minute.

Run from the repository root (about 25 min on 2 shared CPU cores)::

    .venv/bin/python benchmarks/dlc_pose.py --out results/benchmarks/dlc_pose.json

Label-count ablation (each count adds one training per model and fold, as
long as a full one: about 25 min more per count; ``--ablation-folds`` limits
it)::

    .venv/bin/python benchmarks/dlc_pose.py --label-counts 10 25 50 \\
        --ablation-csv results/benchmarks/dlc_pose_ablation.csv --figure results/benchmarks/dlc_pose_ablation.png \\
        --out results/benchmarks/dlc_pose_ablation.json
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
import pandas as pd
import torch

from sipec_models.evaluation import ablation_figure, ablation_summary, time_block_folds
from sipec_models.io.keypoints import load_keypoints, read_pose_images
from sipec_models.metrics import mean_pose_baseline, pck, pose_median_error, pose_metrics, pose_rmse
from sipec_models.pose import PosePredictor, box_centres, crop_frames, match_channels
from sipec_models.segmentation.classical import (
    RESTING_QUANTILE, ClassicalConfig, ClassicalSegmenter, auto_thresholds, decide_polarity,
)
from sipec_models.training.config import load_model_config, to_dict
from sipec_models.training.pose import train_pose

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dlc_openfield"
MODELS = ("posenet", "leap")
RADII = (2.0, 5.0, 10.0)
BODY = (0, 3)  # snout, tailbase
COMMON = ["train.batch_size=8", "infer.batch_size=16"]
DEFAULTS = {
    "posenet": [*COMMON, "data.crop_size=128", "data.scale=0.6667", "model.deconv_channels=128",
                "train.max_steps=800"],
    "leap": [*COMMON, "data.crop_size=64", "data.scale=0.3333", "model.width_mult=0.25", "train.max_steps=1500",
             "train.sigma_px=2", "augment.hflip=0.5"],
}


def load_data(root: Path):
    """Skeleton, frames (image-number order), ``(N, H, W)`` grey images, ``(N, K, 2)`` keypoints."""
    labels = load_keypoints(root)
    frames = sorted(labels.frames, key=lambda f: (f.frame if f.frame is not None else -1, f.image or ""))
    if any(len(f.points) != 1 for f in frames):
        raise ValueError(f"{root}: expected one animal per labelled frame")
    return labels.skeleton, frames, read_pose_images(frames), np.stack([f.points[0] for f in frames])


def classical_centres(images: np.ndarray) -> tuple[np.ndarray, dict]:
    """Centre of mass of the largest classical blob per image (NaN if none) and the segmenter settings.

    Background: the per-pixel quantile of the images themselves that leans away
    from the animal (as :func:`estimate_background` does for a video).
    """
    polarity = decide_polarity(np.median(images, axis=0).astype(np.float32), images)
    q = RESTING_QUANTILE if polarity == "light" else 1 - RESTING_QUANTILE
    background = np.quantile(images, q, axis=0).astype(np.float32)
    threshold, seed = auto_thresholds(background, images, polarity)
    cfg = ClassicalConfig(polarity=polarity, threshold=round(threshold, 2), seed_threshold=round(seed, 2))
    seg = ClassicalSegmenter(background, cfg)
    out = np.full((len(images), 2), np.nan)
    for i, im in enumerate(images):
        inst = seg.segment(im, 1)
        if inst:
            out[i] = inst[0].com
    return out, {**cfg.to_dict(), "background_quantile": q}


def flat(m: dict) -> dict:
    """Scalars of :func:`pose_metrics` output: rmse, median, pck@r, body fraction, per-keypoint rmse/median."""
    out = {"rmse_px": m["rmse_px"], "median_px": m["median_px"], "error_body_fraction": m["error_body_fraction"]}
    out.update({f"pck@{float(r):g}": v for r, v in m["pck"].items()})
    for name, k in m["per_keypoint"].items():
        out[f"{name}.rmse_px"], out[f"{name}.median_px"] = k["rmse_px"], k["median_px"]
    return out


def mean_sem(values) -> dict:
    x = np.asarray([np.nan if v is None else v for v in values], float)
    x = x[np.isfinite(x)]
    return {"mean": float(x.mean()) if len(x) else None,
            "sem": float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else None, "n_folds": int(len(x))}


def timed_median(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def speed(net, images: np.ndarray, centres: np.ndarray, batch: int) -> dict:
    """Crops/s of the network (+ decoding) on one batch of crops, and including the cropping; median of 3."""
    pp = PosePredictor(net, device="cpu", infer={"batch_size": batch})
    idx = np.resize(np.arange(len(images)), batch)
    frames = match_channels(images, pp.rgb)
    crops = crop_frames(frames, centres[idx], pp.crop_size, pp.scale, idx)
    t_net = timed_median(lambda: pp.predict_crops(crops))
    t_all = timed_median(lambda: pp.predict(frames, centres[idx], idx))
    return {"batch": batch, "crop_size": pp.crop_size, "threads": torch.get_num_threads(),
            "network_crops_per_s": batch / t_net, "with_cropping_crops_per_s": batch / t_all}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="DeepLabCut project folder (with config.yaml)")
    ap.add_argument("--folds", type=int, default=5, help="contiguous time blocks (default 5)")
    ap.add_argument("--only-folds", type=int, nargs="+",
                    help="run only these fold indices (0-based; for timing or splitting the run)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--centres", nargs="+", default=["oracle", "classical"], choices=["oracle", "classical"],
                    help="test crop centres (the first is primary; default: oracle classical)")
    ap.add_argument("--train-centres", choices=("box", "classical"), default="box",
                    help="training crop centres: keypoint box (train_pose's rule) or the classical centre of mass")
    ap.add_argument("--override", action="append", default=[], help="Hydra override for both models (repeatable)")
    ap.add_argument("--override-posenet", action="append", default=[], help="Hydra override for PoseNet only")
    ap.add_argument("--override-leap", action="append", default=[], help="Hydra override for LEAP only")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (training and speed; default 1: on a shared 2-core machine 2 threads "
                         "ran up to 10x slower)")
    ap.add_argument("--speed-batch", type=int, default=16, help="crops per timed batch (0: skip the timing)")
    ap.add_argument("--speed-only", action="store_true",
                    help="only time the (untrained) networks of the configs; no training, no scores")
    ap.add_argument("--repeats", type=int, default=5, help="--speed-only: timings per model (median reported)")
    ap.add_argument("--label-counts", type=int, nargs="*", default=[], help="ablation: training-frame counts")
    ap.add_argument("--ablation-folds", type=int, help="run the ablation on the first N folds only")
    ap.add_argument("--ablation-radius", type=float, default=5.0, help="PCK radius (px) of the ablation score")
    ap.add_argument("--ablation-csv", type=Path)
    ap.add_argument("--figure", type=Path, help="ablation figure (PNG)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the ablation subsets")
    ap.add_argument("--out", type=Path, help="write everything as JSON here")
    args = ap.parse_args(argv)

    if not (args.data / "config.yaml").is_file() or not (args.data / "labeled-data").is_dir():
        print(f"data not found: {args.data} (needs config.yaml and labeled-data/)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    for pattern in (".*does not have many workers.*", ".*srun.*", ".*treespec.*"):
        warnings.filterwarnings("ignore", pattern)
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    t_start = time.perf_counter()

    skeleton, frames, images, kp = load_data(args.data)
    nodes = skeleton.nodes
    own = {"posenet": args.override_posenet, "leap": args.override_leap}
    cfgs = {m: to_dict(load_model_config(m, [*DEFAULTS[m], *args.override, *own[m]])) for m in args.models}
    centres = {"oracle": box_centres(kp)}
    seg_cfg = None
    if "classical" in args.centres or args.train_centres == "classical":
        centres["classical"], seg_cfg = classical_centres(images)
    if args.speed_only:
        return speed_only(args, cfgs, images, centres["oracle"], len(nodes))
    folds = time_block_folds(len(frames), args.folds)
    run_folds = args.only_folds if args.only_folds is not None else list(range(len(folds)))
    if any(not 0 <= f < len(folds) for f in run_folds):
        print(f"--only-folds must lie in 0..{len(folds) - 1}", file=sys.stderr)
        return 2
    n_abl = len(folds) if args.ablation_folds is None else args.ablation_folds
    rng = np.random.default_rng(args.seed)
    # Training crop centres, and the test centres of the ablation (the same kind).
    tc = ac = centres["oracle"] if args.train_centres == "box" else centres["classical"]
    rows, abl, speeds = [], [], {}

    def score(pred, test, centre_kind, model, fold, n_train, train_s=None):
        m = pose_metrics(pred, kp[test], RADII, nodes, BODY)
        row = {"fold": fold, "model": model, "centres": centre_kind, "n_train": n_train, "n_test": int(len(test)),
               "n_no_centre": int((~np.isfinite(centres[centre_kind][test]).all(1)).sum()), "metrics": m}
        if train_s is not None:
            row["train_s"] = train_s
        rows.append(row)
        return m

    for f in run_folds:
        test = folds[f]
        train = np.setdiff1d(np.arange(len(frames)), test)
        for c in args.centres:
            cen = centres[c]
            score(mean_pose_baseline(kp[train], len(test), cen[train], cen[test]), test, c, "mean_pose", f, len(train))
        subsets = []
        if f < n_abl:
            subsets = [np.sort(rng.choice(train, n, replace=False)) for n in sorted(set(args.label_counts))
                       if n < len(train)]
        for model in args.models:
            def fit(idx):
                return train_pose(images[idx], kp[idx], cfgs[model], model=model, centres=tc[idx],
                                  flip_pairs=skeleton.flip_pairs, node_names=nodes)

            def ablation(net, idx):
                pred = PosePredictor(net, device="cpu").predict(images[test], ac[test])[0]
                abl.append(ablation_row(model, f, len(idx), pred, kp[test],
                                        mean_pose_baseline(kp[idx], len(test), ac[idx], ac[test]),
                                        args.ablation_radius))

            t0 = time.perf_counter()
            net = fit(train)
            train_s = time.perf_counter() - t0
            pp = PosePredictor(net, device="cpu")
            for c in args.centres:
                pred, _ = pp.predict(images[test], centres[c][test])
                m = score(pred, test, c, model, f, len(train), train_s)
                print(f"fold {f} {model:<8} {c:<9} trained {train_s:5.0f} s: RMSE {m['rmse_px']:.2f} px, "
                      f"median {m['median_px']:.2f} px, PCK@5 {m['pck']['5.0']:.3f}", file=sys.stderr, flush=True)
            if args.speed_batch and model not in speeds:
                speeds[model] = speed(net, images[test], centres[args.centres[0]][test], args.speed_batch)
            if subsets:
                ablation(net, train)
            for sub in subsets:
                ablation(fit(sub), sub)
                print(f"fold {f} {model:<8} ablation {len(sub):3d} frames: RMSE {abl[-1]['rmse']:.2f} px",
                      file=sys.stderr, flush=True)

    # Summaries: mean ± s.e.m. over folds of every scalar.
    summary = {}
    for model in ["mean_pose", *args.models]:
        for c in args.centres:
            sel = [flat(r["metrics"]) for r in rows if r["model"] == model and r["centres"] == c]
            if sel:
                summary[f"{model}/{c}"] = {k: mean_sem([s[k] for s in sel]) for k in sel[0]}
    ratios = {}
    if {"posenet", "leap"} <= set(args.models):
        for c in args.centres:
            p, q = summary[f"posenet/{c}"], summary[f"leap/{c}"]
            ratios[c] = {f"{k}_leap_over_posenet": q[k]["mean"] / p[k]["mean"] for k in ("rmse_px", "median_px")}
        if {"posenet", "leap"} <= set(speeds):
            ratios["speed_leap_over_posenet"] = (speeds["leap"]["network_crops_per_s"]
                                                 / speeds["posenet"]["network_crops_per_s"])
    n_missing = {c: int((~np.isfinite(centres[c]).all(1)).sum()) for c in args.centres}
    result = {
        "data": str(args.data), "n_frames": len(frames), "nodes": nodes, "flip_pairs": skeleton.flip_pairs,
        "folds": [[int(b[0]), int(b[-1])] for b in folds], "folds_run": run_folds, "centres": args.centres,
        "train_centres": args.train_centres,
        "oracle_note": "oracle centres = box centre of the labelled test keypoints",
        "classical_segmenter": seg_cfg, "frames_without_centre": n_missing,
        "classical_centre_offset_px_median": (float(np.nanmedian(np.linalg.norm(
            centres["classical"] - centres["oracle"], axis=1))) if "classical" in centres else None),
        "configs": cfgs, "threads": args.threads, "rows": rows, "summary": summary, "speed": speeds,
        "ratios": ratios, "total_s": None,
    }
    if abl:
        table = pd.DataFrame(abl).sort_values(["model", "fold", "n_train"], kind="stable").reset_index(drop=True)
        result["ablation"] = {"radius_px": args.ablation_radius, "rows": table.to_dict("records"),
                              "summary": {m: ablation_summary(t, "pck") for m, t in table.groupby("model")}}
        if args.ablation_csv:
            args.ablation_csv.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(args.ablation_csv, index=False, float_format="%.4f")
        if args.figure:
            ablation_figure(table, args.figure, "DLC open field: pose accuracy vs labels (held-out time blocks)",
                            "labelled training frames", "pck", f"PCK@{args.ablation_radius:g} px")
    result["total_s"] = time.perf_counter() - t_start
    print_table(result, args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def speed_only(args, cfgs: dict, images: np.ndarray, centres: np.ndarray, n_keypoints: int) -> int:
    """Time untrained networks of the configs, alternating models ``--repeats`` times; print medians and ratio."""
    from sipec_models.training.pose import build_pose_model

    nets = {}
    for model, cfg in cfgs.items():
        net = build_pose_model(cfg, n_keypoints, pretrained=False).eval()
        net.config, net.node_names, net.flip_pairs = cfg, [str(k) for k in range(n_keypoints)], []
        nets[model] = net
    runs = {m: [] for m in nets}
    for _ in range(args.repeats):
        for model, net in nets.items():  # alternating, so both see the same machine load
            runs[model].append(speed(net, images, centres, args.speed_batch))
    result = {"threads": args.threads, "batch": args.speed_batch, "repeats": args.repeats, "models": {}}
    for model, rs in runs.items():
        net_s = [r["network_crops_per_s"] for r in rs]
        all_s = [r["with_cropping_crops_per_s"] for r in rs]
        result["models"][model] = {"crop_size": rs[0]["crop_size"], "network_crops_per_s": float(np.median(net_s)),
                                   "with_cropping_crops_per_s": float(np.median(all_s)), "runs": net_s}
        print(f"speed {model:<8} {np.median(net_s):7.1f} crops/s network (median of {len(rs)}; "
              f"{rs[0]['crop_size']} px crops, batch {args.speed_batch}, {args.threads} threads), "
              f"{np.median(all_s):.1f} with cropping")
    if {"posenet", "leap"} <= set(runs):
        ratios = [q["network_crops_per_s"] / p["network_crops_per_s"] for p, q in zip(runs["posenet"], runs["leap"])]
        result["speed_leap_over_posenet"] = float(np.median(ratios))
        print(f"ratio LEAP / PoseNet network speed: median {np.median(ratios):.2f} over {len(ratios)} paired runs "
              f"(range {min(ratios):.2f}-{max(ratios):.2f})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def ablation_row(model, fold, n_train, pred, truth, baseline, radius) -> dict:
    return {"model": model, "fold": fold, "n_train": int(n_train), "rmse": pose_rmse(pred, truth),
            "median": pose_median_error(pred, truth), "pck": pck(pred, truth, radius),
            "chance": pck(baseline, truth, radius)}


def print_table(result: dict, args) -> None:
    def ms(v, fmt=".2f"):
        if v["mean"] is None:
            return "n/a"
        return f"{v['mean']:{fmt}}" + (f" ± {v['sem']:{fmt}}" if v["sem"] is not None else "")

    n_run = len(result["folds_run"])
    print(f"\nDLC open field: {result['n_frames']} labelled frames, {len(result['folds'])} time-block folds "
          f"({n_run} run), mean ± s.e.m. over folds; 'oracle' = crop centred on the labelled keypoints' box")
    head = f"{'model':<10} {'centres':<9} {'RMSE px':>13} {'median px':>13} " + " ".join(
        f"{'PCK@' + format(r, 'g'):>13}" for r in RADII) + f" {'err/body':>15}"
    print(head)
    for key, s in result["summary"].items():
        model, c = key.split("/")
        print(f"{model:<10} {c:<9} {ms(s['rmse_px']):>13} {ms(s['median_px']):>13} "
              + " ".join(f"{ms(s[f'pck@{r:g}'], '.3f'):>13}" for r in RADII)
              + f" {ms(s['error_body_fraction'], '.4f'):>15}")
    nodes = result["nodes"]
    print(f"\nper keypoint, RMSE / median px ({result['centres'][0]} centres):")
    print(f"{'model':<10} " + " ".join(f"{n:>17}" for n in nodes))
    for key, s in result["summary"].items():
        model, c = key.split("/")
        if c == result["centres"][0]:
            print(f"{model:<10} " + " ".join(
                f"{s[f'{n}.rmse_px']['mean']:>8.2f} / {s[f'{n}.median_px']['mean']:<6.2f}" for n in nodes))
    if "classical" in result["centres"]:
        print(f"classical centre to keypoint box centre: median {result['classical_centre_offset_px_median']:.1f} "
              f"px; frames without a blob: {result['frames_without_centre']['classical']}")
    for model, v in result["speed"].items():
        print(f"speed {model:<8} {v['network_crops_per_s']:7.1f} crops/s network (batch {v['batch']}, "
              f"{v['crop_size']} px, {v['threads']} threads), {v['with_cropping_crops_per_s']:.1f} with cropping")
    for k, v in result["ratios"].items():
        print(f"ratio {k}: " + (f"{v:.2f}" if not isinstance(v, dict) else
                                 ", ".join(f"{kk} {vv:.2f}" for kk, vv in v.items())))
    for model in args.models:
        ts = [r["train_s"] for r in result["rows"] if r["model"] == model and r["centres"] == result["centres"][0]]
        if ts:
            print(f"training {model}: {np.mean(ts):.0f} s per fold")
    if "ablation" in result:
        for model, s in result["ablation"]["summary"].items():
            means = ", ".join(f"{n}: {v:.3f}" for n, v in s["means"].items())
            print(f"ablation {model} PCK@{args.ablation_radius:g} by frames: {means}; "
                  f"95 % of peak at {s['frames_for_95']} frames")
    print(f"total {result['total_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())

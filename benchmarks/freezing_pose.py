"""Pose-based freezing classifier on BehaviorDepot's demo: frame F1 and bout statistics against human labels.

Data: ``../shared/data/behaviordepot_freezing``: ``demo1_tracking.csv``
(DeepLabCut tracks of one mouse, 8 keypoints with likelihoods, 6000 frames,
50 fps, 32 px/cm) and ``hB_demo1_manual_annotations.mat`` (MATLAB v7.3:
``hBehavior/Freezing/Vector``, the human freezing label of each frame; 20
bouts, 1368 frames).

Protocol: 5 contiguous time-block folds over the 6000 frames
(:func:`sipec_models.evaluation.time_block_folds`). Per fold, every method
is fitted on the other 4 blocks only (up to two contiguous pieces, before
and after the test block) and predicts the test block:

* ``pose_mlp``: the pose classifier (``config/models/pose_classifier.yaml``,
  Sturman et al. / SIPEC's baseline): pose features in cm and s (log
  speeds), stacked over t-15..t+15, MLP 256-128, focal loss (gamma 3, alpha
  0.5). Early stopping on the validation block: the last 20 % of the
  training frames, cut from the end of the longer piece (training frames
  whose window reaches into it are left out; then a refit on all training
  frames for the best epoch count). Threshold and minimum bout length chosen
  together on cross-fitted predictions of the training frames (4 contiguous
  blocks of the training part, each predicted by a network trained on the
  other 3). The test block's windows are padded at its own edges (no frames
  outside it are seen).
* ``speed_tuned``: freezing where the mean of the head speed (mean of nose
  and ears) and the rear speed (tail base), from a centred difference over
  ``w`` s, stays below a threshold (cm/s) for at least a minimum duration
  (s); ``w``, threshold and duration chosen by grid search maximising F1 on
  the training pieces (bouts do not run across pieces).
* ``speed_anchor``: the same rule with the issue's fixed anchor, 0.63 cm/s
  and bouts of at least 0.9 s (speed window 0.3 s).
* ``all_freezing``: every frame called freezing.
* ``chance``: the pose classifier's test calls scored against the human
  labels circularly shifted in time within the test block (mean of 20 shifts,
  :func:`sipec_models.behaviour_metrics.circular_shift_chance`).

Scores: per fold, the frame F1, precision and recall of freezing
(:func:`sipec_models.behaviour_metrics.classification_scores`); mean ±
s.e.m. and median over folds, and pooled over all 6000 frames. Bout
statistics of the concatenated test predictions (the whole video) against
the human labels: number of bouts, mean bout length (s), fraction of time
freezing (:func:`sipec_models.ethogram.time_budget`), with the relative
difference.

Anchors from the issue (measured on such folds): speed threshold 0.89, gradient
boosting on windowed pose features 0.86, every frame freezing 0.37. Goal:
F1 >= 0.92 and each bout statistic within 10 % of the human value.

``--seeds N`` also trains the pose classifier with the next ``N - 1``
seeds (rows ``pose_mlp_seed<s>``): on 5 folds of about 1200 frames and 4
bouts each, the run-to-run spread is a few points of F1.

Run from the repository root (about 2 min per seed on one CPU thread)::

    .venv/bin/python benchmarks/freezing_pose.py --seeds 3 --out results/benchmarks/freezing_pose.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from sipec_models.behaviour_metrics import circular_shift_chance, classification_scores
from sipec_models.ethogram import remove_short_bouts, run_lengths, time_budget
from sipec_models.evaluation import time_block_folds
from sipec_models.pose_features import centred_difference, clean_keypoints
from sipec_models.training.config import load_model_config, to_dict
from sipec_models.training.pose_classifier import (
    features_from_keypoints, postprocess_probs, predict_proba, train_pose_classifier, validation_block,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "behaviordepot_freezing"
FPS, PX_PER_CM = 50.0, 32.0
HEAD, REAR = ("Nose", "Left Ear", "Right Ear"), ("Tailbase",)
ANCHOR = {"threshold_cm_s": 0.63, "min_bout_s": 0.9, "speed_window_s": 0.3}
ISSUE_ANCHORS = {"speed_threshold": 0.89, "gradient_boosting": 0.86, "all_freezing": 0.37}
SPEED_GRID = {"speed_window_s": (0.1, 0.2, 0.3, 0.5), "threshold_cm_s": tuple(np.round(np.arange(0.3, 2.01, 0.05), 2)),
              "min_bout_s": (0.3, 0.5, 0.7, 0.9, 1.1)}

log = logging.getLogger("freezing_pose")


# --------------------------------------------------------------------------- data


def load_data(data: Path) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """``(points (T, K, 2) px, scores (T, K), node names, labels (T,) int 0/1)`` of the demo."""
    import h5py

    from sipec_models.io.keypoints import load_keypoints

    kl = load_keypoints(data / "demo1_tracking.csv")
    with h5py.File(data / "hB_demo1_manual_annotations.mat", "r") as f:
        labels = np.asarray(f["hBehavior/Freezing/Vector"][()]).ravel().astype(np.int64)
    T, K = len(labels), len(kl.skeleton.nodes)
    points, scores = np.full((T, K, 2), np.nan), np.full((T, K), np.nan)
    for fr in kl.frames:
        if fr.frame is None or not 0 <= fr.frame < T:
            raise ValueError(f"{data}: tracking frame {fr.frame} outside the {T} labelled frames")
        if len(fr.points):
            points[fr.frame] = fr.points[0]
            scores[fr.frame] = fr.scores[0] if fr.scores is not None else 1.0
    return points, scores, list(kl.skeleton.nodes), labels


def training_pieces(n: int, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames outside the test block and the piece (0 before, 1 after the block) each belongs to."""
    before, after = np.arange(0, test[0]), np.arange(test[-1] + 1, n)
    idx = np.concatenate([before, after])
    return idx, np.concatenate([np.zeros(len(before), np.int64), np.ones(len(after), np.int64)])


# --------------------------------------------------------------------------- speed baseline


def head_rear_speed(points: np.ndarray, scores: np.ndarray, names: list[str], window_s: float) -> np.ndarray:
    """``(T,)`` cm/s: mean of the head speed (mean of nose and ears) and the rear speed (tail base)."""
    p = clean_keypoints(points, scores, 0.1, int(round(0.5 * FPS))) / PX_PER_CM
    head = np.nanmean(p[:, [names.index(n) for n in HEAD]], axis=1)
    rear = np.nanmean(p[:, [names.index(n) for n in REAR]], axis=1)
    v = 0.5 * (np.linalg.norm(centred_difference(head, FPS, window_s), axis=1)
               + np.linalg.norm(centred_difference(rear, FPS, window_s), axis=1))
    return np.where(np.isfinite(v), v, np.inf)  # untracked: not freezing


def speed_calls(speed: np.ndarray, threshold: float, min_bout_s: float, video_ids=None) -> np.ndarray:
    """``(T,)`` bool: speed below ``threshold`` for at least ``min_bout_s`` seconds."""
    return remove_short_bouts((speed < threshold)[:, None], int(round(min_bout_s * FPS)), 0, video_ids)[:, 0]


def _f1(y: np.ndarray, c: np.ndarray) -> float:
    tp = int((y & c).sum())
    return 2 * tp / max(int(y.sum() + c.sum()), 1)


def tune_speed(speeds: dict[float, np.ndarray], labels: np.ndarray, idx: np.ndarray, pieces: np.ndarray) -> dict:
    """Grid search of speed window, threshold and minimum bout maximising F1 on the frames ``idx``."""
    best = None
    y = labels[idx].astype(bool)
    for w in SPEED_GRID["speed_window_s"]:
        s = speeds[w][idx]
        for thr in SPEED_GRID["threshold_cm_s"]:
            below = s < thr
            for mb in SPEED_GRID["min_bout_s"]:
                c = remove_short_bouts(below[:, None], int(round(mb * FPS)), 0, pieces)[:, 0]
                f = _f1(y, c)
                if best is None or f > best[0] + 1e-12:
                    best = (f, {"speed_window_s": w, "threshold_cm_s": float(thr), "min_bout_s": mb})
    return {**best[1], "train_f1": best[0]}


# --------------------------------------------------------------------------- scores


def frame_scores(y: np.ndarray, calls: np.ndarray) -> dict:
    """Freezing F1, precision, recall of ``(T,)`` bool calls against ``(T,)`` bool labels."""
    # Two columns (freezing, other): with a single (T, 1) column sklearn reads the labels as binary
    # and classification_scores would score class 0 (not freezing).
    y, calls = np.asarray(y, bool), np.asarray(calls, bool)
    s = classification_scores(np.c_[y, ~y].astype(int), np.c_[calls, ~calls].astype(int), None,
                              ["freezing", "other"])
    p = s["per_behaviour"]["freezing"]
    return {"f1": p["f1"], "precision": p["precision"], "recall": p["recall"]}


def bout_stats(calls: np.ndarray) -> dict:
    b = time_budget(calls[:, None], ["freezing"], FPS).iloc[0]
    return {"n_bouts": int(b["n_bouts"]), "mean_bout_s": float(b["mean_bout_s"]), "fraction": float(b["fraction"])}


def _sem(x) -> float:
    x = np.asarray(x, float)
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


# --------------------------------------------------------------------------- protocol


def run(data: Path, folds: int, overrides: list[str], n_shifts: int, seeds: int = 1) -> dict:
    """The whole protocol; ``seeds > 1`` also trains the pose classifier with the next ``seeds - 1`` seeds
    (rows ``pose_mlp_seed<s>``) to show its run-to-run spread; ``pose_mlp`` is always the config's seed."""
    points, scores, names, labels = load_data(data)
    T = len(labels)
    y = labels.astype(bool)
    cfg = load_model_config("pose_classifier", overrides)
    seed0 = int(cfg.seed)
    extra = {f"pose_mlp_seed{seed0 + i}": load_model_config("pose_classifier", [*overrides, f"seed={seed0 + i}"])
             for i in range(1, seeds)}
    methods = ["pose_mlp", *extra, "speed_tuned", "speed_anchor", "all_freezing", "chance"]
    feats, feat_names = features_from_keypoints(points, FPS, PX_PER_CM, cfg, names, scores)
    log.info("%d frames, %d keypoints, %d per-frame features, %d human freezing frames", T, len(names),
             feats.shape[1], int(y.sum()))
    speeds = {w: head_rear_speed(points, scores, names, w) for w in SPEED_GRID["speed_window_s"]}
    anchor_speed = head_rear_speed(points, scores, names, ANCHOR["speed_window_s"])
    calls = {m: np.zeros(T, bool) for m in methods if m != "chance"}
    probs_all = np.zeros(T)
    rows, details = [], []
    for k, test in enumerate(time_block_folds(T, folds)):
        t0 = time.perf_counter()
        idx, pieces = training_pieces(T, test)
        yt = y[test]
        fold_calls, mlp_info = {}, {}
        for m, c in {"pose_mlp": cfg, **extra}.items():
            model = train_pose_classifier(feats[idx], labels[idx], c, video_ids=pieces, fps=FPS,
                                          names=["other", "freezing"], feature_names=feat_names)
            probs = predict_proba(model, feats[test])  # windows padded at the test block's own edges
            fold_calls[m] = postprocess_probs(model, probs)[:, 1]
            mlp_info[m] = {"best_epoch": model.best_epoch, "epochs": len(model.history),
                           "threshold": float(model.thresholds[1]), "min_bout_frames": int(model.min_frames[1]),
                           "val_f1": model.val_scores[1],
                           "crossfit_f1": None if model.crossfit is None else model.crossfit["f1"][1]}
            if m == "pose_mlp":
                probs_all[test] = probs[:, 1]
        sp = tune_speed(speeds, labels, idx, pieces)
        fold_calls["speed_tuned"] = speed_calls(speeds[sp["speed_window_s"]][test], sp["threshold_cm_s"],
                                                sp["min_bout_s"])
        fold_calls["speed_anchor"] = speed_calls(anchor_speed[test], ANCHOR["threshold_cm_s"], ANCHOR["min_bout_s"])
        fold_calls["all_freezing"] = np.ones(len(test), bool)
        f1 = {}
        for m, c in fold_calls.items():
            calls[m][test] = c
            rows.append({"fold": k, "method": m, **frame_scores(yt, c)})
            f1[m] = rows[-1]["f1"]
        ch = circular_shift_chance(yt[:, None].astype(int), fold_calls["pose_mlp"][:, None].astype(int),
                                   n_shifts=n_shifts, seed=k,
                                   score_fn=lambda a, b: frame_scores(a[:, 0].astype(bool), b[:, 0])["f1"])
        rows.append({"fold": k, "method": "chance", "f1": ch["mean"], "precision": None, "recall": None})
        val = validation_block(len(idx), float(cfg.train.val_fraction), pieces)
        details.append({
            "fold": k, "test": [int(test[0]), int(test[-1]) + 1], "n_test_freezing": int(yt.sum()),
            "validation": [int(idx[val][0]), int(idx[val][-1]) + 1], **mlp_info,
            "speed_tuned": sp, "seconds": round(time.perf_counter() - t0, 1),
        })
        i = mlp_info["pose_mlp"]
        log.info("fold %d/%d (frames %d-%d, %d freezing): F1 %s, chance %.3f; MLP best epoch %d/%d, threshold "
                 "%.2f, min bout %d frames; tuned speed %s; %.0f s", k + 1, folds, test[0], test[-1] + 1, yt.sum(),
                 {m: round(v, 3) for m, v in f1.items()}, ch["mean"], i["best_epoch"], i["epochs"], i["threshold"],
                 i["min_bout_frames"], sp, time.perf_counter() - t0)
    human = bout_stats(y)
    summary = {}
    for m in methods:
        r = [row for row in rows if row["method"] == m]
        s = {}
        for key in ("f1", "precision", "recall"):
            v = [row[key] for row in r if row[key] is not None]
            if v:
                s[key] = {"mean": float(np.mean(v)), "sem": _sem(v), "median": float(np.median(v)),
                          "folds": [round(float(x), 4) for x in v]}
        if m in calls:
            s["pooled"] = frame_scores(y, calls[m])
            b = bout_stats(calls[m])
            s["bouts"] = b
            s["bouts_rel_diff"] = {key: (b[key] - human[key]) / human[key] for key in human}
        summary[m] = s
    mlp = summary["pose_mlp"]
    return {"data": str(data), "fps": FPS, "px_per_cm": PX_PER_CM, "n_frames": T, "folds": folds,
            "config": to_dict(cfg), "overrides": overrides, "n_features": int(feats.shape[1]),
            "speed_anchor": ANCHOR, "speed_grid": {k: list(v) for k, v in SPEED_GRID.items()},
            "issue_anchors": ISSUE_ANCHORS, "human_bouts": human, "summary": summary, "per_fold": rows,
            "fold_details": details,
            "predictions": {"pose_mlp_prob": [round(float(v), 4) for v in probs_all],
                            **{f"{m}_bouts": [[int(a), int(b)] for a, b in zip(*run_lengths(c))]
                               for m, c in calls.items() if m != "all_freezing"}},
            "goal_met": {"f1": mlp["f1"]["mean"] >= 0.92,
                         "bouts": all(abs(v) <= 0.10 for v in mlp["bouts_rel_diff"].values())}}


def table(result: dict) -> str:
    """The printed summary: one row per method (F1, precision, recall over folds; pooled F1; bout statistics)."""
    h = result["human_bouts"]
    lines = [f"{'method':<15} {'F1 mean±sem':>13} {'median':>6} {'precision':>13} {'recall':>13} {'pooled':>6} "
             f"{'bouts':>5} {'mean_s':>6} {'frac':>6}",
             f"{'human':<15} {'':>13} {'':>6} {'':>13} {'':>13} {'':>6} {h['n_bouts']:>5d} {h['mean_bout_s']:>6.2f} "
             f"{h['fraction']:>6.3f}"]
    for m, s in result["summary"].items():
        ms = lambda k: f"{s[k]['mean']:.3f}±{s[k]['sem']:.3f}" if k in s else ""  # noqa: E731
        row = f"{m:<15} {ms('f1'):>13} {s['f1']['median']:>6.3f} {ms('precision'):>13} {ms('recall'):>13} "
        if "bouts" in s:
            b = s["bouts"]
            row += f"{s['pooled']['f1']:>6.3f} {b['n_bouts']:>5d} {b['mean_bout_s']:>6.2f} {b['fraction']:>6.3f}"
        lines.append(row.rstrip())
    lines.append("per-fold F1:")
    lines += [f"  {m:<15} {s['f1']['folds']}" for m, s in result["summary"].items()]
    vf = [d["pose_mlp"]["val_f1"] for d in result["fold_details"]]
    cf = [d["pose_mlp"]["crossfit_f1"] for d in result["fold_details"]]
    r3 = lambda v: [None if x is None else round(x, 3) for x in v]  # noqa: E731
    lines.append(f"pose_mlp validation-block F1 (best threshold): {r3(vf)}; cross-fitted training F1 (tuned "
                 f"postprocessing): {r3(cf)}")
    mlps = [m for m in result["summary"] if m.startswith("pose_mlp")]
    for m in mlps:
        d = result["summary"][m]["bouts_rel_diff"]
        lines.append(f"{m} bout statistics vs human: " + ", ".join(f"{k} {v:+.1%}" for k, v in d.items()))
    if len(mlps) > 1:
        f1 = [result["summary"][m]["f1"]["mean"] for m in mlps]
        pooled = [result["summary"][m]["pooled"]["f1"] for m in mlps]
        lines.append(f"pose_mlp over {len(mlps)} seeds: fold-mean F1 {np.mean(f1):.3f} (range {min(f1):.3f}-"
                     f"{max(f1):.3f}), pooled F1 {np.mean(pooled):.3f} (range {min(pooled):.3f}-{max(pooled):.3f})")
    lines.append(f"goal (pose_mlp F1 >= 0.92, bout statistics within 10 %): {result['goal_met']}; issue anchors "
                 f"(F1): {result['issue_anchors']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="folder with demo1_tracking.csv and the .mat labels")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--override", action="append", default=[], help="Hydra override of pose_classifier (repeatable)")
    ap.add_argument("--shifts", type=int, default=20, help="circular shifts of the chance level")
    ap.add_argument("--seeds", type=int, default=1,
                    help="also train the pose classifier with this many seeds in all (spread of the runs)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", type=Path, help="write everything as JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    import pytorch_lightning  # noqa: F401  (it sets its loggers' levels on import; quieten them afterwards)

    for name in ("sipec_models.training.pose_classifier", "pytorch_lightning", "pytorch_lightning.utilities.rank_zero",
                 "lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = run(args.data, args.folds, args.override, args.shifts, args.seeds)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(table(result))
    print(f"total {result['seconds']:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""BehaveNet and DeepEthogram against the pose-based classifier on the demo (SIPEC Fig. 3c's comparison), same split.

Split by video: all models train on ``arena_0`` and are scored on
``arena_1`` (600 frames x 3 animals each, 25 fps), on the demo's exclusive
behaviours walk, pause, rear, groom (``resources/demo/arena_*/behaviour.csv``).

* ``behavenet``: the workflow's own path: labels matched to the tracks of
  ``results/arena_0/arena_0.zarr`` by position
  (:func:`sipec_models.training.behaviour.run_train_behavenet`, model
  config ``config/models/behavenet.yaml`` plus ``--behavenet-override``),
  then the masked crops of ``results/arena_1/arena_1.zarr``
  (:func:`sipec_models.inference.behave.behavenet_probs`) and the calls of
  the merged tables (:func:`sipec_models.tables.behaviour_calls`). Run the
  workflow first (``make run``) so that both video stores exist.
* ``deepethogram``: the workflow's entries
  (:mod:`sipec_models.training.deepethogram`): flow generator, two-stream
  feature extractor and TGM sequence model trained in series on arena_0's
  animal crops (``config/models/deepethogram.yaml`` plus ``--deg-override``,
  e.g. ``deg_preset=medium``), then features and probabilities of arena_1's
  crops, called with the per-behaviour thresholds chosen on validation.
* ``pose_classifier``: Sturman et al.'s features of the demo's *true*
  keypoints (``keypoints.csv``: snout, ears, tail base in every frame; an
  upper bound for a pose pipeline) per animal, in cm (px per cm from the
  arena's 420 mm across 256 px... measured from the camera model as the
  median body length in px over the rendered length in cm) and seconds,
  ``config/models/pose_classifier.yaml`` with the body axis tail base ->
  snout.

Scores on arena_1, per animal (the BehaveNet calls of the track matched to
each animal in each frame, so both models are scored on the same frames
and labels): per-behaviour F1, macro-F1, frame accuracy, with the
circular-shift chance level of each model's calls. The paired comparison
is a Wilcoxon signed-rank test over the (animal, behaviour) F1 pairs
(3 x 4 = 12 pairs).

Also prints BehaveNet's CPU inference speed on the arena_1 crops (frames per
second = animal crops per second / animals; median of ``--repeats``).

Run from the repository root (a few minutes on 2 CPU threads)::

    .venv/bin/python benchmarks/demo_behaviour.py --out results/benchmarks/demo_behaviour.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
BEHAVIOURS = ["walk", "pause", "rear", "groom"]
NODES = ["snout", "leftear", "rightear", "tailbase"]
log = logging.getLogger("demo_behaviour")


def animal_slots(positions: Path, com: np.ndarray, animals: list[str], max_distance: float) -> np.ndarray:
    """``(T, N)`` track slot of each labelled animal per frame (-1: no track within ``max_distance`` px)."""
    from sipec_models.behaviour_data import _match_frame, read_positions

    pos = read_positions(positions)
    T = com.shape[0]
    xy = np.full((T, len(animals), 2), np.nan)
    pos = pos[pos["animal"].isin(animals)]
    xy[pos["frame"].to_numpy(int), [animals.index(a) for a in pos["animal"]]] = pos[["x", "y"]].to_numpy(float)
    out = np.full((T, len(animals)), -1, np.int64)
    for t in range(T):
        for i, s in _match_frame(xy[t], com[t], max_distance):
            out[t, i] = s
    return out


def truth(demo: Path, video: str, animals: list[str]) -> np.ndarray:
    """``(T, N, C)`` 0/1 labels of the demo's behaviours per animal."""
    b = pd.read_csv(demo / video / "behaviour.csv")
    T = int(b["frame"].max()) + 1
    out = np.zeros((T, len(animals), len(BEHAVIOURS)), np.uint8)
    for i, a in enumerate(animals):
        rows = b[b["animal"] == a].sort_values("frame")
        out[rows["frame"].to_numpy(int), i] = rows[BEHAVIOURS].to_numpy(np.uint8)
    return out


def keypoints(demo: Path, video: str, animals: list[str]) -> np.ndarray:
    """``(T, N, K, 2)`` true keypoints (px) per animal."""
    k = pd.read_csv(demo / video / "keypoints.csv")
    T = int(k["frame"].max()) + 1
    out = np.full((T, len(animals), len(NODES), 2), np.nan)
    for i, a in enumerate(animals):
        rows = k[k["animal"] == a].sort_values("frame")
        out[rows["frame"].to_numpy(int), i] = np.stack(
            [rows[[f"{n}_x" for n in NODES]].to_numpy(float), rows[[f"{n}_y" for n in NODES]].to_numpy(float)], -1)
    return out


def scores(y: np.ndarray, calls: np.ndarray, probs: np.ndarray, animals: list[str]) -> dict:
    """Pooled and per-animal scores of ``(T, N, C)`` calls against labels."""
    from sipec_models.behaviour_metrics import circular_shift_chance, classification_scores

    T, N, C = y.shape
    flat = lambda a: a.transpose(1, 0, 2).reshape(T * N, C)  # noqa: E731 - animal-major, time order within
    vids = np.repeat(np.arange(N), T)
    pooled = classification_scores(flat(y), flat(calls).astype(int), flat(probs), BEHAVIOURS)
    chance = circular_shift_chance(flat(y), flat(calls).astype(int), video_ids=vids, n_shifts=50)
    per_animal = {a: {b: classification_scores(y[:, i], calls[:, i].astype(int), probs[:, i], BEHAVIOURS)
                      ["per_behaviour"][b]["f1"] for b in BEHAVIOURS} for i, a in enumerate(animals)}
    return {"macro_f1": pooled["macro_f1"], "frame_accuracy": pooled["frame_accuracy"],
            "per_behaviour_f1": {b: pooled["per_behaviour"][b]["f1"] for b in BEHAVIOURS},
            "support": {b: pooled["per_behaviour"][b]["support"] for b in BEHAVIOURS},
            "chance_macro_f1": chance, "per_animal_f1": per_animal}


def run_behavenet(args, animals: list[str]) -> tuple[np.ndarray, np.ndarray, dict]:
    import torch

    from sipec_models.behaviour_data import com_speed
    from sipec_models.inference.behave import behavenet_probs
    from sipec_models.io.store import open_store
    from sipec_models.tables import behaviour_calls
    from sipec_models.training.behaviour import run_train_behavenet

    src = {"video": "arena_0", "store": str(args.results / "arena_0" / "arena_0.zarr"),
           "labels": str(args.demo / "arena_0" / "behaviour.csv"), "format": "frames",
           "positions": str(args.demo / "arena_0" / "centroids.csv"), "frames": None}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = run_train_behavenet([src], Path(tmp) / "bn.pt", overrides=args.behavenet_override,
                                    behaviours=BEHAVIOURS, max_distance=args.max_distance, progress=False)
        train_s = time.perf_counter() - t0
    g = open_store(args.results / "arena_1" / "arena_1.zarr")
    com, crops = g["com"][...].astype(np.float64), g["crop"][...]
    valid = np.isfinite(com).all(-1)
    motion = com_speed(com, float(g.attrs["fps"]), float(crops.shape[-1])) if model.motion_input else None
    speed = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        probs = behavenet_probs(model, crops, valid, motion)
        speed.append(len(com) / (time.perf_counter() - t0))
    calls = behaviour_calls(probs, model.multilabel, model.meta["postprocess"], float(g.attrs["fps"]))
    slots = animal_slots(args.demo / "arena_1" / "centroids.csv", com, animals, args.max_distance)
    T, N = slots.shape
    pick = np.maximum(slots, 0)
    rows = np.arange(T)[:, None]
    p, c = probs[rows, pick], calls[rows, pick]
    p[slots < 0], c[slots < 0] = 0.0, False
    info = {"train_s": round(train_s, 1), "frames_per_s_median": float(np.median(speed)),
            "frames_per_s_runs": [round(s, 1) for s in speed], "animals_per_frame": int(com.shape[1]),
            "unmatched_animal_frames": int((slots < 0).sum()), "threads": torch.get_num_threads(),
            "val_macro_f1": model.meta.get("val_macro_f1"), "postprocess": model.meta["postprocess"]}
    return np.nan_to_num(p), c, info


def _plan_file(path: Path, n_frames: int) -> Path:
    path.write_text(json.dumps({"n_frames": n_frames, "chunk_size": n_frames,
                                "chunks": [{"chunk": 0, "start": 0, "stop": n_frames}]}))
    return path


def run_deepethogram(args, animals: list[str]) -> tuple[np.ndarray, np.ndarray, dict]:
    """DeepEthogram's three stages on arena_0's crops (the workflow's entries), then arena_1's crops."""
    import torch

    from sipec_models.io.store import open_store
    from sipec_models.tables import behaviour_calls
    from sipec_models.training.deepethogram import (deepethogram_probs, deg_features_of_block,
                                                    run_extract_deg_features, run_train_deg_features,
                                                    run_train_deg_flow, run_train_deg_sequence)
    from sipec_models.training.deg_features import load_feature_extractor
    from sipec_models.training.flow import load_flow_generator

    store0 = args.results / "arena_0" / "arena_0.zarr"
    src = {"video": "arena_0", "store": str(store0), "labels": str(args.demo / "arena_0" / "behaviour.csv"),
           "format": "frames", "positions": str(args.demo / "arena_0" / "centroids.csv"), "frames": None}
    ov = args.deg_override
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        flow = run_train_deg_flow([src], tmp / "flow.pt", ov, progress=False,
                                  figure=args.out.with_name(args.out.stem + "_flow.png") if args.out else None)
        feats = run_train_deg_features([src], tmp / "flow.pt", tmp / "features.pt", ov, behaviours=BEHAVIOURS,
                                       max_distance=args.max_distance, progress=False)
        T0 = int(open_store(store0).attrs["n_frames"])
        f0 = run_extract_deg_features(store0, _plan_file(tmp / "plan.json", T0), 0, tmp / "flow.pt",
                                      tmp / "features.pt", tmp / "f0.zarr")
        model = run_train_deg_sequence([{**src, "features": [str(f0)]}], tmp / "deg.pt", ov, behaviours=BEHAVIOURS,
                                       max_distance=args.max_distance, progress=False)
        train_s = time.perf_counter() - t0
        flow_model = load_flow_generator(tmp / "flow.pt")
        extractor, _ = load_feature_extractor(tmp / "features.pt")
    g = open_store(args.results / "arena_1" / "arena_1.zarr")
    com, crops = g["com"][...].astype(np.float64), g["crop"][...]
    valid = np.isfinite(com).all(-1)
    speed = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        x = deg_features_of_block(crops, valid, flow_model, extractor, list(flow_model.input_size))
        probs = deepethogram_probs(model, x)
        speed.append(len(com) / (time.perf_counter() - t0))
    if list(model.names) != BEHAVIOURS:
        raise ValueError(f"DeepEthogram behaviours {model.names} differ from {BEHAVIOURS}")
    pp = {"thresholds": np.asarray(model.thresholds).tolist(), "min_frames": np.asarray(model.min_bout_frames).tolist(),
          "fps": float(g.attrs["fps"])}
    calls = behaviour_calls(probs, True, pp, float(g.attrs["fps"]))
    slots = animal_slots(args.demo / "arena_1" / "centroids.csv", com, animals, args.max_distance)
    pick, rows = np.maximum(slots, 0), np.arange(len(slots))[:, None]
    p, c = probs[rows, pick], calls[rows, pick]
    p[slots < 0], c[slots < 0] = 0.0, False
    info = {"train_s": round(train_s, 1), "frames_per_s_median": float(np.median(speed)),
            "frames_per_s_runs": [round(s, 1) for s in speed], "threads": torch.get_num_threads(),
            "flow": {k: flow[k] for k in ("best_val_loss", "zero_flow_val_loss", "input_size")},
            "features_val_macro_f1": feats.get("val_macro_f1"),
            "sequence_val_macro_f1": (model.history or {}).get("best_val_macro_f1"), "postprocess": pp,
            "overrides": list(ov)}
    return np.nan_to_num(p), c, info


def run_pose_classifier(args, animals: list[str]) -> tuple[np.ndarray, np.ndarray, dict]:
    from sipec_models.training.config import load_model_config
    from sipec_models.training.pose_classifier import (
        features_from_keypoints, postprocess_probs, predict_proba, train_pose_classifier,
    )

    cfg = load_model_config("pose_classifier", ["features.body_axis=[tailbase,snout]", *args.pose_override])
    meta = json.loads((args.demo / "arena_0" / "meta.json").read_text())
    length_cm = np.mean([a["length_mm"] for a in meta["appearance"]]) / 10
    k0 = keypoints(args.demo, "arena_0", animals)
    body_px = np.nanmedian(np.linalg.norm(k0[:, :, 0] - k0[:, :, 3], axis=-1))
    px_per_cm = float(body_px / length_cm)

    def feats(video):
        k = keypoints(args.demo, video, animals)
        return np.stack([features_from_keypoints(k[:, i], 25.0, px_per_cm, cfg, NODES)[0] for i in range(len(animals))],
                        1)

    f0, y0 = feats("arena_0"), truth(args.demo, "arena_0", animals)
    T, N, F = f0.shape
    t0 = time.perf_counter()
    model = train_pose_classifier(f0.transpose(1, 0, 2).reshape(T * N, F),
                                  y0.transpose(1, 0, 2).reshape(T * N, -1).argmax(1), cfg,
                                  video_ids=np.repeat(np.arange(N), T), fps=25.0, names=BEHAVIOURS)
    train_s = time.perf_counter() - t0
    f1 = feats("arena_1")
    T1 = f1.shape[0]
    X, vids = f1.transpose(1, 0, 2).reshape(T1 * N, F), np.repeat(np.arange(N), T1)
    probs = predict_proba(model, X, vids)
    calls = postprocess_probs(model, probs, video_ids=vids)
    back = lambda a: a.reshape(N, T1, -1).transpose(1, 0, 2)  # noqa: E731
    return back(probs), back(calls), {"train_s": round(train_s, 1), "px_per_cm": round(px_per_cm, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=REPO / "results", help="workflow results with arena_0/1 stores")
    ap.add_argument("--demo", type=Path, default=REPO / "resources" / "demo")
    ap.add_argument("--behavenet-override", action="append", default=[],
                    help="Hydra override of config/models/behavenet.yaml (repeatable)")
    ap.add_argument("--deg-override", action="append", default=[],
                    help="Hydra override of config/models/deepethogram.yaml (repeatable), e.g. deg_preset=medium")
    ap.add_argument("--models", nargs="+", default=["pose_classifier", "behavenet", "deepethogram"],
                    choices=["pose_classifier", "behavenet", "deepethogram"])
    ap.add_argument("--pose-override", action="append", default=[],
                    help="Hydra override of config/models/pose_classifier.yaml (repeatable)")
    ap.add_argument("--max-distance", type=float, default=10.0, help="px between a labelled animal and its track")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed BehaveNet inference runs")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    import torch
    from scipy.stats import wilcoxon

    torch.set_num_threads(args.threads)
    for v in ("arena_0", "arena_1"):
        if not (args.results / v / f"{v}.zarr").exists():
            sys.exit(f"{args.results / v / f'{v}.zarr'} does not exist: run the workflow on the demo first (make run)")
    animals = json.loads((args.demo / "arena_1" / "meta.json").read_text())["animals"]
    y1 = truth(args.demo, "arena_1", animals)
    result = {"split": "train arena_0, test arena_1", "behaviours": BEHAVIOURS, "animals": animals, "models": {}}
    runners = {"pose_classifier": run_pose_classifier, "behavenet": run_behavenet, "deepethogram": run_deepethogram}
    for name in args.models:
        probs, calls, info = runners[name](args, animals)
        result["models"][name] = {**scores(y1, calls, probs, animals), **info}
    result["wilcoxon"] = {}
    names = list(result["models"])
    for i, a_name in enumerate(names):
        for b_name in names[i + 1:]:
            d = np.array([(result["models"][a_name]["per_animal_f1"][a][b],
                           result["models"][b_name]["per_animal_f1"][a][b]) for a in animals for b in BEHAVIOURS])
            result["wilcoxon"][f"{a_name} - {b_name}"] = {
                "pairs": "(animal, behaviour) F1", "n": len(d), "median_difference": float(np.median(d[:, 0] - d[:, 1])),
                "p_value": float(wilcoxon(d[:, 0], d[:, 1]).pvalue) if np.any(d[:, 0] != d[:, 1]) else 1.0}
    print(f"\n{'model':16s} {'macro-F1':>9s} {'chance':>7s} {'acc':>6s} " + " ".join(f"{b:>6s}" for b in BEHAVIOURS))
    for name, r in result["models"].items():
        print(f"{name:16s} {r['macro_f1']:9.3f} {r['chance_macro_f1']['mean']:7.3f} {r['frame_accuracy'] or 0:6.3f} "
              + " ".join(f"{r['per_behaviour_f1'][b]:6.3f}" for b in BEHAVIOURS))
    for pair, w in result["wilcoxon"].items():
        print(f"Wilcoxon over {w['n']} (animal, behaviour) F1 pairs: median {pair} "
              f"{w['median_difference']:+.3f}, p = {w['p_value']:.3g}")
    for name in ("behavenet", "deepethogram"):
        if name in result["models"]:
            r = result["models"][name]
            print(f"{name} CPU inference ({r['threads']} threads): {r['frames_per_s_median']:.1f} frames/s of "
                  f"{len(animals)} animals (runs {r['frames_per_s_runs']})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""DeepEthogram clip classification on real rodent clips: session-grouped 5-fold cross-validation.

Same data, crops, folds, chance level and scores as
``benchmarks/rodent_clips_behavenet.py`` (its functions are imported, not
copied): 403 clips of 16 frames in 7 exclusive classes, one fixed square
crop of the animal per clip from the ``.npz`` crop cache
(``results/cache/rodent_clips_crops_128.npz``, 128 px RGB; nothing is decoded
again when it exists), ``StratifiedGroupKFold`` (5 folds, shuffled, seed 0)
over recording sessions and chains of bare-number clips.

DeepEthogram (Bohnslav et al. eLife 2021; ``config/models/deepethogram.yaml``,
preset ``fast``: TinyMotionNet flow generator, two ResNet18 streams, TGM
sequence model) treats each clip as one video of 16 frames, every frame
labelled with the one-hot vector of the clip's class (7 columns, no
``background``: every frame has exactly one behaviour). The crops are
resized to ``data.input_size`` (bilinear) and, with ``data.rgb=false`` (the
default here: the footage is grey, its channels differ by about 3 grey
levels), reduced to their channel mean: one grey channel into the flow
generator, repeated to 3 channels for the spatial stream. Per fold:

1. Flow generator (unsupervised): trained on the training clips' frames
   (``--flow-per-fold``, the default; test clips never enter it), or with
   ``--no-flow-per-fold`` once on all clips (transductive but label-free, the
   test clips' frames included) and shared by all folds. A clip of 16 frames
   holds 6 windows of 11 frames; ``--flow-val-fraction`` of the clips (whole
   clips, at random) are held out as validation that picks the best epoch.
   The flows of every frame come from the 11 frames centred on it, the clip's
   first or last frame repeated beyond its ends
   (:func:`sipec_models.training.flow.flows_for_frames`); they are kept as
   float16 (``(16, 20, H, W)`` per clip, px).
2. Feature extractor: trained on the training clips' frames and flows
   (:func:`sipec_models.training.deg_features.train_feature_extractor`,
   curriculum spatial -> flow -> fused; the last ``data.val_fraction`` of
   each training clip, 3 frames, is the validation block that picks each
   stage's best epoch). It then gives every clip's 512 spatial + 512 flow
   features per frame and its fused logits.
3. Sequence model: the TGM on the training clips' ``(16, 1024)`` features
   (``sequence.train.sequence_length=16``, one window per clip; the same last
   3 frames of each clip validate), then the test clips' frame probabilities.

A clip's prediction is the argmax of the mean over its 16 frames of the
sequence model's probabilities (the main row); the feature extractor's own
prediction (argmax of the mean sigmoid of its fused logits) is scored the
same way as a second row (``feature_extractor`` in the JSON), so the sequence
model's contribution is visible. The validation blocks are frames of the
training clips, so they guard against divergence and pick epochs; they do not
estimate test performance.

Scores (as the BehaveNet benchmark): pooled clip accuracy, macro-F1 and
per-class F1 over the tested folds' clips, per-fold mean ± s.e.m., clips of
known sessions, each cage and bare-number clips separately; chance: test
labels permuted within each fold against the same predictions (median of 200).
Per fold the seconds of each step are recorded (flow training and inference,
feature training and extraction, sequence training, prediction) with the
training steps run, so a full run can be planned from one fold.

Configuration: ``config/models/deepethogram.yaml`` plus ``DEFAULT_OVERRIDES``
(96 px grey input, 16-frame sequence windows) plus ``--override`` (Hydra,
repeatable; later values win; ``--no-default-overrides`` drops the defaults).
Everything else is DeepEthogram's default schedule (flow 10 x 1000 steps,
feature extractor 20 epochs per stage, sequence model 100 epochs): a GPU job.
ImageNet transfer instead of ResNet18 from scratch:
``--override features.backbone=efficientnet_lite0 --override features.pretrained=true``.

Run from the repository root. Full 5-fold run (DeepEthogram's schedule; meant for a GPU)::

    .venv/bin/python benchmarks/rodent_clips_deepethogram.py --device cuda \
        --out results/benchmarks/rodent_clips_deepethogram.json

Smoke test (60 clips, fold 0, 64 px, a few steps per stage; 4.9 min wall, fold 271 s, on one CPU thread of a
shared 2-core machine; the scores of so short a schedule mean nothing)::

    .venv/bin/python benchmarks/rodent_clips_deepethogram.py --max-clips 60 --folds-to-run 0 \
        --override data.input_size=[64,64] --override flow.train.epochs=1 --override flow.train.steps_per_epoch=5 \
        --override features.train.epochs=1 --override sequence.train.epochs=2 --out /tmp/deg_smoke.json

CPU run (the one measured; the README gives its scores): DeepEthogram-fast's TinyMotionNet and TGM with both
feature streams on ImageNet EfficientNet-Lite0, the flow generator trained once on all clips (label-free),
a CPU schedule (flow 3 x 100 steps with half of the windows drawn where frames change; feature extractor
3 epochs of 60 steps per curriculum stage at lr 3e-4; TGM 30 epochs), folds 0-2 and 3-4 in two processes on
the 2 cores, then merged (108 min wall; a fold took 22-36 min while four jobs shared the 2 cores)::

    OV="--no-flow-per-fold --override flow.train.epochs=3 --override flow.train.steps_per_epoch=100 \
        --override flow.train.motion_sampling=0.5 --override features.backbone=efficientnet_lite0 \
        --override features.pretrained=true --override features.train.epochs=3 \
        --override features.train.steps_per_epoch=60 --override features.train.lr=3e-4 \
        --override sequence.train.epochs=30"
    .venv/bin/python benchmarks/rodent_clips_deepethogram.py --folds-to-run 0 1 2 $OV --out f012.json
    .venv/bin/python benchmarks/rodent_clips_deepethogram.py --folds-to-run 3 4 $OV --out f34.json
    .venv/bin/python benchmarks/rodent_clips_deepethogram.py --merge f012.json f34.json \
        --out results/benchmarks/rodent_clips_deepethogram.json

Timing probe (before that run): 96 px
grey, 120 clips (fold 0: 92 training, 28 test clips), ``flow.train.epochs=1
flow.train.steps_per_epoch=20 features.train.epochs=1
features.train.steps_per_epoch=10 sequence.train.epochs=3``, one torch thread
on a shared, loaded 2-core CPU: flow generator 3.5 s per training step
(batch 8, with its validation), flows 1.5 s per clip (16 frames); feature
extractor 4.2 s per training step (batch 32, with the per-epoch validation),
features 0.48 s per clip; TGM 0.96 s per training step (with validation).
A full fold computes flows and features of all 403 clips (about 10 and 3
min at these rates) and, with DeepEthogram's schedule, trains 10,000 flow
steps, about 130 feature steps per epoch and stage (about 4,000 training
frames, batch 32) for up to 20 epochs x 3 stages, and up to 100 x 20 TGM
steps: many hours per fold on such a CPU, hence ``--device cuda``.
``--no-flow-per-fold`` trains the flow generator and computes the flows once
for all folds.

``--max-clips N`` keeps a stratified random subset of N clips (same subset as
the BehaveNet benchmark); ``--folds-to-run 0 ...`` runs only these folds.
Folds run in separate processes (on several cores or machines) combine with
``--merge a.json b.json ... --out all.json``: each fold seeds its own
training, so the merged result is the one a single run of those folds writes.
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(REPO), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from rodent_clips_behavenet import (  # noqa: E402  (benchmarks/ is on sys.path)
    CLASSES, DATA, _scores, check_settings, clip_groups, default_cache, fold_splits, goal_met, list_clips, load_crops,
    print_table, read_runs, refuse_fold_clash, score_predictions, summarise, write,
)

#: Protocol overrides of ``config/models/deepethogram.yaml``: 96 px input (the BehaveNet benchmark's
#: ``data.crop_size``), grey frames (the footage is grey), one 16-frame training window per clip.
DEFAULT_OVERRIDES = ["data.input_size=[96,96]", "data.rgb=false", "sequence.train.sequence_length=16"]

log = logging.getLogger("rodent_clips_deepethogram")


# --------------------------------------------------------------------------- frames, targets


def clip_frames(crops: np.ndarray, size, rgb: bool) -> np.ndarray:
    """``(N, T, S, S, 3)`` uint8 crops -> ``(N, T, 3, H, W)`` uint8 at ``size = (H, W)`` (bilinear).

    ``rgb=False``: each pixel's channel mean (rounded) in all three channels (grey).
    """
    from sipec_models.training.deepethogram import resize_crops

    if crops.ndim != 5 or crops.shape[-1] != 3:
        raise ValueError(f"crops must be (N, T, S, S, 3), got {crops.shape}")
    N, T = crops.shape[:2]
    x = resize_crops(crops.reshape(N * T, *crops.shape[2:]), size)  # (N*T, 3, H, W)
    if not rgb:
        g = np.round(x.astype(np.float32).mean(1, keepdims=True)).astype(np.uint8)
        x = np.repeat(g, 3, axis=1)
    return x.reshape(N, T, *x.shape[1:])


def one_hot(label: int, n_frames: int, n_classes: int = len(CLASSES)) -> np.ndarray:
    """``(n_frames, n_classes)`` float32 targets: 1 in column ``label`` on every frame."""
    if not 0 <= label < n_classes:
        raise ValueError(f"label {label} outside [0, {n_classes})")
    y = np.zeros((n_frames, n_classes), np.float32)
    y[:, label] = 1.0
    return y


# --------------------------------------------------------------------------- the three stages


def train_flow(frames: np.ndarray, idx: np.ndarray, cfg, val_fraction: float, seed: int, device, progress: bool):
    """Flow generator on the clips ``idx`` of ``frames (N, T, 3, H, W)``; whole clips held out for validation.

    Returns:
        ``(model, summary)``: the model (eval mode, on ``device``) and ``best_epoch``, ``best_val_loss``,
        ``zero_flow_val_loss``, windows, clips, ``steps`` run, ``seconds``.
    """
    from sipec_models.training.flow import Clip, train_flow_generator

    if not 0 <= val_fraction < 1:
        raise ValueError(f"--flow-val-fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    idx = np.asarray(idx)
    n_val = int(round(val_fraction * len(idx))) if len(idx) > 1 else 0
    if val_fraction > 0 and len(idx) > 1:
        n_val = max(1, n_val)
    val_idx = set(rng.choice(idx, n_val, replace=False).tolist()) if n_val else set()
    ch = slice(None) if bool(cfg.data.rgb) else slice(0, 1)
    train = [Clip(str(i), 0, frames[i][:, ch]) for i in idx if i not in val_idx]
    val = [Clip(str(i), 0, frames[i][:, ch]) for i in idx if i in val_idx]
    t0 = time.perf_counter()
    model, h = train_flow_generator(train, val, cfg, progress=progress, device=device)
    for e in h["epochs"]:
        log.info("flow epoch %d: train %.4f, val %s (zero flow %s)", e["epoch"], e["train"]["total"],
                 "-" if e["val"] is None else f"{e['val']['total']:.4f}",
                 "-" if h["zero_flow_val"] is None else f"{h['zero_flow_val']['total']:.4f}")
    zero = h["zero_flow_val"]
    return model, {"best_epoch": h["best_epoch"], "best_val_loss": h["best_val_loss"],
                   "zero_flow_val_loss": None if zero is None else zero["total"],
                   "val_loss_per_epoch": [None if e["val"] is None else e["val"]["total"] for e in h["epochs"]],
                   "n_train_clips": len(train), "n_val_clips": len(val),
                   "n_train_windows": h["n_train_windows"], "n_val_windows": h["n_val_windows"],
                   "steps": len(h["epochs"]) * int(cfg.flow.train.steps_per_epoch),
                   "seconds": time.perf_counter() - t0}


def compute_flows(model, frames: np.ndarray, idx, rgb: bool, out: np.ndarray | None = None) -> np.ndarray:
    """Flows of every frame of the clips ``idx``: fills (and returns) ``out (N, T, 20, H, W)`` float16, px."""
    from sipec_models.training.flow import flows_for_frames

    N, T, _, H, W = frames.shape
    if out is None:
        out = np.zeros((N, T, int(model.out_channels), H, W), np.float16)
    ch = slice(None) if rgb else slice(0, 1)
    for i in idx:
        out[i] = flows_for_frames(model, frames[i][:, ch], 0, T, batch_size=T).numpy().astype(np.float16)
    return out


def _stage_steps(history: dict) -> dict:
    """Training steps run per curriculum stage of a feature-extractor history."""
    steps: dict[str, int] = {}
    for r in history["epochs"]:
        if "steps" in r:
            steps[r["stage"]] = int(r["steps"])
    return steps


def run_fold(frames, flows, y, tr, te, cfg, args, device, flow_model=None) -> tuple[dict, np.ndarray, np.ndarray]:
    """One fold: (flow generator,) feature extractor, sequence model on the clips ``tr``; predict ``te``.

    Returns:
        ``(record, seq_prob (len(te), K), fx_prob (len(te), K))``: per-fold record (timings, histories) and
        the test clips' mean frame probabilities of the sequence model and of the feature extractor.
    """
    from sipec_models.training.config import to_dict
    from sipec_models.training.deg_features import VideoSample, extract_features, train_feature_extractor
    from sipec_models.training.deg_sequence import train_sequence

    rec: dict = {}
    t_fold = time.perf_counter()
    T = frames.shape[1]
    if flow_model is None:  # per fold: the flow generator sees the training clips only
        flow_model, rec["flow"] = train_flow(frames, tr, cfg, args.flow_val_fraction, int(cfg.seed), device,
                                             args.progress)
        t0 = time.perf_counter()
        compute_flows(flow_model, frames, np.concatenate([tr, te]), bool(cfg.data.rgb), flows)
        rec["flow"]["infer_seconds"] = time.perf_counter() - t0
        del flow_model

    cfg_dict = to_dict(cfg)
    t0 = time.perf_counter()
    samples = [VideoSample(frames[i], flows[i], one_hot(int(y[i]), T)) for i in tr]
    fx, fh = train_feature_extractor(samples, list(CLASSES), cfg_dict["features"], device=device,
                                     seed=int(cfg.seed), progress=args.progress)
    steps = _stage_steps(fh)
    rec["features"] = {"seconds": time.perf_counter() - t0, "steps": steps, "n_train_frames": fh["n_train"],
                       "n_val_frames": fh["n_val"], "val_macro_f1": fh.get("val_macro_f1"),
                       "best_val_macro_f1": {r["stage"]: r["best_val_macro_f1"] for r in fh["epochs"]
                                             if "best_val_macro_f1" in r},
                       "epochs": {s: sum(1 for r in fh["epochs"] if r.get("stage") == s and "epoch" in r)
                                  for s in steps}}

    t0 = time.perf_counter()
    feats, fx_prob = {}, {}
    for i in np.concatenate([tr, te]):
        o = extract_features(fx, frames[i], flows[i], batch_size=T, device=device)
        feats[int(i)] = np.concatenate([o["spatial"], o["flow"]], 1)
        fx_prob[int(i)] = 1.0 / (1.0 + np.exp(-o["logits"].astype(np.float64)))
    rec["features"]["extract_seconds"] = time.perf_counter() - t0
    del fx

    t0 = time.perf_counter()
    seq = train_sequence([feats[int(i)] for i in tr], [one_hot(int(y[i]), T) for i in tr], list(CLASSES),
                         cfg=cfg_dict, progress=args.progress, device=device)
    sh = seq.history
    rec["sequence"] = {"seconds": time.perf_counter() - t0, "steps": sh["epochs"][-1]["steps"] if sh["epochs"] else 0,
                       "epochs": len(sh["epochs"]), "best_epoch": sh["best_epoch"],
                       "best_val_macro_f1": sh["best_val_macro_f1"]}

    t0 = time.perf_counter()
    seq.net.to(device)
    seq_prob = np.stack([seq.predict_proba(feats[int(i)]).mean(0) for i in te])
    fx_clip = np.stack([fx_prob[int(i)].mean(0) for i in te])
    rec["predict_seconds"] = time.perf_counter() - t0
    rec["total_s"] = time.perf_counter() - t_fold
    return rec, seq_prob, fx_clip


# --------------------------------------------------------------------------- main


def _per_step(rec: dict) -> dict:
    """Seconds per training step of each stage of a fold record (None where no step ran)."""
    out = {}
    if "flow" in rec:
        out["flow"] = rec["flow"]["seconds"] / rec["flow"]["steps"] if rec["flow"]["steps"] else None
    n = sum(rec["features"]["steps"].values())
    out["features"] = rec["features"]["seconds"] / n if n else None
    out["sequence"] = rec["sequence"]["seconds"] / rec["sequence"]["steps"] if rec["sequence"]["steps"] else None
    return out


def _timing_line(rec: dict) -> str:
    parts = []
    if "flow" in rec:
        parts.append(f"flow train {rec['flow']['seconds']:.0f} s ({rec['flow']['steps']} steps), "
                     f"flows {rec['flow']['infer_seconds']:.0f} s")
    f = rec["features"]
    parts.append(f"features train {f['seconds']:.0f} s ({sum(f['steps'].values())} steps), "
                 f"extract {f['extract_seconds']:.0f} s")
    parts.append(f"sequence {rec['sequence']['seconds']:.0f} s ({rec['sequence']['steps']} steps)")
    parts.append(f"predict {rec['predict_seconds']:.1f} s")
    return "; ".join(parts) + f"; total {rec['total_s']:.0f} s"


def assemble(args, cfg, overrides, clips, y, groups, cage, pred, pred_fx, fold_of, folds, folds_fx, n_fallback,
             device, flow_once) -> dict:
    """The results dict: :func:`summarise` of the sequence model's predictions plus ``feature_extractor`` (the
    same scores of the extractor's own predictions), the model, device and flow-generator settings."""
    out = summarise(args, cfg, overrides, clips, y, groups, cage, pred, fold_of, folds, n_fallback, args.crop_size)
    fx = score_predictions(y, pred_fx, fold_of, cage, folds_fx)
    fx["goal_met"] = goal_met(fx["pooled"])
    out["model"] = f"DeepEthogram-{cfg.get('preset', '?')}: {cfg.flow.arch} + {cfg.features.arch}" \
                   f"/{cfg.features.backbone}{' (ImageNet)' if cfg.features.pretrained else ''} + TGM"
    out["feature_extractor"] = fx
    out["predictions"]["pred_feature_extractor"] = pred_fx.tolist()
    out["flow_per_fold"], out["flow_val_fraction"] = bool(args.flow_per_fold), args.flow_val_fraction
    out["device"] = str(device)
    if flow_once is not None:
        out["flow_once"] = flow_once
        out["runtime_s"]["flow_once"] = flow_once["seconds"] + flow_once["infer_seconds"]
        out["runtime_s"]["total"] += out["runtime_s"]["flow_once"]
    return out


#: Settings that must agree between the partial runs :func:`merge_runs` combines.
MERGE_KEYS = ("overrides", "fold_seed", "max_clips", "flow_per_fold", "flow_val_fraction", "crop_size_cached",
              "n_fallback_centre")


def merge_runs(args, clips: list[dict]) -> dict:
    """Combine partial runs (``--folds-to-run`` of disjoint folds, every other setting equal) into one result.

    Every fold trains from the config's seed whatever else runs in the process, so the merged result is the one
    a single run of the union of the folds writes. Raises ``SystemExit`` naming the file when the runs disagree
    on a setting (:data:`MERGE_KEYS`), their clips differ from ``--data``, or two runs hold the same fold.
    """
    from sipec_models.training.config import load_model_config

    names = [f"{CLASSES[c['label']]}/{c['path'].name}" for c in clips]
    runs = read_runs(args.merge)
    first = runs[0][1]
    y = np.array([c["label"] for c in clips])
    pred, pred_fx, fold_of = np.full(len(clips), -1), np.full(len(clips), -1), np.full(len(clips), -1)
    folds = []
    for path, r in runs:
        if "pred_feature_extractor" not in r.get("predictions", {}) or "folds" not in r:
            raise SystemExit(f"{path}: not a result of this benchmark (no fold predictions)")
        if r["predictions"]["clip"] != names:
            raise SystemExit(f"{path}: its clips are not the clips under {args.data}")
        check_settings(path, r, runs[0], MERGE_KEYS)
        f_r = np.array(r["predictions"]["fold"])
        done = f_r >= 0
        refuse_fold_clash(path, f_r, fold_of)
        pred[done] = np.array(r["predictions"]["pred"])[done]
        pred_fx[done] = np.array(r["predictions"]["pred_feature_extractor"])[done]
        fold_of[done] = f_r[done]
        folds += r["folds"]
    folds.sort(key=lambda d: d["fold"])
    folds_fx = [{k: d["feature_extractor"][k] for k in ("accuracy", "macro_f1")} for d in folds]
    overrides = first["overrides"]
    cfg = load_model_config("deepethogram", overrides)
    args.seed, args.max_clips = first["fold_seed"], first["max_clips"]
    args.flow_per_fold, args.flow_val_fraction = first["flow_per_fold"], first["flow_val_fraction"]
    args.crop_size, args.threads = first["crop_size_cached"], first.get("threads", args.threads)
    args.only_folds = [d["fold"] for d in folds]
    out = assemble(args, cfg, overrides, clips, y, clip_groups(clips), np.array([c["cage"] for c in clips]), pred,
                   pred_fx, fold_of, folds, folds_fx, first["n_fallback_centre"], first.get("device", "cpu"), None)
    out["merged_from"] = [str(p) for p in args.merge]
    print_table({**out, **out["feature_extractor"]}, title="DeepEthogram feature extractor (fused logits, clip mean)")
    return write(out, args.out, title=f"{out['model']} (sequence model, clip mean)")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="seed of the fold split")
    ap.add_argument("--folds-to-run", "--only-folds", dest="only_folds", type=int, nargs="*",
                    help="run only these folds (0-based)")
    ap.add_argument("--override", action="append", default=[],
                    help="Hydra override of config/models/deepethogram.yaml (repeatable; after the defaults, so "
                         "it wins)")
    ap.add_argument("--no-default-overrides", action="store_true",
                    help="leave out DEFAULT_OVERRIDES (96 px grey input, sequence length 16)")
    ap.add_argument("--flow-per-fold", action=argparse.BooleanOptionalAction, default=True,
                    help="train the flow generator per fold on the training clips (default); "
                         "--no-flow-per-fold: once on all clips (unsupervised, transductive)")
    ap.add_argument("--flow-val-fraction", type=float, default=0.1,
                    help="fraction of the flow generator's clips held out (whole clips) to pick its best epoch")
    ap.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--crop-size", type=int, default=128,
                    help="side of the cached crops, px (resized to data.input_size)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="crop cache .npz (default results/cache/rodent_clips_crops_<size>.npz)")
    ap.add_argument("--max-clips", type=int, help="a stratified random subset of this many clips")
    ap.add_argument("--progress", action="store_true", help="tqdm bars of the training loops")
    ap.add_argument("--merge", type=Path, nargs="+",
                    help="combine the JSONs of runs of disjoint --folds-to-run (same settings otherwise) into one "
                         "result, scored as if the folds had run in one process (no training)")
    ap.add_argument("--out", type=Path, default=Path("results/benchmarks/rodent_clips_deepethogram.json"))
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    from sipec_models.training.config import load_model_config

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch sees no CUDA device")
        torch.backends.cudnn.benchmark = True
    overrides = ([] if args.no_default_overrides else list(DEFAULT_OVERRIDES)) + list(args.override)
    cfg = load_model_config("deepethogram", overrides)
    size = [int(v) for v in cfg.data.input_size]
    rgb = bool(cfg.data.rgb)

    clips = list_clips(args.data)
    if not clips:
        raise SystemExit(f"no clips under {args.data}")
    if args.merge:
        return merge_runs(args, clips)
    cache = args.cache or default_cache(args.crop_size)
    data = load_crops(clips, args.crop_size, cache)
    y = np.array([c["label"] for c in clips])
    groups = clip_groups(clips)
    cage = np.array([c["cage"] for c in clips])
    n_fallback = int(data["fallback"].sum())
    keep, splits = fold_splits(y, groups, args.folds, args.seed, args.max_clips)
    run = [f for f in range(len(splits)) if args.only_folds is None or f in args.only_folds]
    if not run:
        raise SystemExit(f"--folds-to-run {args.only_folds}: no such fold among 0..{len(splits) - 1}")
    log.info("%d clips (%d used), %d groups; input %s px %s, device %s, folds %s", len(clips), len(keep),
             len(set(groups)), size, "RGB" if rgb else "grey", device, run)

    t0 = time.perf_counter()
    used = np.unique(np.concatenate([keep[np.concatenate(splits[f])] for f in run]))
    frames = np.zeros((len(clips), data["crops"].shape[1], 3, *size), np.uint8)
    frames[used] = clip_frames(data["crops"][used], size, rgb)
    del data
    log.info("frames %s resized in %.1f s", frames.shape, time.perf_counter() - t0)

    n_flow_ch = 2 * (int(cfg.flow.n_frames) - 1)
    flows = np.zeros((len(clips), frames.shape[1], n_flow_ch, *size), np.float16)
    flow_once = None
    shared_flow = None
    if not args.flow_per_fold:
        shared_flow, flow_once = train_flow(frames, keep, cfg, args.flow_val_fraction, int(cfg.seed), device,
                                            args.progress)
        t0 = time.perf_counter()
        compute_flows(shared_flow, frames, used, rgb, flows)
        flow_once["infer_seconds"] = time.perf_counter() - t0
        log.info("flow generator on all %d clips: %.0f s training, %.0f s flows", len(keep), flow_once["seconds"],
                 flow_once["infer_seconds"])

    pred = np.full(len(clips), -1)
    pred_fx = np.full(len(clips), -1)
    fold_of = np.full(len(clips), -1)
    folds, folds_fx = [], []
    for f in run:
        tr, te = keep[splits[f][0]], keep[splits[f][1]]
        rec, p_seq, p_fx = run_fold(frames, flows, y, tr, te, cfg, args, device, shared_flow)
        pred[te], pred_fx[te], fold_of[te] = p_seq.argmax(1), p_fx.argmax(1), f
        s, sf = _scores(y[te], pred[te]), _scores(y[te], pred_fx[te])
        folds.append({"fold": f, "n_train": int(len(tr)), "n_test": int(len(te)),
                      "test_groups": sorted(set(groups[te].tolist())), "accuracy": s["accuracy"],
                      "macro_f1": s["macro_f1"], "f1": s["f1"],
                      "feature_extractor": {k: sf[k] for k in ("accuracy", "macro_f1", "f1")},
                      **rec, "seconds_per_step": _per_step(rec),
                      "test_prob_sequence": p_seq.tolist(), "test_prob_feature_extractor": p_fx.tolist()})
        folds_fx.append({"accuracy": sf["accuracy"], "macro_f1": sf["macro_f1"]})
        log.info("fold %d: %d train / %d test clips; sequence acc %.3f macro-F1 %.3f; feature extractor acc %.3f "
                 "macro-F1 %.3f", f, len(tr), len(te), s["accuracy"], s["macro_f1"], sf["accuracy"],
                 sf["macro_f1"])
        log.info("fold %d timing: %s", f, _timing_line(rec))
        if args.out and f != run[-1]:  # results so far, in case a long run is cut short
            part = assemble(args, cfg, overrides, clips, y, groups, cage, pred, pred_fx, fold_of, folds, folds_fx,
                            n_fallback, device, flow_once)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(part, indent=2, default=float) + "\n")

    out = assemble(args, cfg, overrides, clips, y, groups, cage, pred, pred_fx, fold_of, folds, folds_fx,
                   n_fallback, device, flow_once)
    fx = out["feature_extractor"]
    print_table({**out, **fx}, title="DeepEthogram feature extractor (fused logits, clip mean)")
    print("\nper-fold step times, s:")
    for d in folds:
        print(f"  fold {d['fold']}: {_timing_line(d)}")
    if flow_once is not None:
        print(f"  flow generator once on all clips: training {flow_once['seconds']:.0f} s "
              f"({flow_once['steps']} steps), flows {flow_once['infer_seconds']:.0f} s")
    return write(out, args.out, title=f"{out['model']} (sequence model, clip mean)")


if __name__ == "__main__":
    main()

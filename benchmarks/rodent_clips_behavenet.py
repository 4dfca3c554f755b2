"""SIPEC:BehaveNet clip classification on real rodent clips: session-grouped 5-fold cross-validation.

Data: ``../shared/data/rodent_clips/<class>/*.mkv`` (alllliceee/yolo_behavior
test_dataset, Apache-2.0): 403 clips of an albino rat in a home cage,
1920x1080, 25 fps, 16 frames each, 7 classes (the folder name is the clip's
label). File names ``cage{1,2}_<month>_<day>_<hour>_<minute>_<frame>`` name the
recording session (everything before the last ``_<frame>``). Clips named by a
bare number (``11232``, ``13568s``, ``9808_1``, ``10800(1)``: the leading
digits are the frame number) have no session; many are consecutive 16-frame
pieces of one video, so they are chained into groups: sorted by number over
all classes, a new group starts where the gap to the previous number exceeds
64 frames.

Crops of the animal: every clip is decoded once (PyAV, scaled to 640x360 by
libswscale). The rat is the large bright object on a dark background: per
frame, the grey image is blurred (Gaussian, sigma 2 px), thresholded at
``max(90, median + 60)`` grey levels, and the largest connected component
(at least 400 px at 640x360; the white door tags on the walls are far
smaller) gives the animal's centre of mass. The clip's crop centre is the
median of its frames' centres (one fixed square per clip, so the animal's
motion and posture within the clip stay visible); frames without a blob are
left out of the median, and a clip without any falls back to the frame
centre (counted and reported). The square has a fixed side of
``--crop-fraction`` x the frame height (default 0.5: 540 px at 1920x1080;
0.8, 864 px, holds a rearing rat with room to spare but loses the paws'
detail at small sizes), is cut from frames decoded at the resolution the crop
size needs (:func:`decode_size`), padded with black where it leaves the
frame, and is resized (area averaging) to ``--crop-size`` px, RGB. The crops
are cached as ``.npz`` (``--cache``).

Protocol: ``StratifiedGroupKFold`` (5 folds, shuffled, seed 0) over clips, the
groups being sessions and bare-number groups, so no session or run of
neighbouring clips is split between training and test. Per fold one
BehaveNet (``config/models/behavenet.yaml`` plus ``--override``) is trained
on the training folds' clips (each clip one sequence of 16 frames; the last
``data.val_fraction`` of each training clip is the validation block that
picks the best epoch) and predicts the test clips frame by frame; a clip's
prediction is the argmax of the mean of its 16 frames' probabilities.

Scores (:func:`sipec_models.behaviour_metrics.clip_scores`): clip accuracy,
macro-F1 and per-class F1, pooled over the 5 folds' test clips, and mean ±
s.e.m. over folds; the same pooled scores for clips with a known session
only and per cage (cage1, cage2, bare-number clips). Chance: the test
labels permuted within each fold against the same predictions, median of 200
permutations (accuracy and macro-F1 of the pooled clips).

Anchor from the issue (not re-measured here): a frozen ImageNet
EfficientNet-Lite0 linear probe on these folds, macro-F1 0.81 (chance 0.18);
weakest classes genital_licking 0.64, face_washing 0.73, grooming 0.74. Goal:
macro-F1 >= 0.88 and every class >= 0.75.

The recommended configuration (the defaults: ``--crop-size 192 --crop-fraction 0.5`` and the ``--override``
list ``DEFAULT_OVERRIDES``) crops a square of half the frame height around the clip's centre at 192 px, grey
(the footage is grey: the three colour channels differ by about 3 grey levels, so ``data.rgb=true`` costs the
same and adds nothing). The ImageNet EfficientNet-Lite0 frame network
(``frame_net.backbone=efficientnet_lite0``) keeps its stem and first 11 blocks frozen
(``frame_net.frozen_blocks=11``: only the stride-32 blocks and the head learn, which keeps 192 px affordable
on a CPU) and trains for 2 epochs (each epoch sees every clip 13 times, once per training frame, with
augmentation: rotation +-15 deg and horizontal flips only, no vertical flips, since rearing is "up" in this
side view); ``tcn.half_window=7``: a 15-frame window, about the 16-frame clip (SIPEC's ``n = 10`` needs 21
frames, more than a clip holds, so its windows would mostly repeat the clip's edge frames);
``infer.flip_average=true``: each test crop and its mirror image are averaged. The validation block (the last
3 frames of each training clip) comes from the training clips themselves, so it only guards against
divergence; it does not estimate test performance.

Every run saves its clip probabilities (and, with ``infer.flip_average``, those without the mirror-image
average). ``--merge`` joins runs of disjoint folds (``--only-folds``) and averages runs of the same folds
trained with different seeds (``--override seed=S`` added to the list): an ensemble, scored with each seed
alone beside it.

Results (5 folds, 403 clips, chance macro-F1 0.16): one seed 0.869 / 0.866 (seeds 1 / 2); the ensemble of
the two 0.892, every class >= 0.82, which meets the goal (macro-F1 >= 0.88, every class >= 0.75); without
the mirror-image average 0.857 / 0.848 and 0.877. Earlier configurations on the same folds: the whole frame
network fine-tuned on 0.8 x height squares at 96 px (``--crop-size 128 --crop-fraction 0.8 --override
frame_net.backbone=efficientnet_lite0 --override data.rgb=false --override data.crop_size=96``, the other
settings as here but no frozen blocks and no mirror average) 0.778; tight crops without the mirror average,
seed 0, 0.862.

Run from the repository root: one process per seed, each about 15 min per fold on one thread (two processes
on 2 cores: 78 min), then the ensemble::

    .venv/bin/python benchmarks/rodent_clips_behavenet.py \
        --override frame_net.backbone=efficientnet_lite0 --override frame_net.frozen_blocks=11 \
        --override data.rgb=false --override data.crop_size=192 --override frame_train.epochs=2 \
        --override frame_train.lr=3e-4 --override frame_train.rotation_deg=15 \
        --override frame_train.vertical_flip=false --override tcn.half_window=7 \
        --override tcn_train.epochs=30 --override tcn_train.lr=3e-4 --override infer.flip_average=true \
        --override seed=1 --out results/benchmarks/rodent_clips_behavenet_tight192_flip_s1.json
    # the same with seed=2 and ..._s2.json, then:
    .venv/bin/python benchmarks/rodent_clips_behavenet.py --merge \
        results/benchmarks/rodent_clips_behavenet_tight192_flip_s1.json \
        results/benchmarks/rodent_clips_behavenet_tight192_flip_s2.json \
        --out results/benchmarks/rodent_clips_behavenet_tight192_flip_ens12.json

(``--override`` replaces the default list, hence the whole list with the seed; without ``--override`` a run
uses ``DEFAULT_OVERRIDES`` and the config's seed 0; ``--no-default-overrides``: the YAML as it is.) Folds may
also run in separate processes (``--only-folds 0 1 2`` and ``--only-folds 3 4``, each with its own ``--out``),
joined by ``--merge`` the same way. ``--max-clips N`` keeps a stratified random subset of N clips for a quick
look.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "rodent_clips"
CLASSES = ("face_washing", "genital_licking", "grooming", "head_raising", "normal", "rearing",
           "wall_supported_rearing")
DECODE_SIZE = (640, 360)  # (width, height) of the decoded frames used for locating and cropping
CROP_FRACTION = 0.8  # crop side / frame height of caches and results that do not store theirs (the first runs)
MIN_BLOB_PX = 400  # at 640x360
GAP_FRAMES = 64  # bare-number clips within this many frames chain into one group
DEFAULT_CROP_SIZE, DEFAULT_CROP_FRACTION = 192, 0.5  # the recommended crops (command-line defaults)
DEFAULT_OVERRIDES = [
    "frame_net.backbone=efficientnet_lite0", "frame_net.frozen_blocks=11", "data.rgb=false", "data.crop_size=192",
    "frame_train.epochs=2", "frame_train.lr=3e-4", "frame_train.rotation_deg=15", "frame_train.vertical_flip=false",
    "tcn.half_window=7", "tcn_train.epochs=30", "tcn_train.lr=3e-4", "infer.flip_average=true",
]
ANCHOR = {"macro_f1": 0.81, "chance_macro_f1": 0.18,
          "f1": {"genital_licking": 0.64, "face_washing": 0.73, "grooming": 0.74}}
GOAL = {"macro_f1": 0.88, "min_class_f1": 0.75}

log = logging.getLogger("rodent_clips_behavenet")


# --------------------------------------------------------------------------- clips, sessions, groups


def list_clips(root: Path) -> list[dict]:
    """Every clip: path, class, session (None for bare numbers), cage (``cage1``/``cage2``/``bare``), number."""
    clips = []
    for k, name in enumerate(CLASSES):
        for p in sorted((root / name).glob("*.mkv")):
            stem = p.stem
            if stem.startswith("cage"):
                session = stem.rsplit("_", 1)[0]
                clips.append({"path": p, "label": k, "session": session, "cage": stem.split("_", 1)[0],
                              "number": None})
            else:
                m = re.match(r"\d+", stem)
                if m is None:
                    raise ValueError(f"{p}: neither a cage session nor a bare frame number")
                clips.append({"path": p, "label": k, "session": None, "cage": "bare", "number": int(m.group())})
    return clips


def clip_groups(clips: list[dict], gap: int = GAP_FRAMES) -> np.ndarray:
    """``(N,)`` group name per clip: its session, or ``bare<i>`` for a chain of bare numbers (gaps <= ``gap``)."""
    groups = [c["session"] for c in clips]
    bare = sorted((c["number"], i) for i, c in enumerate(clips) if c["session"] is None)
    g, prev = -1, None
    for num, i in bare:
        if prev is None or num - prev > gap:
            g += 1
        groups[i], prev = f"bare{g}", num
    return np.array(groups)


# --------------------------------------------------------------------------- crops


def locate(grey: np.ndarray) -> tuple[float, float] | None:
    """Centre ``(x, y)`` of the largest bright blob of a ``(H, W)`` uint8 frame, or None."""
    from scipy import ndimage

    g = ndimage.gaussian_filter(grey.astype(np.float32), 2.0)
    mask = g > max(90.0, float(np.median(g)) + 60.0)
    lab, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel())[1:]
    k = int(sizes.argmax())
    if sizes[k] < MIN_BLOB_PX:
        return None
    yy, xx = np.nonzero(lab == k + 1)
    return float(xx.mean()), float(yy.mean())


def decode_size(crop_size: int, crop_fraction: float) -> tuple[int, int]:
    """``(width, height)`` the clips are decoded at: :data:`DECODE_SIZE`, or larger (same aspect, even sides) where
    the square of ``crop_fraction`` x the height would hold fewer than ``crop_size`` pixels (no upsampling)."""
    w, h = DECODE_SIZE
    s = max(1.0, crop_size / (crop_fraction * h))
    return 2 * int(np.ceil(w * s / 2)), 2 * int(np.ceil(h * s / 2))


def clip_crops(path: Path, crop_size: int,
               crop_fraction: float = CROP_FRACTION) -> tuple[np.ndarray, tuple[float, float], int, bool]:
    """Decode a clip and crop the animal: ``(T, s, s, 3)`` uint8, centre (x, y) in 1920x1080 px, frames found,
    whether the frame centre was used instead.

    The animal is located on frames at :data:`DECODE_SIZE`; the square (side ``crop_fraction`` x the frame
    height) is cut from frames decoded at :func:`decode_size`.
    """
    import av
    from PIL import Image

    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop fraction must be in (0, 1], got {crop_fraction}")
    w, h = decode_size(crop_size, crop_fraction)
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24", width=w, height=h) for f in c.decode(video=0)]
    if not frames:
        raise ValueError(f"{path}: no frames decoded")
    centres = []
    scale = w / DECODE_SIZE[0]
    for f in frames:
        if scale != 1:
            f = np.asarray(Image.fromarray(f).resize(DECODE_SIZE, Image.BOX))
        grey = (0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]).astype(np.uint8)
        c = locate(grey)
        if c is not None:
            centres.append((c[0] * scale, c[1] * scale))
    fallback = not centres
    cx, cy = (w / 2, h / 2) if fallback else tuple(np.median(np.array(centres), axis=0))
    side = int(round(crop_fraction * h))
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    out = []
    for f in frames:
        pad = np.zeros((side, side, 3), np.uint8)
        xs, ys = max(0, x0), max(0, y0)
        xe, ye = min(w, x0 + side), min(h, y0 + side)
        pad[ys - y0:ye - y0, xs - x0:xe - x0] = f[ys:ye, xs:xe]
        out.append(np.asarray(Image.fromarray(pad).resize((crop_size, crop_size), Image.BOX)))
    return np.stack(out), (cx * 1920 / w, cy * 1920 / w), len(centres), fallback


def load_crops(clips: list[dict], crop_size: int, cache: Path | None, crop_fraction: float = CROP_FRACTION) -> dict:
    """Crops of every clip (cached): ``crops (N, T, s, s, 3)``, ``centre (N, 2)``, ``found (N,)``, ``fallback``,
    ``crop_fraction``. A cache of other clips, size or fraction (none stored: :data:`CROP_FRACTION`) is rebuilt."""
    names = np.array([f"{CLASSES[c['label']]}/{c['path'].name}" for c in clips])
    if cache is not None and cache.exists():
        z = np.load(cache)
        cached_fraction = float(z["crop_fraction"]) if "crop_fraction" in z.files else CROP_FRACTION
        if z["names"].tolist() == names.tolist() and z["crops"].shape[2] == crop_size \
                and np.isclose(cached_fraction, crop_fraction):
            return {**{k: z[k] for k in z.files}, "crop_fraction": np.float64(cached_fraction)}
        log.info("cache %s does not match the clips, crop size or crop fraction: rebuilding", cache)
    t0 = time.perf_counter()
    crops, centre, found, fallback = [], [], [], []
    for i, c in enumerate(clips):
        a, ctr, n, fb = clip_crops(c["path"], crop_size, crop_fraction)
        if len(a) != 16:
            log.warning("%s: %d frames (expected 16)", c["path"], len(a))
            a = a[np.clip(np.arange(16), 0, len(a) - 1)]
        crops.append(a)
        centre.append(ctr)
        found.append(n)
        fallback.append(fb)
        if (i + 1) % 50 == 0:
            log.info("decoded %d/%d clips (%.0f s)", i + 1, len(clips), time.perf_counter() - t0)
    out = {"names": names, "crops": np.stack(crops), "centre": np.array(centre), "found": np.array(found),
           "fallback": np.array(fallback), "crop_fraction": np.float64(crop_fraction)}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.stem + ".tmp.npz")
        np.savez_compressed(tmp, **out)
        tmp.replace(cache)
    return out


def default_cache(crop_size: int, crop_fraction: float = CROP_FRACTION) -> Path:
    """``results/cache/rodent_clips_crops_<size>.npz``, with ``_f<fraction>`` for a fraction other than the default."""
    tag = "" if np.isclose(crop_fraction, CROP_FRACTION) else f"_f{crop_fraction:g}"
    return REPO / "results" / "cache" / f"rodent_clips_crops_{crop_size}{tag}.npz"


def fold_splits(y: np.ndarray, groups: np.ndarray, n_folds: int = 5, seed: int = 0,
                max_clips: int | None = None) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """The session-grouped folds: ``(keep, splits)``.

    ``keep`` ``(M,)``: indices of the clips used (all, or a stratified random subset of ``max_clips``, seed 0);
    ``splits``: per fold ``(train, test)`` positions into ``keep`` (``StratifiedGroupKFold``, shuffled with
    ``seed``), so ``keep[train]`` and ``keep[test]`` are clip indices.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    keep = np.arange(len(y))
    if max_clips and max_clips < len(y):
        from sklearn.model_selection import train_test_split

        keep, _ = train_test_split(keep, train_size=max_clips, stratify=y, random_state=0)
        keep = np.sort(keep)
    skf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return keep, list(skf.split(keep, y[keep], groups[keep]))


# --------------------------------------------------------------------------- scores


def _scores(y, p):
    from sipec_models.behaviour_metrics import clip_scores

    s = clip_scores(np.asarray(y), np.asarray(p), CLASSES)
    return s


def chance(y: np.ndarray, p: np.ndarray, fold: np.ndarray, n: int = 200, seed: int = 0) -> dict:
    """Median accuracy and macro-F1 of ``p`` against ``y`` permuted within each fold (``n`` permutations)."""
    rng = np.random.default_rng(seed)
    acc, f1 = [], []
    for _ in range(n):
        yp = y.copy()
        for f in np.unique(fold):
            idx = np.flatnonzero(fold == f)
            yp[idx] = y[rng.permutation(idx)]
        s = _scores(yp, p)
        acc.append(s["accuracy"])
        f1.append(s["macro_f1"])
    return {"accuracy": float(np.median(acc)), "macro_f1": float(np.median(f1)), "n_permutations": n}


def mean_sem(v) -> dict:
    v = np.asarray(v, float)
    return {"mean": float(v.mean()), "sem": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0,
            "values": v.tolist()}


# --------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="seed of the fold split")
    ap.add_argument("--only-folds", type=int, nargs="*", help="run only these folds (0-based), for screening")
    ap.add_argument("--override", action="append", default=None,
                    help="Hydra override of config/models/behavenet.yaml (repeatable; replaces the defaults)")
    ap.add_argument("--no-default-overrides", action="store_true",
                    help="without --override: the YAML as it is (the default list is DEFAULT_OVERRIDES)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--crop-size", type=int, default=DEFAULT_CROP_SIZE,
                    help="side of the cached crops, px (default %(default)s; the network resizes them to "
                         "data.crop_size)")
    ap.add_argument("--crop-fraction", type=float, default=DEFAULT_CROP_FRACTION,
                    help="crop side / frame height (default %(default)s; the clips are decoded at a higher "
                         "resolution where the crop size needs it)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="crop cache .npz (default results/cache/rodent_clips_crops_<size>[_f<fraction>].npz)")
    ap.add_argument("--max-clips", type=int, help="a stratified random subset of this many clips")
    ap.add_argument("--save-crops", type=Path, help="write a PNG mosaic of some crops here and exit")
    ap.add_argument("--rescore", type=Path, help="recompute the scores of a previous run's JSON (no training)")
    ap.add_argument("--merge", type=Path, nargs="+",
                    help="score these runs of disjoint folds (same settings) together, without training")
    ap.add_argument("--out", type=Path, default=Path("results/benchmarks/rodent_clips_behavenet.json"))
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("pytorch_lightning", "pytorch_lightning.utilities.rank_zero", "lightning", "lightning.pytorch",
                 "lightning_fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    from sipec_models.training.behavenet import BehaviourData, train_behavenet
    from sipec_models.training.config import load_model_config

    overrides = args.override if args.override is not None else ([] if args.no_default_overrides
                                                                 else list(DEFAULT_OVERRIDES))
    clips = list_clips(args.data)
    if len(clips) == 0:
        raise SystemExit(f"no clips under {args.data}")
    prev = join_runs(args.merge) if args.merge else json.loads(args.rescore.read_text()) if args.rescore else None
    if prev is not None:
        if prev["predictions"]["clip"] != [f"{CLASSES[c['label']]}/{c['path'].name}" for c in clips]:
            source = args.merge[0] if args.merge else args.rescore
            raise SystemExit(f"{source}: its clips are not the clips under {args.data}")
        overrides = prev["overrides"]
        args.crop_fraction = prev.get("crop_method", {}).get("crop_side_fraction_of_height", CROP_FRACTION)
    cfg = load_model_config("behavenet", overrides)
    if prev is not None:
        y = np.array([c["label"] for c in clips])
        out = summarise(args, cfg, overrides, clips, y, clip_groups(clips), np.array([c["cage"] for c in clips]),
                        np.array(prev["predictions"]["pred"]), np.array(prev["predictions"]["fold"]), prev["folds"],
                        prev["n_fallback_centre"], prev["crop_size_cached"])
        out.update({k: prev[k] for k in ("threads", "max_clips", "only_folds", "fold_seed", "ensemble") if k in prev})
        for key in ("prob", "prob_no_flip"):
            if key in prev["predictions"]:
                out["predictions"][key] = prev["predictions"][key]
        if args.merge:
            out["merged_from"] = [str(p) for p in args.merge]
        return write(out, args.out)
    cache = args.cache or default_cache(args.crop_size, args.crop_fraction)
    data = load_crops(clips, args.crop_size, cache, args.crop_fraction)
    crops = data["crops"]
    y = np.array([c["label"] for c in clips])
    groups = clip_groups(clips)
    cage = np.array([c["cage"] for c in clips])
    n_fallback = int(data["fallback"].sum())
    log.info("%d clips, %d groups, %d clips cropped at the frame centre (no animal found)", len(clips),
             len(set(groups)), n_fallback)

    if args.save_crops:
        from PIL import Image

        rng = np.random.default_rng(0)
        rows = []
        for k in range(len(CLASSES)):
            idx = rng.choice(np.flatnonzero(y == k), 6, replace=False)
            rows.append(np.concatenate([np.concatenate([crops[i, 0], crops[i, 15]], 0) for i in idx], 1))
        Image.fromarray(np.concatenate(rows, 0)).save(args.save_crops)
        return {}

    keep, splits = fold_splits(y, groups, args.folds, args.seed, args.max_clips)

    pred = np.full(len(clips), -1)
    prob = np.full((len(clips), len(CLASSES)), np.nan)
    flip_average = bool(cfg["infer"].get("flip_average", False))
    prob_no_flip = np.full_like(prob, np.nan) if flip_average else None
    fold_of = np.full(len(clips), -1)
    folds = []
    T = crops.shape[1]
    for f, (tr, te) in enumerate(splits):
        if args.only_folds is not None and f not in args.only_folds:
            continue
        tr, te = keep[tr], keep[te]
        t0 = time.perf_counter()
        train = BehaviourData(crops[tr].reshape(-1, *crops.shape[2:]), np.repeat(y[tr], T), np.repeat(tr, T))
        model = train_behavenet(train, list(CLASSES), cfg)
        t_train = time.perf_counter() - t0
        test_crops = crops[te].reshape(-1, *crops.shape[2:])
        p = model.predict_proba(test_crops, np.repeat(te, T)).reshape(len(te), T, -1).mean(1)
        prob[te], pred[te], fold_of[te] = p, p.argmax(1), f
        if flip_average:  # the same model without the mirror-image average, for comparison
            prob_no_flip[te] = model.predict_proba(test_crops, np.repeat(te, T), flip_average=False) \
                .reshape(len(te), T, -1).mean(1)
        s = _scores(y[te], pred[te])
        folds.append({"fold": f, "n_train": int(len(tr)), "n_test": int(len(te)),
                      "test_groups": sorted(set(groups[te].tolist())), "accuracy": s["accuracy"],
                      "macro_f1": s["macro_f1"], "f1": s["f1"], "train_s": t_train,
                      "total_s": time.perf_counter() - t0,
                      "best_val_frame": model.history["frame"][-1]["best_val_macro_f1"],
                      "best_val_tcn": model.history.get("tcn", [{}])[-1].get("best_val_macro_f1")})
        log.info("fold %d: %d train / %d test clips, acc %.3f, macro-F1 %.3f, %.0f s", f, len(tr), len(te),
                 s["accuracy"], s["macro_f1"], folds[-1]["total_s"])

    out = summarise(args, cfg, overrides, clips, y, groups, cage, pred, fold_of, folds, n_fallback, args.crop_size)
    out["predictions"]["prob"] = _rows(prob)
    if prob_no_flip is not None:
        out["predictions"]["prob_no_flip"] = _rows(prob_no_flip)
    return write(out, args.out)


def _rows(prob: np.ndarray) -> list:
    """``(N, K)`` clip probabilities as JSON rows, ``None`` for clips not tested (NaN)."""
    return [None if np.isnan(r).any() else [float(v) for v in r] for r in prob]


def _without_seed(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.replace(" ", "").startswith("seed=")]


def read_runs(paths: list[Path]) -> list[tuple[Path, dict]]:
    """``(path, result)`` of each benchmark result JSON; ``SystemExit`` naming a file that cannot be read."""
    runs = []
    for p in paths:
        try:
            runs.append((p, json.loads(Path(p).read_text())))
        except (OSError, ValueError) as e:
            raise SystemExit(f"{p}: cannot read a benchmark result ({e})") from e
    return runs


def check_settings(path: Path, run: dict, first: tuple[Path, dict], keys, normalise: dict | None = None) -> None:
    """``SystemExit`` naming ``path`` when ``run`` differs from ``first = (path, result)`` in one of ``keys``
    (compared after ``normalise[key]`` where given)."""
    first_path, ref = first
    for k in keys:
        f = (normalise or {}).get(k, lambda v: v)
        if f(run.get(k)) != f(ref.get(k)):
            raise SystemExit(f"{path}: {k} = {run.get(k)!r} differs from {first_path}'s {ref.get(k)!r}")


def refuse_fold_clash(path: Path, fold: np.ndarray, taken: np.ndarray, what: str = "") -> None:
    """``SystemExit`` naming ``path`` when a fold of ``fold`` (per clip, -1: not tested) is already in ``taken``."""
    clash = set(fold[fold >= 0].tolist()) & set(taken[taken >= 0].tolist())
    if clash:
        raise SystemExit(f"{path}: fold(s) {sorted(clash)} already come from another of the merged runs{what}")


def join_runs(paths: list[Path]) -> dict:
    """One result of several runs: runs of disjoint folds (``--only-folds``) are joined; runs of the same folds
    with different training seeds (``--override seed=S``) form an ensemble that averages their clip
    probabilities (and their probabilities without the mirror-image average, where every run holds them).

    Every seed must cover the same folds. ``out["ensemble"]`` (several seeds only) holds the seeds and the
    pooled scores of each seed alone, with and without the mirror-image average. Raises ``SystemExit`` naming
    the file when a run's settings (overrides other than ``seed``), crops or clips differ from the first's,
    when one seed holds a fold twice, or when an ensemble member has no probabilities.
    """
    runs = read_runs(paths)
    first_path, first = runs[0]
    n = len(first["predictions"]["clip"])
    members: dict[int, dict] = {}  # training seed -> {"fold", "pred", "prob", "prob_no_flip", "folds", "paths"}
    for p, r in runs:
        check_settings(p, r, runs[0], ("overrides", "crop_size_cached", "crop_method", "fold_seed", "max_clips"),
                       normalise={"overrides": lambda o: _without_seed(o or [])})
        if r["predictions"]["clip"] != first["predictions"]["clip"]:
            raise SystemExit(f"{p}: its clips differ from {first_path}'s")
        seed = int(r.get("config", {}).get("seed", 0))
        m = members.setdefault(seed, {"fold": np.full(n, -1), "pred": np.full(n, -1), "folds": [], "paths": [],
                                      "prob": np.full((n, len(CLASSES)), np.nan),
                                      "prob_no_flip": np.full((n, len(CLASSES)), np.nan)})
        f = np.array(r["predictions"]["fold"])
        done = f >= 0
        refuse_fold_clash(p, f, m["fold"], f" of seed {seed}")
        m["fold"][done], m["pred"][done] = f[done], np.array(r["predictions"]["pred"])[done]
        for key in ("prob", "prob_no_flip"):
            rows = r["predictions"].get(key)
            if rows is not None:
                m[key][done] = np.array([rows[i] for i in np.flatnonzero(done)], float)
        m["folds"] += r["folds"]
        m["paths"].append(str(p))
    seeds = sorted(members)
    ref = members[seeds[0]]["fold"]
    for s in seeds[1:]:
        if not np.array_equal(members[s]["fold"], ref):
            raise SystemExit(f"{members[s]['paths'][0]}: seed {s} covers folds "
                             f"{sorted(set(members[s]['fold'][members[s]['fold'] >= 0].tolist()))}, seed {seeds[0]} "
                             f"{sorted(set(ref[ref >= 0].tolist()))}: an ensemble needs the same folds from every seed")
    out = {**first, "only_folds": None}
    done = ref >= 0
    if len(seeds) == 1:
        m = members[seeds[0]]
        out["folds"] = sorted(m["folds"], key=lambda d: d["fold"])
        out["predictions"] = {**first["predictions"], "fold": ref.tolist(), "pred": m["pred"].tolist()}
        for key in ("prob", "prob_no_flip"):
            if not np.isnan(m[key][done]).any():
                out["predictions"][key] = _rows(m[key])
        return out
    for s in seeds:
        if np.isnan(members[s]["prob"][done]).any():
            raise SystemExit(f"{members[s]['paths'][0]}: no clip probabilities (a run from before they were "
                             f"saved): seeds cannot be averaged")
    prob = np.mean([members[s]["prob"] for s in seeds], axis=0)
    pred = np.where(done, np.nan_to_num(prob).argmax(1), -1)
    y = np.array([CLASSES.index(c.split("/")[0]) for c in first["predictions"]["clip"]])
    folds = []
    for f in sorted(set(ref[done].tolist())):
        recs = [next(d for d in members[s]["folds"] if d["fold"] == f) for s in seeds]
        sc = _scores(y[ref == f], pred[ref == f])
        folds.append({**{k: recs[0][k] for k in ("fold", "n_train", "n_test", "test_groups") if k in recs[0]},
                      "accuracy": sc["accuracy"], "macro_f1": sc["macro_f1"], "f1": sc["f1"],
                      "train_s": float(sum(d.get("train_s", 0.0) for d in recs)),
                      "total_s": float(sum(d["total_s"] for d in recs)),
                      "members": [{"seed": s, **d} for s, d in zip(seeds, recs)]})
    ensemble = {"seeds": seeds, "paths": {str(s): members[s]["paths"] for s in seeds},
                "per_seed": {str(s): _brief(_scores(y[done], members[s]["prob"][done].argmax(1))) for s in seeds}}
    has_no_flip = all(not np.isnan(members[s]["prob_no_flip"][done]).any() for s in seeds)
    if has_no_flip:
        ens = np.mean([members[s]["prob_no_flip"][done] for s in seeds], axis=0)
        ensemble["no_flip"] = _brief(_scores(y[done], ens.argmax(1)))
        ensemble["per_seed_no_flip"] = {str(s): _brief(_scores(y[done], members[s]["prob_no_flip"][done].argmax(1)))
                                        for s in seeds}
    out["folds"] = folds
    out["ensemble"] = ensemble
    out["predictions"] = {**first["predictions"], "fold": ref.tolist(), "pred": pred.tolist(), "prob": _rows(prob)}
    if has_no_flip:
        out["predictions"]["prob_no_flip"] = _rows(np.mean([members[s]["prob_no_flip"] for s in seeds], axis=0))
    return out


def _brief(s: dict) -> dict:
    return {k: s[k] for k in ("accuracy", "macro_f1", "f1")}


def score_predictions(y: np.ndarray, pred: np.ndarray, fold_of: np.ndarray, cage: np.ndarray,
                      folds: list[dict]) -> dict:
    """Scores of clip predictions: ``pooled``, ``per_fold`` (mean ± s.e.m. of the ``accuracy`` and ``macro_f1``
    entries of ``folds``), ``subsets`` (known sessions, each cage, bare numbers) and ``chance``; clips with
    ``fold_of < 0`` (not tested) are left out."""
    done = fold_of >= 0
    pooled = _scores(y[done], pred[done])
    subsets = {}
    for name, m in (("known_session", cage != "bare"), ("cage1", cage == "cage1"), ("cage2", cage == "cage2"),
                    ("bare_number", cage == "bare")):
        m = m & done
        if m.any():
            s = _scores(y[m], pred[m])
            present = [CLASSES[k] for k in np.unique(y[m])]
            subsets[name] = {k: s[k] for k in ("n_clips", "accuracy", "f1")}
            # macro-F1 over the classes present in the subset (the bare-number clips hold every ``normal`` clip,
            # so the others have no ``normal`` clip to score)
            subsets[name]["macro_f1"] = float(np.mean([s["f1"][k] for k in present]))
            subsets[name]["classes_present"] = present
    return {"pooled": pooled, "per_fold": {"accuracy": mean_sem([d["accuracy"] for d in folds]),
                                           "macro_f1": mean_sem([d["macro_f1"] for d in folds])},
            "subsets": subsets, "chance": chance(y[done], pred[done], fold_of[done])}


def goal_met(pooled: dict) -> bool:
    """Whether pooled scores meet :data:`GOAL` (macro-F1 and every class's F1)."""
    return bool(pooled["macro_f1"] >= GOAL["macro_f1"] and min(pooled["f1"].values()) >= GOAL["min_class_f1"])


def summarise(args, cfg, overrides, clips, y, groups, cage, pred, fold_of, folds, n_fallback, crop_size) -> dict:
    from sipec_models.training.config import to_dict

    done = fold_of >= 0
    sc = score_predictions(y, pred, fold_of, cage, folds)
    out = {
        "config": to_dict(cfg), "overrides": overrides, "crop_size_cached": crop_size,
        "crop_method": {"decode_size": decode_size(crop_size, getattr(args, "crop_fraction", CROP_FRACTION)),
                        "locate_size": DECODE_SIZE,
                        "crop_side_fraction_of_height": getattr(args, "crop_fraction", CROP_FRACTION),
                        "min_blob_px": MIN_BLOB_PX, "threshold": "max(90, median + 60) after Gaussian sigma 2",
                        "centre": "median over the clip of the largest blob's centre of mass"},
        "n_clips": int(done.sum()), "n_groups": int(len(set(groups[done].tolist()))),
        "n_fallback_centre": n_fallback, "folds": folds, "fold_seed": args.seed,
        "pooled": sc["pooled"], "per_fold": sc["per_fold"], "subsets": sc["subsets"], "chance": sc["chance"],
        "anchor_efficientnet_probe": ANCHOR, "goal": GOAL, "goal_met": goal_met(sc["pooled"]),
        "runtime_s": {"per_fold": [d["total_s"] for d in folds], "total": float(sum(d["total_s"] for d in folds))},
        "threads": args.threads, "max_clips": args.max_clips, "only_folds": args.only_folds,
        "predictions": {"clip": [f"{CLASSES[c['label']]}/{c['path'].name}" for c in clips], "fold": fold_of.tolist(),
                        "pred": pred.tolist(), "group": groups.tolist()},
    }
    return out


def write(out: dict, path: Path | None, title: str = "BehaveNet") -> dict:
    """Print the table (:func:`print_table`) and write ``out`` as JSON to ``path`` (if given)."""
    print_table(out, title)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2, default=float) + "\n")
        print(f"wrote {path}")
    return out


def print_table(out: dict, title: str = "BehaveNet") -> None:
    """Scores of a :func:`summarise` dict as a table, headed ``<title> on rodent_clips``."""
    p, sub, ch = out["pooled"], out["subsets"], out["chance"]
    cols = ["pooled"] + list(sub)
    rows = [("clips", [p["n_clips"]] + [sub[c]["n_clips"] for c in sub]),
            ("accuracy", [p["accuracy"]] + [sub[c]["accuracy"] for c in sub]),
            ("macro-F1", [p["macro_f1"]] + [sub[c]["macro_f1"] for c in sub])]
    for k in CLASSES:
        rows.append((f"F1 {k}", [p["f1"][k]] + [sub[c]["f1"][k] if k in sub[c]["classes_present"] else None
                                               for c in sub]))
    print(f"\n{title} on rodent_clips, session-grouped CV; overrides:", " ".join(out["overrides"]))
    print(f"{'':28s}" + "".join(f"{c:>14s}" for c in cols) + f"{'anchor':>10s}")
    for name, vals in rows:
        anchor = ANCHOR["macro_f1"] if name == "macro-F1" else ANCHOR["f1"].get(name[3:]) if name.startswith("F1 ") \
            else None
        cells = "".join(f"{'-':>14s}" if v is None else f"{v:14d}" if isinstance(v, int) else f"{v:14.3f}"
                        for v in vals)
        print(f"{name:28s}{cells}{'' if anchor is None else f'{anchor:10.2f}'}")
    pf = out["per_fold"]
    print(f"per fold: accuracy {pf['accuracy']['mean']:.3f} ± {pf['accuracy']['sem']:.3f}, macro-F1 "
          f"{pf['macro_f1']['mean']:.3f} ± {pf['macro_f1']['sem']:.3f} (mean ± s.e.m.)")
    print(f"chance (labels permuted within folds, median of {ch['n_permutations']}): accuracy {ch['accuracy']:.3f}, "
          f"macro-F1 {ch['macro_f1']:.3f}; anchor probe chance macro-F1 {ANCHOR['chance_macro_f1']:.2f}")
    print("runtime per fold, s:", ", ".join(f"{t:.0f}" for t in out["runtime_s"]["per_fold"]),
          f"(total {out['runtime_s']['total']:.0f} s, {out['threads']} thread(s)); "
          f"{out['n_fallback_centre']} clip(s) cropped at the frame centre")
    ens = out.get("ensemble")
    if ens:
        print(f"ensemble of seeds {ens['seeds']} (mean of clip probabilities); each seed alone: macro-F1 "
              + ", ".join(f"{v['macro_f1']:.3f}" for v in ens["per_seed"].values()))
        if "no_flip" in ens:
            print(f"without the mirror-image average: ensemble macro-F1 {ens['no_flip']['macro_f1']:.3f}, each seed "
                  + ", ".join(f"{v['macro_f1']:.3f}" for v in ens["per_seed_no_flip"].values()))
    print(f"goal (macro-F1 >= {GOAL['macro_f1']}, every class >= {GOAL['min_class_f1']}):",
          "met" if out["goal_met"] else "NOT met")


if __name__ == "__main__":
    main()

"""Cross-validation of the behaviour models as workflow rules: fold definitions, one job per fold, aggregates.

Folds are written once per dataset (:func:`make_folds`, rule ``cv_folds``) over
the labelled frames of the videos in ``behaviour.labels``, as frame ranges
``[start, stop)`` per video, never by shuffled frames:

* ``time_blocks``: each labelled video's frames cut into ``k`` contiguous
  blocks; fold ``i`` tests block ``i`` of every video and trains on the rest;
* ``stratified_blocks``: the labelled frames cut into ``blocks_per_fold * k``
  short contiguous blocks, dealt into ``k`` folds by scikit-learn's
  ``StratifiedGroupKFold`` (blocks are the groups, each frame's first
  behaviour the stratum), so that every fold sees every behaviour;
* ``leave_one_video_out``: each labelled video is the test set once;
* ``group``: whole videos grouped by a column of ``videos.tsv`` (session,
  day, subject, ...) and split with ``GroupKFold`` (``min(k, groups)`` folds).

Within a video, training frames within ``purge_frames`` of a test block are
left out, so no training window of the temporal models reaches into it.

Each fold (:func:`run_cv_fold`, rule ``cv_fold``) trains the model on its
training ranges with the workflow's own entry
(:func:`~sipec_models.training.behaviour.run_train_behavenet`,
``run_train_pose_classifier``, or DeepEthogram's flow generator, feature
extractor, feature extraction and sequence model in series), predicts every test range with the
workflow's inference (:func:`~sipec_models.inference.behave.run_behave`,
one chunk per range, so halos and postprocessing are those of the
pipeline) and scores the calls against the labels
(:func:`~sipec_models.behaviour_metrics.classification_scores`, macro-F1
over the non-background behaviours) beside the circular-shift chance level
(:func:`~sipec_models.behaviour_metrics.circular_shift_chance`). The
aggregate (:func:`run_cv_aggregate`) gives per model the mean ± s.e.m. over
folds.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SCHEMES = ("time_blocks", "stratified_blocks", "leave_one_video_out", "group")
CV_MODELS = ("behavenet", "pose_classifier", "deepethogram")


# --------------------------------------------------------------------------- fold definitions


def n_folds(scheme: str, k: int, videos: Sequence[str], groups: Mapping[str, str] | None = None) -> int:
    """Number of folds of a scheme (known before any frame is read, so the workflow can plan its jobs)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown cross-validation scheme {scheme!r} (choose from {', '.join(SCHEMES)})")
    if scheme == "leave_one_video_out":
        if len(videos) < 2:
            raise ValueError("leave_one_video_out needs labels of at least 2 videos")
        return len(videos)
    if scheme == "group":
        n = len({(groups or {})[v] for v in videos})
        if n < 2:
            raise ValueError(f"group cross-validation needs at least 2 groups among the labelled videos, got {n}")
        return min(k, n)
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    return k


def _ranges(mask: np.ndarray) -> list[list[int]]:
    """``[start, stop)`` runs of True of a 1-D bool array."""
    d = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return [[int(a), int(b)] for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1))]


def _purged(train: np.ndarray, test: np.ndarray, purge: int) -> np.ndarray:
    if purge <= 0 or not test.any():
        return train & ~test
    near = test.copy()
    for a, b in _ranges(test):
        near[max(0, a - purge):b + purge] = True
    return train & ~near


def make_folds(labelled: Mapping[str, np.ndarray], scheme: str = "time_blocks", k: int = 5,
               groups: Mapping[str, str] | None = None, strata: Mapping[str, np.ndarray] | None = None,
               purge_frames: int = 0, blocks_per_fold: int = 4, seed: int = 0) -> list[dict]:
    """Fold definitions over the labelled frames of several videos.

    Args:
        labelled: video id -> ``(T,)`` bool, the frames with labels.
        scheme: one of :data:`SCHEMES`.
        k: folds (``time_blocks``, ``stratified_blocks``; at most ``k`` for ``group``).
        groups: video id -> group value (``group`` scheme).
        strata: video id -> ``(T,)`` int class of each frame (``stratified_blocks``; -1 unlabelled).
        purge_frames: training frames this close to a test frame of the same video are left out.
        blocks_per_fold: blocks per fold of ``stratified_blocks``.
        seed: shuffling seed of ``stratified_blocks``.

    Returns:
        ``[{"fold": i, "train": [{"video", "start", "stop"}], "test": [...]}]``; every
        labelled frame is tested exactly once.
    """
    videos = list(labelled)
    n = n_folds(scheme, k, videos, groups)
    test = {v: np.full(len(m), -1, np.int64) for v, m in labelled.items()}  # fold that tests each frame
    if scheme == "time_blocks":
        for v, m in labelled.items():
            idx = np.flatnonzero(m)
            if len(idx) < n:
                raise ValueError(f"{v}: {len(idx)} labelled frames cannot make {n} folds")
            for i, block in enumerate(np.array_split(idx, n)):
                test[v][block] = i
    elif scheme == "stratified_blocks":
        from sklearn.model_selection import StratifiedGroupKFold

        if strata is None:
            raise ValueError("stratified_blocks needs the class of each labelled frame")
        keys, ys, blocks = [], [], []
        total = sum(int(m.sum()) for m in labelled.values())
        for vi, (v, m) in enumerate(labelled.items()):
            idx = np.flatnonzero(m)
            # blocks_per_fold * k blocks in all, shared among the videos by their labelled frames
            nb = int(np.clip(round(blocks_per_fold * n * len(idx) / max(total, 1)), 1, max(len(idx), 1)))
            for bi, block in enumerate(np.array_split(idx, nb)):
                keys += [(v, int(t)) for t in block]
                ys.append(np.asarray(strata[v])[block])
                blocks += [vi * 10 ** 6 + bi] * len(block)
        y, g = np.concatenate(ys), np.asarray(blocks)
        if len(np.unique(g)) < n:
            raise ValueError(f"only {len(np.unique(g))} blocks of labelled frames for {n} folds")
        splitter = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
        for i, (_, te) in enumerate(splitter.split(np.zeros(len(y)), y, g)):
            for j in te:
                v, t = keys[j]
                test[v][t] = i
    elif scheme == "leave_one_video_out":
        for i, v in enumerate(videos):
            test[v][labelled[v]] = i
    else:
        from sklearn.model_selection import GroupKFold

        gv = np.array([groups[v] for v in videos])
        for i, (_, te) in enumerate(GroupKFold(n_splits=n).split(np.zeros(len(videos)), groups=gv)):
            for j in te:
                test[videos[j]][labelled[videos[j]]] = i
    folds = []
    for i in range(n):
        fold = {"fold": i, "train": [], "test": []}
        for v, m in labelled.items():
            te = test[v] == i
            tr = _purged(m.astype(bool), te, purge_frames)
            fold["test"] += [{"video": v, "start": a, "stop": b} for a, b in _ranges(te)]
            fold["train"] += [{"video": v, "start": a, "stop": b} for a, b in _ranges(tr)]
        if not fold["train"] or not fold["test"]:
            raise ValueError(f"fold {i} has no {'training' if not fold['train'] else 'test'} frames")
        folds.append(fold)
    return folds


def labelled_frames(sources: Sequence[Mapping[str, Any]], behaviours: Sequence[str] | None, max_distance: float
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per labelled video: ``(T,)`` bool frames with a label matched to a track, and the frame's first behaviour.

    ``sources`` are the training sources of the workflow (``video``, ``store``,
    ``labels``, ``format``, ``positions``, ``frames``); a class of -1 marks
    an unlabelled frame, ``C`` (past the last behaviour) one labelled with none.
    """
    from sipec_models.training.behaviour import _source_labels
    from sipec_models.io.store import open_store

    labelled, strata = {}, {}
    for src in sources:
        y, _ = _source_labels(src, open_store(src["store"]), behaviours, max_distance)  # (T, A, C)
        has = np.isfinite(y).all(-1)  # (T, A)
        first = np.where(np.nan_to_num(y).any(-1), np.nan_to_num(y).argmax(-1), y.shape[-1])
        cls = np.where(has, first, -1).max(axis=1)  # one stratum per frame: the labelled animals' largest class
        v = src["video"]
        labelled[v] = labelled.get(v, np.zeros(len(y), bool)) | has.any(1)
        strata[v] = np.maximum(strata.get(v, np.full(len(y), -1)), cls)
    return labelled, strata


def run_cv_folds(sources: Sequence[Mapping[str, Any]], out, scheme: str = "time_blocks", k: int = 5,
                 groups: Mapping[str, str] | None = None, purge_frames: int = 0, behaviours=None,
                 max_distance: float = 10.0, seed: int = 0) -> list[dict]:
    """Write the fold definitions of a dataset (JSON) and return them."""
    labelled, strata = labelled_frames(sources, behaviours, max_distance)
    folds = make_folds(labelled, scheme, k, groups, strata, purge_frames, seed=seed)
    doc = {"scheme": scheme, "k": k, "purge_frames": purge_frames, "seed": seed, "groups": dict(groups or {}),
           "n_labelled_frames": {v: int(m.sum()) for v, m in labelled.items()}, "folds": folds}
    _write_atomic_text(Path(out), json.dumps(doc, indent=1))
    for f in folds:
        log.info("fold %d: train %d frames, test %d frames", f["fold"],
                 sum(r["stop"] - r["start"] for r in f["train"]), sum(r["stop"] - r["start"] for r in f["test"]))
    return folds


# --------------------------------------------------------------------------- one fold


def _fold_sources(sources: Sequence[Mapping[str, Any]], ranges: Sequence[Mapping[str, Any]]) -> list[dict]:
    """One training source per range: the video's source with ``frames = [start, stop)``."""
    by_video = {s["video"]: s for s in sources}
    return [{**by_video[r["video"]], "frames": [int(r["start"]), int(r["stop"])]} for r in ranges]


def subset_ranges(ranges: Sequence[Mapping[str, Any]], fraction: float) -> list[dict]:
    """The first ``fraction`` of each training range (contiguous, so a label ablation keeps whole bouts).

    Each range keeps ``max(1, round(fraction * length))`` frames from its start.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    return [{**r, "stop": int(r["start"]) + max(1, int(round(fraction * (int(r["stop"]) - int(r["start"])))))}
            for r in ranges]


def _one_chunk_plan(path: Path, n_frames: int, start: int = 0, stop: int | None = None) -> Path:
    """A one-chunk plan (``[start, stop)``, default the whole video) for the chunk-wise workflow steps."""
    stop = n_frames if stop is None else stop
    path.write_text(json.dumps({"n_frames": n_frames, "chunk_size": n_frames,
                                "chunks": [{"chunk": 0, "start": int(start), "stop": int(stop)}]}))
    return path


def run_cv_fold(model: str, folds_json, fold: int, sources: Sequence[Mapping[str, Any]], out,
                overrides: Sequence[str] = (), behaviours: Sequence[str] | None = None, max_distance: float = 10.0,
                n_shifts: int = 50, label_fraction: float = 1.0) -> dict:
    """Train ``model`` on one fold's training ranges, predict its test ranges, score them; write ``out`` (JSON).

    With ``label_fraction < 1`` only the first part of each training range
    is used (:func:`subset_ranges`; a label ablation); the test ranges stay
    the same.

    Returns:
        ``{"model", "fold", "n_train_frames", "n_test_frames", "macro_f1", "frame_accuracy",
        "per_behaviour": {name: {f1, precision, recall, auroc, support}}, "chance_macro_f1": {mean, std},
        "train_s", "predict_s"}`` (frames are animal-frames).
    """
    import time

    from sipec_models.behaviour_metrics import circular_shift_chance, classification_scores
    from sipec_models.ethogram import BACKGROUND
    from sipec_models.inference.behave import run_behave
    from sipec_models.io.store import open_store
    from sipec_models.tables import behaviour_calls, read_behaviour_chunks
    from sipec_models.training.behaviour import _source_labels, run_train_behavenet, run_train_pose_classifier
    from sipec_models.training.deepethogram import run_train_deg_sequence, train_feature_stages

    if model not in CV_MODELS:
        raise ValueError(f"cross-validation runs {', '.join(CV_MODELS)}, not {model!r}")
    doc = json.loads(Path(folds_json).read_text())
    if not 0 <= fold < len(doc["folds"]):
        raise ValueError(f"{folds_json}: has {len(doc['folds'])} folds, no fold {fold}")
    spec = doc["folds"][fold]
    by_video = {s["video"]: s for s in sources}
    missing = sorted({r["video"] for r in spec["train"] + spec["test"]} - set(by_video))
    if missing:
        raise ValueError(f"{folds_json}: fold {fold} names video(s) {', '.join(missing)} without a label source")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        train_ranges = subset_ranges(spec["train"], label_fraction)
        features: dict[str, list[str]] = {}
        if model == "deepethogram":
            fold_sources = _fold_sources(sources, train_ranges)
            features = train_feature_stages(sources, fold_sources, [r["video"] for r in spec["test"]], tmp,
                                            overrides, behaviours, max_distance)
            run_train_deg_sequence([{**s, "features": features[s["video"]]} for s in fold_sources],
                                   tmp / "model.pt", overrides=overrides, behaviours=behaviours,
                                   max_distance=max_distance, progress=False)
        else:
            train = run_train_behavenet if model == "behavenet" else run_train_pose_classifier
            train(_fold_sources(sources, train_ranges), tmp / "model.pt", overrides=overrides,
                  behaviours=behaviours, max_distance=max_distance, progress=False)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        truths, probs_all, calls_all, runs = [], [], [], []
        names = None
        for j, r in enumerate(spec["test"]):
            src = by_video[r["video"]]
            group = open_store(src["store"])
            T = int(group.attrs["n_frames"])
            plan = _one_chunk_plan(tmp / f"plan_{j}.json", T, r["start"], r["stop"])
            chunk = run_behave(src["store"], plan, 0, tmp / "model.pt", tmp / f"behave_{j}.zarr",
                               pose=src.get("pose") or (), px_per_cm=src.get("px_per_cm"),
                               features=features.get(r["video"], ()))
            probs, names, attrs = read_behaviour_chunks([chunk], T)
            calls = behaviour_calls(probs, bool(attrs["multilabel"]), dict(attrs.get("postprocess") or {}),
                                    float(group.attrs["fps"]))
            y, label_names = _source_labels({**src, "frames": [r["start"], r["stop"]]}, group, behaviours,
                                            max_distance)
            sl = slice(r["start"], r["stop"])
            y, p, c = y[sl], probs[sl], calls[sl]
            truth = np.zeros(p.shape, np.float32)
            for ci, name in enumerate(names):
                if name in label_names:
                    truth[..., ci] = np.nan_to_num(y[..., label_names.index(name)])
                elif name == BACKGROUND:
                    truth[..., ci] = ~np.nan_to_num(y).any(-1)
                else:
                    raise ValueError(f"{src['labels']}: the model calls {name!r}, which the labels lack")
            ok = np.isfinite(y).all(-1) & np.isfinite(p).all(-1)  # (t, A): labelled and tracked
            for a in range(ok.shape[1]):
                keep = ok[:, a]
                if keep.any():
                    truths.append(truth[keep, a])
                    probs_all.append(p[keep, a])
                    calls_all.append(c[keep, a])
                    runs.append(np.full(int(keep.sum()), len(runs)))
        predict_s = time.perf_counter() - t0
    if not truths:
        raise ValueError(f"fold {fold}: no labelled and tracked animal-frames in the test ranges")
    y, p, c, vid = (np.concatenate(a) for a in (truths, probs_all, calls_all, runs))
    scores = classification_scores(y, c.astype(int), p, names, exclude=(BACKGROUND,))
    macro_cols = [i for i, n in enumerate(names) if n != BACKGROUND]
    chance = circular_shift_chance(y[:, macro_cols], c[:, macro_cols].astype(int), video_ids=vid, n_shifts=n_shifts)
    result = {
        "model": model, "fold": fold, "scheme": doc["scheme"],
        "label_fraction": float(label_fraction),
        "n_train_frames": int(sum(r["stop"] - r["start"] for r in train_ranges)),
        "labelled_minutes": float(sum((r["stop"] - r["start"]) / float(open_store(by_video[r["video"]]["store"])
                                                                     .attrs["fps"]) for r in train_ranges) / 60),
        "n_test_animal_frames": int(len(y)),
        "macro_f1": scores["macro_f1"], "frame_accuracy": scores["frame_accuracy"],
        "per_behaviour": {n: {k: v for k, v in s.items() if k in ("f1", "precision", "recall", "auroc", "support")}
                          for n, s in scores["per_behaviour"].items()},
        "chance_macro_f1": {"mean": chance["mean"], "std": chance["std"]},
        "overrides": list(overrides), "train_s": round(train_s, 1), "predict_s": round(predict_s, 1),
    }
    _write_atomic_text(Path(out), json.dumps(result, indent=2))
    log.info("%s fold %d: macro-F1 %.3f (chance %.3f), frame accuracy %s, %d test animal-frames", model, fold,
             result["macro_f1"], chance["mean"], result["frame_accuracy"], len(y))
    return result


# --------------------------------------------------------------------------- aggregate


def _mean_sem(values: Sequence[float | None]) -> dict:
    v = np.array([x for x in values if x is not None], float)
    sem = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None
    return {"mean": float(v.mean()) if len(v) else None, "sem": sem, "n": int(len(v))}


def run_cv_aggregate(metrics: Sequence[str | os.PathLike], out_json, out_csv=None, ablation_csv=None) -> dict:
    """Mean ± s.e.m. over folds of each model's fold metrics (:func:`run_cv_fold`).

    Writes ``out_json`` (per model: macro-F1, frame accuracy, chance macro-F1,
    per-behaviour F1, each ``{mean, sem, n}``, and the fold values, from the
    runs on all training labels; ``label_ablation`` from runs on fractions of
    them, :func:`ablation_curves`), ``out_csv`` (one row per model and
    score) and ``ablation_csv`` (one row per model and label fraction).
    """
    by_model: dict[str, list[dict]] = {}
    ablation: dict[tuple[str, float], list[dict]] = {}
    for path in metrics:
        m = json.loads(Path(path).read_text())
        ablation.setdefault((m["model"], float(m.get("label_fraction", 1.0))), []).append(m)
        if float(m.get("label_fraction", 1.0)) == 1.0:
            by_model.setdefault(m["model"], []).append(m)
    summary, rows = {}, []
    for model, folds in by_model.items():
        folds.sort(key=lambda m: m["fold"])
        behaviours = list(folds[0]["per_behaviour"])
        s = {
            "n_folds": len(folds), "scheme": folds[0]["scheme"],
            "macro_f1": _mean_sem([m["macro_f1"] for m in folds]),
            "frame_accuracy": _mean_sem([m["frame_accuracy"] for m in folds]),
            "chance_macro_f1": _mean_sem([m["chance_macro_f1"]["mean"] for m in folds]),
            "per_behaviour_f1": {b: _mean_sem([m["per_behaviour"][b]["f1"] for m in folds]) for b in behaviours},
            "folds": [{k: m[k] for k in ("fold", "macro_f1", "frame_accuracy", "n_test_animal_frames")}
                      | {"chance_macro_f1": m["chance_macro_f1"]["mean"]} for m in folds],
        }
        summary[model] = s
        for score in ("macro_f1", "frame_accuracy", "chance_macro_f1"):
            rows.append({"model": model, "score": score, **s[score]})
        for b, v in s["per_behaviour_f1"].items():
            rows.append({"model": model, "score": f"f1_{b}", **v})
        log.info("%s: macro-F1 %.3f ± %.3f over %d folds (chance %.3f)", model, s["macro_f1"]["mean"],
                 s["macro_f1"]["sem"] or 0.0, len(folds), s["chance_macro_f1"]["mean"])
    curves = ablation_curves(ablation)
    for model, curve in curves.items():
        summary.setdefault(model, {})["label_ablation"] = curve
    _write_atomic_text(Path(out_json), json.dumps(summary, indent=2))
    if out_csv is not None:
        _write_atomic_text(Path(out_csv), pd.DataFrame(rows).to_csv(index=False, float_format="%.4f"))
    if ablation_csv is not None:
        table = pd.DataFrame([{"model": model, **point} for model, c in curves.items() for point in c["points"]],
                             columns=["model", "label_fraction", "labelled_minutes", "macro_f1_mean", "macro_f1_sem",
                                      "n_folds", "chance_macro_f1_mean"])
        _write_atomic_text(Path(ablation_csv), table.to_csv(index=False, float_format="%.4f"))
    return summary


def ablation_curves(runs: Mapping[tuple[str, float], Sequence[Mapping[str, Any]]], level: float = 0.95) -> dict:
    """Per model, macro-F1 against labelled minutes and the point reaching ``level`` of the peak (SIPEC Fig. 2b/3d).

    Args:
        runs: ``(model, label_fraction) -> fold metrics``.

    Returns:
        ``{model: {"points": [{label_fraction, labelled_minutes, macro_f1_mean, macro_f1_sem, n_folds,
        chance_macro_f1_mean}], "peak_macro_f1", "minutes_to_95pct_of_peak"}}`` (points by fraction);
        models with one fraction only are left out.
    """
    out = {}
    for model in sorted({m for m, _ in runs}):
        fractions = sorted(f for m, f in runs if m == model)
        if len(fractions) < 2:
            continue
        points = []
        for f in fractions:
            folds = runs[(model, f)]
            ms = _mean_sem([m["macro_f1"] for m in folds])
            points.append({"label_fraction": f,
                           "labelled_minutes": float(np.mean([m["labelled_minutes"] for m in folds])),
                           "macro_f1_mean": ms["mean"], "macro_f1_sem": ms["sem"], "n_folds": ms["n"],
                           "chance_macro_f1_mean": float(np.mean([m["chance_macro_f1"]["mean"] for m in folds]))})
        peak = max(p["macro_f1_mean"] for p in points)
        reach = next(p["labelled_minutes"] for p in points if p["macro_f1_mean"] >= level * peak)
        out[model] = {"points": points, "peak_macro_f1": peak, f"minutes_to_{round(level * 100)}pct_of_peak": reach}
    return out


def _write_atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

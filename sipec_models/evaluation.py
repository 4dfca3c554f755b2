"""Evaluation of trained models against labels: SegNet and pose cross-validation and label-count
ablations, identity accuracy of a segmented and identified video.

Every score comes with a chance level computed the same way on mismatched
labels, and splits are by time block (consecutive labelled frames), never
by shuffled neighbouring frames.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- SegNet


def time_block_folds(n: int, k: int) -> list[np.ndarray]:
    """``k`` test folds of ``n`` time-ordered items: contiguous blocks of near-equal size."""
    if not 2 <= k <= n:
        raise ValueError(f"cannot make {k} folds of {n} labelled frames (need 2 <= folds <= frames)")
    return [np.asarray(b) for b in np.array_split(np.arange(n), k)]


def evenly_spaced(n: int, m: int) -> np.ndarray:
    """Indices of ``min(m, n)`` items spread evenly over ``n``."""
    return np.unique(np.linspace(0, n - 1, min(m, n)).round().astype(int))


def segnet_predictions(model, images: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per frame ``(scores (N,), masks (N, H, W) bool)`` of a SegNet on ``(F, H, W)`` uint8 frames."""
    from sipec_models.segmentation.segnet import SegNetSegmenter

    shape = images.shape[1:3]
    out = []
    for instances in SegNetSegmenter(model).segment_batch(images):
        scores = np.array([i.score for i in instances], np.float64)
        masks = np.array([i.full_mask(shape) for i in instances], bool).reshape(-1, *shape)
        out.append((scores, masks))
    return out


def mask_ap_with_chance(predictions, truths) -> tuple[float, float]:
    """Mask AP@0.5 of ``predictions`` and its chance level.

    Chance: the same predictions scored against the labels of other frames
    (each test frame paired with the one half the test set away), so a
    model that ignores the image scores what placement statistics alone give.
    """
    from sipec_models.metrics import average_precision

    ap = average_precision(predictions, truths, 0.5, kind="mask")
    n = len(truths)
    shifted = [truths[(i + max(1, n // 2)) % n] for i in range(n)]
    chance = average_precision(predictions, shifted, 0.5, kind="mask") if n > 1 else float("nan")
    return float(ap), float(chance)


def run_evaluate_segnet(labels, video=None, folds: int = 5, n_frames: int = 40,
                        label_counts: Sequence[int] = (1, 2, 4, 8, 16), overrides: Iterable[str] = (),
                        cv_out=None, ablation_out=None, figure=None, seed: int = 0) -> pd.DataFrame:
    """k-fold cross-validation and label-count ablation of SegNet (SIPEC Fig. 2b).

    ``n_frames`` labelled frames, evenly spaced in time, are cut into
    ``folds`` contiguous blocks. Per fold, SegNet is trained on the other
    blocks (all of their frames: the ``cv`` rows) and on random subsets of
    ``label_counts`` of their frames (the ablation rows), and scored by mask
    AP@0.5 on the held-out block, with the chance level beside it.

    Writes ``cv_out`` (CSV: fold, n_train, n_test, ap, chance, train_s),
    ``ablation_out`` (the same per fold and label count, ``full`` marking the
    cv rows) and ``figure`` (AP against labelled frames, 95 % of peak marked).

    Returns:
        The ablation table.
    """
    from sipec_models.io.masks import load_instance_masks, read_label_images
    from sipec_models.training.config import load_model_config
    from sipec_models.training.segnet import train_segnet

    cfg = load_model_config("segnet", list(overrides))
    frames = [lf for lf in load_instance_masks(labels) if len(lf.masks)]
    frames.sort(key=lambda lf: (lf.frame if lf.frame is not None else -1, lf.file_name))
    frames = [frames[i] for i in evenly_spaced(len(frames), n_frames)]
    images = read_label_images(frames, video=video, image_root=None if video else Path(labels).parent)
    masks = [lf.masks for lf in frames]
    rng = np.random.default_rng(seed)
    rows = []
    test_folds = time_block_folds(len(frames), folds)
    for f, test in enumerate(test_folds):
        train = np.setdiff1d(np.arange(len(frames)), test)
        sizes = sorted({c for c in label_counts if c < len(train)} | {len(train)})
        for size in sizes:
            subset = train if size == len(train) else np.sort(rng.choice(train, size, replace=False))
            t0 = time.perf_counter()
            model = train_segnet(images[subset], [masks[i] for i in subset], cfg, progress=False)
            train_s = time.perf_counter() - t0
            ap, chance = mask_ap_with_chance(segnet_predictions(model, images[test]), [masks[i] for i in test])
            rows.append({"fold": f, "n_train": int(size), "n_test": int(len(test)), "full": size == len(train),
                         "ap": ap, "chance": chance, "train_s": round(train_s, 1)})
            log.info("fold %d/%d, %d labelled frames: mask AP@0.5 %.3f (chance %.3f), trained in %.0f s",
                     f + 1, len(test_folds), size, ap, chance, train_s)
    table = pd.DataFrame(rows)
    cv = table[table["full"]].drop(columns="full")
    summary = ablation_summary(table)
    log.info("cross-validation: mask AP@0.5 %.3f ± %.3f (mean ± s.e.m. over %d folds), chance %.3f; "
             "95%% of peak reached with %s labelled frames", cv["ap"].mean(), _sem(cv["ap"]), len(cv),
             cv["chance"].mean(), summary["frames_for_95"])
    if cv_out:
        _write_csv(cv, cv_out)
    if ablation_out:
        _write_csv(table, ablation_out)
    if figure:
        ablation_figure(table, figure, "SegNet: mask AP@0.5", "labelled frames")
    return table



# --------------------------------------------------------------------------- pose


def run_evaluate_pose(labels, model: str = "posenet", video=None, folds: int = 5,
                      label_counts: Sequence[int] = (10, 25, 50), overrides: Iterable[str] = (),
                      radius: float = 5.0, ablation_folds: int | None = None, cv_out=None, ablation_out=None,
                      seed: int = 0) -> pd.DataFrame:
    """k-fold cross-validation and label-count ablation of a pose network (PoseNet or LEAP).

    The labelled frames, in time order (frame index, then image name), are
    cut into ``folds`` contiguous blocks. Per fold the network is trained
    (:func:`~sipec_models.training.pose.train_pose`) on the other blocks (all
    their frames: the cross-validation rows, ``full``) and on random subsets
    of ``label_counts`` of their frames (the ablation rows; only in the
    first ``ablation_folds`` folds when given, to save time), and predicts the
    held-out block top-down from crops centred on the box of each animal's
    labelled keypoints (the centre ``train_pose`` trains on; it uses the test
    labels to place the crop, so detection errors are left out of the score).

    Scores per row: RMSE and median error (frame px), PCK at ``radius`` px,
    and the chance level: the same scores of the mean-pose baseline
    (:func:`~sipec_models.metrics.mean_pose_baseline`: the training frames'
    mean keypoint offsets from the crop centre), ``chance`` being its PCK.

    Writes ``cv_out`` (CSV: model, fold, n_train (labelled frames),
    n_test_frames, n_test (animals), rmse, median, pck, chance, chance_rmse,
    chance_median, train_s) and ``ablation_out`` (the
    same for every label count, ``full`` marking the cross-validation rows).

    Returns:
        The ablation table.
    """
    from sipec_models.metrics import mean_pose_baseline, pck, pose_median_error, pose_rmse
    from sipec_models.pose import PosePredictor, box_centres
    from sipec_models.training.config import load_model_config
    from sipec_models.training.pose import MODELS, load_pose_training_data, train_pose

    if model not in MODELS:
        raise ValueError(f"pose model must be one of {MODELS}, not {model!r}")
    cfg = load_model_config(model, list(overrides))
    kl, images, keypoints = load_pose_training_data(labels, video, gray=not bool(cfg.data.get("rgb", False)))
    order = sorted(range(len(kl.frames)),
                   key=lambda i: (kl.frames[i].frame if kl.frames[i].frame is not None else -1,
                                  kl.frames[i].image or ""))
    images, keypoints = images[order], keypoints[order]
    centres = box_centres(keypoints)  # (F, A, 2), NaN for empty slots
    rng = np.random.default_rng(seed)
    rows = []
    test_folds = time_block_folds(len(images), folds)
    for f, test in enumerate(test_folds):
        train = np.setdiff1d(np.arange(len(images)), test)
        # Test instances: every labelled animal of the held-out frames.
        fi, ai = np.nonzero(np.isfinite(keypoints[test]).all(-1).any(-1))
        truth, test_centres = keypoints[test][fi, ai], centres[test][fi, ai]
        counts = label_counts if ablation_folds is None or f < ablation_folds else ()
        sizes = sorted({c for c in counts if c < len(train)} | {len(train)})
        for size in sizes:
            subset = train if size == len(train) else np.sort(rng.choice(train, size, replace=False))
            t0 = time.perf_counter()
            net = train_pose(images[subset], keypoints[subset], cfg, model=model,
                             flip_pairs=kl.skeleton.flip_pairs, node_names=kl.skeleton.nodes)
            train_s = time.perf_counter() - t0
            pred, _ = PosePredictor(net, device="cpu").predict(images[test], test_centres, fi)
            tk, tc = keypoints[subset].reshape(-1, *keypoints.shape[-2:]), centres[subset].reshape(-1, 2)
            labelled = np.isfinite(tc).all(-1)
            base = mean_pose_baseline(tk[labelled], len(truth), tc[labelled], test_centres)
            rows.append({"model": model, "fold": f, "n_train": int(size), "n_test_frames": int(len(test)),
                         "n_test": int(len(truth)),
                         "full": size == len(train), "rmse": pose_rmse(pred, truth),
                         "median": pose_median_error(pred, truth), "pck": pck(pred, truth, radius),
                         "chance": pck(base, truth, radius), "chance_rmse": pose_rmse(base, truth),
                         "chance_median": pose_median_error(base, truth), "train_s": round(train_s, 1)})
            r = rows[-1]
            log.info("%s fold %d/%d, %d labelled frames: RMSE %.2f px, median %.2f px, PCK@%g %.3f "
                     "(mean pose: %.3f), trained in %.0f s", model, f + 1, len(test_folds), size, r["rmse"],
                     r["median"], radius, r["pck"], r["chance"], train_s)
    table = pd.DataFrame(rows)
    cv = table[table["full"]].drop(columns="full")
    summary = ablation_summary(comparable_ablation(table), "pck")
    log.info("%s cross-validation: RMSE %.2f ± %.2f px, median %.2f ± %.2f px, PCK@%g %.3f (mean pose %.3f; "
             "mean ± s.e.m. over %d folds); 95%% of peak PCK with %s labelled frames", model, cv["rmse"].mean(),
             _sem(cv["rmse"]), cv["median"].mean(), _sem(cv["median"]), radius, cv["pck"].mean(),
             cv["chance"].mean(), len(cv), summary["frames_for_95"])
    if cv_out:
        _write_csv(cv, cv_out)
    if ablation_out:
        _write_csv(table, ablation_out)
    return table


def _sem(x) -> float:
    x = np.asarray(x, float)
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def ablation_summary(table: pd.DataFrame, score: str = "ap") -> dict:
    """Mean score per label count, the peak, and the smallest count reaching 95 % of the peak."""
    means = table.groupby("n_train")[score].mean()
    peak = float(means.max())
    reach = means[means >= 0.95 * peak]
    return {"means": {int(k): float(v) for k, v in means.items()}, "peak": peak,
            "frames_for_95": int(reach.index.min()) if len(reach) else None}


def ablation_figure(table: pd.DataFrame, path, title: str, xlabel: str, score: str = "ap",
                    ylabel: str | None = None, points: str = "folds") -> None:
    """Score against training labels: folds (or ``points``: what each dot is) as dots, mean line, 95 % of peak,
    chance.

    With a ``model`` column, one curve (and one 95 % line) per model.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sipec_models.plots import save_figure

    groups = list(table.groupby("model", sort=False)) if "model" in table else [(None, table)]
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    for c, (name, t) in enumerate(groups):
        summary = ablation_summary(t, score)
        means = pd.Series(summary["means"])
        label = "mean" if name is None else str(name)
        ax.scatter(t["n_train"], t[score], s=14, color=f"C{c}" if name else "0.3", alpha=0.5,
                   label=points if name is None else None)
        ax.plot(means.index, means.values, "-o", color=f"C{c}", label=label)
        ax.axhline(0.95 * summary["peak"], ls="--", color=f"C{c}" if name else "C1", lw=0.8,
                   label="95 % of peak" if name is None else None)
        if summary["frames_for_95"] is not None:
            ax.axvline(summary["frames_for_95"], ls=":", color=f"C{c}" if name else "C1", lw=1,
                       label=None if name is None else f"{name}: 95 % of peak at {summary['frames_for_95']}")
    chance = table.groupby("n_train")["chance"].mean()
    ax.plot(chance.index, chance.values, "-", color="0.6", label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or (score.upper() if score == "ap" else score))
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=None)


def comparable_ablation(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the folds that hold ablation subsets, each model's full-set rows at one label count.

    Folds differ by a frame or so in their full training set (92 or 93 of
    116 frames in 5 folds); the curve's last point is placed at the smallest
    of them, so that every point averages over the same folds.
    """
    if "full" not in table or table["full"].astype(bool).all():
        return table
    full = table["full"].astype(bool)
    folds = table.loc[~full, ["model", "fold"]].drop_duplicates()
    t = table.merge(folds, on=["model", "fold"]).copy()
    is_full = t["full"].astype(bool)
    t.loc[is_full, "n_train"] = t.loc[is_full].groupby("model")["n_train"].transform("min")
    return t


def pose_ablation_figure(tables: Sequence, path, radius: float = 5.0) -> pd.DataFrame:
    """PCK against labelled frames for the pose models of ``tables`` (ablation CSVs or frames), one figure.

    Only the folds with ablation subsets are drawn (:func:`comparable_ablation`). Returns the drawn table.
    """
    table = pd.concat([t if isinstance(t, pd.DataFrame) else pd.read_csv(t) for t in tables], ignore_index=True)
    table = comparable_ablation(table)
    ablation_figure(table, path, "Pose: PCK on held-out time blocks", "labelled training frames", "pck",
                    f"PCK@{radius:g} px")
    return table


def _write_csv(table: pd.DataFrame, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        table.to_csv(tmp, index=False, float_format="%.4f")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- identity


def identity_scores(assignment: np.ndarray, truth: np.ndarray, track: np.ndarray) -> dict:
    """Accuracy, chance level and identity switches of a ``(T, A)`` identity assignment.

    ``truth`` is ``(T, A)`` (-1 where an animal slot has no label);
    ``track`` the slots' track ids, along which switches are counted.
    """
    from sipec_models.identity import identity_accuracy, identity_changes, shuffled_chance

    ok = truth >= 0
    return {
        "accuracy": identity_accuracy(assignment, truth),
        "chance": shuffled_chance(assignment, truth)["mean"],
        "n_labelled": int(ok.sum()),
        "n_unassigned": int((ok & (assignment < 0)).sum()),
        "identity_switches": int(identity_changes(assignment, track).sum()),
    }


def run_evaluate_identity(video_id: str, store, probe, identify: Sequence[str | os.PathLike], truth, out) -> dict:
    """Identity accuracy of a video against an identity label table, without and with track smoothing.

    Labels (:func:`sipec_models.identity.load_identity_table`) are matched to
    the segmented animals by box or position; each labelled animal scores
    whether its slot was given the labelled identity. Writes ``out`` (JSON).
    """
    from sipec_models.identity import load_identity_table, match_labels_to_slots, truth_per_slot
    from sipec_models.io.store import open_store
    from sipec_models.tables import identities_of_slots

    group = open_store(store)
    box, com, track = group["box"][...], group["com"][...], group["track"][...]
    labels = load_identity_table(truth)
    slots = match_labels_to_slots(labels, box, com)
    result = {"video": video_id, "truth": str(truth), "n_labels": int(len(labels)),
              "n_labels_matched": int((slots >= 0).sum())}
    for smoothing in ("none", "track"):
        assignment, _, names = identities_of_slots(store, identify, smoothing)
        unknown = sorted(set(labels["identity"]) - set(names))
        if unknown:
            raise ValueError(f"{truth}: identities {unknown} are not among the model's {names}")
        truth_slots = truth_per_slot(labels, slots, names, assignment.shape)
        result[f"smoothing_{smoothing}"] = identity_scores(assignment, truth_slots, track)
    result["identity_names"] = names
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    for k in ("none", "track"):
        r = result[f"smoothing_{k}"]
        log.info("%s, smoothing %s: identity accuracy %.4f (chance %.4f) over %d labelled animals, %d switches",
                 video_id, k, r["accuracy"], r["chance"], r["n_labelled"], r["identity_switches"])
    return result


def _identity_test_set(test: dict, names: Sequence[str], crop, exclude_frames: set[int]) -> dict:
    """Crops of every segmented animal in the labelled frames of a test video, and the truth per slot.

    ``test``: ``{video_id, video, store, truth}``; frames in ``exclude_frames`` (training frames of the same
    video) are left out. Returns ``{seq (N, 2h+1, S, S), items [(row, slot)], truth (F, A), n_frames, A}``.
    """
    from sipec_models.identity import load_identity_table, match_labels_to_slots, truth_per_slot
    from sipec_models.io.store import open_store
    from sipec_models.training.idnet import collect_sequences

    group = open_store(test["store"])
    labels = load_identity_table(test["truth"])
    unknown = sorted(set(labels["identity"]) - set(names))
    if unknown:
        raise ValueError(f"{test['truth']}: identities {unknown} are not among the training labels' {list(names)}")
    labels = labels[~labels["frame"].isin(exclude_frames)].reset_index(drop=True)
    if labels.empty:
        raise ValueError(f"{test['truth']}: no labelled frame left outside the training frames of "
                         f"{test['video_id']}")
    has_mask = group["mask"][...].any(axis=(2, 3))
    box = np.where(has_mask[..., None], group["box"][...], np.nan)
    slots = match_labels_to_slots(labels, box, group["com"][...])
    frames = np.unique(labels["frame"].to_numpy()[slots >= 0])
    if not len(frames):
        raise ValueError(f"{test['truth']}: no identity label matched a segmented animal of {test['video_id']}")
    A = box.shape[1]
    truth = truth_per_slot(labels, slots, names, box.shape[:2])[frames]
    items = [(int(f), a) for f in frames for a in range(A) if has_mask[f, a]]
    seq = collect_sequences(test["video"], group["mask"], group["crop_origin"], items, crop,
                            n_frames=int(group.attrs["n_frames"]))
    row = {int(f): i for i, f in enumerate(frames)}
    return {"video_id": test["video_id"], "seq": seq, "items": [(row[f], a) for f, a in items], "truth": truth,
            "n_frames": len(frames), "A": A, "n_labelled": int((truth >= 0).sum())}


def _identity_test_scores(frame_net, recurrent, test: dict, K: int) -> dict:
    """Per-frame assigned identity accuracy (and chance) of a trained IdNet on a :func:`_identity_test_set`."""
    from sipec_models.identity import assign_identities, identity_accuracy, shuffled_chance
    from sipec_models.training.idnet import predict_proba

    out = {}
    variants = [("frame_net", False)] + ([("recurrent", True)] if recurrent is not None else [])
    for name, use_rec in variants:
        p = predict_proba(frame_net, recurrent, test["seq"], use_recurrent=use_rec)
        prob = np.full((test["n_frames"], test["A"], K), np.nan)
        for (r, a), row in zip(test["items"], p):
            prob[r, a] = row
        assignment = assign_identities(prob)
        out[name] = {"accuracy": identity_accuracy(assignment, test["truth"]),
                     "chance": shuffled_chance(assignment, test["truth"])["mean"]}
    return out


def run_evaluate_idnet_ablation(sources: Sequence[dict], tests: Sequence[dict],
                                label_counts: Sequence[int] = (5, 20, 80), repeats: int = 3,
                                overrides: Iterable[str] = (), out=None, figure=None, seed: int = 0) -> pd.DataFrame:
    """Label-count ablation of IdNet (SIPEC Fig. 2d): identity accuracy against labelled training frames.

    IdNet (``config/models/idnet.yaml`` with ``overrides``; the recurrent network too when
    ``crop.half_window > 0``) is trained on random subsets of ``n`` of the labelled frames of ``sources`` (every
    labelled animal of a chosen frame is used), ``repeats`` subsets per count (seeded), plus once on all of
    them, and scored on the labelled frames of ``tests``, which it never saw: per frame, every segmented animal
    gets an identity by the Hungarian assignment (:func:`sipec_models.identity.assign_identities`), and the
    labelled animals score whether theirs is right. Chance: the same assignments against the identity names
    permuted. Test labels at frames of a training source of the same video are left out.

    Args:
        sources: ``sipec train-idnet`` sources ``{video, store, labels, format, frames}``.
        tests: ``{video_id, video, store, truth}``: segmented videos with an identity table.
        label_counts: ablation points in labelled frames (those >= the frames available are replaced by the
            full set).

    Writes ``out`` (CSV: ``repeat, n_train`` (labelled frames), ``n_labels`` (animals), ``full``, ``video``,
    ``accuracy`` (the configured network: recurrent when it has one), ``chance``, ``accuracy_frame_net``,
    ``n_test``, ``train_s``) and ``figure`` (accuracy against labelled frames, 95 % of peak marked).

    Returns:
        The table.
    """
    from sipec_models.io.store import open_store
    from sipec_models.training.config import load_model_config, to_dict
    from sipec_models.training.idnet import CropSettings, IdData, collect_sequences, source_samples, train_idnet

    cfg = to_dict(load_model_config("idnet", list(overrides)))
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, not {repeats}")
    if not sources or not tests:
        raise ValueError("the IdNet ablation needs identity-label sources to train on and test videos to score")
    crop = CropSettings.from_config(cfg["crop"], int(open_store(sources[0]["store"]).attrs["crop_size"]))
    seqs, idents, frame_keys, trained_frames = [], [], [], {}
    for k, src in enumerate(sources):
        items, ids, _ = source_samples(src, cfg)
        if not items:
            continue
        store = open_store(src["store"])
        seqs.append(collect_sequences(src["video"], store["mask"], store["crop_origin"], items, crop,
                                      n_frames=int(store.attrs["n_frames"])))
        idents += ids
        frame_keys += [(k, f) for f, _ in items]
        trained_frames.setdefault(str(src["video"]), set()).update(
            range(*src["frames"]) if src.get("frames") else range(int(store.attrs["n_frames"])))
    if not seqs:
        raise ValueError("no identity label of the training sources matched a segmented animal")
    seq = np.concatenate(seqs)
    names = sorted(set(idents))
    if len(names) < 2:
        raise ValueError(f"need labels of at least 2 identities to train IdNet; found {names}")
    label = np.array([names.index(n) for n in idents], np.int64)
    keys = {fk: i for i, fk in enumerate(sorted(set(frame_keys)))}
    key_of = np.array([keys[fk] for fk in frame_keys])
    test_sets = [_identity_test_set(t, names, crop, trained_frames.get(str(t["video"]), set())) for t in tests]
    counts = sorted({int(n) for n in label_counts if 0 < int(n) < len(keys)})
    plan = [(n, r) for n in counts for r in range(repeats)] + [(len(keys), 0)]
    rng = np.random.default_rng(seed)
    rows = []
    for n, r in plan:
        chosen = np.arange(len(keys)) if n == len(keys) else np.sort(rng.choice(len(keys), n, replace=False))
        sub = np.isin(key_of, chosen)
        t0 = time.perf_counter()
        frame_net, recurrent, _ = train_idnet(IdData(seq[sub], label[sub]), names, {**cfg, "seed": seed + r})
        train_s = time.perf_counter() - t0
        for test in test_sets:
            s = _identity_test_scores(frame_net, recurrent, test, len(names))
            main = s["recurrent" if recurrent is not None else "frame_net"]
            rows.append({"repeat": r, "n_train": int(n), "n_labels": int(sub.sum()), "full": n == len(keys),
                         "video": test["video_id"], "accuracy": main["accuracy"], "chance": main["chance"],
                         "accuracy_frame_net": s["frame_net"]["accuracy"], "n_test": test["n_labelled"],
                         "train_s": round(train_s, 1)})
            log.info("%d labelled frames (%d animals), repeat %d: identity accuracy on %s %.3f (chance %.3f), "
                     "trained in %.0f s", n, sub.sum(), r, test["video_id"], main["accuracy"], main["chance"],
                     train_s)
    table = pd.DataFrame(rows)
    summary = ablation_summary(table, "accuracy")
    log.info("IdNet ablation: peak mean accuracy %.3f; 95%% of peak reached with %s labelled frames",
             summary["peak"], summary["frames_for_95"])
    if out:
        _write_csv(table, out)
    if figure:
        ablation_figure(table, figure, "IdNet: identity accuracy on unseen frames", "labelled training frames",
                        "accuracy", "identity accuracy (per frame)", points="subsets")
    return table

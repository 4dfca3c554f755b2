"""Per-animal tables (one row per frame and animal) and the cohort summary.

Columns and units are listed in ``docs/architecture.md``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from sipec_models.inference.ingest import load_probe
from sipec_models.io.store import open_store
from sipec_models.segmentation.flags import AT_BORDER, MERGED_SPLIT

if TYPE_CHECKING:
    from sipec_models.io.keypoints import KeypointLabels

log = logging.getLogger(__name__)


def animal_names(n_animals: int) -> list[str]:
    """Default animal labels before identification: ``animal_0``, ``animal_1``, ..."""
    return [f"animal_{i}" for i in range(n_animals)]


def animal_table(store: str | os.PathLike, video_id: str, fps: float,
                 identity: tuple[np.ndarray, np.ndarray, list[str]] | None = None,
                 pose: tuple[np.ndarray, np.ndarray, list[str]] | None = None,
                 behaviour: tuple[np.ndarray, np.ndarray, list[str]] | None = None) -> pd.DataFrame:
    """Build the per-animal table of a consolidated video store.

    Args:
        store: the video store (arrays ``com``, ``box``, ``area``, ``score``,
            ``flags`` indexed ``(frame, slot, ...)``; a slot is a track).
        video_id: value of the ``video`` column.
        fps: frames per second, for ``time_s``.
        identity: ``(assignment (T, A) int, probability (T, A) float, names)``
            from identification: the identity index given to each slot per
            frame (-1 none) and its probability. When given, rows are keyed
            by identity: ``animal`` is the identity name, ``track`` the slot
            that held it in that frame, ``identity_prob`` its probability.
        pose: ``(keypoints (T, A, K, 2) frame px, confidence (T, A, K), node
            names)`` per slot (:func:`read_pose_chunks`); adds the columns
            ``<node>_x``, ``<node>_y`` (frame px) and ``<node>_conf`` (0-1)
            for each node after the others, keyed like them (by identity
            when ``identity`` is given).
        behaviour: ``(probs (T, A, C), calls (T, A, C) bool, names)`` per
            slot (:func:`behaviour_calls`); adds ``<behaviour>_prob`` (0-1)
            and ``<behaviour>`` (the call, bool) for each behaviour, keyed
            like the other columns.

    Returns:
        DataFrame sorted by frame then animal, one row per frame and animal
        (``T * A`` rows, or ``T * K`` for ``K`` identities); undetected
        animals have NaN positions (and keypoints) and ``detected = False``.
    """
    group = open_store(store)
    com = group["com"][...]
    box = group["box"][...]
    area = group["area"][...]
    score = group["score"][...]
    flags = group["flags"][...]
    n_found = group["n_found"][...]
    n_frames, n_animals = area.shape
    names = list(group.attrs.get("animal_names") or animal_names(n_animals))
    track_names = np.tile(np.asarray(names, dtype=object), (n_frames, 1))
    extra = {}
    if pose is not None:
        keypoints, kp_conf, nodes = pose
        if keypoints.shape[:2] != (n_frames, n_animals) or kp_conf.shape != keypoints.shape[:3]:
            raise ValueError(f"{store}: keypoints {keypoints.shape} / confidences {kp_conf.shape} do not match its "
                             f"{n_frames} frames x {n_animals} animals")
    if behaviour is not None and (behaviour[0].shape[:2] != (n_frames, n_animals)
                                  or behaviour[1].shape != behaviour[0].shape):
        raise ValueError(f"{store}: behaviour probabilities {behaviour[0].shape} / calls {behaviour[1].shape} do not "
                         f"match its {n_frames} frames x {n_animals} animals")
    if identity is not None:
        assignment, probability, names = identity
        if assignment.shape != (n_frames, n_animals):
            raise ValueError(f"{store}: identity assignment has shape {assignment.shape}, expected "
                             f"{(n_frames, n_animals)}")
        # slot_of[t, k]: the slot holding identity k in frame t (-1 none).
        slot_of = np.full((n_frames, len(names)), -1, np.int64)
        t_idx, a_idx = np.nonzero(assignment >= 0)
        slot_of[t_idx, assignment[t_idx, a_idx]] = a_idx
        held = slot_of >= 0
        pick = np.where(held, slot_of, 0)
        rows = np.arange(n_frames)[:, None]

        def by_identity(x):
            out = x[rows, pick]
            if np.issubdtype(out.dtype, np.floating):
                out = np.where(held.reshape(held.shape + (1,) * (out.ndim - 2)), out, np.nan)
            else:
                out = np.where(held.reshape(held.shape + (1,) * (out.ndim - 2)), out, 0)
            return out

        com, box, area, score, flags = map(by_identity, (com, box, area, score, flags))
        if pose is not None:
            keypoints, kp_conf = by_identity(keypoints), by_identity(kp_conf)
        if behaviour is not None:
            behaviour = (by_identity(behaviour[0]), by_identity(behaviour[1]), behaviour[2])
        extra = {
            "track": np.where(held, track_names[rows, pick], "").reshape(-1),
            "identity_prob": np.where(held, probability[rows, pick], np.nan).reshape(-1),
        }
        n_animals = len(names)
    frame = np.repeat(np.arange(n_frames), n_animals)
    detected = np.isfinite(area).reshape(-1)
    table = pd.DataFrame({
        "video": video_id,
        "frame": frame,
        "time_s": frame / fps,
        "animal": np.tile(np.asarray(names, dtype=object), n_frames),
        **extra,
        "x": com[..., 0].reshape(-1),
        "y": com[..., 1].reshape(-1),
        "box_x0": box[..., 0].reshape(-1),
        "box_y0": box[..., 1].reshape(-1),
        "box_x1": box[..., 2].reshape(-1),
        "box_y1": box[..., 3].reshape(-1),
        "area": area.reshape(-1),
        "score": score.reshape(-1),
        "detected": detected,
        "merged": ((flags & MERGED_SPLIT) > 0).reshape(-1) & detected,
        "at_border": ((flags & AT_BORDER) > 0).reshape(-1) & detected,
        "n_found": np.repeat(n_found.astype(np.int16), n_animals),
    })
    if pose is not None:
        table = pd.concat([table, pd.DataFrame(keypoint_columns(keypoints, kp_conf, nodes))], axis=1)
    if behaviour is not None:
        probs, calls, bnames = behaviour
        cols = {}
        for k, b in enumerate(bnames):
            cols[f"{b}_prob"] = probs[..., k].reshape(-1)
            cols[b] = calls[..., k].reshape(-1).astype(bool)
        table = pd.concat([table, pd.DataFrame(cols)], axis=1)
    return table


def read_behaviour_chunks(paths: Sequence[str | os.PathLike], n_frames: int) -> tuple[np.ndarray, list[str], dict]:
    """Concatenate the ``behaviour_prob`` ``(T, A, C)`` of a video's behave chunk stores.

    Returns ``(probs, names, attrs)`` (``attrs`` of the first store:
    ``behaviour_model``, ``multilabel``, ``postprocess``); frames no chunk
    covers stay NaN.

    Raises:
        ValueError: no stores, or a store whose behaviours or model differ from the first one's (naming it).
    """
    probs = names = attrs = None
    for p in paths:
        g = open_store(p)
        s, e = g.attrs["frame_start"], g.attrs["frame_stop"]
        chunk = g["behaviour_prob"][...]
        if probs is None:
            names, attrs = list(g.attrs["behaviour_names"]), dict(g.attrs)
            probs = np.full((n_frames,) + chunk.shape[1:], np.nan, np.float32)
        elif list(g.attrs["behaviour_names"]) != names or g.attrs["behaviour_model"] != attrs["behaviour_model"]:
            raise ValueError(f"{p}: behaviours {g.attrs['behaviour_names']} ({g.attrs['behaviour_model']}) differ "
                             f"from the other chunks' {names} ({attrs['behaviour_model']}); re-run its behave job")
        probs[s:e] = chunk
    if probs is None:
        raise ValueError("no behave chunk stores given")
    return probs, names, attrs


def behaviour_calls(probs: np.ndarray, multilabel: bool, postprocess: dict, fps: float) -> np.ndarray:
    """``(T, A, C)`` bool calls from probabilities, along each slot's runs of frames with an animal.

    Exclusive behaviours: the most probable one; multi-label: ``prob >=
    threshold`` per behaviour. Then bouts shorter than the model's minimum
    (``postprocess["min_frames"]``, converted through seconds when the
    video's ``fps`` differs from the training frame rate) are removed
    (:func:`sipec_models.ethogram.remove_short_bouts`).
    """
    from sipec_models.behaviour_data import slot_sequences
    from sipec_models.ethogram import remove_short_bouts

    T, A, C = probs.shape
    valid = np.isfinite(probs).all(-1)
    seq = slot_sequences(valid)
    calls = np.zeros((T, A, C), bool)
    thresholds = postprocess.get("thresholds")
    train_fps = postprocess.get("fps")
    scale = 1.0 if not train_fps else float(fps) / float(train_fps)
    min_frames = np.maximum(1, np.round(np.asarray(postprocess.get("min_frames") or [1] * C) * scale)).astype(int)
    fill = int(round(int(postprocess.get("fill_gaps", 0) or 0) * scale))
    a_idx, t_idx = np.nonzero(valid.T)
    if not len(t_idx):
        return calls
    p = probs[t_idx, a_idx]
    if multilabel:
        raw = p >= np.asarray(thresholds if thresholds is not None else 0.5)
    else:
        raw = np.zeros_like(p, bool)
        raw[np.arange(len(p)), p.argmax(1)] = True
    calls[t_idx, a_idx] = remove_short_bouts(raw, min_frames, fill, video_ids=seq[t_idx, a_idx])
    return calls


def bout_table(table: pd.DataFrame, behaviours: Sequence[str], fps: float) -> pd.DataFrame:
    """Bouts of every animal of a per-animal table: ``video, animal, behaviour, start, stop, n_frames, start_s,
    stop_s, duration_s`` (:func:`sipec_models.ethogram.bouts`; frames without a call end a bout)."""
    from sipec_models.ethogram import bouts

    parts = []
    for animal, t in table.groupby("animal", sort=False):
        t = t.sort_values("frame")
        calls = t[list(behaviours)].fillna(False).to_numpy(bool)
        b = bouts(calls, list(behaviours), fps, start_frame=int(t["frame"].iloc[0]) if len(t) else 0)
        b.insert(0, "animal", animal)
        parts.append(b)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["animal", "behaviour", "start", "stop", "n_frames", "start_s", "stop_s", "duration_s"])
    out.insert(0, "video", table["video"].iloc[0] if len(table) else "")
    return out


#: Suffixes of the per-node keypoint columns of the per-animal tables: x, y (frame px), confidence (0-1).
KEYPOINT_SUFFIXES = ("_x", "_y", "_conf")


def keypoint_columns(keypoints: np.ndarray, confidence: np.ndarray, nodes: Sequence[str]) -> dict[str, np.ndarray]:
    """``(T, A, K, 2)`` keypoints and ``(T, A, K)`` confidences -> ``{<node>_x, <node>_y, <node>_conf: (T*A,)}``."""
    cols = {}
    for k, node in enumerate(nodes):
        for suffix, values in zip(KEYPOINT_SUFFIXES, (keypoints[..., k, 0], keypoints[..., k, 1], confidence[..., k])):
            cols[f"{node}{suffix}"] = values.reshape(-1).astype(np.float64)
    return cols


def keypoint_nodes(table: pd.DataFrame) -> list[str]:
    """Pose node names of a per-animal table: every ``<node>`` with ``<node>_x``, ``<node>_y`` and ``<node>_conf``."""
    return [c[:-len("_conf")] for c in table.columns if c.endswith("_conf")
            and {c[:-len("_conf")] + "_x", c[:-len("_conf")] + "_y"} <= set(table.columns)]


def read_pose_chunks(paths: Sequence[str | os.PathLike], n_frames: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Concatenate the ``keypoints`` ``(T, A, K, 2)`` and ``keypoint_confidence`` ``(T, A, K)`` of pose chunk stores.

    Returns ``(keypoints, confidence, node_names)``; frames no chunk covers stay NaN.

    Raises:
        ValueError: no stores, or a store whose node names differ from the first one's (naming it).
    """
    points = conf = names = None
    for p in paths:
        g = open_store(p)
        s, e = g.attrs["frame_start"], g.attrs["frame_stop"]
        kp, c = g["keypoints"][...], g["keypoint_confidence"][...]
        if points is None:
            names = list(g.attrs["node_names"])
            points = np.full((n_frames,) + kp.shape[1:], np.nan, np.float32)
            conf = np.full((n_frames,) + c.shape[1:], np.nan, np.float32)
        elif list(g.attrs["node_names"]) != names:
            raise ValueError(f"{p}: pose nodes {g.attrs['node_names']} differ from the other chunks' {names}; "
                             "re-run its pose job with the same model")
        points[s:e], conf[s:e] = kp, c
    if points is None:
        raise ValueError("no pose chunk stores given")
    return points, conf, names


def _write_atomic(table: pd.DataFrame, path: Path, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if kind == "csv":
            table.to_csv(tmp, index=False, float_format="%.3f")
        else:
            table.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_identity_chunks(paths: Sequence[str | os.PathLike], n_frames: int) -> tuple[np.ndarray, list[str]]:
    """Concatenate the ``identity_prob`` ``(T, A, K)`` of a video's identify chunk stores.

    Returns ``(prob, identity_names)``; frames no chunk covers stay NaN.
    """
    prob = names = None
    for p in paths:
        g = open_store(p)
        s, e = g.attrs["frame_start"], g.attrs["frame_stop"]
        chunk = g["identity_prob"][...]
        if prob is None:
            names = list(g.attrs["identity_names"])
            prob = np.full((n_frames,) + chunk.shape[1:], np.nan, np.float32)
        elif list(g.attrs["identity_names"]) != names:
            raise ValueError(f"{p}: identity names {g.attrs['identity_names']} differ from the other chunks' {names}")
        prob[s:e] = chunk
    if prob is None:
        raise ValueError("no identify chunk stores given")
    return prob, names


def identities_of_slots(store, identify: Sequence[str | os.PathLike], smoothing: str = "track"
                        ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-frame identity of each slot of a video store, from its identify chunk stores.

    ``smoothing="track"`` averages the probabilities along each track run first
    (SIPEC's smoothing with greedy mask-match tracking); ``"none"`` assigns
    frame by frame. Either way one identity is never given to two animals in
    a frame (:func:`sipec_models.identity.assign_identities`).

    Returns ``(assignment (T, A) int, probability (T, A) float, names)``.
    """
    from sipec_models.identity import assign_identities, smooth_along_tracks

    group = open_store(store)
    prob, names = read_identity_chunks(identify, group.attrs["n_frames"])
    if smoothing == "track":
        _, prob = smooth_along_tracks(prob, group["track"][...])
    elif smoothing != "none":
        raise ValueError(f"identification.smoothing must be 'none' or 'track', not {smoothing!r}")
    assignment = assign_identities(prob)
    chosen = np.take_along_axis(np.nan_to_num(prob, nan=0.0), np.maximum(assignment, 0)[..., None], axis=2)[..., 0]
    return assignment, np.where(assignment >= 0, chosen, np.nan), names


def run_merge(store, video_id: str, probe_json, csv, parquet, figure, identify: Sequence[str] = (),
              smoothing: str = "track", social: Sequence[str] = (), social_options=None, events_csv=None,
              pose: Sequence[str] = (), behave: Sequence[str] = (), bouts_csv=None,
              ethogram_figure=None, social_behave: Sequence[str] = (), pair_behaviour_csv=None,
              position3d=None) -> pd.DataFrame:
    """Write the per-animal table (CSV and Parquet) and the trajectory figure of a video.

    With ``identify`` chunk stores, rows are keyed by identity (see
    :func:`animal_table`); with ``pose`` chunk stores, the table gains
    ``<node>_x``, ``<node>_y``, ``<node>_conf`` per keypoint node; with
    ``social`` chunk stores, the interaction bouts go to ``events_csv``
    (pairs named like the table's ``animal`` column) and the table gains
    ``social_partners`` (the animals each one interacts with in that frame,
    ``;``-separated); with ``behave`` chunk stores, the table gains
    ``<behaviour>_prob`` and ``<behaviour>`` (the call after thresholds and
    minimum bouts, :func:`behaviour_calls`), the bouts go to ``bouts_csv``
    (:func:`bout_table`) and the ethogram raster to ``ethogram_figure``;
    with ``social_behave`` chunk stores (pair behaviour of the social
    events), the per-frame pair behaviour goes to ``pair_behaviour_csv``
    (:func:`pair_behaviour_table`) and the events gain the bout's pair
    behaviour (:func:`events_with_behaviour`); with a ``position3d`` model
    (:func:`sipec_models.position3d.run_train_position3d`), the table gains
    ``X_<unit>``, ``Y_<unit>``, ``Z_<unit>`` after ``area``
    (:func:`sipec_models.position3d.position_columns`).
    """
    from sipec_models.plots import trajectory_figure

    info, _ = load_probe(probe_json)
    identity = identities_of_slots(store, identify, smoothing) if identify else None
    poses = read_pose_chunks(pose, int(open_store(store).attrs["n_frames"])) if pose else None
    behaviour = None
    if behave:
        probs, bnames, battrs = read_behaviour_chunks(behave, int(open_store(store).attrs["n_frames"]))
        calls = behaviour_calls(probs, bool(battrs["multilabel"]), dict(battrs.get("postprocess") or {}), info.fps)
        behaviour = (probs, calls, bnames)
    table = animal_table(store, video_id, info.fps, identity=identity, pose=poses, behaviour=behaviour)
    if position3d is not None:
        from sipec_models.position3d import load_regressor, position_columns

        model, unit = load_regressor(position3d)
        at = table.columns.get_loc("area") + 1
        for k, (name, values) in enumerate(position_columns(table, model, unit, info.width, info.height).items()):
            table.insert(at + k, name, values)
    events = None
    if social:
        events = _social_events(store, social, identity, info.fps, video_id, social_options)
        table["social_partners"] = _partners(table, events)
    if social_behave:
        if events is None or pair_behaviour_csv is None:
            raise ValueError("pair-behaviour chunk stores need the social chunk stores and a pair_behaviour_csv")
        pairs, pnames = pair_behaviour_table(store, social_behave, identity, info.fps, video_id)
        events = events_with_behaviour(events, pairs, pnames)
        _write_atomic(pairs, Path(pair_behaviour_csv), "csv")
    if events is not None:
        if events_csv is None:
            raise ValueError("social chunk stores given but no events_csv to write")
        _write_atomic(events, Path(events_csv), "csv")
    if behaviour is not None:
        if bouts_csv is None or ethogram_figure is None:
            raise ValueError("behave chunk stores given but no bouts_csv / ethogram_figure to write")
        from sipec_models.plots import ethogram_figure as draw_ethogram

        _write_atomic(bout_table(table, behaviour[2], info.fps), Path(bouts_csv), "csv")
        draw_ethogram(table, behaviour[2], info.fps, ethogram_figure, title=video_id)
    _write_atomic(table, Path(parquet), "parquet")
    _write_atomic(table, Path(csv), "csv")
    trajectory_figure(table, info.width, info.height, figure, title=video_id)
    per_animal = table.groupby("animal")["detected"].mean()
    log.info("%s: %d frames, %d animals, detected %s", video_id, table["frame"].nunique(), len(per_animal),
             ", ".join(f"{a} {v:.1%}" for a, v in per_animal.items()))
    return table


def pose_labels(table: pd.DataFrame, video: str | os.PathLike) -> "KeypointLabels":
    """The keypoints of a per-animal table as :class:`~sipec_models.io.keypoints.KeypointLabels` predictions.

    One :class:`~sipec_models.io.keypoints.PoseFrame` per frame where some
    animal has a keypoint; each animal is a track named by the table's
    ``animal`` column (identity or track slot), with its ``<node>_conf`` as
    scores. Nodes come from the table's columns (:func:`keypoint_nodes`),
    left/right flip pairs from the node names
    (:func:`~sipec_models.io.keypoints.find_flip_pairs`).
    """
    from sipec_models.io.keypoints import KeypointLabels, Skeleton, find_flip_pairs

    nodes = keypoint_nodes(table)
    if not nodes:
        raise ValueError("the table has no keypoint columns (<node>_x, <node>_y, <node>_conf): was pose enabled?")
    animals = list(dict.fromkeys(table["animal"]))
    frames = np.sort(table["frame"].unique())
    wide = table.set_index(["frame", "animal"]).reindex(pd.MultiIndex.from_product([frames, animals]))
    T, A, K = len(frames), len(animals), len(nodes)
    points = np.stack([wide[[f"{n}_x" for n in nodes]].to_numpy(float),
                       wide[[f"{n}_y" for n in nodes]].to_numpy(float)], axis=-1).reshape(T, A, K, 2)
    scores = wide[[f"{n}_conf" for n in nodes]].to_numpy(float).reshape(T, A, K)
    keep = np.isfinite(points).all(-1).any(axis=(1, 2))
    skeleton = Skeleton(nodes, flip_pairs=find_flip_pairs(nodes))
    return KeypointLabels.from_arrays(points[keep], skeleton, video=str(video), frames=frames[keep],
                                      scores=scores[keep], tracks=[str(a) for a in animals])


def run_export_pose(table_path: str | os.PathLike, video: str | os.PathLike, slp: str | os.PathLike | None = None,
                    dlc_csv: str | os.PathLike | None = None) -> "KeypointLabels":
    """Export a video's merged keypoints for proofreading in SLEAP and DeepLabCut.

    Args:
        table_path: the per-animal table (``animals.parquet`` or ``.csv``) with keypoint columns.
        video: the video file; the ``.slp`` references it by absolute path
            (SLEAP asks for it when it has moved), the DLC CSV is indexed by frame number.
        slp: SLEAP file to write (predicted instances with point scores, one track per animal).
        dlc_csv: DeepLabCut CSV to write (multi-animal header, ``likelihood`` columns).

    Both read back with :func:`~sipec_models.io.keypoints.load_keypoints`
    (the CSV with ``video=``) to the table's keypoints (float32 in the ``.slp``).
    """
    from sipec_models.io.keypoints import to_dlc_csv, to_slp

    path = Path(table_path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: per-animal table does not exist")
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    try:
        labels = pose_labels(table, Path(video).resolve())
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if slp is not None:
        to_slp(labels, slp)
    if dlc_csv is not None:
        to_dlc_csv(labels, dlc_csv)
    log.info("%s: keypoints of %d frames (%d nodes) -> %s", path, len(labels), labels.skeleton.n_nodes,
             ", ".join(str(p) for p in (slp, dlc_csv) if p is not None))
    return labels


def _slot_names(group, identity, n_frames: int) -> np.ndarray:
    """``(T, A)`` object array naming each slot's animal per frame: identities when identified, else track names."""
    track_names = np.asarray(group.attrs.get("animal_names") or animal_names(group.attrs["n_animals"]), dtype=object)
    if identity is None:
        return np.tile(track_names, (n_frames, 1))
    assignment, _, names = identity
    named = np.asarray(names, dtype=object)[np.maximum(assignment, 0)]
    return np.where(assignment >= 0, named, "unidentified")


def _social_events(store, social, identity, fps, video_id, options) -> pd.DataFrame:
    from sipec_models.social import SocialConfig, event_table, read_social_chunks

    group = open_store(store)
    n_frames = group.attrs["n_frames"]
    event, overlap, pair_slots = read_social_chunks(social, n_frames)
    return event_table(event, overlap, pair_slots, _slot_names(group, identity, n_frames), fps, video_id,
                       SocialConfig.from_dict(options))


def pair_behaviour_table(store, social_behave: Sequence[str | os.PathLike], identity, fps: float,
                         video_id: str) -> tuple[pd.DataFrame, list[str]]:
    """Per-frame pair behaviour of the social events: one row per frame and pair with an event.

    Reads the ``behave_pairs`` chunk stores (:func:`~sipec_models.inference.behave.run_behave_pairs`),
    calls behaviours along each pair's runs of event frames as for single
    animals (:func:`behaviour_calls`) and names the pair like the per-animal
    table (identities when identified).

    Returns:
        ``(table, behaviours)``; columns ``video, frame, time_s, animal_a,
        animal_b`` (names sorted), ``<behaviour>_prob`` (0-1) and
        ``<behaviour>`` (bool call) per behaviour.
    """
    group = open_store(store)
    n_frames = int(group.attrs["n_frames"])
    probs, names, attrs = read_behaviour_chunks(social_behave, n_frames)
    calls = behaviour_calls(probs, bool(attrs["multilabel"]), dict(attrs.get("postprocess") or {}), fps)
    slot_names = _slot_names(group, identity, n_frames)
    rows = []
    for k, (i, j) in enumerate(attrs["pairs"]):
        t = np.flatnonzero(np.isfinite(probs[:, k]).all(-1))
        if not len(t):
            continue
        ab = np.sort(np.stack([slot_names[t, i].astype(str), slot_names[t, j].astype(str)], 1), axis=1)
        part = {"video": video_id, "frame": t, "time_s": t / fps, "animal_a": ab[:, 0], "animal_b": ab[:, 1]}
        for c, b in enumerate(names):
            part[f"{b}_prob"] = probs[t, k, c]
            part[b] = calls[t, k, c]
        rows.append(pd.DataFrame(part))
    columns = ["video", "frame", "time_s", "animal_a", "animal_b"] + [x for b in names for x in (f"{b}_prob", b)]
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)
    return table.sort_values(["frame", "animal_a", "animal_b"], ignore_index=True)[columns], names


def events_with_behaviour(events: pd.DataFrame, pairs: pd.DataFrame, behaviours: Sequence[str]) -> pd.DataFrame:
    """Interaction bouts with their pair behaviour: ``<behaviour>_prob`` (mean over the bout's frames) and
    ``behaviour`` (the behaviour called on most of its frames; empty when none is)."""
    events = events.copy()
    key = pairs.set_index(["animal_a", "animal_b", "frame"]).sort_index()
    means = {b: np.full(len(events), np.nan) for b in behaviours}
    top = np.full(len(events), "", dtype=object)
    for r, ev in enumerate(events.itertuples()):
        try:
            sel = key.loc[(ev.animal_a, ev.animal_b)]
        except KeyError:
            continue
        sel = sel[(sel.index >= ev.start_frame) & (sel.index < ev.stop_frame)]
        if not len(sel):
            continue
        for b in behaviours:
            means[b][r] = sel[f"{b}_prob"].mean()
        counts = sel[list(behaviours)].astype(bool).sum()
        if counts.max() > 0:
            top[r] = str(counts.idxmax())
    for b in behaviours:
        events[f"{b}_prob"] = means[b]
    events["behaviour"] = top
    return events


def _partners(table: pd.DataFrame, events: pd.DataFrame) -> np.ndarray:
    """``;``-joined partners of each row's animal in that frame, from the event bouts."""
    partners: dict[tuple[int, str], set[str]] = {}
    for ev in events.itertuples():
        for f in range(ev.start_frame, ev.stop_frame):
            partners.setdefault((f, ev.animal_a), set()).add(ev.animal_b)
            partners.setdefault((f, ev.animal_b), set()).add(ev.animal_a)
    return np.array([";".join(sorted(partners.get((f, a), ()))) for f, a in zip(table["frame"], table["animal"])],
                    dtype=object)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """One row per video and animal: coverage, merges, distance and speed.

    ``more_found_fraction`` / ``fewer_found_fraction``: fraction of the
    video's frames where the segmenter found more / fewer instances than
    the video's animals (quality control; the same for every animal of a video).

    Distance sums centre displacements between consecutive frames where the
    animal was detected in both (px); mean speed is that distance over the
    time covered by those frame pairs (px/s).
    """
    rows = []
    expected = table.groupby("video")["animal"].nunique()
    for (video, animal), t in table.sort_values("frame").groupby(["video", "animal"], sort=True):
        xy = t[["x", "y"]].to_numpy(float)
        step = np.linalg.norm(np.diff(xy, axis=0), axis=1)
        consecutive = np.diff(t["frame"].to_numpy()) == 1
        valid = np.isfinite(step) & consecutive
        dt = np.diff(t["time_s"].to_numpy())[valid].sum()
        distance = float(step[valid].sum())
        rows.append({
            "video": video,
            "animal": animal,
            "n_frames": len(t),
            "detected_fraction": float(t["detected"].mean()),
            "merged_fraction": float(t["merged"].mean()),
            "at_border_fraction": float(t["at_border"].mean()),
            "more_found_fraction": float((t["n_found"] > expected[video]).mean()),
            "fewer_found_fraction": float((t["n_found"] < expected[video]).mean()),
            "distance_px": distance,
            "mean_speed_px_s": distance / dt if dt > 0 else float("nan"),
            "mean_area_px2": float(t["area"].mean()),
        })
    return pd.DataFrame(rows)


def run_summary(tables: Sequence[str | os.PathLike], videos_tsv, out) -> pd.DataFrame:
    """Write the cohort summary: :func:`summarise` of every table joined with video metadata."""
    summary = pd.concat([summarise(pd.read_parquet(p)) for p in tables], ignore_index=True)
    videos = pd.read_csv(videos_tsv, sep="\t", dtype=str, keep_default_na=False, comment="#")
    meta = videos.drop(columns=[c for c in ("path",) if c in videos.columns]).rename(columns={"id": "video"})
    summary = summary.merge(meta, on="video", how="left")
    _write_atomic(summary, Path(out), "csv")
    log.info("cohort summary: %d videos, %d animals -> %s", summary["video"].nunique(), len(summary), out)
    return summary

"""Behaviour in the workflow: labels on track slots, train_* entries, behave chunks (border invariance), calls,
bouts and ethogram columns of the merged tables."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from sipec_models.behaviour_data import exclusive_targets, slot_labels, slot_sequences
from sipec_models.inference.behave import run_behave
from sipec_models.io.store import open_store, spec_field, write_store
from sipec_models.tables import animal_table, behaviour_calls, bout_table
from sipec_models.training.behavenet import BehaveNetModel, build_frame_net, build_tcn, save_behavenet
from sipec_models.training.config import load_model_config
from tests.test_behavenet import TINY, _synthetic


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
        yield


def _labels_csv(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_slot_labels_match_animals_by_position(tmp_path):
    T = 4
    com = np.array([[[10, 10], [50, 50]]] * T, np.float64)
    com[2] = com[2][::-1]  # the tracks swap places in frame 2
    com[3, 1] = np.nan  # slot 1 empty in frame 3
    rows, pos = [], []
    for t in range(T):
        rows += [{"frame": t, "animal": "a", "walk": 1, "rest": 0}, {"frame": t, "animal": "b", "walk": 0, "rest": 1}]
        pos += [{"frame": t, "animal": "a", "x": 11, "y": 9}, {"frame": t, "animal": "b", "x": 49, "y": 52}]
    labels = _labels_csv(tmp_path / "labels.csv", rows)
    positions = _labels_csv(tmp_path / "pos.csv", pos)
    y, names = slot_labels(labels, com, positions=positions, max_distance=5)
    assert names == ["walk", "rest"] and y.shape == (T, 2, 2)
    assert y[0, 0].tolist() == [1, 0] and y[0, 1].tolist() == [0, 1]
    assert y[2, 0].tolist() == [0, 1] and y[2, 1].tolist() == [1, 0]  # followed the animals, not the slots
    assert y[3, 0].tolist() == [1, 0] and np.isnan(y[3, 1]).all()
    y, names = slot_labels(labels, com, positions=positions, behaviours=["rest"], frames=[1, 3])
    assert names == ["rest"] and np.isnan(y[0]).all() and np.isnan(y[3]).all() and y[1, 1, 0] == 1
    with pytest.raises(ValueError, match="positions"):
        slot_labels(labels, com)
    with pytest.raises(ValueError, match="not in the file"):
        slot_labels(labels, com, positions=positions, behaviours=["fly"])
    with pytest.raises(ValueError, match="no labelled animal lies within"):
        slot_labels(labels, com + 100, positions=positions)
    single = _labels_csv(tmp_path / "one.csv", [{"frame": t, "walk": t % 2} for t in range(T)])
    y, _ = slot_labels(single, com[:, :1])
    assert y[:, 0, 0].tolist() == [0, 1, 0, 1]


def test_com_speed_stays_inside_runs():
    from sipec_models.behaviour_data import com_speed

    com = np.zeros((6, 1, 2))
    com[:, 0, 0] = [0, 2, 4, 6, np.nan, 10]  # 2 px per frame, a gap, then a run of one frame
    v = com_speed(com, fps=10.0, scale_px=20.0)[:, 0, 0]  # 2 px/frame = 20 px/s = 1 crop side/s
    np.testing.assert_allclose(v[:4], np.log1p(1.0))
    assert np.isnan(v[4]) and v[5] == 0.0


def test_exclusive_targets_and_sequences():
    y = np.array([[1, 0], [0, 1], [0, 0], [np.nan, np.nan]], np.float32)
    target, names = exclusive_targets(y, ["a", "b"])
    assert target.tolist() == [0, 1, 2, -1] and names == ["a", "b", "background"]
    with pytest.raises(ValueError, match="several behaviours at once"):
        exclusive_targets(np.array([[1, 1]], np.float32), ["a", "b"], what="f.csv")
    valid = np.array([[1, 1], [1, 0], [0, 1], [1, 1]], bool)
    assert slot_sequences(valid).tolist() == [[0, 2], [0, -1], [-1, 3], [1, 3]]


def _store(path, crops, com, fps=25.0):
    T, A = com.shape[:2]
    fields = {"com": com.astype(np.float32), "crop": crops}
    return write_store(path, {k: spec_field(k, v, "animal") for k, v in fields.items()},
                       {"n_frames": T, "n_animals": A, "fps": fps, "video_id": "v"})


def _plan(path, bounds):
    chunks = [{"chunk": i, "start": s, "stop": e} for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:]))]
    path.write_text(json.dumps({"n_frames": bounds[-1], "chunk_size": 0, "chunks": chunks}))
    return path


def _behave_all(tmp_path, name, store, ckpt, bounds):
    plan = _plan(tmp_path / f"{name}.json", bounds)
    out = []
    for c in range(len(bounds) - 1):
        g = open_store(run_behave(store, plan, c, ckpt, tmp_path / f"{name}_{c}.zarr", device="cpu"))
        out.append(g["behaviour_prob"][...])
    return np.concatenate(out)


@pytest.mark.parametrize("motion", [False, True])
def test_behave_results_do_not_depend_on_chunk_borders(tmp_path, motion):
    data = _synthetic(2, 40, seed=3)
    T = 40
    crops = data.crops.reshape(2, T, *data.crops.shape[1:]).transpose(1, 0, 2, 3).copy()
    com = 30.0 + np.cumsum(np.random.default_rng(0).normal(0, 2, (T, 2, 2)), 0)
    com[15:19, 1] = np.nan  # slot 1 empty for 4 frames: a gap the windows must not cross
    crops[15:19, 1] = 0
    store = _store(tmp_path / "v.zarr", crops, com)
    cfg = load_model_config("behavenet", [*TINY, f"tcn.motion_input={motion}"])
    torch.manual_seed(0)
    frame_net = build_frame_net(cfg, 3)
    tcn = build_tcn(cfg, frame_net.num_features + int(motion), 3)
    model = BehaveNetModel(frame_net, tcn, ["still", "flicker", "long"], cfg)
    assert model.motion_input == motion
    ckpt = tmp_path / "bn.pt"
    save_behavenet(model, ckpt, meta={"postprocess": {"thresholds": None, "min_frames": [2, 2, 2], "fps": 25.0}})
    whole = _behave_all(tmp_path, "whole", store, ckpt, [0, T])
    split = _behave_all(tmp_path, "split", store, ckpt, [0, 17, 21, T])  # borders inside runs and inside the gap
    assert whole.shape == (T, 2, 3) and np.isnan(whole[15:19, 1]).all() and np.isfinite(whole[:, 0]).all()
    np.testing.assert_allclose(split, whole, atol=1e-5, equal_nan=True)
    g = open_store(tmp_path / "split_1.zarr")
    assert g.attrs["halo"] == 3 and g.attrs["behaviour_names"] == ["still", "flicker", "long"]


def test_calls_bouts_and_table_columns(tmp_path):
    T = 12
    probs = np.full((T, 2, 2), np.nan, np.float32)
    # Slot 0: a 6-frame bout of "a", a 1-frame blip of "b", then "b"; slot 1 empty after frame 8.
    p0 = np.array([0.9] * 6 + [0.2] + [0.1] * 5)
    probs[:, 0, 0], probs[:, 0, 1] = p0, 1 - p0
    probs[:8, 1, 0], probs[:8, 1, 1] = 0.3, 0.7
    calls = behaviour_calls(probs, False, {"thresholds": None, "min_frames": [2, 2], "fps": 25.0}, 25.0)
    assert calls[:, 0, 0].tolist() == [True] * 6 + [False] * 6
    assert calls[:, 0, 1].tolist() == [False] * 6 + [True] * 6
    assert calls[:8, 1, 1].all() and not calls[8:, 1].any()
    # At half the training frame rate the minimum bout (2 frames at 25 fps) becomes 1 frame.
    blip = probs.copy()
    blip[6, 0] = [0.8, 0.2]
    kept = behaviour_calls(blip, False, {"min_frames": [2, 2], "fps": 50.0}, 25.0)
    assert kept[6, 0, 0]
    multi = behaviour_calls(probs, True, {"thresholds": [0.5, 0.95], "min_frames": [1, 1], "fps": 25.0}, 25.0)
    assert multi[:6, 0, 0].all() and not multi[:, :, 1].any()
    com = np.full((T, 2, 2), 5.0, np.float32)
    com[8:, 1] = np.nan
    fields = {"com": com, "box": np.zeros((T, 2, 4), np.float32), "area": np.where(np.isnan(com[..., 0]), np.nan, 9.0),
              "score": np.ones((T, 2), np.float32), "flags": np.zeros((T, 2), np.uint8), "n_found": np.full(T, 2)}
    store = write_store(tmp_path / "v.zarr", {k: spec_field(k, v, "animal") for k, v in fields.items()},
                        {"n_frames": T, "n_animals": 2})
    table = animal_table(store, "v", 25.0, behaviour=(probs, calls, ["a", "b"]))
    assert list(table.columns[-4:]) == ["a_prob", "a", "b_prob", "b"]
    bouts = bout_table(table, ["a", "b"], 25.0)
    first = bouts[bouts["animal"] == "animal_0"]
    assert first[["behaviour", "start", "stop"]].values.tolist() == [["a", 0, 6], ["b", 6, 12]]
    assert bouts.loc[bouts["animal"] == "animal_1", "stop"].tolist() == [8]
    np.testing.assert_allclose(first["duration_s"], [0.24, 0.24])


def test_train_behavenet_from_a_tracked_store(tmp_path):
    """run_train_behavenet: labels matched to slots by position, checkpoint with postprocessing, then behave."""
    from sipec_models.training.behaviour import run_train_behavenet

    names = ["still", "flicker", "long"]
    data = _synthetic(2, 180, seed=0)
    T = 180
    crops = data.crops.reshape(2, T, *data.crops.shape[1:]).transpose(1, 0, 2, 3).copy()
    labels = data.labels.reshape(2, T).T
    com = np.stack([np.full((T, 2), 20.0), np.full((T, 2), 80.0)], 1)
    store = _store(tmp_path / "v.zarr", crops, com)
    rows = [{"frame": t, "animal": f"m{a}", **{n: int(labels[t, a] == k) for k, n in enumerate(names)}}
            for t in range(T) for a in range(2)]
    pos = [{"frame": t, "animal": f"m{a}", "x": 20.0 + 60 * a, "y": 20.0 + 60 * a} for t in range(T) for a in range(2)]
    src = {"video": "v", "store": str(store), "labels": str(_labels_csv(tmp_path / "b.csv", rows)),
           "format": "frames", "positions": str(_labels_csv(tmp_path / "p.csv", pos)), "frames": None}
    torch.set_num_threads(1)
    model = run_train_behavenet([src], tmp_path / "bn.pt", overrides=[*TINY, "tcn.motion_input=true"],
                                metrics_out=tmp_path / "m.json",
                                progress=False)
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["names"] == names and meta["n_labelled"] == 2 * T and len(meta["postprocess"]["min_frames"]) == 3
    assert model.names == names
    probs = _behave_all(tmp_path, "b", store, tmp_path / "bn.pt", [0, T])
    acc = (probs.argmax(-1) == labels).mean()
    assert acc > np.bincount(labels.ravel()).max() / labels.size + 0.2, acc


def _pose_video(tmp_path, T=300, seed=0):
    """Two animals that alternate moving (behaviour ``move``) and resting (``rest``) in bouts of 20-40 frames;
    slot 1 is empty for frames 100-109. Returns the store, pose chunk stores, labels and positions CSVs, labels."""
    rng = np.random.default_rng(seed)
    nodes = ["nose", "left", "right", "tail"]
    body = np.array([[10.0, 0], [4, -3], [4, 3], [-10, 0]])
    labels = np.zeros((T, 2), np.int64)
    points = np.zeros((T, 2, 4, 2))
    for a in range(2):
        pos, t = np.array([60.0 + 100 * a, 60.0]), 0
        while t < T:
            n, b = int(rng.integers(20, 40)), int(rng.integers(0, 2))
            for i in range(min(n, T - t)):
                if b == 0:
                    pos = pos + np.array([2.0 * np.cos(t / 15), 2.0 * np.sin(t / 15)])
                labels[t + i, a] = b
                points[t + i, a] = pos + body + rng.normal(0, 0.3, body.shape)
            t += n
    com = points.mean(2)
    points[100:110, 1] = np.nan
    com[100:110, 1] = np.nan
    crops = np.zeros((T, 2, 8, 8), np.uint8)
    store = _store(tmp_path / "v.zarr", crops, com)
    conf = np.where(np.isnan(points[..., 0]), np.nan, 0.9).astype(np.float32)
    pose = []
    for i, (s, e) in enumerate([(0, 150), (150, T)]):
        fields = {"keypoints": points[s:e].astype(np.float32), "keypoint_confidence": conf[s:e]}
        pose.append(str(write_store(tmp_path / f"pose_{i}.zarr",
                                    {k: spec_field(k, v, "animal") for k, v in fields.items()},
                                    {"frame_start": s, "frame_stop": e, "node_names": nodes})))
    rows = [{"frame": t, "animal": f"m{a}", "move": int(labels[t, a] == 0), "rest": int(labels[t, a] == 1)}
            for t in range(T) for a in range(2) if not (a == 1 and 100 <= t < 110)]
    pos = [{"frame": t, "animal": f"m{a}", "x": com[t, a, 0], "y": com[t, a, 1]} for t in range(T) for a in range(2)
           if np.isfinite(com[t, a]).all()]
    return store, pose, _labels_csv(tmp_path / "b.csv", rows), _labels_csv(tmp_path / "p.csv", pos), labels


POSE_TINY = ["features.body_axis=[tail,nose]", "features.half_width=4", "model.hidden=[32,16]", "train.max_epochs=30",
             "train.patience=30", "postprocess.tune_on=validation", "train.refit=false", "train.num_threads=1"]


def test_pose_classifier_rules_train_and_ignore_chunk_borders(tmp_path):
    from sipec_models.training.behaviour import run_train_pose_classifier

    store, pose, labels_csv, pos_csv, labels = _pose_video(tmp_path)
    src = {"video": "v", "store": str(store), "pose": pose, "px_per_cm": 10.0, "labels": str(labels_csv),
           "format": "frames", "positions": str(pos_csv), "frames": None}
    model = run_train_pose_classifier([src], tmp_path / "pc.pt", overrides=POSE_TINY, max_distance=5,
                                      metrics_out=tmp_path / "m.json")
    assert list(model.names) == ["move", "rest"]
    assert json.loads((tmp_path / "m.json").read_text())["n_labelled"] > 500

    def behave(name, bounds):
        plan = _plan(tmp_path / f"{name}.json", bounds)
        return np.concatenate([open_store(run_behave(store, plan, c, tmp_path / "pc.pt", tmp_path / f"{name}{c}.zarr",
                                                     pose=pose, px_per_cm=10.0))["behaviour_prob"][...]
                               for c in range(len(bounds) - 1)])

    whole = behave("whole", [0, 300])
    split = behave("split", [0, 103, 151, 300])
    np.testing.assert_allclose(split, whole, atol=1e-6, equal_nan=True)
    assert np.isnan(whole[100:110, 1]).all()
    ok = np.isfinite(whole).all(-1)
    acc = (whole.argmax(-1) == labels)[ok].mean()
    assert acc > 0.8, acc
    with pytest.raises(ValueError, match="px_per_cm"):
        run_behave(store, tmp_path / "whole.json", 0, tmp_path / "pc.pt", tmp_path / "x.zarr", pose=pose)

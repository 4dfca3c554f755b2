"""The pose part of the workflow: train_pose, pose per chunk, keypoint columns in the merged table, export.

The end-to-end run trains LEAP for a few steps on the demo's DeepLabCut labels (plumbing, not accuracy:
the short-training accuracy checks are in tests/test_pose.py) on one 100-frame demo video (2 chunks).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sipec_models.io.keypoints import load_keypoints
from sipec_models.io.store import dimension_names, open_store
from tests.workflow_helpers import SMALL_DEMO, run_snakemake, write_workdir

NODES = ["snout", "leftear", "rightear", "tailbase"]
LABELS = "resources/demo/arena_0/keypoints_dlc.csv"
TINY_LEAP = ["data.crop_size=48", "train.max_steps=3", "train.batch_size=4", "model.width_mult=0.25"]
POSE_DEMO = {
    **SMALL_DEMO,
    "demo": {**SMALL_DEMO["demo"], "n_videos": 1, "n_frames": 100},
    "segmentation": {"method": "classical", "crop_size": 48},
    "pose": {"enabled": True, "model": "leap", "labels": LABELS, "overrides": TINY_LEAP},
}


@pytest.fixture(scope="module")
def pose_run(tmp_path_factory):
    workdir = write_workdir(tmp_path_factory.mktemp("pose_run"), POSE_DEMO)
    result = run_snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stdout[-8000:]
    return workdir


def _table_arrays(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(T, A, K, 2)`` keypoints and ``(T, A, K)`` confidences of a per-animal table, animals in table order."""
    animals = list(dict.fromkeys(table["animal"]))
    T, A, K = table["frame"].nunique(), len(animals), len(NODES)
    assert (table["animal"].to_numpy() == np.tile(animals, T)).all()  # rows: frame by frame, animals in order
    xy = np.stack([table[[f"{n}_x" for n in NODES]].to_numpy(float),
                   table[[f"{n}_y" for n in NODES]].to_numpy(float)], -1)
    return xy.reshape(T, A, K, 2), table[[f"{n}_conf" for n in NODES]].to_numpy(float).reshape(T, A, K), animals


def _as_arrays(labels, animals: list[str], n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    points = np.full((n_frames, len(animals), len(NODES), 2), np.nan)
    scores = np.full((n_frames, len(animals), len(NODES)), np.nan)
    for f in labels.frames:
        for p, s, track in zip(f.points, f.scores, f.tracks):
            points[f.frame, animals.index(track)] = p
            scores[f.frame, animals.index(track)] = s
    return points, scores


@pytest.mark.slow
def test_pose_is_trained_and_run_per_chunk(pose_run):
    models = pose_run / "results/models"
    metrics = json.loads((models / "leap_training.json").read_text())
    assert metrics["model"] == "leap" and metrics["node_names"] == NODES and metrics["steps"] == 3
    assert metrics["n_frames"] == 10 and metrics["n_animals"] == 30  # every 10th of 100 frames, 3 animals
    assert np.isfinite(metrics["final_loss"]) and metrics["train_seconds"] > 0
    com = open_store(pose_run / "results/arena_0/arena_0.zarr")["com"][...]
    for c in range(2):
        store = open_store(pose_run / f"results/arena_0/pose/chunk_{c:04d}.zarr")
        kp, conf = store["keypoints"], store["keypoint_confidence"]
        assert kp.shape == (50, 3, 4, 2) and conf.shape == (50, 3, 4)
        assert kp.dtype == np.float32 and conf.dtype == np.float32
        assert dimension_names(kp) == ("frame", "animal", "keypoint", "xy") and kp.attrs["units"] == "px"
        assert dimension_names(conf) == ("frame", "animal", "keypoint")
        assert store.attrs["node_names"] == NODES and store.attrs["pose_model"] == "leap"
        assert store.attrs["flip_pairs"] == [[1, 2]]
        assert (store.attrs["frame_start"], store.attrs["frame_stop"]) == (50 * c, 50 * c + 50)
        # Empty slots (no centre of mass) stay NaN; animals get finite keypoints near their centre.
        present = np.isfinite(com[50 * c:50 * c + 50]).all(-1)
        assert present.mean() > 0.9
        kp, conf = kp[...], conf[...]
        assert np.isfinite(kp[present]).all() and np.isnan(kp[~present]).all()
        assert ((conf[present] >= 0) & (conf[present] <= 1)).all()
        near = np.linalg.norm(kp - com[50 * c:50 * c + 50, :, None], axis=-1)[present]
        assert (near <= 48).all()  # inside the 48 px crop around the centre


@pytest.mark.slow
def test_merged_table_has_keypoint_columns(pose_run):
    table = pd.read_parquet(pose_run / "results/arena_0/animals.parquet")
    assert len(table) == 100 * 3
    cols = [f"{n}{s}" for n in NODES for s in ("_x", "_y", "_conf")]
    assert list(table.columns[-len(cols):]) == cols
    assert pd.read_csv(pose_run / "results/arena_0/animals.csv").shape == table.shape
    # Keyed like the other columns: each row's keypoints are the pose store's for that frame and slot.
    points, conf, animals = _table_arrays(table)
    assert animals == ["animal_0", "animal_1", "animal_2"]
    store = np.concatenate([open_store(pose_run / f"results/arena_0/pose/chunk_{c:04d}.zarr")["keypoints"][...]
                            for c in range(2)])
    np.testing.assert_allclose(points, store, rtol=0, atol=1e-4, equal_nan=True)
    assert np.isnan(points[~table["detected"].to_numpy().reshape(100, 3)]).all()


@pytest.mark.slow
def test_exports_load_back_equal_to_the_table(pose_run):
    table = pd.read_parquet(pose_run / "results/arena_0/animals.parquet")
    points, conf, animals = _table_arrays(table)
    video = pose_run / "resources/demo/arena_0.mp4"
    slp = load_keypoints(pose_run / "results/arena_0/pose.slp")
    dlc = load_keypoints(pose_run / "results/arena_0/pose_dlc.csv", video=video)
    for labels, atol in ((slp, 1e-3), (dlc, 1e-6)):  # .slp stores float32
        assert labels.skeleton.nodes == NODES and labels.skeleton.flip_pairs == [(1, 2)]
        assert set(labels.track_names) == set(animals)
        assert {str(f.video) for f in labels.frames} == {str(video.resolve())}
        got, scores = _as_arrays(labels, animals, 100)
        np.testing.assert_allclose(got, points, rtol=0, atol=atol, equal_nan=True)
        np.testing.assert_allclose(scores, conf, rtol=0, atol=atol, equal_nan=True)
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(pose_run / "results/arena_0/pose.nwb"), "r") as io:
        behavior = io.read().processing["behavior"]
        for a, animal in enumerate(animals):
            series = behavior[animal].pose_estimation_series
            assert sorted(series) == sorted(NODES)
            for k, node in enumerate(NODES):
                n = len(series[node].data[:])
                np.testing.assert_allclose(series[node].data[:], points[:n, a, k], rtol=0, atol=1e-3, equal_nan=True)
                np.testing.assert_allclose(series[node].confidence[:], conf[:n, a, k], rtol=0, atol=1e-3,
                                           equal_nan=True)


def test_table_keypoints_follow_identity(tmp_path):
    """With identities, each row's keypoints are those of the slot holding that identity in that frame."""
    from sipec_models.io.store import spec_field, write_store
    from sipec_models.tables import animal_table, pose_labels

    T, A, K = 3, 2, 2
    rng = np.random.default_rng(0)
    com = rng.uniform(10, 50, (T, A, 2)).astype(np.float32)
    com[2, 1] = np.nan
    fields = {"com": com, "box": np.zeros((T, A, 4), np.float32), "area": np.where(np.isnan(com[..., 0]), np.nan, 9.0),
              "score": np.ones((T, A), np.float32), "flags": np.zeros((T, A), np.uint8), "n_found": np.full(T, 2)}
    store = write_store(tmp_path / "v.zarr", {k: spec_field(k, v, "animal") for k, v in fields.items()},
                        {"n_frames": T, "n_animals": A})
    kp = com[:, :, None] + np.arange(K)[None, None, :, None]  # node k at the centre + k px
    conf = np.full((T, A, K), 0.5, np.float32)
    conf[2, 1] = np.nan
    assignment = np.array([[0, 1], [1, 0], [1, -1]])  # slots swap identities in frame 1; frame 2 slot 1 empty
    table = animal_table(store, "v", 25.0, identity=(assignment, np.ones((T, A)), ["a", "b"]),
                         pose=(kp, conf, ["head", "tail"]))
    assert list(table.columns[-6:]) == ["head_x", "head_y", "head_conf", "tail_x", "tail_y", "tail_conf"]
    row = table.set_index(["frame", "animal"])
    np.testing.assert_allclose(row.loc[(1, "a"), ["x", "y"]].to_numpy(float), com[1, 1])
    np.testing.assert_allclose(row.loc[(1, "a"), ["head_x", "head_y"]].to_numpy(float), com[1, 1])
    np.testing.assert_allclose(row.loc[(1, "a"), ["tail_x", "tail_y"]].to_numpy(float), com[1, 1] + 1)
    np.testing.assert_allclose(row.loc[(2, "b"), ["head_x", "head_y"]].to_numpy(float), com[2, 0])
    assert np.isnan(row.loc[(2, "a"), ["head_x", "tail_y", "head_conf"]].to_numpy(float)).all()
    labels = pose_labels(table, tmp_path / "v.mp4")
    assert labels.track_names == ["a", "b"] and [len(f.points) for f in labels.frames] == [2, 2, 1]


def test_checkpoint_that_does_not_fit_names_the_file(tmp_path):
    import torch

    from sipec_models.inference.pose import run_pose
    from sipec_models.training.config import load_model_config, to_dict
    from sipec_models.training.pose import build_pose_model, save_pose

    cfg = to_dict(load_model_config("leap", ["model.width_mult=0.125"]))
    net = build_pose_model(cfg, 3)
    net.config, net.node_names = cfg, ["a", "b", "c"]
    path = tmp_path / "leap.pt"
    save_pose(net, path)
    payload = torch.load(path, weights_only=False)
    payload["config"]["data"]["rgb"] = True  # the weights are for grey crops
    torch.save(payload, path)
    with pytest.raises(ValueError, match=f"{path}: weights do not fit its config \\(leap, 3 keypoints, RGB input\\)"):
        run_pose(tmp_path / "v.mp4", tmp_path / "v.zarr", tmp_path / "plan.json", 0, path, tmp_path / "out.zarr")
    payload["config"]["data"]["rgb"] = False
    payload["node_names"] = ["a", "b"]
    torch.save(payload, path)
    with pytest.raises(ValueError, match=f"{path}: names 2 nodes .* but its network has 3 keypoints"):
        run_pose(tmp_path / "v.mp4", tmp_path / "v.zarr", tmp_path / "plan.json", 0, path, tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("pose,message", [
    ({"enabled": True}, "pose.enabled is true but neither pose.checkpoint"),
    ({"enabled": True, "model": "hrnet", "labels": LABELS},
     "pose.model must be one of ['posenet', 'leap'], got 'hrnet'"),
    ({"enabled": True, "checkpoint": "models/missing.pt"}, "pose.checkpoint: models/missing.pt: file does not exist"),
    ({"enabled": True, "labels": "labels/missing.slp"}, "pose.labels: labels/missing.slp: file does not exist"),
    ({"enabled": True, "labels": LABELS, "video": "arena_9"}, "pose.video: 'arena_9' is neither a video id"),
])
def test_bad_pose_config_stops_before_any_job(tmp_path, pose, message):
    result = run_snakemake(write_workdir(tmp_path, {**SMALL_DEMO, "pose": pose}), "--cores", "1", "--dry-run")
    assert result.returncode != 0
    assert message in result.stdout, result.stdout[-3000:]


def test_a_configured_checkpoint_skips_training(tmp_path):
    (tmp_path / "leap.pt").write_bytes(b"")  # the dry run only needs the file to exist
    config = {**SMALL_DEMO, "pose": {"enabled": True, "model": "leap", "checkpoint": str(tmp_path / "leap.pt")}}
    result = run_snakemake(write_workdir(tmp_path / "run", config), "--cores", "1", "--dry-run")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "rule train_pose" not in result.stdout and "train_pose" not in result.stdout
    assert "export_pose" in result.stdout


def test_pose_evaluation_rules_write_cv_ablation_and_figure(tmp_path):
    """`evaluate`'s pose part: one k-fold job per network, the ablation rows, and the figure (plumbing: 3 steps)."""
    config = {**SMALL_DEMO, "pose": {"enabled": False, "labels": LABELS},
              "evaluation": {"folds": 2, "pose_models": {"leap": TINY_LEAP}, "pose_label_counts": [3], "pose_ablation_folds": 1,
                             "identity_truth": {}}}
    workdir = write_workdir(tmp_path, config)
    result = run_snakemake(workdir, "--cores", "2", "results/evaluation/pose_ablation.png")
    assert result.returncode == 0, result.stdout[-8000:]
    evaluation = workdir / "results/evaluation"
    cv, ablation = pd.read_csv(evaluation / "pose_leap_cv.csv"), pd.read_csv(evaluation / "pose_leap_ablation.csv")
    n_labelled = len(load_keypoints(workdir / LABELS).frames)
    assert cv["fold"].tolist() == [0, 1] and (cv["model"] == "leap").all()
    # Two contiguous time blocks: each frame is tested once, trained on the other block.
    assert cv["n_train"].sum() == n_labelled and sorted(cv["n_train"]) == sorted(cv["n_test_frames"])
    assert ablation.groupby("fold")["n_train"].apply(list).tolist() == [[3, cv["n_train"][0]], [cv["n_train"][1]]]
    assert ablation["full"].tolist() == [False, True, True]  # the ablation subset in fold 0 only
    for col in ("rmse", "median", "chance_rmse", "chance_median"):
        assert (ablation[col] > 0).all() and np.isfinite(ablation[col]).all()
    assert ablation[["pck", "chance"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (evaluation / "pose_ablation.png").stat().st_size > 1000


@pytest.mark.parametrize("evaluation,pose,message", [
    ({"pose_models": {"leap": []}}, {"labels": None}, "evaluation.pose_models is set but pose.labels"),
    ({"pose_models": {"hrnet": []}}, {"labels": LABELS}, "hrnet"),
    ({"pose_models": {"leap": []}}, {"labels": "labels/missing.slp"}, "pose.labels: labels/missing.slp: file does"),
])
def test_bad_pose_evaluation_config_stops_before_any_job(tmp_path, evaluation, pose, message):
    config = {**SMALL_DEMO, "pose": pose, "evaluation": evaluation}
    result = run_snakemake(write_workdir(tmp_path, config), "--cores", "1", "--dry-run", "evaluate")
    assert result.returncode != 0
    assert message in result.stdout, result.stdout[-3000:]


def test_ablation_curve_uses_the_same_folds_at_every_point():
    from sipec_models.evaluation import comparable_ablation

    table = pd.DataFrame({"model": "leap", "fold": [0, 0, 1, 1, 2], "n_train": [10, 92, 10, 93, 93],
                          "full": [False, True, False, True, True], "pck": [0.5, 0.9, 0.6, 0.8, 0.1]})
    t = comparable_ablation(table)
    assert t["fold"].tolist() == [0, 0, 1, 1] and t["n_train"].tolist() == [10, 92, 10, 92]
    assert comparable_ablation(table[table["full"]]).equals(table[table["full"]])  # no ablation: unchanged

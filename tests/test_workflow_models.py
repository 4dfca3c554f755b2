"""The workflow with trained models (small demo).

IdNet is trained by the workflow itself (train_idnet) on arena_0 for seconds, on top of the classical
segmenter, and identities are scored on arena_1, which IdNet never saw; social events are on; a tiny
BehaveNet is trained on arena_0's behaviour labels (train_behaviour) and run per chunk (behave). SegNet is
trained with `sipec train-segnet` (a few steps: plumbing, not quality) and then used by the segment rule.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sipec_models.io.store import open_store
from tests.workflow_helpers import SMALL_DEMO, run_snakemake, write_workdir

MODELS_DEMO = {
    **SMALL_DEMO,
    "segmentation": {"method": "classical", "crop_size": 48},
    "identification": {
        "enabled": True,
        "labels": [{"video": "arena_0", "labels": "resources/demo/arena_0/identities.csv"}],
        "overrides": ["crop.window=48", "crop.out_size=32", "train.epochs=10", "recurrent_train.epochs=3"],
    },
    "social": {"enabled": True, "dilation_px": 4},
    "behaviour": {
        "enabled": True,
        "labels": [{"video": "arena_0", "labels": "resources/demo/arena_0/behaviour.csv",
                    "positions": "resources/demo/arena_0/centroids.csv"}],
        "behaviours": ["walk", "pause", "rear", "groom"],
        "max_distance": 10,
        "overrides": ["data.crop_size=32", "frame_net.width_mult=0.25", "frame_net.middle_blocks=1",
                      "frame_train.epochs=2", "tcn.half_window=3", "tcn.channels=[16]", "tcn_train.epochs=15",
                      "tcn.motion_input=true"],
        "social": {
            "enabled": True,
            "labels": [{"video": "arena_0", "labels": "resources/demo/arena_0/social.csv",
                        "positions": "resources/demo/arena_0/centroids.csv"}],
            "behaviours": ["touch"],
            "overrides": ["data.crop_size=32", "frame_net.width_mult=0.25", "frame_net.middle_blocks=1",
                          "frame_train.epochs=2", "tcn.half_window=3", "tcn.channels=[16]", "tcn_train.epochs=5"],
        },
    },
    "position3d": {
        "enabled": True,
        "labels": [{"video": "arena_0", "labels": "resources/demo/arena_0/positions_3d.csv",
                    "positions": "resources/demo/arena_0/centroids.csv"}],
    },
    "evaluation": {"identity_truth": {"arena_1": "resources/demo/arena_1/identities.csv"},
                   "idnet_label_counts": [4], "idnet_repeats": 2},
    "cv": {"models": {"behavenet": []}, "scheme": "time_blocks", "folds": 2, "purge_frames": 5},
}
NAMES = {"dark", "stripe", "spot"}


@pytest.fixture(scope="module")
def models_run(tmp_path_factory):
    workdir = write_workdir(tmp_path_factory.mktemp("models_run"), MODELS_DEMO)
    result = run_snakemake(workdir, "--cores", "2", "all", "results/evaluation/identity_arena_1.json")
    assert result.returncode == 0, result.stdout[-8000:]
    return workdir


@pytest.mark.slow
def test_idnet_is_trained_and_used(models_run):
    for name in ("idnet.pt", "idnet_training.json"):
        assert (models_run / "results/models" / name).is_file(), name
    ident = open_store(models_run / "results/arena_1/identify/chunk_0002.zarr")
    prob = ident["identity_prob"][...]
    assert set(ident.attrs["identity_names"]) == NAMES
    ok = np.isfinite(prob).all(axis=2)
    assert ok.mean() > 0.8
    np.testing.assert_allclose(prob[ok].sum(axis=1), 1.0, atol=1e-4)


@pytest.mark.slow
def test_tables_are_keyed_by_identity(models_run):
    table = pd.read_csv(models_run / "results/arena_1/animals.csv")
    assert set(table["animal"]) == NAMES
    assert {"track", "identity_prob", "social_partners"} <= set(table.columns)
    assert len(table) == 150 * 3
    # One identity per animal per frame: never two rows of a frame at the same place.
    detected = table[table["detected"]]
    assert not detected.duplicated(["frame", "x", "y"]).any()
    assert detected["identity_prob"].between(0, 1).all()


@pytest.mark.slow
def test_identity_accuracy_beats_chance_on_an_unseen_video(models_run):
    result = json.loads((models_run / "results/evaluation/identity_arena_1.json").read_text())
    assert result["n_labels_matched"] > 0.8 * result["n_labels"]
    for key in ("smoothing_none", "smoothing_track"):
        r = result[key]
        assert r["accuracy"] > r["chance"] + 0.2, result


@pytest.mark.slow
def test_idnet_label_count_ablation_scores_unseen_frames(models_run):
    """evaluate_idnet: IdNet trained on subsets of arena_0's labelled frames, scored on arena_1 (never seen)."""
    result = run_snakemake(models_run, "--cores", "2", "results/evaluation/idnet_ablation.csv")
    assert result.returncode == 0, result.stdout[-6000:]
    table = pd.read_csv(models_run / "results/evaluation/idnet_ablation.csv")
    assert sorted(table["n_train"].unique()) == [4, 150]
    assert (table.groupby("n_train")["repeat"].nunique().to_dict()) == {4: 2, 150: 1}
    assert table["n_labels"].between(2 * table["n_train"], 3 * table["n_train"]).all()
    assert (table["video"] == "arena_1").all()
    assert table["n_test"].iloc[0] > 0.8 * 3 * 150
    full = table[table["full"]].iloc[0]
    assert full["accuracy"] > full["chance"] + 0.2, table
    assert table["chance"].between(0.2, 0.5).all(), table
    assert (models_run / "results/evaluation/idnet_ablation.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_idnet_ablation_refuses_test_frames_it_trained_on(models_run):
    from sipec_models.evaluation import run_evaluate_idnet_ablation

    src = {"video": str(models_run / "resources/demo/arena_0.mp4"),
           "store": str(models_run / "results/arena_0/arena_0.zarr"),
           "labels": str(models_run / "resources/demo/arena_0/identities.csv"), "format": "table", "frames": None}
    test = {"video_id": "arena_0", "video": src["video"], "store": src["store"], "truth": src["labels"]}
    with pytest.raises(ValueError, match="no labelled frame left outside the training frames of arena_0"):
        run_evaluate_idnet_ablation([src], [test], label_counts=[2], repeats=1,
                                    overrides=["crop.window=48", "crop.out_size=32", "train.epochs=1"])


@pytest.mark.slow
def test_social_events_table(models_run):
    events = pd.read_csv(models_run / "results/arena_0/social_events.csv")
    assert list(events.columns) == ["video", "animal_a", "animal_b", "start_frame", "stop_frame", "n_frames",
                                    "start_s", "duration_s", "mean_overlap", "max_overlap",
                                    "touch_prob", "background_prob", "behaviour"]  # the last three: pair behaviour
    truth = pd.read_csv(models_run / "resources/demo/arena_0/behaviour.csv")
    if len(events):
        assert set(events["animal_a"]) | set(events["animal_b"]) <= NAMES
        assert (events["stop_frame"] > events["start_frame"]).all()
    # The demo's animals touch ("touch" behaviour) in some frames: those must show up as events.
    if "touch" in truth.columns and truth["touch"].any():
        assert len(events) > 0
    social = open_store(models_run / "results/arena_0/social/chunk_0000.zarr")
    assert social.attrs["pairs"] == [[0, 1], [0, 2], [1, 2]]
    assert social["pair_crop"].shape[2:] == (128, 128)


@pytest.mark.slow
def test_segment_rule_uses_a_trained_segnet(models_run, tmp_path):
    """`sipec train-segnet` writes a checkpoint; with segmentation.method segnet the segment rule uses it."""
    from sipec_models.cli import main

    model = tmp_path / "segnet.pt"
    demo = models_run / "resources/demo"
    rc = main(["train-segnet", "--labels", str(demo / "arena_0/masks_coco.json"), "--video", str(demo / "arena_0.mp4"),
               "--frames", "0", "40", "--overrides", "train.max_steps=4", "data.crop_size=64", "train.batch_size=2",
               "model.pretrained=false", "--metrics", str(tmp_path / "m.json"), "--out", str(model)])
    assert rc == 0 and model.is_file()
    assert json.loads((tmp_path / "m.json").read_text())["n_train_frames"] == 40
    config = {**SMALL_DEMO, "demo": {**SMALL_DEMO["demo"], "outdir": str(demo), "n_videos": 1},
              "segmentation": {"method": "segnet", "crop_size": 48, "segnet": {"model": str(model)}}}
    workdir = write_workdir(tmp_path / "segnet_run", config)
    result = run_snakemake(workdir, "--cores", "2", "results/arena_0/animals.csv")
    assert result.returncode == 0, result.stdout[-6000:]
    assert "rule train_segnet" not in result.stdout and "rule background" not in result.stdout
    store = open_store(workdir / "results/arena_0/segment/chunk_0000.zarr")
    assert store.attrs["segmenter"] == "segnet"
    assert store.attrs["provenance"]["config"]["segmentation"]["segnet"]["model"] == str(model)
    assert open_store(workdir / "results/arena_0/arena_0.zarr")["box"].shape == (150, 3, 4)


@pytest.mark.slow
def test_behaviour_is_trained_run_per_chunk_and_merged(models_run):
    meta = json.loads((models_run / "results/models/behavenet_training.json").read_text())
    assert meta["names"] == ["walk", "pause", "rear", "groom"] and meta["n_labelled"] > 0.9 * 150 * 3
    chunk = open_store(models_run / "results/arena_1/behave/chunk_0001.zarr")
    assert chunk.attrs["halo"] == 3 and chunk.attrs["behaviour_model"] == "behavenet"
    assert chunk["behaviour_prob"].shape == (50, 3, 4)
    table = pd.read_parquet(models_run / "results/arena_1/animals.parquet")
    cols = [c for b in meta["names"] for c in (f"{b}_prob", b)]
    assert set(cols) <= set(table.columns)
    detected = table[table["detected"]]
    probs = detected[[f"{b}_prob" for b in meta["names"]]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    # Exclusive behaviours: at most one call per animal and frame.
    assert (table[meta["names"]].sum(axis=1) <= 1).all()
    bouts = pd.read_csv(models_run / "results/arena_1/bouts.csv")
    assert list(bouts.columns) == ["video", "animal", "behaviour", "start", "stop", "n_frames", "start_s", "stop_s",
                                   "duration_s"]
    assert set(bouts["animal"]) <= NAMES and (bouts["stop"] > bouts["start"]).all()
    assert (models_run / "results/arena_1/ethogram.png").stat().st_size > 0


@pytest.mark.slow
def test_pair_behaviour_is_trained_run_per_chunk_and_merged(models_run):
    meta = json.loads((models_run / "results/models/behavenet_pairs_training.json").read_text())
    assert meta["input"] == "pair" and meta["names"] == ["touch", "background"] and meta["n_labelled"] > 0
    chunk = open_store(models_run / "results/arena_1/behave_pairs/chunk_0001.zarr")
    assert chunk.attrs["behaviour_model"] == "behavenet_pairs" and chunk.attrs["pairs"] == [[0, 1], [0, 2], [1, 2]]
    assert chunk["behaviour_prob"].shape == (50, 3, 2)
    social = open_store(models_run / "results/arena_1/social/chunk_0001.zarr")
    np.testing.assert_array_equal(np.isfinite(chunk["behaviour_prob"][...]).all(-1), social["pair_event"][...])
    pairs = pd.read_csv(models_run / "results/arena_1/pair_behaviour.csv")
    assert list(pairs.columns) == ["video", "frame", "time_s", "animal_a", "animal_b", "touch_prob", "touch",
                                   "background_prob", "background"]
    assert set(pairs["animal_a"]) | set(pairs["animal_b"]) <= NAMES and len(pairs) > 0
    events = pd.read_csv(models_run / "results/arena_1/social_events.csv", keep_default_na=False)
    assert {"touch_prob", "background_prob", "behaviour"} <= set(events.columns)
    assert set(events["behaviour"]) <= {"touch", "background", ""}


@pytest.mark.slow
def test_tiny_behavenet_beats_chance_on_the_unseen_video(models_run):
    """Frame accuracy of the behave probabilities on arena_1 (never trained on) against circularly shifted labels."""
    from sipec_models.behaviour_data import slot_labels
    from sipec_models.behaviour_metrics import circular_shift_chance, frame_accuracy
    from sipec_models.tables import read_behaviour_chunks

    store = open_store(models_run / "results/arena_1/arena_1.zarr")
    probs, names, _ = read_behaviour_chunks(sorted((models_run / "results/arena_1/behave").glob("chunk_*.zarr")), 150)
    demo = models_run / "resources/demo/arena_1"
    y, _ = slot_labels(demo / "behaviour.csv", store["com"][...], positions=demo / "centroids.csv", behaviours=names,
                       max_distance=10)
    ok = (np.isfinite(y).all(-1) & np.isfinite(probs).all(-1)).T  # (slot, frame): slot-major, time order
    yy, pp = y.transpose(1, 0, 2)[ok], probs.transpose(1, 0, 2)[ok]
    slot = np.repeat(np.arange(ok.shape[0]), ok.shape[1])[ok.ravel()]
    acc = frame_accuracy(yy, pp)
    chance = circular_shift_chance(yy, pp, video_ids=slot, score_fn=frame_accuracy, n_shifts=50)
    assert ok.sum() > 0.9 * 450 and acc > chance["mean"] + 0.1, (acc, chance["mean"])


@pytest.mark.parametrize("behaviour, message", [
    ({"enabled": True, "labels": [{"video": "nope", "labels": "x.csv"}]}, "video 'nope' is not in"),
    ({"enabled": True, "model": "pose_classifier", "labels": [{"video": "arena_0", "labels": "x.csv"}]},
     "needs keypoints"),
    ({"enabled": True}, "neither behaviour.checkpoint nor behaviour.labels"),
    ({"enabled": True, "labels": [{"video": "arena_0", "labels": "missing.csv"}]}, "missing.csv: file does not exist"),
    ({"enabled": True, "modle": "behavenet"}, "modle"),
])
def test_bad_behaviour_config_stops_before_any_job(tmp_path, behaviour, message):
    result = run_snakemake(write_workdir(tmp_path, {**SMALL_DEMO, "behaviour": behaviour}), "--cores", "1", "--dry-run")
    assert result.returncode != 0
    assert message in result.stdout, result.stdout[-3000:]


def test_position3d_is_trained_cross_validated_and_merged(models_run):
    """Trained on arena_0's rendered 3D positions, the regressor places arena_1's animals (keyed by identity)."""
    cv = json.loads((models_run / "results/models/position3d_cv.json").read_text())
    assert cv["unit"] == "mm" and cv["folds"] == 10
    for axis in ("X", "Y"):
        assert cv["rmse"][axis] < 0.2 * cv["rmse_mean_baseline"][axis], cv
    table = pd.read_parquet(models_run / "results/arena_1/animals.parquet")
    cols = list(table.columns)
    assert cols[cols.index("area") + 1:cols.index("area") + 4] == ["X_mm", "Y_mm", "Z_mm"]
    assert table.loc[~table["detected"], "X_mm"].isna().all()
    truth = pd.read_csv(models_run / "resources/demo/arena_1/positions_3d.csv")
    both = table.merge(truth, on=["frame", "animal"], suffixes=("", "_true")).dropna(subset=["X_mm"])
    assert len(both) > 0.8 * len(truth)
    train = pd.read_csv(models_run / "resources/demo/arena_0/positions_3d.csv")
    for axis in ("X", "Y"):
        rmse = np.sqrt(np.median((both[f"{axis}_mm"] - both[f"{axis}_mm_true"]) ** 2))
        baseline = np.sqrt(np.median((both[f"{axis}_mm_true"] - train[f"{axis}_mm"].mean()) ** 2))
        assert rmse < 0.2 * baseline, (axis, rmse, baseline)


def test_cv_target_trains_and_scores_each_fold(models_run):
    """`snakemake cv`: folds over arena_0's labelled frames, one BehaveNet per fold, the aggregate beside chance."""
    result = run_snakemake(models_run, "--cores", "2", "cv")
    assert result.returncode == 0, result.stdout[-6000:]
    folds = json.loads((models_run / "results/cv/folds.json").read_text())
    assert folds["scheme"] == "time_blocks" and len(folds["folds"]) == 2
    tested = sorted((r["start"], r["stop"]) for f in folds["folds"] for r in f["test"])
    assert tested == [(0, 75), (75, 150)]
    metrics = [json.loads((models_run / f"results/cv/behavenet/fold_{i}.json").read_text()) for i in (0, 1)]
    for m in metrics:
        assert m["n_test_animal_frames"] > 0.8 * 75 * 3
        assert 0 <= m["chance_macro_f1"]["mean"] < 0.5
    summary = pd.read_csv(models_run / "results/cv/summary.csv")
    row = summary[(summary["model"] == "behavenet") & (summary["score"] == "macro_f1")].iloc[0]
    assert row["n"] == 2 and row["mean"] == pytest.approx(np.mean([m["macro_f1"] for m in metrics]), abs=1e-4)
    assert row["mean"] > np.mean([m["chance_macro_f1"]["mean"] for m in metrics]), summary
    assert "Nothing to be done" in run_snakemake(models_run, "--cores", "1", "--dry-run", "cv").stdout


def test_figures_target_regenerates_the_configured_figures(models_run):
    """`snakemake figures`: every configured figure with its table, then nothing left to do."""
    result = run_snakemake(models_run, "--cores", "2", "figures")
    assert result.returncode == 0, result.stdout[-6000:]
    figures = models_run / "results/figures"
    for name in ("segmentation_identity", "position3d_error", "bout_statistics"):
        assert (figures / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
        assert len(pd.read_csv(figures / f"{name}.csv")) > 0, name
    ident = pd.read_csv(figures / "segmentation_identity.csv")
    assert set(ident.loc[ident["panel"] == "identity", "score"]) == {"accuracy_frame", "accuracy_track_smoothed",
                                                                     "chance"}
    ablation = ident[ident["panel"] == "idnet_accuracy"].pivot(index="x", columns="score", values="mean")
    assert sorted(int(x) for x in ablation.index) == [4, 150] and set(ablation.columns) == {"accuracy", "chance"}
    assert "Nothing to be done" in run_snakemake(models_run, "--cores", "1", "--dry-run", "figures").stdout


def test_tune_target_sweeps_behavenet_and_writes_a_usable_config(models_run, tmp_path):
    """`snakemake tune`: a Ray Tune sweep of BehaveNet's temporal stage on arena_0's labels inside one job; its
    best_config.yaml composes with the model config, and a second run does nothing."""
    import yaml

    from sipec_models.training.config import load_model_config

    overlay = tmp_path / "tune.yaml"
    overlay.write_text(yaml.safe_dump({"tuning": {"models": ["behavenet"], "num_samples": 3, "overrides": {
        "behavenet": ["tune.max_epochs=3", "tune.grace_period=1", "~tune.space",
                      "+tune.space={tcn_train.lr: {loguniform: [1e-4, 1e-2]}, tcn.dropout: {uniform: [0.0, 0.5]}}"]}}}))
    result = run_snakemake(models_run, "tune", "--cores", "2", "--configfile", str(overlay))  # target first
    assert result.returncode == 0, result.stdout[-6000:]
    out = models_run / "results/tune/behavenet"
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 3 and (trials["status"] == "ok").all(), trials
    assert trials.loc[0, "default"] and (trials["val_f1_fg"].between(0, 1)).all()
    config = yaml.safe_load((out / "best_config.yaml").read_text())
    assert config["behaviour"]["model"] == "behavenet"
    assert config["behaviour"]["overrides"][:len(MODELS_DEMO["behaviour"]["overrides"])] == \
        MODELS_DEMO["behaviour"]["overrides"]
    load_model_config("behavenet", config["behaviour"]["overrides"])
    again = run_snakemake(models_run, "tune", "--cores", "1", "--dry-run", "--configfile", str(overlay))
    assert "Nothing to be done" in again.stdout, again.stdout[-3000:]


@pytest.mark.parametrize("position3d, message", [
    ({"enabled": True}, "neither position3d.model"),
    ({"enabled": True, "labels": [{"video": "nope", "labels": "x.csv"}]}, "video 'nope' is not in"),
    ({"enabled": True, "labels": [{"video": "arena_0", "labels": "missing.csv"}]}, "missing.csv: file does not exist"),
])
def test_bad_position3d_config_stops_before_any_job(tmp_path, position3d, message):
    result = run_snakemake(write_workdir(tmp_path, {**SMALL_DEMO, "position3d": position3d}), "--cores", "1",
                           "--dry-run")
    assert result.returncode != 0 and message in result.stdout, result.stdout[-3000:]


def test_pair_behaviour_without_social_events_stops_before_any_job(tmp_path):
    behaviour = {"social": {"enabled": True, "labels": [{"video": "arena_0", "labels": "x.csv", "positions": "y.csv"}]}}
    config = {**SMALL_DEMO, "behaviour": behaviour, "social": {"enabled": False}}
    result = run_snakemake(write_workdir(tmp_path, config), "--cores", "1", "--dry-run")
    assert result.returncode != 0 and "social.enabled is false" in result.stdout, result.stdout[-3000:]


def test_segnet_without_labels_or_model_stops_before_any_job(tmp_path):
    config = {**SMALL_DEMO, "segmentation": {"method": "segnet"}}
    result = run_snakemake(write_workdir(tmp_path, config), "--cores", "1", "--dry-run")
    assert result.returncode != 0
    assert "neither segmentation.segnet.model" in result.stdout


def test_identification_with_unknown_video_stops_before_any_job(tmp_path):
    config = {**SMALL_DEMO, "identification": {"enabled": True, "labels": [{"video": "nope", "labels": "x.csv"}]}}
    result = run_snakemake(write_workdir(tmp_path, config), "--cores", "1", "--dry-run")
    assert result.returncode != 0
    assert "video 'nope' is not in" in result.stdout


@pytest.mark.slow
def test_deepethogram_replaces_behavenet_in_the_workflow(models_run, tmp_path):
    """behaviour.model: deepethogram on the same tracked demo: train_flow -> train_features -> extract_features
    -> train_sequence -> behave -> merge, reusing segmentation and tracking (a copy of the run's workdir)."""
    import shutil

    from tests.test_deepethogram_rules import TINY_DEG

    workdir = tmp_path / "deg"
    shutil.copytree(models_run, workdir, symlinks=True)
    config = {**MODELS_DEMO, "behaviour": {**MODELS_DEMO["behaviour"], "model": "deepethogram", "overrides": TINY_DEG,
                                           "social": {"enabled": False}}}
    write_workdir(workdir, config)
    result = run_snakemake(workdir, "--cores", "2", "all")
    assert result.returncode == 0, result.stdout[-8000:]
    for rule in ("train_flow", "train_features", "extract_features", "train_sequence", "behave", "merge"):
        assert f"rule {rule}:" in result.stdout, rule
    assert "rule segment:" not in result.stdout and "rule train_behavenet:" not in result.stdout
    models = workdir / "results/models"
    assert (models / "deg_flow.png").stat().st_size > 0
    meta = json.loads((models / "deepethogram_training.json").read_text())
    assert meta["names"] == ["walk", "pause", "rear", "groom"]
    chunk = open_store(workdir / "results/arena_1/behave/chunk_0001.zarr")
    assert chunk.attrs["behaviour_model"] == "deepethogram" and chunk["behaviour_prob"].shape == (50, 3, 4)
    features = open_store(workdir / "results/arena_1/deg_features/chunk_0001.zarr")
    assert features["deg_features"].shape == (50, 3, 1024)
    table = pd.read_parquet(workdir / "results/arena_1/animals.parquet")
    assert {"walk_prob", "walk", "groom_prob", "groom"} <= set(table.columns)

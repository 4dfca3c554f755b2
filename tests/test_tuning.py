"""Ray Tune sweeps (sipec_models.tuning): search-space parsing and typos, override strings, the data the trials
train on, and small real sweeps (random search with ASHA) whose best overrides compose with the model config."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from sipec_models.training.config import load_model_config
from sipec_models.tuning import (
    PoseSequences, format_override, parse_space, read_overrides, run_sweep, tune_settings,
)
from tests.test_pose_classifier import _still_or_moving

torch.set_num_threads(1)

SMALL = ["model.hidden=[32,16]", "features.half_width=5", "features.body_axis=[0,1]", "train.batch_size=128"]
SPACE = {"train.lr": {"loguniform": [1e-5, 1e-1]}, "model.dropout": {"uniform": [0.0, 0.5]},
         "model.hidden": {"choice": [[32, 16], [8]]}}


# --------------------------------------------------------------------------- search space


def test_shipped_space_parses_and_every_value_composes():
    cfg = load_model_config("pose_classifier")
    space = parse_space(cfg)
    assert list(space) == list(cfg.tune.space)
    assert space["train.lr"].kind == "loguniform" and space["train.lr"].args == (1e-4, 1e-2)
    assert space["model.hidden"].args[0] == [128, 64]
    s = tune_settings(cfg, ("val_f1_fg", "val_f1", "val_loss"))
    assert s["metric"] == "val_f1_fg" and s["mode"] == "max" and s["num_samples"] >= 8
    for key, d in space.items():
        values = d.args if d.kind == "choice" else d.args[:1]
        for v in values:
            c = load_model_config("pose_classifier", [d.override(d.encode(v))])
            got = c
            for part in key.split("."):
                got = got[part]
            got = list(got) if d.kind == "choice" and isinstance(v, list) else got
            assert got == pytest.approx(v) if isinstance(v, float) else got == v, (key, v, got)


@pytest.mark.parametrize("space, message", [
    ({"train.lrr": {"loguniform": [1e-4, 1e-2]}}, r"'train\.lrr' is not a key of the model config \(did you mean "
                                                   r"'train\.lr'"),
    ({"model.dropuot": {"uniform": [0.1, 0.5]}}, r"'model\.dropuot'.*did you mean 'model\.dropout'"),
    ({"train": {"uniform": [0, 1]}}, r"'train' is a section"),
    ({"tune.num_samples": {"choice": [4, 8]}}, "sweep's own settings"),
    ({"train.lr": {"logunifrom": [1e-4, 1e-2]}}, r"unknown distribution 'logunifrom' \(did you mean 'loguniform'"),
    ({"train.lr": {"loguniform": [0.0, 1e-2]}}, "low > 0"),
    ({"model.dropout": {"uniform": [0.6, 0.1]}}, "low < high"),
    ({"model.dropout": {"uniform": [0.1]}}, r"\[low, high\]"),
    ({"features.half_width": {"randint": [3.5, 9]}}, "integer bounds"),
    ({"train.gamma": [0, 1, 2]}, "expected one of"),
    ({"train.gamma": {"choice": []}}, "needs a list of values"),
    ({}, "empty"),
])
def test_space_errors_name_the_key(space, message):
    with pytest.raises(ValueError, match=message):
        parse_space(load_model_config("pose_classifier"), space)


def test_settings_errors():
    cfg = load_model_config("pose_classifier")
    metrics = ("val_f1_fg", "val_f1", "val_loss")
    with pytest.raises(ValueError, match=r"tune\.metric: 'val_acc' is not reported.*val_f1_fg"):
        tune_settings(cfg, metrics, metric="val_acc")
    with pytest.raises(ValueError, match="grace_period"):
        tune_settings(cfg, metrics, grace_period=50, max_epochs=10)
    with pytest.raises(ValueError, match="reduction_factor"):
        tune_settings(cfg, metrics, reduction_factor=1)
    with pytest.raises(ValueError, match="tune.mode"):
        tune_settings(cfg, metrics, mode="maximum")
    bad = load_model_config("pose_classifier", ["+tune.num_sampels=4"])
    with pytest.raises(ValueError, match="unknown setting.*num_sampels"):
        tune_settings(bad, metrics)


def test_override_strings_compose_to_the_values():
    assert format_override("train.lr", 0.00123456789) == "train.lr=0.001235"
    assert format_override("train.gamma", 3.0) == "train.gamma=3.0"
    assert format_override("train.lr", 1.5e-5) == "train.lr=1.5e-05"
    assert format_override("model.hidden", [64, 32]) == "model.hidden=[64,32]"
    assert format_override("model.batch_norm", True) == "model.batch_norm=true"
    assert format_override("features.centre", None) == "features.centre=null"
    assert format_override("features.body_axis", ["Tail base", "Nose"]) == "features.body_axis=['Tail base',Nose]"
    cfg = load_model_config("pose_classifier", [
        format_override("train.lr", 0.00123456789), format_override("train.gamma", 3.0),
        format_override("model.hidden", [64, 32]), format_override("model.batch_norm", True),
        format_override("features.body_axis", ["Tail base", "Nose"]), format_override("train.class_weight", "balanced")])
    assert cfg.train.lr == 0.001235 and isinstance(cfg.train.gamma, float) and cfg.train.gamma == 3.0
    assert list(cfg.model.hidden) == [64, 32] and cfg.model.batch_norm is True
    assert list(cfg.features.body_axis) == ["Tail base", "Nose"] and cfg.train.class_weight == "balanced"


# --------------------------------------------------------------------------- the trials' data


def test_pose_sequences_from_sources_train_as_the_workflow_does(tmp_path):
    """The sweep's trials train on exactly what `sipec train-pose-classifier` trains on (same per-epoch history)."""
    from sipec_models.training.behaviour import run_train_pose_classifier
    from sipec_models.training.pose_classifier import train_pose_classifier
    from sipec_models.tuning import pose_sequences_from_sources
    from tests.test_behaviour_rules import POSE_TINY, _pose_video

    store, pose, labels_csv, pos_csv, _ = _pose_video(tmp_path, T=200)
    src = {"video": "v", "store": str(store), "pose": pose, "px_per_cm": 10.0, "labels": str(labels_csv),
           "format": "frames", "positions": str(pos_csv), "frames": None}
    over = [*POSE_TINY, "train.max_epochs=3"]
    ref = run_train_pose_classifier([src], tmp_path / "pc.pt", overrides=over, max_distance=5)
    data = pose_sequences_from_sources([src], None, 5.0)
    assert len(data.points) == 3  # slot 0 whole, slot 1 before and after its empty frames 100-109
    cfg = load_model_config("pose_classifier", over)
    a = data.arrays(cfg)
    assert a["names"] == ["move", "rest"] and a["features"].shape[0] == 2 * 200 - 10
    epochs = []
    model = train_pose_classifier(a["features"], a["labels"], cfg, video_ids=a["video_ids"], fps=a["fps"],
                                  names=a["names"], epoch_callback=epochs.append)
    assert [h["val_loss"] for h in model.history] == [h["val_loss"] for h in ref.history]
    assert model.val_scores == ref.val_scores
    # the callback sees every epoch of the first network, with per-behaviour F1 and the early-stopping flag
    assert [e["epoch"] for e in epochs] == [0, 1, 2] and all(len(e["val_f1_per_class"]) == 2 for e in epochs)
    assert not any(e["stop"] for e in epochs)


# --------------------------------------------------------------------------- sweeps


@pytest.fixture(scope="module")
def still_data():
    pts, labels = _still_or_moving(1200, 20.0, seed=1)
    return PoseSequences([pts], [labels], ["background", "still"], 20.0, 10.0, ["tail", "head", "left", "right"])


def test_sweep_asha_best_overrides_and_determinism(tmp_path, still_data):
    out = tmp_path / "sweep"
    table = run_sweep("pose_classifier", still_data, out, SMALL, num_samples=4, threads=1, space=SPACE,
                      max_epochs=3, grace_period=1, reduction_factor=2, seed=0)
    csv = pd.read_csv(out / "trials.csv")
    assert len(table) == len(csv) == 4 and list(csv["trial"]) == [0, 1, 2, 3]
    assert (csv["status"] == "ok").all(), csv["error"].tolist()
    # trial 0 is the default configuration (the base overrides' values)
    assert csv.loc[0, "default"] and csv.loc[0, "overrides"] == "train.lr=0.001 model.dropout=0.5 model.hidden=[32,16]"
    assert csv["overrides"].nunique() == 4
    # ASHA (grace period 1, halving) stopped some trials early; others ran all 3 epochs
    assert (csv["ended"] == "asha").any() and (csv.loc[csv["ended"] == "asha", "epochs"] < 3).all(), csv
    assert (csv["epochs"] == 3).any()
    assert ((csv["val_f1_fg"] >= csv["last_val_f1_fg"] - 1e-12) & (csv["val_f1_fg"] <= 1)).all()
    assert (csv["best_epoch"] <= csv["epochs"]).all()
    # best_overrides.yaml: the sampled overrides of the best trial, composing with the base overrides
    best = csv.loc[csv["val_f1_fg"].idxmax()]
    text = (out / "best_overrides.yaml").read_text()
    overrides = read_overrides(out / "best_overrides.yaml")
    assert overrides == yaml.safe_load(text) == best["overrides"].split()
    assert f"best trial {int(best['trial'])}, val_f1_fg {best['val_f1_fg']:.4f}" in text
    assert best["val_f1_fg"] >= csv.loc[0, "val_f1_fg"]
    cfg = load_model_config("pose_classifier", [*SMALL, *overrides])
    assert cfg.train.lr == pytest.approx(float(best["train.lr"]))
    assert list(cfg.model.hidden) == yaml.safe_load(best["model.hidden"])
    # the best trial reached the best score; a trial that trains badly (tiny learning rate) is worse
    assert float(best["train.lr"]) > 1e-4 and csv["val_f1_fg"].min() < best["val_f1_fg"]
    # the random search is seeded: the same seed draws the same configurations
    again = run_sweep("pose_classifier", still_data, tmp_path / "again", SMALL, num_samples=3, threads=1,
                      space=SPACE, max_epochs=1, grace_period=1, seed=0)
    assert list(again["overrides"]) == list(csv["overrides"][:3])


def test_cli_tune_on_workflow_sources_with_a_failing_trial(tmp_path):
    """`sipec tune` on store-based label sources (as the tune rule calls it); a trial whose configuration fails
    in training is recorded as an error and the sweep goes on."""
    from sipec_models.cli import main
    from tests.test_behaviour_rules import POSE_TINY, _pose_video

    store, pose, labels_csv, pos_csv, _ = _pose_video(tmp_path, T=200)
    src = {"video": "v", "store": str(store), "pose": pose, "px_per_cm": 10.0, "labels": str(labels_csv),
           "format": "frames", "positions": str(pos_csv), "frames": None}
    base = [*POSE_TINY, "~tune.space", "+tune.space={train.lr: {loguniform: [1e-4, 1e-2]}, "
                                        "train.loss: {choice: [focal, no_such_loss]}}",
            "tune.max_epochs=2", "tune.grace_period=1"]
    out = tmp_path / "tune"
    rc = main(["tune", "--model", "pose_classifier", "--sources", json.dumps([src]), "--max-distance", "5",
               "--overrides", *base, "--num-samples", "4", "--threads", "1", "--seed", "1",
               "--workflow-config", str(out / "best_config.yaml"), "--out-dir", str(out)])
    assert rc == 0
    csv = pd.read_csv(out / "trials.csv")
    failed = csv["train.loss"] == "no_such_loss"
    assert failed.any() and (~failed).sum() >= 2, csv[["overrides", "status"]]
    assert (csv.loc[failed, "status"] == "error").all() and (csv.loc[failed, "ended"] == "error").all()
    assert csv.loc[failed, "error"].str.contains("train.loss").all()
    assert (csv.loc[~failed, "status"] == "ok").all()
    best = read_overrides(out / "best_overrides.yaml")
    assert "train.loss=focal" in best
    cfg = yaml.safe_load((out / "best_config.yaml").read_text())
    assert cfg == {"behaviour": {"model": "pose_classifier", "overrides": [*base, *best]}}
    load_model_config("pose_classifier", cfg["behaviour"]["overrides"])


def _behavenet_source(tmp_path, T=180):
    """A tracked store of 2 animals whose behaviours (still / flicker / long) need time to tell apart."""
    from tests.test_behavenet import _synthetic
    from tests.test_behaviour_rules import _labels_csv, _store

    names = ["still", "flicker", "long"]
    data = _synthetic(2, T, seed=0)
    crops = data.crops.reshape(2, T, *data.crops.shape[1:]).transpose(1, 0, 2, 3).copy()
    labels = data.labels.reshape(2, T).T
    com = np.stack([np.full((T, 2), 20.0), np.full((T, 2), 80.0)], 1)
    store = _store(tmp_path / "v.zarr", crops, com)
    rows = [{"frame": t, "animal": f"m{a}", **{n: int(labels[t, a] == k) for k, n in enumerate(names)}}
            for t in range(T) for a in range(2)]
    pos = [{"frame": t, "animal": f"m{a}", "x": 20.0 + 60 * a, "y": 20.0 + 60 * a} for t in range(T) for a in range(2)]
    return {"video": "v", "store": str(store), "labels": str(_labels_csv(tmp_path / "b.csv", rows)),
            "format": "frames", "positions": str(_labels_csv(tmp_path / "p.csv", pos)), "frames": None}


def test_cli_tune_behavenet_temporal_stage_on_frozen_frame_features(tmp_path):
    """`sipec tune --model behavenet`: the frame network is trained once, the trials tune the temporal network
    on its features; a temporal network that cannot learn (tiny learning rate) loses to one that can."""
    from sipec_models.cli import main
    from sipec_models.tuning import behavenet_features_from_sources
    from tests.test_behavenet import TINY

    src = _behavenet_source(tmp_path)
    base = [*TINY, "~tune.space", "+tune.space={tcn_train.lr: {choice: [1e-7, 3e-3]}, "
                                  "tcn.half_window: {choice: [1, 4]}}",
            "tune.max_epochs=6", "tune.grace_period=2", "tune.include_default=false"]
    data = behavenet_features_from_sources([src], None, 5.0, base)
    # context for the largest half-window of the space: every labelled run keeps 4 frames on each side
    assert data.features.shape[0] == len(data.labels) == len(data.is_val) and data.names == ["still", "flicker", "long"]
    assert 0 < data.is_val.mean() < 0.5 and data.frame_val_f1 is not None
    out = tmp_path / "tune"
    rc = main(["tune", "--model", "behavenet", "--sources", json.dumps([src]), "--max-distance", "5",
               "--overrides", *base, "--num-samples", "4", "--threads", "1", "--seed", "0",
               "--workflow-config", str(out / "best_config.yaml"), "--out-dir", str(out)])
    assert rc == 0
    csv = pd.read_csv(out / "trials.csv")
    assert len(csv) == 4 and (csv["status"] == "ok").all(), csv["error"].tolist()
    frozen = csv["tcn_train.lr"] < 1e-6
    assert frozen.any() and (~frozen).any(), csv[["overrides", "val_f1_fg"]]
    assert csv.loc[~frozen, "val_f1_fg"].max() > csv.loc[frozen, "val_f1_fg"].max() + 0.1, csv
    best = read_overrides(out / "best_overrides.yaml")
    assert "tcn_train.lr=0.003" in best
    cfg = yaml.safe_load((out / "best_config.yaml").read_text())
    assert cfg == {"behaviour": {"model": "behavenet", "overrides": [*base, *best]}}
    assert load_model_config("behavenet", cfg["behaviour"]["overrides"]).tcn_train.lr == pytest.approx(3e-3)


def test_behavenet_sweep_refuses_frame_network_keys(tmp_path):
    from sipec_models.tuning import FrameFeatures

    data = FrameFeatures(np.zeros((10, 4), np.float32), np.zeros(10, int), np.zeros(10, int),
                         np.zeros((10, 1), np.float32), np.arange(10) >= 8, ["a"])
    with pytest.raises(ValueError, match="tunes only keys under tcn., tcn_train.; not frame_train.lr"):
        run_sweep("behavenet", data, tmp_path, space={"frame_train.lr": {"loguniform": [1e-4, 1e-3]}})


def test_cli_tune_deepethogram_sequence_model_on_cached_features(tmp_path):
    """`sipec tune --model deepethogram`: flow generator and feature extractor trained once, the trials tune the
    TGM sequence model on their features; the shipped space composes and the best config loads."""
    from sipec_models.cli import main
    from sipec_models.tuning import SequenceRuns, deg_sequences_from_sources
    from tests.test_deepethogram_rules import TINY_DEG

    src = _behavenet_source(tmp_path, T=120)
    space = ("+tune.space={sequence.train.lr: {choice: [1e-7, 3e-3]}, "
             "sequence.model.filter_length: {choice: [5, 9]}}")
    base = [*TINY_DEG, "~tune.space", space, "tune.max_epochs=4", "tune.grace_period=2",
            "tune.include_default=false"]
    data = deg_sequences_from_sources([src], None, 5.0, base)
    # every frame is labelled: no background column; one run per animal
    assert isinstance(data, SequenceRuns) and data.names == ["still", "flicker", "long"] and len(data.features) == 2
    assert all(f.shape == (120, data.features[0].shape[1]) and y.shape == (120, 3)
               for f, y in zip(data.features, data.labels))
    out = tmp_path / "tune"
    rc = main(["tune", "--model", "deepethogram", "--sources", json.dumps([src]), "--max-distance", "5",
               "--overrides", *base, "--num-samples", "3", "--threads", "1", "--seed", "0",
               "--workflow-config", str(out / "best_config.yaml"), "--out-dir", str(out)])
    assert rc == 0
    csv = pd.read_csv(out / "trials.csv")
    assert len(csv) == 3 and (csv["status"] == "ok").all(), csv["error"].tolist()
    assert csv["val_f1_fg"].between(0, 1).all()
    cfg = yaml.safe_load((out / "best_config.yaml").read_text())
    assert cfg["behaviour"]["model"] == "deepethogram"
    load_model_config("deepethogram", cfg["behaviour"]["overrides"])
    # every value of the shipped DeepEthogram space composes with the model config
    full = load_model_config("deepethogram")
    for key, d in parse_space(full).items():
        assert key.startswith("sequence.")
        for v in (d.args if d.kind == "choice" else d.args[:1]):
            load_model_config("deepethogram", [d.override(d.encode(v))])

"""DeepEthogram in the workflow: the three stages trained in series on the animals' crops of a tracked store,
features per chunk and behave, with results independent of chunk borders."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from sipec_models.inference.behave import run_behave
from sipec_models.io.store import open_store, spec_field, write_store
from sipec_models.training.deepethogram import (multilabel_targets, resize_crops, run_extract_deg_features,
                                                run_train_deg_features, run_train_deg_flow, run_train_deg_sequence)
from tests.test_behavenet import _synthetic
from tests.test_behaviour_rules import _plan

#: Small enough for seconds on one CPU thread: 32 px crops, a few steps per stage, no curriculum.
TINY_DEG = ["data.input_size=[32,32]", "data.rgb=false", "flow.train.epochs=1", "flow.train.steps_per_epoch=4",
            "flow.train.batch_size=2", "flow.train.val_windows=4", "features.train.curriculum=false",
            "features.train.epochs=2", "features.train.steps_per_epoch=6", "features.train.batch_size=16",
            "features.augment.enabled=false", "sequence.train.epochs=4", "sequence.train.sequence_length=40",
            "sequence.train.min_steps_per_epoch=10"]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
        yield


def test_multilabel_targets_add_background_where_nothing_is_labelled():
    y = np.array([[1, 0], [0, 0], [np.nan, np.nan]], np.float32)
    t, names = multilabel_targets(y, ["a", "b"])
    assert names == ["a", "b", "background"]
    assert t[0].tolist() == [1, 0, 0] and t[1].tolist() == [0, 0, 1] and np.isnan(t[2]).all()


def test_resize_crops_gives_rgb_uint8_at_the_input_size():
    crops = np.random.default_rng(0).integers(0, 255, (5, 24, 24), dtype=np.uint8)
    out = resize_crops(crops, (32, 32))
    assert out.shape == (5, 3, 32, 32) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, 0], out[:, 2])
    assert resize_crops(crops, (24, 24))[:, 1].tolist() == crops.tolist()


def test_three_stages_train_in_series_and_chunk_borders_change_nothing(tmp_path):
    T = 120
    data = _synthetic(2, T, seed=0)
    crops = data.crops.reshape(2, T, *data.crops.shape[1:]).transpose(1, 0, 2, 3).copy()
    labels = data.labels.reshape(2, T).T
    com = np.stack([np.full((T, 2), 20.0), np.full((T, 2), 80.0)], 1)
    com[50:54, 1] = np.nan  # slot 1 empty for 4 frames
    crops[50:54, 1] = 0
    fields = {"com": com.astype(np.float32), "crop": crops}
    store = write_store(tmp_path / "v.zarr", {k: spec_field(k, v, "animal") for k, v in fields.items()},
                        {"n_frames": T, "n_animals": 2, "fps": 25.0, "video_id": "v"})
    names = ["still", "flicker", "long"]
    rows = [{"frame": t, "animal": f"m{a}", **{n: int(labels[t, a] == k) for k, n in enumerate(names)}}
            for t in range(T) for a in range(2)]
    pos = [{"frame": t, "animal": f"m{a}", "x": 20.0 + 60 * a, "y": 20.0 + 60 * a} for t in range(T) for a in range(2)]
    pd.DataFrame(rows).to_csv(tmp_path / "b.csv", index=False)
    pd.DataFrame(pos).to_csv(tmp_path / "p.csv", index=False)
    src = {"video": "v", "store": str(store), "labels": str(tmp_path / "b.csv"), "format": "frames",
           "positions": str(tmp_path / "p.csv"), "frames": None}
    torch.set_num_threads(1)
    flow = run_train_deg_flow([src], tmp_path / "flow.pt", TINY_DEG, metrics_out=tmp_path / "flow.json",
                              figure=tmp_path / "flow.png", progress=False)
    assert flow["input_size"] == [32, 32] and flow["n_train_windows"] > 0
    assert (tmp_path / "flow.png").stat().st_size > 0
    with pytest.raises(ValueError, match="trained at"):
        run_train_deg_features([src], tmp_path / "flow.pt", tmp_path / "x.pt", [*TINY_DEG, "data.input_size=[64,64]"],
                               progress=False)
    feats = run_train_deg_features([src], tmp_path / "flow.pt", tmp_path / "features.pt", TINY_DEG,
                                   metrics_out=tmp_path / "features.json", progress=False)
    assert feats["names"] == names  # every labelled frame has one behaviour: no background column

    def extract(name, bounds):
        plan = _plan(tmp_path / f"{name}.json", bounds)
        return [str(run_extract_deg_features(store, plan, c, tmp_path / "flow.pt", tmp_path / "features.pt",
                                             tmp_path / f"{name}_{c}.zarr")) for c in range(len(bounds) - 1)]

    whole = extract("whole", [0, T])
    split = extract("split", [0, 48, 52, 90, T])  # borders inside runs and inside the gap
    fw = open_store(whole[0])["deg_features"][...]
    fs = np.concatenate([open_store(p)["deg_features"][...] for p in split])
    assert fw.shape == (T, 2, 1024) and np.isnan(fw[50:54, 1]).all() and np.isfinite(fw[:, 0]).all()
    np.testing.assert_allclose(fs, fw, atol=1e-4, equal_nan=True)

    seq_src = {**src, "features": split}
    model = run_train_deg_sequence([seq_src], tmp_path / "deg.pt", TINY_DEG, metrics_out=tmp_path / "deg.json",
                                   progress=False)
    meta = json.loads((tmp_path / "deg.json").read_text())
    assert meta["names"] == names and len(meta["thresholds"]) == 3 and meta["fps"] == 25.0

    def behave(name, bounds, feature_stores):
        plan = _plan(tmp_path / f"{name}.json", bounds)
        return np.concatenate([open_store(run_behave(store, plan, c, tmp_path / "deg.pt", tmp_path / f"{name}_{c}.zarr",
                                                     features=feature_stores))["behaviour_prob"][...]
                               for c in range(len(bounds) - 1)])

    pw = behave("bw", [0, T], whole)
    ps = behave("bs", [0, 30, 52, 100, T], split)
    np.testing.assert_allclose(ps, pw, atol=1e-5, equal_nan=True)
    assert pw.shape == (T, 2, 3) and np.isnan(pw[50:54, 1]).all()
    g = open_store(tmp_path / "bs_1.zarr")
    assert g.attrs["behaviour_model"] == "deepethogram" and g.attrs["multilabel"] is True
    assert g.attrs["postprocess"]["thresholds"] == pytest.approx(meta["thresholds"])
    assert model.names == names
    with pytest.raises(ValueError, match="feature chunk stores"):
        run_behave(store, _plan(tmp_path / "q.json", [0, T]), 0, tmp_path / "deg.pt", tmp_path / "none.zarr")
    assert not (tmp_path / "none.zarr").exists()

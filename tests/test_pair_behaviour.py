"""Pair behaviour (SIPEC's social input): pair labels on pairs of track slots, BehaveNet trained on the pair crops
of social events, behave_pairs chunks (border invariance) and the merged pair-behaviour table."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from sipec_models.behaviour_data import load_pair_labels, pair_slot_labels
from sipec_models.inference.behave import run_behave_pairs
from sipec_models.io.store import Field, open_store, spec_field, write_store
from sipec_models.social import read_social_frames
from sipec_models.tables import events_with_behaviour, pair_behaviour_table
from tests.test_behavenet import TINY, _synthetic
from tests.test_behaviour_rules import _plan

NAMES = ["still", "flicker", "long"]
#: Slot centres: slot s holds animal ANIMAL_OF_SLOT[s] at SLOT_XY[s] in every frame.
SLOT_XY = np.array([[20.0, 20.0], [80.0, 80.0], [140.0, 140.0]])
ANIMAL_OF_SLOT = ["m1", "m2", "m0"]
PAIRS = [(0, 1), (0, 2), (1, 2)]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
        yield


def _csv(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _positions(tmp_path, T):
    rows = [{"frame": t, "animal": ANIMAL_OF_SLOT[s], "x": SLOT_XY[s, 0] + 1, "y": SLOT_XY[s, 1] - 1}
            for t in range(T) for s in range(3)]
    return _csv(tmp_path / "positions.csv", rows)


def test_pair_labels_land_on_the_pairs_of_the_animals_slots(tmp_path):
    T = 3
    com = np.tile(SLOT_XY, (T, 1, 1))
    com[2, 1] = np.nan  # slot 1 (m2) empty in frame 2
    rows = [{"frame": t, "animal_a": "m2", "animal_b": "m1", "touch": 1} for t in range(T)]  # slots (1, 0)
    rows += [{"frame": t, "animal_a": "m0", "animal_b": "m1", "touch": 0} for t in range(T)]  # slots (2, 0)
    labels = _csv(tmp_path / "pairs.csv", rows)
    positions = _positions(tmp_path, T)
    y, names = pair_slot_labels(labels, com, PAIRS, positions, max_distance=5)
    assert names == ["touch"] and y.shape == (T, 3, 1)
    assert y[0, :, 0].tolist()[:2] == [1, 0] and np.isnan(y[0, 2, 0])
    assert np.isnan(y[2, 0, 0]) and y[2, 1, 0] == 0  # the pair with the missing animal stays unlabelled
    y, _ = pair_slot_labels(labels, com, PAIRS, positions, frames=[1, 2])
    assert np.isnan(y[0]).all() and np.isfinite(y[1, :2]).all()
    with pytest.raises(ValueError, match="no labelled pair has both animals"):
        pair_slot_labels(labels, com + 100, PAIRS, positions)
    with pytest.raises(ValueError, match="lacks column"):
        load_pair_labels(_csv(tmp_path / "bad.csv", [{"frame": 0, "animal": "m0", "touch": 1}]))
    with pytest.raises(ValueError, match="itself"):
        load_pair_labels(_csv(tmp_path / "self.csv", [{"frame": 0, "animal_a": "m0", "animal_b": "m0", "touch": 1}]))
    with pytest.raises(ValueError, match="no positions"):
        pair_slot_labels(_csv(tmp_path / "x.csv", [{"frame": 0, "animal_a": "m0", "animal_b": "zz", "touch": 1}]),
                         com, PAIRS, positions)


def _pair_video(tmp_path, T=180, bounds=(0, 100, 180)):
    """A 3-slot video store and social chunk stores: pair (0, 1) and pair (1, 2) interact in every frame except
    a gap (pair 0: frames 60-64), each with synthetic pair crops of 3 behaviours; pair (0, 2) never does."""
    data = _synthetic(2, T, seed=0)
    crops = data.crops.reshape(2, T, *data.crops.shape[1:])
    labels = data.labels.reshape(2, T)
    com = np.tile(SLOT_XY, (T, 1, 1)).astype(np.float32)
    store = write_store(tmp_path / "v.zarr", {"com": spec_field("com", com, "animal")},
                        {"n_frames": T, "n_animals": 3, "fps": 25.0, "video_id": "v", "animal_names": ["a", "b", "c"]})
    S = crops.shape[-1]
    event = np.zeros((T, 3), bool)
    event[:, 0] = event[:, 2] = True
    event[60:65, 0] = False
    pair_crop = np.zeros((T, 3, S, S), np.uint8)
    pair_crop[:, 0], pair_crop[:, 2] = crops[0], crops[1]
    pair_crop[~event] = 0
    pair_com = np.where(event[..., None], 50.0, np.nan).astype(np.float32)
    social = []
    for c, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        fields = {"pair_event": Field(event[s:e], ("frame", "pair"), "bool"),
                  "pair_overlap": Field(event[s:e].astype(np.float32), ("frame", "pair"), "1"),
                  "pair_com": Field(pair_com[s:e], ("frame", "pair", "xy"), "px"),
                  "pair_crop": Field(pair_crop[s:e], ("frame", "pair", "y", "x"), "grey level")}
        social.append(str(write_store(tmp_path / f"social_{c}.zarr", fields,
                                      {"chunk": c, "frame_start": s, "frame_stop": e,
                                       "pairs": [list(p) for p in PAIRS]})))
    names_of = {p: sorted((ANIMAL_OF_SLOT[p[0]], ANIMAL_OF_SLOT[p[1]])) for p in PAIRS}
    rows = [{"frame": t, "animal_a": names_of[p][1], "animal_b": names_of[p][0],
             **{n: int(labels[k, t] == i) for i, n in enumerate(NAMES)}}
            for t in range(T) for k, p in ((0, PAIRS[0]), (1, PAIRS[2]))]
    return store, social, _csv(tmp_path / "pairs.csv", rows), _positions(tmp_path, T), labels, event


def test_read_social_frames_stitches_chunks(tmp_path):
    _, social, *_ = _pair_video(tmp_path, T=40, bounds=(0, 15, 40))
    whole = read_social_frames(social[::-1], 10, 30)
    assert whole["pair_event"].shape == (20, 3) and whole["pair_crop"].shape[:2] == (20, 3)
    one = read_social_frames(social, 10, 30, ("pair_crop",), pair=2)["pair_crop"]
    np.testing.assert_array_equal(one, whole["pair_crop"][:, 2])
    outside = read_social_frames(social, 35, 45, ("pair_com",))["pair_com"]
    assert np.isfinite(outside[:5, 0]).all() and np.isnan(outside[5:]).all()


def test_pair_behavenet_trains_behaves_across_chunk_borders_and_merges(tmp_path):
    from sipec_models.training.behaviour import run_train_behavenet

    T = 180
    store, social, labels, positions, truth, event = _pair_video(tmp_path, T)
    src = {"video": "v", "store": str(store), "social": social, "labels": str(labels), "positions": str(positions),
           "frames": None}
    torch.set_num_threads(1)
    run_train_behavenet([src], tmp_path / "pairs.pt", overrides=[*TINY, "tcn.motion_input=true"],
                        metrics_out=tmp_path / "m.json", progress=False, pairs=True)
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["input"] == "pair" and meta["names"] == NAMES
    assert meta["n_labelled"] == 2 * T - 5  # the gap of pair (0, 1) has labels but no event, hence no crop

    def behave(name, bounds):
        plan = _plan(tmp_path / f"{name}.json", bounds)
        return [run_behave_pairs(social, store, plan, c, tmp_path / "pairs.pt", tmp_path / f"{name}_{c}.zarr",
                                 device="cpu") for c in range(len(bounds) - 1)]

    whole = open_store(behave("whole", [0, T])[0])["behaviour_prob"][...]
    split_stores = behave("split", [0, 62, 101, T])  # borders inside the gap and inside a run
    split = np.concatenate([open_store(p)["behaviour_prob"][...] for p in split_stores])
    np.testing.assert_allclose(split, whole, atol=1e-5, equal_nan=True)
    assert np.isnan(whole[:, 1]).all() and np.isnan(whole[60:65, 0]).all() and np.isfinite(whole[~event]).sum() == 0
    pred = whole[:, [0, 2]].argmax(-1).T
    ok = event[:, [0, 2]].T
    acc = (pred[ok] == truth[ok]).mean()
    assert acc > np.bincount(truth[ok]).max() / ok.sum() + 0.2, acc
    # Merge: one row per frame and pair with an event, pairs named by the slots' animals.
    table, names = pair_behaviour_table(store, split_stores, None, 25.0, "v")
    assert names == NAMES and len(table) == int(event.sum())
    assert set(map(tuple, table[["animal_a", "animal_b"]].drop_duplicates().to_numpy())) == {("a", "b"), ("b", "c")}
    n_calls = table[NAMES].sum(axis=1)
    assert n_calls.max() == 1 and (n_calls == 1).mean() > 0.5  # exclusive: one call, none where a short bout went
    events = pd.DataFrame([{"video": "v", "animal_a": "a", "animal_b": "b", "start_frame": 0, "stop_frame": 60},
                           {"video": "v", "animal_a": "a", "animal_b": "c", "start_frame": 0, "stop_frame": 10}])
    events = events_with_behaviour(events, table, names)
    first = table[(table.animal_a == "a") & (table.frame < 60)]
    assert events.loc[0, "behaviour"] == first[NAMES].sum().idxmax()
    np.testing.assert_allclose(events.loc[0, "still_prob"], first["still_prob"].mean(), rtol=1e-6)
    assert events.loc[1, "behaviour"] == "" and np.isnan(events.loc[1, "still_prob"])


def test_behave_pairs_rejects_a_single_animal_model(tmp_path):
    from sipec_models.training.behavenet import BehaveNetModel, build_frame_net, build_tcn, save_behavenet
    from sipec_models.training.config import load_model_config

    store, social, *_ = _pair_video(tmp_path, T=30, bounds=(0, 30))
    cfg = load_model_config("behavenet", TINY)
    frame_net = build_frame_net(cfg, 3)
    model = BehaveNetModel(frame_net, build_tcn(cfg, frame_net.num_features, 3), NAMES, cfg)
    save_behavenet(model, tmp_path / "single.pt", meta={"input": "animal"})
    with pytest.raises(ValueError, match="not a BehaveNet trained on pair crops"):
        run_behave_pairs(social, store, _plan(tmp_path / "p.json", [0, 30]), 0, tmp_path / "single.pt",
                         tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()

"""Identity labels, matching, crops, assignment, smoothing and scores (sipec_models.identity)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sipec_models.identity import (
    assign_identities, dilations, identities_from_slp, identity_accuracy, identity_changes, identity_crop,
    load_identity_table, match_labels_to_slots, sequence_crops, shuffled_chance, smooth_along_tracks, track_runs,
)


# --------------------------------------------------------------------------- assignment


def test_assignment_never_duplicates_an_identity():
    rng = np.random.default_rng(0)
    prob = rng.dirichlet(np.ones(4), size=(200, 4))
    prob[:, :, 2] += 2.0  # every animal prefers identity 2
    prob /= prob.sum(axis=2, keepdims=True)
    ids = assign_identities(prob)
    assert ids.shape == (200, 4)
    for row in ids:
        assert len(set(row.tolist())) == 4
    assert (np.sort(ids, axis=1) == np.arange(4)).all()


def test_assignment_is_the_most_likely_joint_assignment():
    prob = np.array([[[0.9, 0.1], [0.6, 0.4]]])  # both prefer 0; animal 0 is surer
    assert assign_identities(prob).tolist() == [[0, 1]]


def test_assignment_handles_empty_slots_and_unequal_counts():
    prob = np.full((3, 3, 2), np.nan)
    prob[0, 0] = [0.8, 0.2]
    prob[0, 2] = [0.7, 0.3]               # frame 0: two animals, slot 1 empty
    prob[1] = [[0.6, 0.4], [0.9, 0.1], [0.5, 0.5]]  # frame 1: 3 animals, 2 identities
    ids = assign_identities(prob)         # frame 2: all empty
    assert ids[0].tolist() == [0, -1, 1]
    assert sorted(ids[1].tolist()) == [-1, 0, 1] and ids[1, 1] == 0
    assert ids[2].tolist() == [-1, -1, -1]
    # Fewer animals than identities.
    p = np.array([[[0.1, 0.2, 0.7]]])
    assert assign_identities(p).tolist() == [[2]]


# --------------------------------------------------------------------------- smoothing


def test_smoothing_fixes_an_isolated_flip():
    T = 50
    prob = np.zeros((T, 2, 2))
    prob[:, 0] = [0.8, 0.2]
    prob[:, 1] = [0.2, 0.8]
    prob[20] = [[0.1, 0.9], [0.9, 0.1]]  # one frame where the network swaps the animals
    track = np.tile([0, 1], (T, 1))
    raw = assign_identities(prob)
    assert raw[20].tolist() == [1, 0]
    smoothed, sp = smooth_along_tracks(prob, track)
    assert (smoothed[:, 0] == 0).all() and (smoothed[:, 1] == 1).all()
    assert np.allclose(sp.sum(axis=2), 1)
    win, _ = smooth_along_tracks(prob, track, window=9)
    assert (win[:, 0] == 0).all() and (win[:, 1] == 1).all()
    assert identity_changes(raw, track).tolist() == [2, 2]
    assert identity_changes(smoothed, track).tolist() == [0, 0]


def test_smoothing_respects_track_runs():
    T = 40
    prob = np.zeros((T, 1, 2))
    prob[:20, 0] = [0.7, 0.3]
    prob[20:, 0] = [0.3, 0.7]
    track = np.zeros((T, 1), int)
    track[20:] = 5           # a new track starts at frame 20: evidence must not cross
    ids, _ = smooth_along_tracks(prob, track)
    assert (ids[:20, 0] == 0).all() and (ids[20:, 0] == 1).all()
    assert track_runs(track) == [(0, 0, 20), (0, 20, 40)]
    track[10] = -1           # a missed frame also splits the run and stays empty
    prob[10] = np.nan
    ids, _ = smooth_along_tracks(prob, track)
    assert ids[10, 0] == -1 and (ids[:10, 0] == 0).all()


# --------------------------------------------------------------------------- scores


def test_accuracy_and_chance():
    rng = np.random.default_rng(1)
    truth = np.repeat(rng.integers(0, 2, size=(20, 2)), 10, axis=0)  # blocks of 10 frames
    truth[:, 1] = 1 - truth[:, 0]
    truth[5, 0] = -1
    assert identity_accuracy(truth, truth) == 1.0
    assert identity_accuracy(1 - truth, np.where(truth >= 0, truth, -1)) == 0.0
    ch = shuffled_chance(np.where(truth >= 0, truth, 0), truth, n=100, mode="shift")
    assert 0.3 < ch["mean"] < 0.7
    # Relabelling: each track keeps one identity all along (shifting the truth would not change it).
    constant = np.tile([0, 1, 2], (30, 1))
    ch = shuffled_chance(constant, constant)
    assert ch["n"] == 6 and abs(ch["mean"] - 1 / 3) < 1e-9
    assert shuffled_chance(constant, constant, mode="shift")["mean"] == 1.0
    ch = shuffled_chance(np.where(truth >= 0, truth, 0), truth, n=50, mode="permute")
    assert 0.3 < ch["mean"] < 0.7
    assert np.isnan(identity_accuracy(truth, np.full_like(truth, -1)))


# --------------------------------------------------------------------------- label tables


def test_label_table_formats(tmp_path):
    p = tmp_path / "box.csv"
    p.write_text("frame,identity,x0,y0,x1,y1\n0,a,0,0,10,10\n1,b,5,5,15,20\n")
    t = load_identity_table(p)
    assert list(t.columns) == ["frame", "identity", "x0", "y0", "x1", "y1", "x", "y"]
    assert t["identity"].tolist() == ["a", "b"] and t["x1"].tolist() == [10, 15] and t["x"].isna().all()
    p = tmp_path / "pt.csv"
    p.write_text("frame,identity,x,y\n3,a,1.5,2\n")
    t = load_identity_table(p)
    assert t.loc[0, "x"] == 1.5 and np.isnan(t.loc[0, "x0"])
    # instance: COCO annotation ids (the demo's identities.csv).
    p = tmp_path / "inst.csv"
    p.write_text("frame,instance,identity\n0,7,a\n")
    (tmp_path / "masks_coco.json").write_text(
        '{"images": [{"id": 1, "frame": 0}], "annotations": [{"id": 7, "image_id": 1, "frame": 0, '
        '"bbox": [10, 20, 5, 6]}]}')
    t = load_identity_table(p)
    assert t.loc[0, ["x0", "y0", "x1", "y1"]].tolist() == [10, 20, 15, 26]


def test_label_table_errors_name_file_and_columns(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("frame,name,x,y\n0,a,1,2\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*identity"):
        load_identity_table(p)
    p.write_text("frame,identity,x\n0,a,1\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*box.*point.*instance"):
        load_identity_table(p)
    p.write_text("frame,identity,instance\n0,a,1\n")
    with pytest.raises(FileNotFoundError, match="masks_coco.json"):
        load_identity_table(p)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_identity_table(tmp_path / "nope.csv")


# --------------------------------------------------------------------------- matching


def test_matching_by_box_and_point():
    box = np.full((3, 3, 4), np.nan)
    box[0, 0] = [0, 0, 10, 10]
    box[0, 1] = [50, 50, 60, 70]
    box[1, 2] = [100, 100, 120, 120]
    com = np.stack([(box[..., 0] + box[..., 2]) / 2, (box[..., 1] + box[..., 3]) / 2], axis=-1)
    labels = pd.DataFrame({
        "frame": [10, 10, 11, 11, 12, 99],
        "identity": ["a", "b", "a", "c", "a", "a"],
        "x0": [49, 1, np.nan, 300, 0, 0], "y0": [52, 0, np.nan, 300, 0, 0],
        "x1": [61, 9, np.nan, 310, 10, 10], "y1": [69, 11, np.nan, 310, 10, 10],
        "x": [np.nan] * 6, "y": [np.nan] * 6,
    })
    labels.loc[2, ["x", "y"]] = [112, 108]  # a point label on slot 2
    slots = match_labels_to_slots(labels, box, com, frame_offset=10)
    # frame 10: b->0, a->1; frame 11: point->2, far box unmatched; frame 12: no animal; 99 out of range
    assert slots.tolist() == [1, 0, 2, -1, -1, -1]


def test_identities_from_slp(shared_data):
    labels = identities_from_slp(shared_data / "sleap_flies" / "clip.slp", which="user")
    assert set(labels["identity"]) == {"female", "male"}
    assert len(labels) == 3000 and labels["frame"].max() == 1499
    assert (labels["x1"] > labels["x0"]).all() and labels[["x", "y"]].notna().all().all()


# --------------------------------------------------------------------------- crops


def _blob_frames(T=7, H=80, W=80):
    frames = np.full((T, H, W), 100, np.uint8)
    masks = np.zeros((T, 32, 32), bool)
    origins = np.zeros((T, 2), int)
    for t in range(T):
        cx, cy = 30 + t, 40
        frames[t, cy - 4:cy + 4, cx - 6:cx + 6] = 200
        origins[t] = (cx - 16, cy - 16)
        masks[t, 12:20, 10:22] = True
    return frames, masks, origins


def test_identity_crop_masks_outside_the_dilated_mask():
    frames, masks, origins = _blob_frames()
    c0 = identity_crop(frames[0], masks[0], origins[0], 0, 32)
    c4 = identity_crop(frames[0], masks[0], origins[0], 4, 32)
    assert c0.shape == (32, 32) and c0.dtype == np.uint8
    assert (c0 > 0).sum() == masks[0].sum()
    assert (c4 > 0).sum() > (c0 > 0).sum()
    assert set(np.unique(c4[c4 > 0])) <= {100, 200}
    small = identity_crop(frames[0], masks[0], origins[0], 0, 16)
    assert small.shape == (16, 16)
    # A wider fixed window: the animal covers a smaller part of the crop (size is preserved across animals).
    wide = identity_crop(frames[0], masks[0], origins[0], 0, 32, window=64)
    assert 0 < (wide > 0).sum() < (c0 > 0).sum()


def test_sequence_dilation_grows_with_distance_in_time():
    frames, masks, origins = _blob_frames()
    seq = sequence_crops(frames, masks, origins, t=3, half_window=3, dilation_step_px=2, out_size=32)
    assert seq.shape == (7, 32, 32)
    area = (seq > 0).sum(axis=(1, 2))
    assert area[3] == masks[3].sum()
    assert (np.diff(area[3:]) > 0).all() and (np.diff(area[:4]) < 0).all()
    assert dilations(2, 1, 3).tolist() == [7, 4, 1, 4, 7]
    # A neighbour without a mask uses the centre frame's mask (dilated for its distance).
    masks2 = masks.copy()
    masks2[4] = False
    seq2 = sequence_crops(frames, masks2, origins, t=3, half_window=1, dilation_step_px=2, out_size=32)
    assert (seq2[2] > 0).sum() > masks[3].sum()
    # At the ends of the frames, the sequence repeats the end frame.
    seq3 = sequence_crops(frames, masks, origins, t=0, half_window=2, dilation_step_px=0, out_size=32)
    assert np.array_equal(seq3[0], seq3[2]) and np.array_equal(seq3[1], seq3[2])
    with pytest.raises(ValueError, match="no mask"):
        sequence_crops(frames, masks2, origins, t=4, half_window=1, dilation_step_px=2, out_size=32)

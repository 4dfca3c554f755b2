"""Tracking: frame linking, chunk tracks, stitching (chunked == unchunked), identity switches, slot arrays."""

from __future__ import annotations

import numpy as np
import pytest

from sipec_models.tracking import (
    TrackingConfig, box_iou, identity_switches, instances_to_slots, link_frames, stitch_chunks, track_chunk,
)


def boxes_at(centres, half=(6.0, 4.0)):
    """``(..., 4)`` boxes of the given half width/height around ``(..., 2)`` centres."""
    c = np.asarray(centres, float)
    h = np.asarray(half, float)
    return np.concatenate([c - h, c + h], axis=-1)


def random_walks(n_frames=60, n_animals=3, seed=0, step=3.0):
    """``(T, N, 2)`` positions of animals walking in a 400 px arena, kept apart from each other."""
    rng = np.random.default_rng(seed)
    pos = np.array([[60.0 + 120 * k, 200.0] for k in range(n_animals)])
    out = []
    for _ in range(n_frames):
        pos = np.clip(pos + rng.normal(0, step, pos.shape), 10, 390)
        out.append(pos.copy())
    return np.stack(out)


def detections(truth, seed=0, miss=(), extra_slots=1):
    """Shuffle animals into instance slots per frame, drop ``miss`` (frame, animal) pairs.

    Returns ``box (T, I, 4)``, ``com (T, I, 2)`` (NaN padded) and ``who (T, I)`` (true animal, -1).
    """
    rng = np.random.default_rng(seed)
    T, N, _ = truth.shape
    I = N + extra_slots
    box = np.full((T, I, 4), np.nan)
    com = np.full((T, I, 2), np.nan)
    who = np.full((T, I), -1)
    for t in range(T):
        present = [a for a in rng.permutation(N) if (t, a) not in miss]
        for i, a in enumerate(present):
            com[t, i] = truth[t, a]
            box[t, i] = boxes_at(truth[t, a])
            who[t, i] = a
    return box, com, who


def assert_consistent(track, who):
    """Every track id follows one true animal, and every animal one track id."""
    ok = track >= 0
    pairs = set(zip(track[ok].tolist(), who[ok].tolist()))
    assert len({p[0] for p in pairs}) == len(pairs) == len({p[1] for p in pairs})


def test_box_iou():
    a = np.array([[0, 0, 10, 10], [np.nan] * 4])
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]])
    iou = box_iou(a, b)
    assert iou.shape == (2, 2)
    assert iou[0, 0] == pytest.approx(50 / 150) and iou[0, 1] == 0 and (iou[1] == 0).all()


def test_greedy_and_hungarian_differ():
    prev = np.array([[0, 0, 10, 10], [8, 0, 18, 10]], float)
    curr = np.array([[2, 0, 12, 10], [-8, 0, 2, 10]], float)
    # IoU: prev0-curr0 0.67, prev1-curr0 0.25, prev0-curr1 0.11, prev1-curr1 0.
    greedy = link_frames(prev, curr, "greedy", max_distance=5)
    optimal = link_frames(prev, curr, "hungarian", max_distance=5)
    assert greedy.tolist() == [0, -1]  # largest overlap first: curr1 is left without a partner
    assert optimal.tolist() == [1, 0]  # both linked
    # With a generous distance limit greedy links the leftover pair by distance.
    assert link_frames(prev, curr, "greedy", max_distance=50).tolist() == [0, 1]


def test_link_falls_back_to_distance():
    prev = boxes_at([[50, 50], [200, 50]])
    curr = boxes_at([[215, 52], [64, 49]])  # moved 14-15 px: no box overlap
    for method in ("greedy", "hungarian"):
        assert link_frames(prev, curr, method, max_distance=20).tolist() == [1, 0]
        assert link_frames(prev, curr, method, max_distance=10).tolist() == [-1, -1]
    assert link_frames(np.zeros((0, 4)), curr).tolist() == [-1, -1]
    with pytest.raises(ValueError, match="method"):
        link_frames(prev, curr, "magic")


@pytest.mark.parametrize("method", ["greedy", "hungarian"])
def test_track_chunk_follows_shuffled_animals(method):
    truth = random_walks()
    box, com, who = detections(truth)
    track = track_chunk(box, com, n_animals=3, method=method)
    assert track.dtype == np.int32 and track.shape == who.shape
    assert ((track >= 0) == (who >= 0)).all()
    assert set(np.unique(track[track >= 0])) == {0, 1, 2}
    assert_consistent(track, who)


def test_missed_animal_keeps_its_slot():
    truth = random_walks(n_frames=40)
    truth[20:, 1, 0] += 80  # animal 1 jumps 80 px while it is missed (further than max_distance)
    miss = {(t, 1) for t in range(17, 23)}
    box, com, who = detections(truth, miss=miss)
    track = track_chunk(box, com, n_animals=3, max_distance=30)
    assert_consistent(track, who)
    # Without a known number of animals the same gap starts a new track.
    open_track = track_chunk(box, com, n_animals=None, max_distance=30, max_gap=2)
    assert len(np.unique(open_track[open_track >= 0])) == 4


def test_extra_instances_get_no_slot():
    truth = random_walks(n_frames=10, n_animals=2)
    box, com, who = detections(truth, extra_slots=1)
    box[5, 2], com[5, 2] = boxes_at([300, 30]), [300, 30]  # a spurious blob far away
    track = track_chunk(box, com, n_animals=2)
    assert track[5, 2] == -1 and (track[5, :2] >= 0).all()


@pytest.mark.parametrize("method", ["greedy", "hungarian"])
@pytest.mark.parametrize("chunk", [7, 13, 25])
def test_chunked_tracking_equals_unchunked(method, chunk):
    truth = random_walks(n_frames=75, seed=1)
    # Misses inside chunks (never in a chunk's first frame).
    miss = {(t, a) for t, a in [(3, 0), (4, 0), (16, 2), (30, 1), (31, 1), (58, 0)] if t % chunk}
    box, com, who = detections(truth, seed=2, miss=miss)
    whole = track_chunk(box, com, n_animals=3, method=method)
    parts = []
    for s in range(0, len(box), chunk):
        sl = slice(s, s + chunk)
        parts.append({"box": box[sl], "com": com[sl], "local_track": track_chunk(box[sl], com[sl], 3, method)})
    stitched = np.concatenate(stitch_chunks(parts, n_animals=3, method=method))
    assert np.array_equal(stitched, whole)
    assert_consistent(whole, who)


def test_chunked_open_tracking_equals_unchunked():
    truth = random_walks(n_frames=50, seed=4)
    box, com, who = detections(truth, seed=5)
    whole = track_chunk(box, com)
    parts = [{"box": box[s:s + 10], "com": com[s:s + 10], "local_track": track_chunk(box[s:s + 10], com[s:s + 10])}
             for s in range(0, 50, 10)]
    assert np.array_equal(np.concatenate(stitch_chunks(parts)), whole)


def test_stitch_relinks_animal_missing_at_chunk_start():
    truth = random_walks(n_frames=40, seed=6)
    miss = {(20, 1), (21, 1)}  # chunk 2 starts at frame 20 without animal 1
    box, com, who = detections(truth, seed=7, miss=miss)
    parts = [{"box": box[s:s + 10], "com": com[s:s + 10], "local_track": track_chunk(box[s:s + 10], com[s:s + 10], 3)}
             for s in range(0, 40, 10)]
    stitched = np.concatenate(stitch_chunks(parts, n_animals=3))
    assert_consistent(stitched, who)


def test_identity_switches_hand_built():
    # Two animals at fixed places; track 0 sits on A, jumps to B at frame 3, back to A at frame 6.
    A, B = [0.0, 0.0], [100.0, 0.0]
    truth = np.array([[A, B]] * 8)
    pred = np.array([[A, B], [A, B], [A, B], [B, A], [B, A], [B, A], [A, B], [A, B]])
    assert identity_switches(pred, truth).tolist() == [2, 2]
    # Frames where the track or any true animal is missing are skipped: the switch at 3 and back
    # at 6 collapse when frames 3..5 are missing for track 0.
    pred[3:6, 0] = np.nan
    assert identity_switches(pred, truth).tolist() == [0, 2]
    truth2 = truth.copy()
    truth2[3:6, 1] = np.nan
    pred2 = np.array([[A, B]] * 3 + [[B, A]] * 3 + [[A, B]] * 2)
    assert identity_switches(pred2, truth2).tolist() == [0, 0]
    # A distance cut-off ignores attributions further than it.
    far = np.array([[A, B]] * 3 + [[[90.0, 300.0], B]] + [[A, B]] * 4)
    assert identity_switches(far, truth, max_distance=20).tolist() == [0, 0]
    assert identity_switches(far, truth).tolist() == [2, 0]


def test_instances_to_slots():
    track = np.array([[1, 0, -1], [-1, 1, -1], [0, -1, -1]])
    com = np.arange(18, dtype=np.float32).reshape(3, 3, 2)
    flags = np.array([[1, 2, 0], [0, 4, 0], [3, 0, 0]], np.uint8)
    n_found = np.array([2, 1, 1], np.int16)
    out = instances_to_slots(track, {"com": com, "flags": flags, "local_track": track, "n_found": n_found},
                             n_slots=3)
    assert out["com"].shape == (3, 3, 2)
    assert np.array_equal(out["com"][0, 0], com[0, 1]) and np.array_equal(out["com"][0, 1], com[0, 0])
    assert np.isnan(out["com"][0, 2]).all() and np.isnan(out["com"][1, 0]).all()
    assert out["flags"].tolist() == [[2, 1, 0], [0, 4, 0], [3, 0, 0]]
    assert out["track"].tolist() == [[0, 1, -1], [-1, 1, -1], [0, -1, -1]]
    assert out["local_track"].tolist() == out["track"].tolist()
    assert out["n_found"] is n_found
    # Without n_slots, distinct ids are packed in sorted order.
    packed = instances_to_slots(np.array([[7, 3]]), {"com": com[:1, :2]})
    assert packed["track"].tolist() == [[3, 7]] and np.array_equal(packed["com"][0, 0], com[0, 1])
    with pytest.raises(ValueError, match="twice"):
        instances_to_slots(np.array([[0, 0]]), {})
    with pytest.raises(ValueError, match="slots"):
        instances_to_slots(np.array([[5]]), {}, n_slots=2)


def test_tracking_config():
    cfg = TrackingConfig.from_dict({"method": "hungarian", "max_distance": 30})
    assert cfg.method == "hungarian" and cfg.max_distance == 30
    with pytest.raises(ValueError, match="'max_dist'"):
        TrackingConfig.from_dict({"max_dist": 3})
    with pytest.raises(ValueError, match="method"):
        TrackingConfig.from_dict({"method": "magic"})
    with pytest.raises(ValueError, match="'max_gap'"):
        TrackingConfig.from_dict({"max_gap": 1.5})

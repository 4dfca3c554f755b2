"""Social interaction events: dilated-mask overlap, pair crops, bouts and the event table."""

from __future__ import annotations

import numpy as np
import pytest

from sipec_models.social import (SocialConfig, event_bouts, event_table, pair_overlap, pairs, social_arrays,
                                 square_crop)


def _square(size: int, y0: int, x0: int, side: int) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[y0:y0 + side, x0:x0 + side] = True
    return m


def test_overlap_of_far_apart_masks_is_zero_and_com_is_the_union_centre():
    a, b = _square(20, 5, 5, 10), _square(20, 5, 5, 10)
    overlap, com = pair_overlap(a, (0, 0), b, (100, 0), dilation_px=3)
    assert overlap == 0.0
    # Union of x in [5, 15) and [105, 115): mean x = 59.5; y in [5, 15): 9.5.
    assert com == pytest.approx((59.5, 9.5))


def test_overlap_grows_with_dilation_and_reaches_one_for_identical_masks():
    a = _square(20, 5, 5, 10)
    # b's window is 12 px to the right: the squares are 2 px apart.
    assert pair_overlap(a, (0, 0), a, (12, 0), dilation_px=0)[0] == 0.0
    touching = pair_overlap(a, (0, 0), a, (12, 0), dilation_px=2)[0]
    closer = pair_overlap(a, (0, 0), a, (12, 0), dilation_px=4)[0]
    assert 0 < touching < closer < 1
    assert pair_overlap(a, (0, 0), a, (0, 0), dilation_px=2)[0] == pytest.approx(1.0)


def test_overlap_hand_computed_without_dilation():
    a = _square(10, 0, 0, 4)          # 16 px at x, y in [0, 4)
    b = _square(10, 0, 0, 2)          # 4 px at x, y in [2, 4) after shifting the window by (2, 2)
    overlap, _ = pair_overlap(a, (0, 0), b, (2, 2), dilation_px=0)
    assert overlap == pytest.approx(4 / 4)
    c = _square(10, 0, 0, 4)          # shifted by (2, 0): 8 px shared of 16
    assert pair_overlap(a, (0, 0), c, (2, 0), dilation_px=0)[0] == pytest.approx(8 / 16)


def test_square_crop_pads_outside_the_frame():
    frame = np.arange(100, dtype=np.uint8).reshape(10, 10)
    crop, origin = square_crop(frame, (0.0, 0.0), 4)
    assert origin == (-2, -2)
    assert crop.shape == (4, 4)
    assert (crop[:2] == 0).all() and (crop[:, :2] == 0).all()
    assert crop[2, 2] == frame[0, 0] and crop[3, 3] == frame[1, 1]


def test_event_bouts_bridges_gaps_and_drops_short_bouts():
    e = np.array([0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 0], bool)
    assert event_bouts(e) == [(1, 3), (4, 5), (8, 11)]
    assert event_bouts(e, max_gap=1) == [(1, 5), (8, 11)]
    assert event_bouts(e, min_frames=2) == [(1, 3), (8, 11)]
    assert event_bouts(np.zeros(5, bool)) == []


def test_social_arrays_finds_the_approach_and_crops_the_pair():
    T, S, A = 6, 16, 3
    mask = np.zeros((T, A, S, S), bool)
    origin = np.zeros((T, A, 2), np.int32)
    frames = []
    for t in range(T):
        frame = np.zeros((64, 64), np.uint8)
        # Animal 0 fixed at x 10..18; animal 1 approaches from x 50 to x 20; animal 2 absent from frame 3 on.
        mask[t, 0] = _square(S, 4, 4, 8)
        origin[t, 0] = (6, 20)
        mask[t, 1] = _square(S, 4, 4, 8)
        origin[t, 1] = (46 - 6 * t, 20)
        if t < 3:
            mask[t, 2] = _square(S, 4, 4, 8)
            origin[t, 2] = (6, 48)
        frame[24:32, 10:18] = 200
        frames.append(frame)
    cfg = SocialConfig(dilation_px=3, overlap_threshold=0.1, crop_size=32)
    out = social_arrays(iter(frames), mask, origin, cfg)
    assert pairs(A) == [(0, 1), (0, 2), (1, 2)]
    p01 = out["pair_event"][:, 0]
    assert not p01[0] and p01[-1], out["pair_overlap"][:, 0]
    assert np.all(np.diff(out["pair_overlap"][:, 0]) >= 0)
    # Pair (0, 2) is 28 px apart: never an event; absent animal 2 gives NaN centres.
    assert not out["pair_event"][:, 1].any()
    assert np.isnan(out["pair_com"][3:, 1]).all() and np.isfinite(out["pair_com"][:3, 1]).all()
    t = int(np.flatnonzero(p01)[0])
    assert out["pair_crop"][t, 0].shape == (32, 32)
    assert out["pair_crop"][t, 0].max() == 200
    assert (out["pair_crop"][~out["pair_event"]] == 0).all()


def test_event_table_names_pairs_by_identity_and_splits_when_identities_change():
    T = 10
    event = np.zeros((T, 1), bool)
    event[2:8, 0] = True
    overlap = event.astype(np.float32) * 0.5
    names = np.array([["male", "female"]] * T, dtype=object)
    names[5:] = [["female", "male"]]     # slots swap identities: same pair, no split
    table = event_table(event, overlap, [(0, 1)], names, fps=10.0, video_id="v", cfg=SocialConfig())
    assert len(table) == 1
    row = table.iloc[0]
    assert (row.animal_a, row.animal_b, row.start_frame, row.stop_frame) == ("female", "male", 2, 8)
    assert row.duration_s == pytest.approx(0.6)
    names[5:] = [["male", "unknown"]]
    table = event_table(event, overlap, [(0, 1)], names, fps=10.0, video_id="v", cfg=SocialConfig())
    assert list(zip(table.start_frame, table.stop_frame)) == [(2, 5), (5, 8)]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="overlap_threshold"):
        SocialConfig(overlap_threshold=0)
    with pytest.raises(ValueError, match="unknown social option"):
        SocialConfig.from_dict({"dilation": 3})

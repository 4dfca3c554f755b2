"""Ethogram postprocessing, bout statistics and behaviour metrics: hand-made sequences, hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sipec_models.behaviour_metrics import (circular_shift_chance, classification_scores, clip_scores,
                                            frame_accuracy, macro_f1)
from sipec_models.ethogram import (add_background, binarize, bouts, choose_thresholds, min_bout_lengths,
                                   postprocess, remove_short_bouts, run_lengths, states, time_budget,
                                   transition_matrix)


def _b(*rows):
    """Columns given as 0/1 strings -> (T, C) bool."""
    return np.array([[c == "1" for c in r] for r in rows]).T


# --------------------------------------------------------------------------- runs


def test_run_lengths():
    x = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1], bool)
    s0, s1 = run_lengths(x)
    assert s0.tolist() == [1, 4, 7] and s1.tolist() == [3, 5, 10]
    s0, s1 = run_lengths(x, video_ids=[0] * 8 + [1] * 2)  # the last run is cut at the new video
    assert s0.tolist() == [1, 4, 7, 8] and s1.tolist() == [3, 5, 8, 10]
    assert [a.tolist() for a in run_lengths(np.zeros(4, bool))] == [[], []]
    assert [a.tolist() for a in run_lengths(np.ones(4, bool))] == [[0], [4]]
    with pytest.raises(ValueError, match="video_ids"):
        run_lengths(x, video_ids=[0, 1])


# --------------------------------------------------------------------------- thresholds


def test_choose_thresholds_hand_computed():
    probs = np.array([[0.1, 0.1, 0.3], [0.4, 0.9, 0.6], [0.35, 0.2, 0.7], [0.8, 0.95, 0.1]])
    labels = np.array([[0, 0, 0], [1, 1, 0], [0, 0, 0], [1, 1, 0]])
    grid = np.array([0.2, 0.3, 0.38, 0.5, 0.9])
    # column 0: F1 0.8, 0.8, 1.0, 2/3, 0 -> 0.38; column 1: F1 1 at 0.3, 0.38 and 0.5 -> the one
    # closest to 0.5; column 2 has no positives -> 0.5.
    np.testing.assert_allclose(choose_thresholds(probs, labels, grid), [0.38, 0.5, 0.5])
    # two thresholds equally close to 0.5 with the same F1: the lower one
    assert choose_thresholds([[0.1], [0.7]], [[0], [1]], np.array([0.4, 0.6]))[0] == pytest.approx(0.4)


def test_choose_thresholds_default_grid():
    # F1 = 1 for any threshold in (0.2, 0.265]; the grid value closest to 0.5 is 0.26
    t = choose_thresholds(np.array([[0.2], [0.3], [0.265], [0.1]]), np.array([[0], [1], [1], [0]]))
    assert t[0] == pytest.approx(0.26)
    with pytest.raises(ValueError, match="shape"):
        choose_thresholds(np.zeros((3, 2)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="0/1"):
        choose_thresholds(np.zeros((2, 1)), np.array([[2], [0]]))


def test_binarize_is_inclusive():
    out = binarize(np.array([[0.5, 0.2], [0.49, 0.9]]), [0.5, 0.9])
    assert out.tolist() == [[True, False], [False, True]]


# --------------------------------------------------------------------------- short bouts


def test_remove_short_bouts_per_behaviour():
    calls = _b("1101110010", "1000111011")
    out = remove_short_bouts(calls, [2, 3])
    assert out.T.astype(int).tolist() == [[1, 1, 0, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]]
    assert calls[8, 0]  # the input is left alone
    assert (remove_short_bouts(calls, 1) == calls).all() and (remove_short_bouts(calls, 0) == calls).all()


def test_remove_short_bouts_fill_gaps():
    calls = _b("1101110010")
    # gap [2, 3) (1 frame) is closed, gap [6, 8) (2 frames) is not; then the 1-frame bout at 8 goes
    assert remove_short_bouts(calls, 2, fill_gaps=2)[:, 0].astype(int).tolist() == [1] * 6 + [0] * 4
    assert remove_short_bouts(calls, 2, fill_gaps=3)[:, 0].astype(int).tolist() == [1] * 9 + [0]
    # gaps at the start and end are never filled
    edge = _b("01010")
    assert remove_short_bouts(edge, 1, fill_gaps=5)[:, 0].astype(int).tolist() == [0, 1, 1, 1, 0]


def test_remove_short_bouts_video_boundaries():
    calls = _b("1111")
    assert remove_short_bouts(calls, 3).all()
    assert not remove_short_bouts(calls, 3, video_ids=[0, 0, 1, 1]).any()  # two bouts of 2 frames
    gap = _b("1001")
    assert remove_short_bouts(gap, 1, fill_gaps=5).all()
    assert remove_short_bouts(gap, 1, fill_gaps=5, video_ids=["a", "a", "b", "b"])[:, 0].tolist() == [
        True, False, False, True]
    with pytest.raises(ValueError, match="min_frames"):
        remove_short_bouts(calls, [1, 2])


def test_min_bout_lengths():
    labels = _b("1011100111110110", "0000000000000000").astype(np.uint8)  # bout lengths 1, 3, 5, 2
    assert min_bout_lengths(labels).tolist() == [1, 1]
    assert min_bout_lengths(labels, quantile=0.5).tolist() == [2, 1]  # sorted 1 2 3 5, 'lower' median
    assert min_bout_lengths(labels, quantile=1.0).tolist() == [5, 1]
    vids = [0] * 10 + [1] * 6  # cuts the 5-frame bout (frames 7-11) into 3 + 2
    assert min_bout_lengths(labels, quantile=1.0, video_ids=vids).tolist() == [3, 1]


def test_add_background_and_postprocess():
    calls, names = add_background(_b("100", "001"), ["a", "b"])
    assert names == ["a", "b", "background"]
    assert calls[:, 2].tolist() == [False, True, False]
    with pytest.raises(ValueError, match="background"):
        add_background(calls, names)
    probs = np.array([[0.9, 0.1], [0.8, 0.1], [0.2, 0.1], [0.7, 0.6], [0.1, 0.1]])
    table = postprocess(probs, [0.5, 0.5], [2, 1], ["a", "b"])
    assert list(table.columns) == ["a", "b", "background"] and table.index.name == "frame"
    assert table.astype(int).to_numpy().tolist() == [[1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0, 1]]
    assert list(postprocess(probs, 0.5, 1, ["a", "b"], background=False).columns) == ["a", "b"]


# --------------------------------------------------------------------------- statistics


def test_bouts_hand_computed():
    calls = _b("110010", "011100")
    table = bouts(calls, ["a", "b"], fps=2.0, start_frame=10)
    assert list(table.columns) == ["behaviour", "start", "stop", "n_frames", "start_s", "stop_s", "duration_s"]
    assert table["behaviour"].tolist() == ["a", "b", "a"]
    assert table["start"].tolist() == [10, 11, 14]
    assert table["stop"].tolist() == [12, 14, 15]
    assert table["n_frames"].tolist() == [2, 3, 1]
    np.testing.assert_allclose(table["start_s"], [5.0, 5.5, 7.0])
    np.testing.assert_allclose(table["stop_s"], [6.0, 7.0, 7.5])
    np.testing.assert_allclose(table["duration_s"], [1.0, 1.5, 0.5])
    # same start: the order of names, not the alphabet; a DataFrame brings its own names
    same = bouts(pd.DataFrame(_b("11", "10"), columns=["z", "a"]), None, fps=1.0)
    assert same["behaviour"].tolist() == ["z", "a"]
    assert len(bouts(np.zeros((3, 1), bool), ["x"], 1.0)) == 0
    with pytest.raises(ValueError, match="fps"):
        bouts(calls, ["a", "b"], fps=0)


def test_time_budget_hand_computed():
    calls = _b("110010", "011100", "000000")
    table = time_budget(calls, ["a", "b", "c"], fps=2.0).set_index("behaviour")
    assert table["frames"].tolist() == [3, 3, 0]
    np.testing.assert_allclose(table["seconds"], [1.5, 1.5, 0.0])
    np.testing.assert_allclose(table["fraction"], [0.5, 0.5, 0.0])
    assert table["n_bouts"].tolist() == [2, 1, 0]
    np.testing.assert_allclose(table.loc[["a", "b"], "mean_bout_s"], [0.75, 1.5])  # a: 1.0 s and 0.5 s
    np.testing.assert_allclose(table.loc[["a", "b"], "median_bout_s"], [0.75, 1.5])
    assert math.isnan(table.loc["c", "mean_bout_s"]) and math.isnan(table.loc["c", "median_bout_s"])


def test_transition_matrix_hand_computed():
    s = np.array([0, 0, 1, 1, 2, 0, 0, 2, 2, 1])  # a->b, b->c, c->a, a->c, c->b
    counts = transition_matrix(s, ["a", "b", "c"], normalize=False)
    assert counts.to_numpy().tolist() == [[0, 1, 1], [0, 0, 1], [1, 1, 0]]
    assert list(counts.index) == ["a", "b", "c"] and counts.index.name == "from"
    probs = transition_matrix(s, ["a", "b", "c"])
    np.testing.assert_allclose(probs.to_numpy(), [[0, 0.5, 0.5], [0, 0, 1], [0.5, 0.5, 0]])
    onehot = np.eye(3, dtype=bool)[s]  # the same as calls
    np.testing.assert_array_equal(transition_matrix(onehot, ["a", "b", "c"], False).to_numpy(), counts.to_numpy())


def test_transition_matrix_gaps_videos_and_empty_rows():
    names = ["a", "b", "c"]
    # frames without a call are dropped: a, -, a is no transition, a, -, b is one
    calls = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0]], bool)
    assert states(calls).tolist() == [0, -1, 0, -1, 1]
    counts = transition_matrix(calls, names, normalize=False)
    assert counts.to_numpy().tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 0]]
    norm = transition_matrix(calls, names)
    assert norm.loc["a", "b"] == 1.0 and np.isnan(norm.loc["b"]).all()  # b is never left
    # no transition across the video boundary between frames 1 and 2
    by_video = transition_matrix(np.array([0, 1, 2, 0]), names, normalize=False, video_ids=[0, 0, 1, 1])
    assert by_video.to_numpy().tolist() == [[0, 1, 0], [0, 0, 0], [1, 0, 0]]
    # probabilities: the argmax
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    assert transition_matrix(probs, names, normalize=False).loc["a", "c"] == 1
    with pytest.raises(ValueError, match="names"):
        transition_matrix(np.array([0, 3]), names)


# --------------------------------------------------------------------------- metrics

Y_TRUE = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
Y_PRED = np.array([[1, 0], [0, 1], [0, 1], [0, 1]])
Y_PROB = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])


def test_classification_scores_hand_computed():
    s = classification_scores(Y_TRUE, Y_PRED, Y_PROB, ["a", "b"])
    a, b = s["per_behaviour"]["a"], s["per_behaviour"]["b"]
    # a: tp 1, fp 0, fn 1; b: tp 2, fp 1, fn 0
    assert (a["precision"], a["recall"], a["f1"]) == pytest.approx((1.0, 0.5, 2 / 3))
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((2 / 3, 1.0, 0.8))
    assert s["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert s["accuracy"] == pytest.approx(0.75) and s["frame_accuracy"] == pytest.approx(0.75)
    assert a["auroc"] == pytest.approx(1.0) and b["auroc"] == pytest.approx(1.0)
    # r of (0.9, 0.4, 0.2, 0.3) with (1, 1, 0, 0): 0.4 / sqrt(0.29 * 1)
    assert a["pearson_r"] == pytest.approx(0.4 / math.sqrt(0.29))
    assert (a["support"], a["n_called"], b["support"], b["n_called"]) == (2, 1, 2, 3)


def test_classification_scores_edge_cases():
    # without probabilities: no AUROC, correlation of the calls
    s = classification_scores(Y_TRUE, Y_PRED, None, ["a", "background"], exclude=("background",))
    assert s["per_behaviour"]["a"]["auroc"] is None
    assert s["per_behaviour"]["a"]["pearson_r"] == pytest.approx(1 / math.sqrt(3))
    assert s["macro_f1"] == pytest.approx(2 / 3) and s["macro_f1_names"] == ["a"]
    # a behaviour never present: AUROC None, F1 0; calls constant: correlation None
    y_true = np.array([[1, 0], [0, 0], [1, 0]])
    y_pred = np.array([[1, 0], [1, 0], [1, 0]])
    s = classification_scores(y_true, y_pred, y_pred.astype(float), ["a", "b"])
    assert s["per_behaviour"]["b"]["auroc"] is None and s["per_behaviour"]["b"]["f1"] == 0.0
    assert s["per_behaviour"]["a"]["pearson_r"] is None
    assert s["frame_accuracy"] is None  # frame 1 has no true behaviour
    with pytest.raises(ValueError, match="0/1"):
        classification_scores(Y_TRUE, Y_PROB, None, ["a", "b"])
    with pytest.raises(ValueError, match="names"):
        classification_scores(Y_TRUE, Y_PRED, None, ["a"])


def test_frame_accuracy_ties_are_wrong():
    y_true = np.eye(3, dtype=int)
    calls = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]])  # right, tie, no call
    assert frame_accuracy(y_true, calls) == pytest.approx(1 / 3)


def test_clip_scores_hand_computed():
    s = clip_scores(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), ["a", "b", "c"])
    assert s["accuracy"] == pytest.approx(0.5)
    assert s["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    assert s["f1"] == pytest.approx({"a": 2 / 3, "b": 0.5, "c": 0.0})
    assert s["macro_f1"] == pytest.approx((2 / 3 + 0.5) / 3)
    with pytest.raises(ValueError, match="y_pred"):
        clip_scores(np.array([0, 1]), np.array([0, 3]), ["a", "b", "c"])


def _random_bouts(n: int, n_states: int, rng) -> np.ndarray:
    """``(n, n_states)`` one-hot labels made of bouts of random length (1-40 frames) and random state."""
    s = np.repeat(rng.integers(0, n_states, n), rng.integers(1, 41, n))[:n]
    return np.eye(n_states, dtype=np.int8)[s]


def test_circular_shift_chance_of_perfect_predictor():
    rng = np.random.default_rng(1)
    y = _random_bouts(1500, 3, rng)
    vids = np.repeat([0, 1, 2], 500)
    assert macro_f1(y, y) == 1.0
    chance = circular_shift_chance(y, y, vids, macro_f1, n_shifts=10)
    assert len(chance["values"]) == 10
    assert 0.1 < chance["mean"] < 0.6  # about 1/3 for three balanced states
    assert chance["std"] == pytest.approx(np.std(chance["values"]))
    assert circular_shift_chance(y, y, vids, n_shifts=10) == chance  # macro F1 is the default, seed fixed


def test_circular_shift_offsets_stay_in_range_and_in_video():
    n = 100
    y = np.arange(2 * n)[:, None]
    vids = np.repeat(["a", "b"], n)
    seen = []

    def score(shifted, pred):
        assert set(shifted[:n, 0]) == set(range(n))  # each video's labels stay in that video
        k0, k1 = (pred[0, 0] - shifted[0, 0]) % n, (pred[n, 0] - shifted[n, 0]) % n
        seen.extend([k0, k1])
        return float(k0)

    circular_shift_chance(y, y, vids, score, n_shifts=30, min_shift_fraction=0.2)
    assert min(seen) >= 20 and max(seen) <= 80 and len(set(seen)) > 5
    with pytest.raises(ValueError, match="too few"):
        circular_shift_chance(y[:1], y[:1], None, score)


def test_one_behaviour_column_is_scored_on_its_positive_frames():
    """A single column (e.g. freezing) is scored on its 1s, not as a two-class problem."""
    from sipec_models.behaviour_metrics import macro_f1

    y_true = np.array([[1], [1], [0], [0], [0], [0]])
    y_pred = np.array([[1], [0], [1], [0], [0], [0]])
    s = classification_scores(y_true, y_pred, None, ["freezing"])["per_behaviour"]["freezing"]
    # TP 1, FP 1, FN 1: precision = recall = F1 = 0.5, support 2.
    assert (s["precision"], s["recall"], s["f1"], s["support"]) == (0.5, 0.5, 0.5, 2)
    assert macro_f1(y_true, y_pred) == 0.5

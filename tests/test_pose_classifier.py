"""Pose-based behaviour classifier: focal losses, pose features (cm, s), window stacking, MLP training and checkpoints.

Hand-made keypoint sequences with known speeds, orientations and areas; hand-computed loss values; a small
synthetic 'still' vs 'moving' training run scored against chance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sipec_models.losses import binary_focal_loss, focal_loss
from sipec_models.nets.pose_mlp import PoseMLP
from sipec_models.pose_features import (
    centred_difference, convex_hull_area, fill_missing, interpolate_gaps, pose_features, stack_names, stack_window,
    window_offsets,
)

torch.set_num_threads(1)


# --------------------------------------------------------------------------- losses


def test_focal_loss_hand_values():
    # p_t = 0.5: -alpha (1 - 0.5)^3 log 0.5
    loss = focal_loss(torch.zeros(1, 2), torch.tensor([0]), gamma=3.0, alpha=0.5)
    assert float(loss) == pytest.approx(0.5 * 0.125 * math.log(2), rel=1e-6)
    # p_t = e^2 / (e^2 + 1) for logits (2, 0), target 0; gamma 1, alpha 1
    p = math.exp(2) / (math.exp(2) + 1)
    loss = focal_loss(torch.tensor([[2.0, 0.0]]), torch.tensor([0]), gamma=1.0, alpha=1.0)
    assert float(loss) == pytest.approx(-(1 - p) * math.log(p), rel=1e-6)
    # easy samples count less than with cross-entropy
    logits, target = torch.tensor([[4.0, 0.0], [0.0, 0.5]]), torch.tensor([0, 0])
    ce = F.cross_entropy(logits, target, reduction="none")
    fl = torch.stack([focal_loss(logits[i:i + 1], target[i:i + 1], 2.0, 1.0) for i in range(2)])
    assert (fl / ce)[0] < (fl / ce)[1] < 1


def test_focal_loss_gamma0_is_cross_entropy_and_ignores_unlabelled():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 3, generator=g)
    target = torch.tensor([0, 1, 2, 1, 0, -1, 2, 2, 1, -1, 0, 1])
    keep = target >= 0
    ce = F.cross_entropy(logits[keep], target[keep])
    assert float(focal_loss(logits, target, gamma=0.0, alpha=1.0)) == pytest.approx(float(ce), rel=1e-6)
    assert float(focal_loss(logits, target, gamma=0.0, alpha=0.5)) == pytest.approx(0.5 * float(ce), rel=1e-6)
    w = torch.tensor([1.0, 2.0, 0.5])
    cew = F.cross_entropy(logits[keep], target[keep], weight=w)
    assert float(focal_loss(logits, target, 0.0, 1.0, weight=w)) == pytest.approx(float(cew), rel=1e-6)
    # nothing labelled: 0, still differentiable
    x = logits.clone().requires_grad_(True)
    loss = focal_loss(x, torch.full((12,), -1), 3.0, 0.5)
    loss.backward()
    assert float(loss.detach()) == 0 and x.grad is not None
    with pytest.raises(ValueError, match="class indices"):
        focal_loss(logits, torch.full((12,), 3))
    with pytest.raises(ValueError, match=r"\(N,\)"):
        focal_loss(logits, torch.zeros(5, dtype=torch.long))


def test_binary_focal_loss_values():
    logits = torch.tensor([[0.0, 1.5], [-2.0, 0.3]])
    target = torch.tensor([[1.0, 0.0], [1.0, float("nan")]])
    keep = ~torch.isnan(target)
    bce = F.binary_cross_entropy_with_logits(logits[keep], target[keep])
    assert float(binary_focal_loss(logits, target, 0.0, 0.5)) == pytest.approx(0.5 * float(bce), rel=1e-6)
    pw = torch.tensor([3.0, 0.5])
    bce_pw = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(target), pos_weight=pw, reduction="none")
    expect = 0.5 * float(bce_pw[keep].mean())
    assert float(binary_focal_loss(logits, target, 0.0, 0.5, pos_weight=pw)) == pytest.approx(expect, rel=1e-6)
    # one positive at p = 0.5: -alpha (1 - p)^gamma log p
    one = binary_focal_loss(torch.zeros(1, 1), torch.ones(1, 1), gamma=2.0, alpha=0.25)
    assert float(one) == pytest.approx(0.25 * 0.25 * math.log(2), rel=1e-6)
    # label smoothing: target 1 -> 0.9 (gamma 0: half the BCE against 0.9)
    sm = binary_focal_loss(torch.tensor([[1.0]]), torch.ones(1, 1), 0.0, 0.5, label_smoothing=0.1)
    ref = F.binary_cross_entropy_with_logits(torch.tensor([[1.0]]), torch.tensor([[0.9]]))
    assert float(sm) == pytest.approx(0.5 * float(ref), rel=1e-6)
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        binary_focal_loss(logits, torch.full((2, 2), 0.5))


# --------------------------------------------------------------------------- features


def _moving_body(T: int, fps: float, px_per_frame: float) -> np.ndarray:
    """(T, 3, 2) px: tail, head 40 px ahead along +x, a side point; all moving along +x."""
    t = np.arange(T, dtype=float)[:, None]
    base = np.array([[100.0, 50.0], [140.0, 50.0], [120.0, 60.0]])
    pts = np.repeat(base[None], T, axis=0)
    pts[..., 0] += t * px_per_frame
    return pts


@pytest.mark.parametrize("fps", [50.0, 25.0])
def test_speeds_in_cm_per_second(fps):
    px_per_frame, px_per_cm = 2.0, 10.0
    pts = _moving_body(40, fps, px_per_frame)
    feats, names = pose_features(pts, fps, px_per_cm, ["tail", "head", "side"], body_axis=("tail", "head"),
                                 speed_window_s=[0.1, 0.2])
    expect = px_per_frame * fps / px_per_cm  # cm/s
    for n in ("speed_tail_0.1s", "speed_head_0.2s", "speed_centre_0.1s", "speed_side_0.2s"):
        np.testing.assert_allclose(feats[:, names.index(n)], expect, rtol=1e-5)
    np.testing.assert_allclose(feats[:, names.index("turn_0.1s")], 0, atol=1e-6)
    logf, lnames = pose_features(pts, fps, px_per_cm, body_axis=(0, 1), log_offset=0.01, groups=["speed"])
    assert all(n.startswith("logspeed_") for n in lnames)
    np.testing.assert_allclose(logf, np.log(expect + 0.01), rtol=1e-5)


def test_centred_difference_window_and_edges():
    x = np.arange(10.0) ** 2  # dx/dt = 2t per frame at fps 1
    d = centred_difference(x, fps=1.0, window_s=2.0)  # h = 1 frame
    np.testing.assert_allclose(d[1:-1], 2 * np.arange(1, 9))
    assert d[0] == pytest.approx(1.0) and d[-1] == pytest.approx(17.0)  # one-sided at the ends


def test_rotation_into_body_axis_is_egocentric():
    names = ["tail", "head", "side"]
    # Body pointing along +y (image), centre = mean of tail and head = (0, 5); side 5 px in +x.
    pts = np.array([[[0.0, 0.0], [0.0, 10.0], [5.0, 5.0]]] * 3)
    f, fn = pose_features(pts, 10.0, 10.0, names, body_axis=("tail", "head"), centre=["tail", "head"],
                          groups=["position"])
    row = dict(zip(fn, f[0]))
    assert row["x_head"] == pytest.approx(0.5) and row["y_head"] == pytest.approx(0.0, abs=1e-7)
    assert row["x_tail"] == pytest.approx(-0.5)
    # left of the animal is +90 degrees from the axis: (-1, 0) here, so a point at +x is at y' = -0.5 cm
    assert row["x_side"] == pytest.approx(0.0, abs=1e-7) and row["y_side"] == pytest.approx(-0.5)
    # the same pose rotated by 37 degrees and moved gives the same egocentric features
    a = np.deg2rad(37.0)
    R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    moved = pts @ R.T + np.array([300.0, -40.0])
    g, _ = pose_features(moved, 10.0, 10.0, names, body_axis=("tail", "head"), centre=["tail", "head"],
                         groups=["position"])
    np.testing.assert_allclose(g, f, atol=1e-5)


def test_area_distance_angle_of_a_square():
    sq = np.array([[0.0, 0.0], [20.0, 0.0], [20.0, 20.0], [0.0, 20.0], [10.0, 10.0]])  # + an inner point
    pts = np.repeat(sq[None], 4, axis=0)
    f, fn = pose_features(pts, 30.0, 10.0, body_axis=(0, 1), pairs=[(0, 1), (0, 2)], triplets=[(1, 0, 3)],
                          segments=[(0, 3)])
    row = dict(zip(fn, f[0]))
    assert row["area"] == pytest.approx(4.0)  # (2 cm)^2
    assert row["dist_node0_node1"] == pytest.approx(2.0)
    assert row["dist_node0_node2"] == pytest.approx(2 * math.sqrt(2))
    assert abs(row["angle_node1_node0_node3_sin"]) == pytest.approx(1.0)
    assert row["angle_node1_node0_node3_cos"] == pytest.approx(0.0, abs=1e-7)
    assert row["seg_node0_node3_cos"] == pytest.approx(0.0, abs=1e-7)  # perpendicular to the axis (0 -> 1)
    line = np.array([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]])
    assert convex_hull_area(line)[0] == 0.0 and convex_hull_area(line[:, :2])[0] == 0.0


def test_missing_keypoints_are_interpolated_and_filled():
    fps = 20.0
    pts = _moving_body(60, fps, 1.0)
    scores = np.ones(pts.shape[:2])
    pts[10:13, 0] = np.nan  # short gap: interpolated, speed unchanged
    scores[30:33, 1] = 0.01  # low likelihood: missing, then interpolated
    pts[40:60, 2] = np.nan  # gap to the end: filled, never NaN
    f, fn = pose_features(pts, fps, 10.0, body_axis=(0, 1), scores=scores, min_score=0.1, max_gap_s=0.5)
    assert np.isfinite(f).all()
    np.testing.assert_allclose(f[5:25, fn.index("speed_node0_0.1s")], 2.0, rtol=1e-5)
    np.testing.assert_allclose(f[25:38, fn.index("speed_node1_0.1s")], 2.0, rtol=1e-5)
    assert f[50, fn.index("missing")] == pytest.approx(1 / 3)
    x = np.array([0.0, np.nan, np.nan, 3.0, np.nan, np.nan, np.nan, np.nan, 8.0, np.nan])
    np.testing.assert_allclose(interpolate_gaps(x, max_gap=2)[:4], [0, 1, 2, 3])
    assert np.isnan(interpolate_gaps(x, max_gap=2)[4:8]).all() and np.isnan(interpolate_gaps(x)[9])
    np.testing.assert_allclose(fill_missing(np.array([[np.nan, np.nan], [1.0, np.nan], [np.nan, np.nan]])),
                               [[1, 0], [1, 0], [1, 0]])
    with pytest.raises(ValueError, match="unknown node"):
        pose_features(pts, fps, 10.0, ["a", "b", "c"], body_axis=("a", "nose"))


# --------------------------------------------------------------------------- windows


def test_stack_window_edges_videos_and_seconds():
    x = np.arange(6, dtype=float)[:, None] * np.array([[1.0, 10.0]])  # (6, 2): frame t -> (t, 10 t)
    s = stack_window(x, half_width=2)
    assert s.shape == (6, 10)
    steps = s.reshape(6, 5, 2)[..., 0]
    np.testing.assert_array_equal(steps[0], [0, 0, 0, 1, 2])  # edge padding at the start
    np.testing.assert_array_equal(steps[3], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(steps[5], [3, 4, 5, 5, 5])
    v = stack_window(x, 1, video_ids=[0, 0, 0, 1, 1, 1]).reshape(6, 3, 2)[..., 0]
    np.testing.assert_array_equal(v[2], [1, 2, 2])  # no step into the next video
    np.testing.assert_array_equal(v[3], [3, 3, 4])
    assert stack_names(["a", "b"], 1) == ["a@-1", "b@-1", "a@+0", "b@+0", "a@+1", "b@+1"]
    # window in seconds: the same number of steps covering the same time at any frame rate
    np.testing.assert_array_equal(window_offsets(3, window_s=0.3, fps=50), [-15, -10, -5, 0, 5, 10, 15])
    np.testing.assert_array_equal(window_offsets(3, window_s=0.3, fps=10), [-3, -2, -1, 0, 1, 2, 3])
    with pytest.raises(ValueError, match="fps"):
        window_offsets(3, window_s=0.3)
    with pytest.raises(ValueError, match="contiguous"):
        stack_window(x, 1, video_ids=[0, 1, 0, 1, 0, 1])


def test_pose_mlp_standardisation_and_members():
    net = PoseMLP(4, 3, hidden=(8, 6), dropout=0.0, n_members=2).eval()
    x = np.random.default_rng(0).normal(5.0, 3.0, (50, 4))
    net.set_standardisation(x)
    np.testing.assert_allclose(net.mean.numpy(), x.mean(0), rtol=1e-5)
    out = net(torch.tensor(x, dtype=torch.float32))
    assert out.shape == (50, 3)
    torch.testing.assert_close(out, net.member_logits(torch.tensor(x, dtype=torch.float32)).mean(0))
    with pytest.raises(ValueError, match="expects"):
        net(torch.zeros(2, 5))


# --------------------------------------------------------------------------- training


def _still_or_moving(T: int, fps: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(points (T, 4, 2) px, labels (T,)): bouts of 1.5-2.5 s still (label 1, only jitter) between bouts of walking."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(T, np.int64)
    t = 0
    still = bool(rng.integers(2))
    while t < T:
        n = int(rng.choice([1.5, 2.0, 2.5]) * fps)
        labels[t:t + n] = still
        t += n
        still = not still
    heading = np.cumsum(rng.normal(0, 0.05, T) * (labels == 0))  # turns only while walking
    speed = np.where(labels == 1, 0.0, 80.0) / fps  # px per frame (8 cm/s at 10 px/cm)
    centre = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], 1) * speed[:, None], axis=0) + 300
    body = np.array([[-15.0, 0.0], [15.0, 0.0], [0.0, 6.0], [0.0, -6.0]])  # tail, head, left, right
    c, s = np.cos(heading), np.sin(heading)
    R = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], 1)  # (T, 2, 2)
    pts = centre[:, None] + np.einsum("tij,kj->tki", R, body) + rng.normal(0, 0.5, (T, 4, 2))
    return pts, labels


def _small_cfg(**train):
    from sipec_models.training.config import load_model_config

    over = ["model.hidden=[32,16]", "train.max_epochs=15", "train.patience=4", "train.min_epochs=2",
            "features.half_width=5", "features.body_axis=[0,1]", "train.batch_size=128",
            "postprocess.tune_on=validation", "train.refit=false"]
    return load_model_config("pose_classifier", over + [f"train.{k}={v}" for k, v in train.items()])


def test_training_beats_chance_and_checkpoint_round_trip(tmp_path):
    from sipec_models.behaviour_metrics import circular_shift_chance
    from sipec_models.training.pose_classifier import (
        features_from_keypoints, load_pose_classifier, predict_calls, save_pose_classifier, train_pose_classifier,
    )

    fps = 20.0
    pts, labels = _still_or_moving(1400, fps, seed=1)
    cfg = _small_cfg()
    feats, names = features_from_keypoints(pts, fps, 10.0, cfg, ["tail", "head", "left", "right"])
    assert np.isfinite(feats).all() and len(names) == feats.shape[1]
    train, test = slice(0, 1000), slice(1000, None)
    model = train_pose_classifier(feats[train], labels[train], cfg, fps=fps, names=["moving", "still"],
                                  feature_names=names)
    probs, calls = predict_calls(model, feats[test])
    assert probs.shape == (400, 2) and np.allclose(probs.sum(1), 1)
    y = labels[test].astype(bool)

    def f1(a, b):
        a, b = np.asarray(a, bool).ravel(), np.asarray(b, bool).ravel()
        return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)

    score = f1(y, calls[:, 1])
    chance = circular_shift_chance(y[:, None], calls[:, 1:2], score_fn=f1, n_shifts=10)["mean"]
    assert score > 0.9 and score > chance + 0.3, (score, chance)
    assert model.best_epoch >= 0 and len(model.history) >= 2 and 0 < model.thresholds[1] < 1
    assert model.min_frames[1] >= 1

    path = tmp_path / "pose_classifier.pt"
    save_pose_classifier(model, path, meta={"note": "test"})
    loaded = load_pose_classifier(path)
    p2, c2 = predict_calls(loaded, feats[test])
    np.testing.assert_allclose(p2, probs, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(c2, calls)
    np.testing.assert_array_equal(loaded.thresholds, model.thresholds)
    np.testing.assert_array_equal(loaded.min_frames, model.min_frames)
    assert loaded.names == ["moving", "still"] and loaded.feature_names == names and loaded.meta == {"note": "test"}
    with pytest.raises(ValueError, match="features must be"):
        predict_calls(loaded, feats[test, :-1])
    torch.save({"format": "other"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a pose-classifier checkpoint"):
        load_pose_classifier(tmp_path / "bad.pt")


def test_crossfit_tuning_and_multilabel_training():
    from sipec_models.training.pose_classifier import (
        features_from_keypoints, predict_proba, train_pose_classifier,
    )

    fps = 20.0
    pts, labels = _still_or_moving(900, fps, seed=2)
    cfg = _small_cfg(max_epochs=6, refit="true")
    cfg.postprocess.tune_on = "crossfit"
    cfg.postprocess.crossfit_folds = 3
    feats, _ = features_from_keypoints(pts, fps, 10.0, cfg)
    model = train_pose_classifier(feats, labels, cfg, fps=fps)
    assert model.crossfit is not None and model.crossfit["f1"][1] > 0.8
    assert model.min_frames[1] in model.crossfit["min_frame_candidates"]
    # (T, C) labels: multi-label, one sigmoid per behaviour; NaN = unlabelled
    multi = np.stack([labels, 1 - labels], 1).astype(float)
    multi[:50] = np.nan
    cfg = _small_cfg(max_epochs=3)
    m2 = train_pose_classifier(feats, multi, cfg, fps=fps)
    p = predict_proba(m2, feats)
    assert m2.multilabel and p.shape == (900, 2) and ((p >= 0) & (p <= 1)).all()
    cfg.postprocess.tune_on = "test_block"
    with pytest.raises(ValueError, match="tune_on"):
        train_pose_classifier(feats, labels, cfg, fps=fps)
    with pytest.raises(ValueError, match="frames of features"):
        train_pose_classifier(feats, labels[:-1], _small_cfg(), fps=fps)


def test_validation_block_purge_and_postprocessing_tuning():
    from sipec_models.training.pose_classifier import _purge, tune_postprocessing, validation_block

    v = validation_block(10, 0.2, video_ids=[0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(np.flatnonzero(v), [8, 9])  # end of the longest video
    v = validation_block(10, 0.2, video_ids=[0] * 6 + [1] * 4)
    np.testing.assert_array_equal(np.flatnonzero(v), [4, 5])
    train = _purge(v, 2, np.array([0] * 6 + [1] * 4))
    np.testing.assert_array_equal(np.flatnonzero(~train), [2, 3, 4, 5])  # frames 6, 7 are another video
    assert not validation_block(10, 0.0).any()
    # a one-frame blip above 0.5 is a false bout unless short bouts are removed
    probs = np.zeros((40, 1))
    probs[10:20, 0] = 0.9
    probs[30, 0] = 0.9
    y = np.zeros((40, 1), int)
    y[10:20] = 1
    thr, mins, f1 = tune_postprocessing(probs, y, None, [1, 3])
    assert mins[0] == 3 and f1[0] == pytest.approx(1.0) and 0 < thr[0] <= 0.9

"""DeepEthogram TGM sequence model: TGM layer, shapes and size, gradients, receptive field, chunked inference,
training windows, loss reduction, and a toy task that needs temporal context."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from sipec_models.deg_losses import l2_penalty
from sipec_models.ethogram import binarize
from sipec_models.nets.tgm import TGMLayer, TGMSequenceModel
from sipec_models.training.config import load_model_config
from sipec_models.training.deg_sequence import (
    build_sequence_model, check_videos, load_sequence_model, sequence_loss, sequence_probs, train_sequence,
    epoch_windows, training_windows, validation_lengths, validation_score, window_batch,
)

torch.set_num_threads(1)


def test_tgm_layer_kernels_are_gaussian_mixtures():
    torch.manual_seed(0)
    layer = TGMLayer(c_in=3, c_out=4, n_gaussians=5, filter_length=15)
    g = layer.gaussians()
    centres, widths = layer.centres_and_widths()
    assert g.shape == (5, 15) and torch.allclose(g.sum(1), torch.ones(5))
    assert ((centres >= 0) & (centres <= 14)).all() and ((widths >= 0.6) & (widths <= 4.49)).all()
    # each bump peaks at the tap nearest its centre
    assert (g.argmax(1) == centres.round().long()).all()
    k = layer.temporal_kernels()
    assert k.shape == (4, 3, 15) and torch.allclose(k.sum(2), torch.ones(4, 3))
    assert torch.allclose(layer.channel_mix().sum(1), torch.ones(4))  # soft attention over C_in
    y = layer(torch.rand(6, 3, 40))
    assert y.shape == (6, 4, 40)
    # a constant sequence far from the zero-padded ends stays constant (kernels sum to 1, mix rows sum to 1)
    flat = layer(torch.ones(1, 3, 40))
    assert torch.allclose(flat[0, :, 7:-7], torch.ones(4, 26), atol=1e-5)
    conv = TGMLayer(c_in=3, c_out=4, soft_attention=False, kernel="cauchy")  # TGM paper's 1x1 conv + ReLU
    assert (conv(torch.randn(2, 3, 30)) >= 0).all() and conv.mix_bias.shape == (4,)
    with pytest.raises(ValueError, match=r"expects \(B, C_in=3, T\)"):
        layer(torch.rand(6, 2, 40))
    with pytest.raises(ValueError, match="kernel must be one of"):
        TGMLayer(kernel="box")


def test_model_shapes_and_deepethogram_size():
    cfg = load_model_config("deepethogram", ["sequence.train.epochs=3"])
    assert cfg.sequence.train.epochs == 3 and cfg.sequence.train.sequence_length == 180
    m = cfg.sequence.model
    assert (m.num_layers, m.n_gaussians, m.filter_length, m.c_out, m.hidden) == (3, 8, 15, 8, 128)
    assert (m.input_dropout, m.output_dropout, cfg.sequence.loss.l2_alpha) == (0.5, 0.5, 0.01)
    net = build_sequence_model(cfg, 1024, 5).eval()
    n_params = sum(p.numel() for p in net.parameters())
    # two heads 1024 -> 128 -> 5 and three small TGM layers: DeepEthogram reports ~264,000
    assert n_params == 2 * (1024 * 128 + 128 + 128 * 5 + 5) + (16 + 64) + 2 * (16 + 512 + 64) == 264_954
    assert net.receptive_radius == 21
    assert net(torch.rand(2, 37, 1024)).shape == (2, 37, 5)
    assert net(torch.rand(1, 1, 1024)).shape == (1, 1, 5)
    with pytest.raises(ValueError, match=r"expects \(N, T, D=1024\)"):
        net(torch.rand(2, 1024, 37))
    with pytest.raises(ValueError, match="only 'tgm'"):
        build_sequence_model({"arch": "lstm", "model": {}}, 8, 2)


def test_gradient_step_reaches_every_parameter_and_lowers_the_loss():
    torch.manual_seed(0)
    net = TGMSequenceModel(32, 3, hidden=16, input_dropout=0.0, output_dropout=0.0)
    x = torch.randn(4, 60, 32)
    y = (torch.rand(4, 60, 3) < 0.3).float()
    y[0, :10] = float("nan")  # unlabelled frames add nothing

    def loss():
        return sequence_loss(net(x), y, torch.ones(3), 1.0, 0.05) + l2_penalty(net, 0.01)

    before = loss()
    before.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name.startswith("layers."):  # TGM centres, widths and attention learn too
            assert p.grad.abs().sum() > 0, name
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    opt.step()
    with torch.no_grad():
        assert float(loss()) < float(before)


def test_non_causal_receptive_field():
    torch.manual_seed(1)
    net = TGMSequenceModel(6, 2, hidden=8).double().eval()
    x = torch.randn(1, 120, 6, dtype=torch.float64)
    base = net(x)[0, 60]
    for shift, seen in ((-21, True), (-5, True), (5, True), (21, True), (-22, False), (22, False)):
        x2 = x.clone()
        x2[0, 60 + shift] += 10.0
        changed = (net(x2)[0, 60] - base).abs().max() > 1e-12
        assert bool(changed) == seen, shift


def test_chunked_inference_with_halo_equals_whole_sequence():
    torch.manual_seed(2)
    net = TGMSequenceModel(16, 3, hidden=8)
    net.train()
    feats = np.random.default_rng(0).normal(size=(517, 16)).astype(np.float32)
    whole = sequence_probs(net, feats, chunk_length=None)
    assert net.training  # its mode is restored
    assert whole.shape == (517, 3) and ((whole > 0) & (whole < 1)).all()
    direct = torch.sigmoid(net.eval()(torch.from_numpy(feats)[None]))[0].detach().numpy()
    np.testing.assert_allclose(whole, direct, atol=1e-6)
    for chunk, bs in ((64, 3), (97, 1), (1000, 2)):
        np.testing.assert_allclose(sequence_probs(net, feats, chunk_length=chunk, batch_size=bs), whole, atol=1e-5)
    # a halo shorter than the receptive radius (21) changes frames near chunk borders
    assert np.abs(sequence_probs(net, feats, chunk_length=64, halo=5) - whole).max() > 1e-4
    with pytest.raises(ValueError, match=r"features must be \(T, D=16\)"):
        sequence_probs(net, feats[:, :8])


def test_bias_starts_at_class_frequency():
    net = TGMSequenceModel(8, 3, hidden=4).eval()
    net.init_bias([10, 50, 0], [90, 50, 100])
    with torch.no_grad():
        for head in (net.input_head, net.learned_head):
            head.classify.weight.zero_()
    with torch.no_grad():
        p = torch.sigmoid(net(torch.randn(2, 9, 8)))
    np.testing.assert_allclose(p[0, 0].numpy(), [0.1, 0.5, 0.5], atol=1e-6)  # no positives: bias 0


def test_windows_split_and_padding():
    n_val = validation_lengths([100, 7, 3], 0.2)
    assert n_val.tolist() == [20, 1, 1]
    n_train = np.array([80, 6, 0])
    rng = np.random.default_rng(0)
    for _ in range(5):
        wins = training_windows(n_train, 30, rng)
        cover = [np.zeros(n, int) for n in n_train]
        for v, s in wins:
            assert s < n_train[v] and s + 30 > 0
            cover[v][max(s, 0):min(s + 30, n_train[v])] += 1
        assert all((c == 1).all() for c in cover)  # each training frame exactly once, no validation frame
    # an epoch repeats passes (each covering every frame once) until it has min_steps batches, cut at max_steps
    ep = epoch_windows(n_train, 30, 2, 4, 100, rng)
    assert 8 <= len(ep) <= 12 and len(set(ep)) >= 5  # a pass has 4-6 windows: two passes, new offsets
    assert len(epoch_windows(n_train, 30, 1, 1, 3, rng)) == 3
    feats = [np.arange(100 * 2, dtype=np.float32).reshape(100, 2) + 1, np.ones((7, 2), np.float32)]
    labs = [np.ones((100, 1), np.float32), np.zeros((7, 1), np.float32)]
    x, y = window_batch(feats, labs, [(0, -5), (0, 70)], 20, [80, 6])
    assert x.shape == (2, 20, 2) and y.shape == (2, 20, 1)
    assert (x[0, :5] == 0).all() and torch.isnan(y[0, :5]).all() and (x[0, 5] == torch.tensor([1.0, 2.0])).all()
    assert torch.isnan(y[1, 10:]).all() and (y[1, :10] == 1).all()  # frames 80.. are validation: padding
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        check_videos([np.zeros((5, 2))], [np.full((5, 1), 2.0)], ["a"])
    with pytest.raises(ValueError, match="3 frames of features but 4"):
        check_videos([np.zeros((3, 2))], [np.zeros((4, 1))], ["a"])


def test_sequence_loss_sums_frames_and_behaviours_per_window():
    torch.manual_seed(3)
    logits, target = torch.randn(3, 10, 2), (torch.rand(3, 10, 2) < 0.5).float()
    target[1, 4:] = float("nan")
    keep = ~torch.isnan(target)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], target[keep], reduction="sum") / 3
    assert torch.allclose(sequence_loss(logits, target, None, 0.0, 0.0), bce)
    # focal term (gamma 1) down-weights well classified frames
    assert float(sequence_loss(logits, target, None, 1.0, 0.0)) < float(bce)


def test_validation_score_leaves_out_background_and_absent_behaviours():
    labels = np.zeros((40, 3))
    labels[:20, 0] = 1  # groom
    labels[20:, 2] = 1  # background; "rear" (column 1) never happens here
    probs = np.where(labels == 1, 0.8, 0.2)
    probs[:, 1] = 0.9
    labels[0, 1] = np.nan  # a frame not labelled for every behaviour is left out
    s = validation_score(probs, labels, ["groom", "rear", "background"])
    assert s["scores"]["macro_f1_names"] == ["groom"] and s["macro_f1"] == 1.0 and s["n_frames"] == 39
    assert 0.2 < s["thresholds"][0] <= 0.8


def _pulse_videos(n_videos: int, T: int, D: int, seed: int, half: int = 5):
    """Noise features with rare pulses on feature 0; the label at t is 1 if a pulse lies within +-half frames.

    A single frame only shows whether a pulse is at t itself, so a per-frame model cannot see the label.
    """
    rng = np.random.default_rng(seed)
    feats, labs = [], []
    for _ in range(n_videos):
        x = rng.normal(0, 0.5, (T, D)).astype(np.float32)
        pulses = np.flatnonzero(rng.random(T) < 1 / 40)
        x[pulses, 0] += 3.0
        near = np.zeros(T, np.float32)
        for p in pulses:
            near[max(0, p - half):p + half + 1] = 1
        feats.append(x)
        labs.append(near[:, None])
    return feats, labs


def test_toy_task_tgm_beats_per_frame_model(tmp_path):
    feats, labs = _pulse_videos(4, 1500, 8, seed=0)
    test_f, test_y = _pulse_videos(2, 1500, 8, seed=1)
    y_test = np.concatenate(test_y)[:, 0]
    cfg = load_model_config("deepethogram", [
        "sequence.train.epochs=30", "sequence.train.lr=0.03", "sequence.train.batch_size=8",
        "sequence.train.min_steps_per_epoch=1",
        "sequence.model.hidden=16", "sequence.model.input_dropout=0.0", "sequence.model.output_dropout=0.0"])
    path = tmp_path / "sequence.pt"
    model = train_sequence(feats, labs, ["near_pulse"], cfg, out=path, progress=False, device="cpu")
    hist = model.history
    assert hist["n_val_frames"] == 4 * 300 and hist["best_val_macro_f1"] is not None
    assert hist["best_val_macro_f1"] == max(r["val_macro_f1"] for r in hist["epochs"])
    probs = np.concatenate([model.predict_proba(f) for f in test_f])
    tgm_f1 = f1_score(y_test, binarize(probs, model.thresholds)[:, 0])

    # per-frame baseline: logistic regression on the same features, threshold chosen on the same validation blocks
    clf = LogisticRegression(max_iter=1000).fit(np.concatenate([f[:1200] for f in feats]),
                                                np.concatenate([y[:1200] for y in labs])[:, 0])
    th = validation_score(clf.predict_proba(np.concatenate([f[1200:] for f in feats]))[:, 1:],
                          np.concatenate([y[1200:] for y in labs]), ["near_pulse"])["thresholds"]
    frame_f1 = f1_score(y_test, binarize(clf.predict_proba(np.concatenate(test_f))[:, 1:], th)[:, 0])
    assert frame_f1 < 0.5  # calling every frame gives ~0.43, the best a single frame allows
    assert tgm_f1 > 0.75 and tgm_f1 > frame_f1 + 0.25, (tgm_f1, frame_f1)

    loaded = load_sequence_model(path)
    np.testing.assert_allclose(loaded.predict_proba(test_f[0]), model.predict_proba(test_f[0]), atol=1e-6)
    assert loaded.names == ["near_pulse"] and np.allclose(loaded.thresholds, model.thresholds)
    calls = loaded.predict(test_f[0])
    assert isinstance(calls, pd.DataFrame) and list(calls.columns) == ["near_pulse", "background"]
    assert (calls["background"] == ~calls["near_pulse"]).all()


def test_training_without_validation_keeps_last_epoch_and_training_thresholds(tmp_path):
    rng = np.random.default_rng(4)
    feats = [rng.normal(size=(150, 4)).astype(np.float32) for _ in range(2)]
    labs = []
    for f in feats:
        groom = (f[:, :1] > 0.5).astype(np.float32)
        labs.append(np.concatenate([groom, 1 - groom], axis=1))  # with a background column
    labs[1][:20] = np.nan  # unlabelled frames
    cfg = load_model_config("deepethogram", ["data.val_fraction=0", "sequence.train.epochs=2",
                                             "sequence.train.sequence_length=50", "sequence.model.hidden=4"])
    model = train_sequence(feats, labs, ["groom", "background"], cfg, out=tmp_path / "s.pt", progress=False,
                           device="cpu")
    h = model.history
    assert h["best_epoch"] is None and h["best_val_macro_f1"] is None and len(h["epochs"]) == 2
    assert h["n_train_frames"] == 300 and h["n_val_frames"] == 0 and "val_macro_f1" not in h["epochs"][0]
    assert 20 <= h["epochs"][0]["steps"] <= 21  # min_steps_per_epoch: small data repeat passes (32 windows a batch)
    assert model.thresholds.shape == (2,) and model.min_bout_frames.shape == (2,)
    calls = load_sequence_model(tmp_path / "s.pt").predict(feats[0])
    assert list(calls.columns) == ["groom", "background"] and len(calls) == 150
    with pytest.raises(ValueError, match="2 columns for 1 names"):
        train_sequence(feats, labs, ["groom"], cfg, progress=False)

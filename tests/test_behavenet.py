"""SIPEC:BehaveNet: network shapes, temporal windows, chunk-border invariance, a tiny training run, checkpoints."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

from sipec_models.nets.behavenet import TemporalConvNet, XceptionFRN
from sipec_models.training.behavenet import (
    BehaveNetModel, BehaviourData, build_frame_net, build_tcn, crops_to_tensor, load_behavenet, save_behavenet,
    sequence_bounds, train_behavenet, validation_split, window_index,
)
from sipec_models.training.config import load_model_config


def test_networks_shapes():
    net = XceptionFRN(4, in_channels=1, entry_channels=(32, 64), middle_blocks=2, exit_channels=(64, 96, 128),
                      width_mult=0.5).eval()
    x = torch.rand(2, 1, 48, 48)
    assert net(x).shape == (2, 4) and net.features(x).shape == (2, net.num_features) and net.num_features == 64
    rgb = XceptionFRN(3, in_channels=3, width_mult=0.125, middle_blocks=1).eval()
    assert rgb(torch.rand(1, 3, 64, 64)).shape == (1, 3)
    tcn = TemporalConvNet(64, 4, half_window=3, channels=(16, 16)).eval()
    assert tcn(torch.rand(5, 7, 64)).shape == (5, 4)
    with pytest.raises(ValueError, match=r"expects \(B, 7, 64\)"):
        tcn(torch.rand(5, 9, 64))
    with pytest.raises(ValueError, match="odd kernel_size"):
        TemporalConvNet(8, 2, kernel_size=4)


def test_default_config_builds_sipec_shapes():
    cfg = load_model_config("behavenet")
    assert cfg.tcn.half_window == 10 and cfg.loss.gamma == 3.0 and cfg.loss.alpha == 0.5  # SIPEC
    assert cfg.frame_train.lr == 3.5e-4 and cfg.frame_train.clip_norm == 0.5 and cfg.frame_train.batch_size == 36
    assert cfg.tcn_train.lr == 1e-4 and cfg.tcn_train.batch_size == 16
    frame_net = build_frame_net(cfg, 5)
    tcn = build_tcn(cfg, frame_net.num_features, 5)
    x = crops_to_tensor(np.zeros((2, 80, 80), np.uint8), cfg)
    assert x.shape == (2, 1, cfg.data.crop_size, cfg.data.crop_size)
    assert frame_net.eval()(x).shape == (2, 5) and tcn.eval()(torch.rand(2, 21, frame_net.num_features)).shape == (2, 5)


def test_windows_stay_inside_their_sequence():
    seq = np.array([7, 7, 7, 7, 3, 3, 9])
    start, stop = sequence_bounds(seq)
    assert start.tolist() == [0, 0, 0, 0, 4, 4, 6] and stop.tolist() == [4, 4, 4, 4, 6, 6, 7]
    w = window_index(seq, 2)
    assert w[0].tolist() == [0, 0, 0, 1, 2] and w[3].tolist() == [1, 2, 3, 3, 3]
    assert w[4].tolist() == [4, 4, 4, 5, 5] and w[6].tolist() == [6] * 5
    with pytest.raises(ValueError, match="consecutive"):
        sequence_bounds(np.array([1, 1, 2, 1]))
    val = validation_split(np.array([0] * 10 + [1] * 5), 0.2)
    assert np.flatnonzero(val).tolist() == [8, 9, 14]  # the last 20 % of each sequence, at least one frame


def _synthetic(n_sequences: int, length: int, seed: int, size: int = 24):
    """Blob crops with 3 behaviours in bouts of 8-19 frames.

    ``still``: a round blob at a constant grey level (120 or 240, drawn per
    bout); ``flicker``: the same blob alternating between 120 and 240 every
    frame, so a single frame cannot tell it from ``still``: only time can;
    ``long``: an elongated blob at grey 180.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    c = size / 2
    round_blob = ((xx - c) / (size * 0.2)) ** 2 + ((yy - c) / (size * 0.2)) ** 2 <= 1
    long_blob = ((xx - c) / (size * 0.35)) ** 2 + ((yy - c) / (size * 0.14)) ** 2 <= 1
    crops, labels, seq = [], [], []
    for s in range(n_sequences):
        t = 0
        while t < length:
            b, n, level = int(rng.integers(0, 3)), int(rng.integers(8, 20)), float(rng.choice([120, 240]))
            for i in range(min(n, length - t)):
                if b == 2:
                    im = long_blob * 180.0
                else:
                    im = round_blob * (level if b == 0 else (120.0 if (t + i) % 2 else 240.0))
                crops.append(np.clip(im + rng.normal(0, 5, im.shape), 0, 255).astype(np.uint8))
                labels.append(b)
                seq.append(s)
            t += min(n, length - t)
    return BehaviourData(np.array(crops), np.array(labels), np.array(seq))


TINY = ["data.crop_size=24", "frame_net.width_mult=0.25", "frame_net.middle_blocks=1", "frame_train.epochs=8",
        "frame_train.lr=2e-3", "frame_train.rotation_deg=0", "tcn.half_window=3", "tcn.channels=[16]",
        "tcn_train.epochs=6", "tcn_train.lr=1e-3", "tcn_train.batch_size=32"]


@pytest.fixture(scope="module")
def tiny_model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
            model = train_behavenet(_synthetic(3, 120, seed=0), ["still", "flicker", "long"],
                                    load_model_config("behavenet", TINY))
    finally:
        torch.set_num_threads(threads)
    return model


def test_tiny_training_beats_chance_and_uses_time(tiny_model):
    test = _synthetic(2, 120, seed=1)
    prob = tiny_model.predict_proba(test.crops, test.sequence)
    assert prob.shape == (240, 3) and np.allclose(prob.sum(1), 1, atol=1e-5)
    acc = (prob.argmax(1) == test.labels).mean()
    chance = np.bincount(test.labels).max() / len(test.labels)
    assert acc > chance + 0.2, (acc, chance)
    # "flicker" is invisible in a single frame: the temporal network must find it.
    flicker = test.labels == 1
    assert (prob[flicker].argmax(1) == 1).mean() > 0.6
    assert tiny_model.history["n_val"] > 0 and tiny_model.history["tcn"][-1]["best_val_macro_f1"] > 0.5


def test_chunk_border_inside_a_bout_changes_nothing(tiny_model):
    """Predicting a chunk from its frames plus a halo of n frames gives exactly the whole-video result."""
    test = _synthetic(1, 90, seed=2)
    n = tiny_model.half_window
    whole = tiny_model.predict_proba(test.crops, test.sequence)
    for start, stop in [(0, 40), (40, 71), (71, 90)]:
        lo, hi = max(0, start - n), min(90, stop + n)
        part = tiny_model.predict_proba(test.crops[lo:hi], test.sequence[lo:hi])[start - lo:stop - lo]
        np.testing.assert_allclose(part, whole[start:stop], atol=1e-6)


def test_flip_average_is_the_mean_over_mirror_images(tiny_model):
    """``flip_average``: the mean of the crops' and their mirror images' probabilities; a left-right symmetric
    crop gives the plain result; the config's ``infer.flip_average`` is the default."""
    test = _synthetic(1, 40, seed=4)
    crops = test.crops.copy()
    crops[:, :, -8:] = 255  # a bright band on the right: the mirror image differs
    plain = tiny_model.predict_proba(crops, test.sequence)
    mirrored = tiny_model.predict_proba(crops[:, :, ::-1], test.sequence)
    both = tiny_model.predict_proba(crops, test.sequence, flip_average=True)
    np.testing.assert_allclose(both, 0.5 * (plain + mirrored), atol=1e-6)
    assert not np.allclose(plain, mirrored, atol=1e-4)
    sym = np.concatenate([crops[:, :, :12], crops[:, :, :12][:, :, ::-1]], axis=2)
    np.testing.assert_allclose(tiny_model.predict_proba(sym, test.sequence, flip_average=True),
                               tiny_model.predict_proba(sym, test.sequence), atol=1e-5)
    cfg = {**tiny_model.config, "infer": {**tiny_model.config["infer"], "flip_average": True}}
    by_config = BehaveNetModel(tiny_model.frame_net, tiny_model.tcn, tiny_model.names, cfg)
    np.testing.assert_allclose(by_config.predict_proba(crops, test.sequence), both, atol=1e-6)


def test_checkpoint_round_trip(tiny_model, tmp_path):
    test = _synthetic(1, 40, seed=3)
    save_behavenet(tiny_model, tmp_path / "behavenet.pt", meta={"labels": "x.csv"})
    loaded = load_behavenet(tmp_path / "behavenet.pt", device="cpu")
    assert isinstance(loaded, BehaveNetModel) and loaded.names == ["still", "flicker", "long"]
    assert loaded.meta == {"labels": "x.csv"} and loaded.half_window == 3
    np.testing.assert_allclose(loaded.predict_proba(test.crops, test.sequence),
                               tiny_model.predict_proba(test.crops, test.sequence), atol=1e-6)
    (tmp_path / "other.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="other.pt"):
        load_behavenet(tmp_path / "other.pt")


def test_label_shapes_are_checked():
    data = _synthetic(1, 20, seed=4)
    cfg = load_model_config("behavenet", TINY)
    with pytest.raises(ValueError, match="labels"):
        train_behavenet(data, ["still", "move"], cfg)  # label 2 has no name
    with pytest.raises(ValueError, match="multi-label"):
        train_behavenet(data, ["a", "b", "c"], load_model_config("behavenet", [*TINY, "data.multilabel=true"]))


def test_multilabel_variant_trains_with_overlapping_behaviours():
    data = _synthetic(2, 80, seed=5)
    multi = np.stack([data.labels == 2, data.labels != 0], axis=1).astype(np.float32)  # overlapping columns
    cfg = load_model_config("behavenet", [*TINY, "data.multilabel=true", "frame_train.epochs=2", "tcn_train.epochs=2"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = train_behavenet(BehaviourData(data.crops, multi, data.sequence), ["long", "active"], cfg)
    finally:
        torch.set_num_threads(threads)
    prob = model.predict_proba(data.crops, data.sequence)
    assert prob.shape == (160, 2) and ((prob >= 0) & (prob <= 1)).all()
    assert not np.allclose(prob.sum(1), 1)  # independent sigmoids, not a softmax


def test_efficientnet_backbone_option_trains_and_round_trips(tmp_path, monkeypatch):
    """``frame_net.backbone=efficientnet_lite0``: ImageNet weights loaded at training, not when loading a checkpoint."""
    import sipec_models.nets.efficientnet_lite as effnet
    from sipec_models.nets.behavenet import EfficientNetFRN

    assert load_model_config("behavenet").frame_net.backbone == "xception"  # the default is unchanged
    assert isinstance(build_frame_net(load_model_config("behavenet"), 3), XceptionFRN)
    with pytest.raises(ValueError, match="backbone"):
        build_frame_net(load_model_config("behavenet", ["frame_net.backbone=resnet"]), 3)
    cfg = load_model_config("behavenet", [*TINY, "frame_net.backbone=efficientnet_lite0", "data.crop_size=32",
                                          "data.rgb=true", "frame_train.epochs=1", "tcn_train.epochs=1",
                                          "frame_train.vertical_flip=false"])
    net = build_frame_net(cfg, 3)
    reference = effnet.efficientnet_lite0(pretrained=True)
    assert isinstance(net, EfficientNetFRN) and net.num_features == 1280
    torch.testing.assert_close(net.encoder._conv_stem.weight, reference._conv_stem.weight)  # ImageNet weights
    assert net.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    data = _synthetic(1, 24, seed=6, size=32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = train_behavenet(data, ["still", "flicker", "long"], cfg)
    finally:
        torch.set_num_threads(threads)
    save_behavenet(model, tmp_path / "eff.pt")
    calls = []
    monkeypatch.setattr(effnet, "pretrained_weights_path", lambda: calls.append(1) or "/nonexistent")
    loaded = load_behavenet(tmp_path / "eff.pt", device="cpu")
    assert not calls and isinstance(loaded.frame_net, EfficientNetFRN)
    np.testing.assert_allclose(loaded.predict_proba(data.crops, data.sequence),
                               model.predict_proba(data.crops, data.sequence), atol=1e-5)


def test_efficientnet_frozen_blocks_keep_imagenet_weights_and_statistics():
    """``frame_net.frozen_blocks``: the stem and leading blocks neither learn nor update batch-norm statistics."""
    import sipec_models.nets.efficientnet_lite as effnet

    with pytest.raises(ValueError, match="frozen_blocks"):
        build_frame_net(load_model_config("behavenet", ["frame_net.backbone=efficientnet_lite0",
                                                        "frame_net.frozen_blocks=17"]), 3)
    full = build_frame_net(load_model_config("behavenet", ["frame_net.backbone=efficientnet_lite0"]), 3)
    net = build_frame_net(load_model_config("behavenet", ["frame_net.backbone=efficientnet_lite0",
                                                         "frame_net.frozen_blocks=11"]), 3)
    reference = effnet.efficientnet_lite0(pretrained=True)
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("encoder._conv_stem", "encoder._bn0", *(f"encoder._blocks.{i}." for i in
                                                                                 range(11)))) for n in frozen)
    assert all(p.requires_grad for n, p in net.named_parameters() if n.startswith("encoder._blocks.11."))
    # Same function as the unfrozen network in eval mode: freezing changes training, not the forward pass.
    net.load_state_dict(full.state_dict())
    x = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(net.eval()(x), full.eval()(x))
    net.train()
    assert not net.encoder._blocks[3].training and net.encoder._blocks[12].training
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        net(torch.rand(4, 1, 64, 64)).sum().backward()
        opt.step()
    torch.testing.assert_close(net.encoder._blocks[5].state_dict(), reference._blocks[5].state_dict())
    torch.testing.assert_close(net.encoder._bn0.running_mean, reference._bn0.running_mean)
    assert net.encoder._blocks[5]._project_conv.weight.grad is None  # no gradient computed below the top
    assert not torch.equal(net.encoder._conv_head.weight, reference._conv_head.weight)  # the top learns

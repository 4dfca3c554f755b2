"""SIPEC:IdNet networks, training schedule, a tiny training run on demo crops, and run_identify."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sipec_models.identity import assign_identities, identity_accuracy, shuffled_chance
from sipec_models.nets.idnet import DenseNetId, RecurrentIdNet
from sipec_models.training.idnet import (
    Augment, CropSettings, IdData, class_weights, collect_sequences, load_idnet, lr_factor, make_modules,
    predict_proba, save_idnet, source_samples, train_idnet,
)
from sipec_models.training.config import load_model_config, to_dict

N_FRAMES = 160
SPLIT = 110  # train on [0, SPLIT), test on [SPLIT + 10, N_FRAMES)


def test_densenet_shapes():
    net = DenseNetId(n_classes=3, growth=6, block_layers=(1, 1, 1, 1), init_features=8)
    x = torch.rand(4, 1, 32, 32)
    assert net(x).shape == (4, 3)
    assert net.features(x).shape == (4, net.n_features)
    with pytest.raises(ValueError, match="4 dense blocks"):
        DenseNetId(n_classes=2, block_layers=(1, 1))


def test_recurrent_freezes_frame_net():
    net = DenseNetId(n_classes=2, growth=6, block_layers=(1, 1, 1, 1), init_features=8)
    rnet = RecurrentIdNet(net, n_classes=2, hidden=8)
    assert rnet.gru.num_layers == 3 and rnet.gru.bidirectional
    assert all(not p.requires_grad for p in rnet.frame_net.parameters())
    rnet.train()
    assert not rnet.frame_net.training  # frozen BatchNorm statistics
    x = torch.rand(3, 5, 1, 32, 32)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = rnet(x)
    assert out.shape == (3, 2)
    out.sum().backward()
    opt = torch.optim.Adam([p for p in rnet.parameters() if p.requires_grad], lr=0.1)
    opt.step()
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_lr_schedule_follows_sipec_eq2():
    k = 1.5
    lrs = [2.5e-4 * lr_factor(e, k) for e in range(8)]
    for e in range(7):  # L_{E+1} = L_E / k^E
        assert lrs[e + 1] == pytest.approx(lrs[e] / k ** e)
    assert lrs[4] == pytest.approx(2.5e-4 / k ** 6)
    assert lr_factor(3, 1.25, "code") == pytest.approx(1.25 ** -3)
    # The LambdaLR built by the LightningModule applies it per epoch.
    FrameIdModule, _ = make_modules()
    net = DenseNetId(n_classes=2, growth=4, block_layers=(1, 1, 1, 1), init_features=4)
    mod = FrameIdModule(net, torch.ones(2), lr=2.5e-4, k=k)
    conf = mod.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(lrs[:5])


def test_class_weights_and_augment():
    w = class_weights(np.array([0, 0, 0, 1]), 3)
    assert w.tolist() == pytest.approx([4 / 9, 4 / 3, 0.0])
    aug = Augment()
    x = torch.zeros(2, 5, 16, 16)
    x[:, :, 4:12, 6:10] = 0.5
    y = aug(x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    # The same transform for all channels (time steps) of a sample.
    assert torch.allclose(y[:, 0], y[:, 4])


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """A 3-animal demo video segmented by the classical segmenter into a video store, plus its plan."""
    from sipec_models.demo import render_demo
    from sipec_models.io.store import spec_field, write_store
    from sipec_models.io.video import probe
    from sipec_models.segmentation.classical import ClassicalConfig, estimate_background, segment_chunk
    from sipec_models.tracking import instances_to_slots

    root = tmp_path_factory.mktemp("idnet_demo")
    render_demo(root / "demo", n_videos=1, n_frames=N_FRAMES, n_animals=3, size=256, seed=3)
    video = root / "demo" / "arena_0.mp4"
    info = probe(video)
    cfg = ClassicalConfig()
    bg = estimate_background(video, info, n_samples=cfg.background_samples, polarity=cfg.polarity)
    arrays = segment_chunk(video, 0, N_FRAMES, bg, cfg, n_animals=3, n_instances=3, crop_size=48, info=info,
                           progress=False)
    keys = ("box", "com", "mask", "crop_origin", "crop")
    slots = instances_to_slots(arrays["local_track"], {k: arrays[k] for k in keys}, n_slots=3)
    store = root / "arena_0.zarr"
    write_store(store, {k: spec_field(k, v, instance_dim="animal") for k, v in slots.items()},
                {"n_frames": N_FRAMES, "n_animals": 3, "crop_size": 48, "width": 256, "height": 256,
                 "fps": info.fps, "video_id": "arena_0",
                 "provenance": {"video_checksum": "test"}}, frame_chunk=80)
    plan = root / "plan.json"
    plan.write_text(json.dumps({"n_frames": N_FRAMES, "chunk_size": 80, "chunks": [
        {"chunk": 0, "start": 0, "stop": 80}, {"chunk": 1, "start": 80, "stop": N_FRAMES}]}))
    return {"video": video, "store": store, "plan": plan, "labels": root / "demo" / "arena_0" / "identities.csv"}


TINY = ["crop.window=40", "crop.out_size=32", "crop.half_window=1", "frame_net.growth=8",
        "frame_net.block_layers=[2,2,2,2]", "frame_net.init_features=16", "train.epochs=5", "train.lr=2e-3",
        "recurrent_train.epochs=1", "recurrent.hidden=16", "train.num_threads=1"]


@pytest.fixture(scope="module")
def trained(demo_store, tmp_path_factory):
    cfg = to_dict(load_model_config("idnet", TINY))
    src = {"video": demo_store["video"], "store": demo_store["store"], "labels": demo_store["labels"],
           "format": "table", "frames": None}
    items, idents, stats = source_samples(src, cfg)
    assert stats["matched"] > 0.9 * stats["labels"]
    names = sorted(set(idents))
    crop = CropSettings.from_dict(cfg["crop"])
    from sipec_models.io.store import open_store

    g = open_store(demo_store["store"])
    seq = collect_sequences(demo_store["video"], g["mask"], g["crop_origin"], items, crop)
    lab = np.array([names.index(n) for n in idents])
    frames = np.array([f for f, _ in items])
    slots = np.array([s for _, s in items])
    tr = frames < SPLIT
    frame_net, recurrent, metrics = train_idnet(IdData(seq[tr], lab[tr]), names, cfg)
    path = save_idnet(tmp_path_factory.mktemp("model") / "idnet.pt", frame_net, recurrent, names, cfg, crop, metrics)
    return dict(cfg=cfg, names=names, seq=seq, lab=lab, frames=frames, slots=slots, frame_net=frame_net,
                recurrent=recurrent, path=path)


def test_tiny_training_beats_chance_on_held_out_frames(trained):
    te = trained["frames"] >= SPLIT + 10
    seq, lab = trained["seq"][te], trained["lab"][te]
    assert len(set(lab.tolist())) == 3 and seq.shape[1:] == (3, 32, 32)
    p = predict_proba(trained["frame_net"], None, seq)
    T = N_FRAMES
    prob = np.full((T, 3, 3), np.nan)
    truth = np.full((T, 3), -1)
    prob[trained["frames"][te], trained["slots"][te]] = p
    truth[trained["frames"][te], trained["slots"][te]] = lab
    pred = assign_identities(prob)
    acc = identity_accuracy(pred, truth)
    chance = shuffled_chance(pred, truth, n=100)["mean"]
    assert acc > max(0.6, chance + 0.25), (acc, chance)
    pr = predict_proba(trained["frame_net"], trained["recurrent"], seq)
    assert pr.shape == (len(seq), 3) and np.allclose(pr.sum(axis=1), 1, atol=1e-5)


def test_save_and_load_round_trip(trained):
    model = load_idnet(trained["path"])
    assert model.names == trained["names"] and model.crop.half_window == 1 and model.recurrent is not None
    seq = trained["seq"][:8]
    a = predict_proba(trained["frame_net"], trained["recurrent"], seq)
    b = predict_proba(model.frame_net, model.recurrent, seq)
    assert np.allclose(a, b, atol=1e-5)
    with pytest.raises(FileNotFoundError):
        load_idnet(trained["path"].with_name("missing.pt"))


def test_run_identify_writes_identity_prob(trained, demo_store, tmp_path):
    from sipec_models.inference.identify import run_identify
    from sipec_models.io.store import dimension_names, open_store

    out = tmp_path / "chunk_1.zarr"
    run_identify(demo_store["video"], demo_store["store"], demo_store["plan"], 1, trained["path"], out, batch_size=32)
    g = open_store(out)
    prob = g["identity_prob"][...]
    assert prob.shape == (N_FRAMES - 80, 3, 3) and prob.dtype == np.float32
    assert dimension_names(g["identity_prob"]) == ("frame", "animal", "identity")
    assert g.attrs["identity_names"] == trained["names"]
    assert (g.attrs["frame_start"], g.attrs["frame_stop"]) == (80, N_FRAMES)
    assert "provenance" in g.attrs
    valid = open_store(demo_store["store"])["mask"][80:].any(axis=(2, 3))
    assert np.array_equal(np.isfinite(prob).all(axis=2), valid)
    assert np.allclose(prob[valid].sum(axis=1), 1, atol=1e-5)
    # The same probabilities as the model on crops collected for training (frames in the chunk).
    sel = trained["frames"] >= 80
    model = load_idnet(trained["path"])
    ref = predict_proba(model.frame_net, model.recurrent, trained["seq"][sel])
    got = prob[trained["frames"][sel] - 80, trained["slots"][sel]]
    assert np.allclose(ref, got, atol=1e-4)


def test_run_train_idnet_end_to_end(demo_store, tmp_path):
    from sipec_models.training.idnet import run_train_idnet

    src = {"video": str(demo_store["video"]), "store": str(demo_store["store"]), "labels": str(demo_store["labels"]),
           "format": "table", "frames": [0, 60]}
    out = tmp_path / "m.pt"
    over = [o for o in TINY if not o.startswith(("train.epochs", "recurrent_train.epochs"))]
    run_train_idnet([src], out, overrides=[*over, "train.epochs=1", "recurrent_train.epochs=1",
                                           "recurrent_train.augment=false"],
                    metrics_out=tmp_path / "m.json")
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["sources"][0]["labels"] == 180 and m["n_train"] + m["n_val"] == m["sources"][0]["matched"]
    assert load_idnet(out).names == ["dark", "spot", "stripe"]
    with pytest.raises(ValueError, match="format"):
        run_train_idnet([{**src, "format": "xls"}], out)

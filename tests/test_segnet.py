"""SegNet: encoder weights, shapes, decoding, a short training run on the demo, chunk arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sipec_models.metrics import average_precision, mask_iou
from sipec_models.nets.efficientnet_lite import EfficientNetLite0, efficientnet_lite0, pretrained_weights_path
from sipec_models.nets.segnet import DecodeConfig, SegNet, decode, instances_from_labels
from sipec_models.training.config import load_model_config
from sipec_models.training.segnet import make_targets

DEMO_FRAMES = 100
DEMO_SIZE = 256


def test_pretrained_weights_match_every_key():
    state = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    assert set(model.state_dict()) == set(state)
    loaded = efficientnet_lite0(pretrained=True)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_encoder_and_segnet_shapes():
    torch.manual_seed(0)
    enc = efficientnet_lite0(pretrained=False).eval()
    with torch.no_grad():
        feats = enc.features(enc.normalize(torch.rand(2, 1, 96, 64)))
        assert [tuple(f.shape) for f in feats] == [(2, 24, 24, 16), (2, 40, 12, 8), (2, 112, 6, 4), (2, 320, 3, 2)]
        assert enc(enc.normalize(torch.rand(1, 3, 64, 64))).shape == (1, 1000)
        net = SegNet(pretrained=False).eval()
        out = net(torch.rand(2, 1, 96, 64))
    assert out["fg"].shape == (2, 1, 24, 16)
    assert out["center"].shape == (2, 1, 24, 16)
    assert out["offset"].shape == (2, 2, 24, 16)
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.rand(1, 1, 50, 64))


def _two_touching_squares(size=64):
    masks = torch.zeros(1, 2, size, size)
    masks[0, 0, 20:40, 8:28] = 1
    masks[0, 1, 20:40, 28:48] = 1
    return masks


def test_targets_of_two_squares():
    t = make_targets(_two_touching_squares(), center_sigma=0.15, min_sigma_px=4)
    assert t["fg"].shape == (1, 1, 16, 16) and t["offset"].shape == (1, 2, 16, 16)
    assert t["fg"].sum() == pytest.approx(2 * 20 * 20 / 16)
    # Peaks of 1 at the cells holding the centres of mass (17.5, 29.5) and (37.5, 29.5) px.
    assert (t["center"] == 1).sum() == 2
    # Cell (row 7, col 2) centre at (9.5, 29.5) px -> offset to (17.5, 29.5) = (2, 0) cells.
    np.testing.assert_allclose(t["offset"][0, :, 7, 2].numpy(), [2.0, 0.0])


def test_decode_separates_touching_squares():
    masks = _two_touching_squares()
    t = make_targets(masks)
    logit = lambda p: torch.logit(p.clamp(1e-4, 1 - 1e-4))  # noqa: E731
    out = {"fg": logit(t["fg"]), "center": logit(t["center"]), "offset": t["offset"]}
    (labels, fg, peaks), = decode(out, (64, 64), (64, 64), DecodeConfig(center_threshold=0.5))
    inst = instances_from_labels(labels, fg, peaks)
    assert len(inst) == 2
    pred = np.stack([i.full_mask((64, 64)) for i in inst])
    iou = mask_iou(pred, masks[0].numpy() > 0)
    # Each square recovered (bilinear upsampling of the stride-4 maps may move a few corner pixels).
    assert (iou.max(1) > 0.98).all() and (iou.argmax(1) != iou.argmax(1)[::-1]).all()
    for i in inst:
        assert 0 < i.score <= 1 and i.flags == 0 and i.appearance is None
        x0, y0, x1, y1 = i.box
        assert abs(y0 - 20) <= 1 and abs(y1 - 40) <= 1 and abs(x1 - x0 - 20) <= 1 and abs(i.area - 400) <= 8
    # Upsampled decoding: the same maps for a frame twice the size.
    (labels2, fg2, peaks2), = decode(out, (128, 128), (64, 64), DecodeConfig(center_threshold=0.5))
    inst2 = instances_from_labels(labels2, fg2, peaks2)
    assert sorted(i.area for i in inst2) == pytest.approx([1600, 1600], rel=0.05)



def test_stray_foreground_pixels_do_not_stretch_boxes():
    """Every foreground pixel joins its nearest centre; a far stray blob must not widen that animal's box."""
    labels = np.zeros((64, 64), np.int32)
    labels[20:30, 20:30] = 1           # the animal
    labels[55:58, 2:5] = 1             # stray false-positive pixels that voted for it
    fg = np.where(labels > 0, 0.9, 0.0).astype(np.float32)
    peaks = np.array([[24.5, 24.5, 0.8, 0.0]])
    kept, = instances_from_labels(labels, fg, peaks)
    assert kept.box == (20, 20, 30, 30) and kept.area == 100
    assert kept.com == pytest.approx((24.5, 24.5))
    assert kept.full_mask((64, 64)).sum() == 100
    loose, = instances_from_labels(labels, fg, peaks, largest_component=False)
    assert loose.box == (2, 20, 30, 58) and loose.area == 109

def test_config_loads():
    cfg = load_model_config("segnet", ["train.max_steps=3", "data.input_scale=0.5"])
    assert cfg.train.max_steps == 3 and cfg.data.input_scale == 0.5
    assert {"fg_threshold", "center_threshold", "batch_size"} <= set(cfg.infer)


# --------------------------------------------------------------------------- training on the demo


@pytest.fixture(scope="session")
def demo_labels(tmp_path_factory):
    from sipec_models.demo import render_demo
    from sipec_models.io.masks import load_instance_masks, read_label_images

    out = tmp_path_factory.mktemp("segnet_demo")
    render_demo(out, n_videos=1, n_frames=DEMO_FRAMES, n_animals=3, size=DEMO_SIZE, seed=0, progress=False)
    labels_json = out / "arena_0" / "masks_coco.json"
    labels = load_instance_masks(labels_json)
    video = out / "arena_0.mp4"
    images = read_label_images(labels, video=video)
    return {"video": video, "json": labels_json, "labels": labels, "images": images}


def _tiny_cfg(steps):
    return load_model_config("segnet", [f"train.max_steps={steps}", "train.batch_size=4", "data.crop_size=96",
                                        "train.lr=0.002"])


@pytest.fixture(scope="session")
def demo_model(demo_labels):
    from sipec_models.training.segnet import train_segnet

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared CI machines: oversubscribed threads are far slower
    try:
        train = list(range(0, 60, 4))
        return train_segnet(demo_labels["images"][train], [demo_labels["labels"][i].masks for i in train],
                            _tiny_cfg(TRAIN_STEPS), progress=False)
    finally:
        torch.set_num_threads(threads)


TRAIN_STEPS = 100


def _predictions(instances, shape):
    return [(np.array([i.score for i in p]), np.array([i.full_mask(shape) for i in p]).reshape(-1, *shape))
            for p in instances]


@pytest.mark.slow
def test_short_training_beats_baselines(demo_labels, demo_model):
    from sipec_models.segmentation.segnet import SegNetSegmenter

    test = list(range(60, DEMO_FRAMES))
    truths = [demo_labels["labels"][i].masks for i in test]
    preds = _predictions(SegNetSegmenter(demo_model).segment_batch(demo_labels["images"][test]),
                         (DEMO_SIZE, DEMO_SIZE))
    ap = average_precision(preds, truths, 0.5, kind="mask")
    # Baselines: predicting nothing (AP 0) and the same predictions scored against other frames' truth.
    shifted = average_precision(preds, truths[20:] + truths[:20], 0.5, kind="mask")
    assert average_precision([(np.zeros(0), np.zeros((0, DEMO_SIZE, DEMO_SIZE), bool))] * len(test), truths) == 0
    assert ap > 0.5, ap
    assert ap > shifted + 0.3, (ap, shifted)
    assert demo_model.history[-1]["total"] < demo_model.history[0]["total"]


@pytest.mark.slow
def test_save_load_and_chunk_arrays_match_classical(demo_labels, demo_model, tmp_path):
    from sipec_models.segmentation.classical import (
        ClassicalConfig, calibrate, estimate_background, segment_chunk,
    )
    from sipec_models.segmentation.segnet import SegNetSegmenter, segment_chunk_segnet
    from sipec_models.training.segnet import load_segnet, save_segnet

    path = tmp_path / "segnet.pt"
    save_segnet(demo_model, path, meta={"test": True})
    loaded = load_segnet(path)
    assert loaded.meta == {"test": True} and loaded.config == demo_model.config
    frames = demo_labels["images"][60:62]
    a = SegNetSegmenter(demo_model).segment_batch(frames)
    b = SegNetSegmenter(path).segment_batch(frames)
    assert [[i.box for i in f] for f in a] == [[i.box for i in f] for f in b]

    video = demo_labels["video"]
    ours = segment_chunk_segnet(video, 60, 70, path, n_animals=3, n_instances=4, crop_size=32, progress=False,
                                batch_size=3)
    bg = estimate_background(video, n_samples=20)
    cfg = calibrate(video, bg, ClassicalConfig())
    ref = segment_chunk(video, 60, 70, bg, cfg, n_animals=3, n_instances=4, crop_size=32, progress=False)
    assert set(ours) == set(ref)
    for k in ref:
        assert ours[k].shape == ref[k].shape and ours[k].dtype == ref[k].dtype, k
    valid = np.isfinite(ours["score"])
    assert valid.sum() >= 10
    assert (ours["local_track"][~valid] == -1).all() and (ours["local_track"][valid] >= 0).sum() >= 10
    assert (ours["n_found"] >= valid.sum(1)).all()
    s = np.where(valid, ours["score"], -1)
    assert (np.diff(s, axis=1) <= 0).all()  # slots in descending score
    rgb = segment_chunk_segnet(video, 60, 63, demo_model, n_animals=3, n_instances=4, crop_size=32,
                               color="rgb", progress=False)
    assert rgb["crop"].shape == (3, 4, 32, 32, 3)


@pytest.mark.slow
def test_run_train_segnet_from_coco(demo_labels, tmp_path):
    import json

    from sipec_models.training.segnet import load_segnet, run_train_segnet

    out, metrics = tmp_path / "m.pt", tmp_path / "metrics.json"
    run_train_segnet(demo_labels["json"], out, video=demo_labels["video"], frames=(0, 10),
                     overrides=["train.max_steps=2", "train.batch_size=2", "data.crop_size=64",
                                "train.val_fraction=0.2", "model.pretrained=false"],
                     metrics_out=metrics, progress=False)
    m = json.loads(metrics.read_text())
    assert m["n_train_frames"] == 8 and m["n_val_frames"] == 2
    assert 0 <= m["val_mask_ap50"] <= 1
    assert load_segnet(out).meta["train_frames"] == [f for f in range(10) if f not in load_segnet(out).meta[
        "val_frames"]]
    with pytest.raises(ValueError, match="no labelled frames"):
        run_train_segnet(demo_labels["json"], out, video=demo_labels["video"], frames=(5000, 6000))

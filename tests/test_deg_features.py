"""DeepEthogram feature extractors: ResNet backbones, two-stream fusion, losses, augmentation, training, stores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sipec_models.deg_losses import (L2SP, binary_focal_loss, bias_from_counts, class_counts, decay_parameters,
                                     l2_penalty, positive_weights, reference_weights, smooth_targets)
from sipec_models.nets.deg_features import (StreamClassifier, TwoStreamFeatureExtractor, build_feature_extractor,
                                            make_feature_extractor)
from sipec_models.nets.resnet import (EfficientNetLite0Backbone, adapt_first_conv, load_imagenet_resnet, resnet3d_34,
                                      resnet18, resnet50)
from sipec_models.training.config import load_model_config, to_dict
from sipec_models.training.deg_features import (Augment, check_samples, extract_features, hflip_flows,
                                                load_feature_extractor, macro_f1_non_background, rotate_flows,
                                                save_feature_extractor, split_frames, train_feature_extractor,
                                                vflip_flows, write_feature_store)

torch.set_num_threads(1)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# --------------------------------------------------------------------------- backbones


def test_resnet_shapes_2d_and_3d():
    torch.manual_seed(0)
    assert resnet18()(torch.randn(2, 3, 64, 64)).shape == (2, 512)
    assert resnet18(20)(torch.randn(2, 20, 32, 32)).shape == (2, 512)
    with torch.no_grad():
        assert resnet50().eval()(torch.randn(1, 3, 32, 32)).shape == (1, 2048)
        assert resnet3d_34().eval()(torch.randn(1, 3, 11, 32, 32)).shape == (1, 512)
        assert resnet3d_34(2).eval()(torch.randn(1, 2, 10, 32, 32)).shape == (1, 512)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        resnet18()(torch.randn(2, 20, 32, 32))


def test_parameter_counts_match_the_paper():
    # DeepEthogram Methods: ResNet18 ~11M, ResNet50 ~23M (3 input channels), 3D ResNet34 ~63M.
    assert 10.5e6 < n_params(resnet18()) < 11.7e6
    assert 22.5e6 < n_params(resnet50()) < 24.0e6
    assert 61e6 < n_params(resnet3d_34()) < 66e6
    # Table 2: ResNet18 x 2 = 22.4M, ResNet50 x 2 = 49.2M (flow stem 20 channels, medium's 2048 -> 512 layer).
    assert abs(n_params(make_feature_extractor(5, "resnet18")) - 22.4e6) < 0.1e6
    assert abs(n_params(make_feature_extractor(5, "resnet50")) - 49.2e6) < 0.1e6
    assert abs(n_params(make_feature_extractor(5, "resnet3d_34")) - 127e6) < 0.5e6  # Table 2: 127M


def test_adapt_first_conv_and_imagenet_loading_average_rgb_kernels():
    rgb = torch.randn(64, 3, 7, 7)
    flow = adapt_first_conv(rgb, 20)
    assert flow.shape == (64, 20, 7, 7)
    assert torch.allclose(flow[:, 7], rgb.mean(1))
    assert adapt_first_conv(rgb, 3) is rgb
    src = resnet18(3).state_dict()
    src["fc.weight"], src["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    dst = resnet18(20)
    load_imagenet_resnet(dst, src)
    assert torch.allclose(dst.conv1.weight, src["conv1.weight"].mean(1, keepdim=True).expand(-1, 20, -1, -1))
    assert torch.equal(dst.layer3[1].conv2.weight, src["layer3.1.conv2.weight"])
    with pytest.raises(ValueError, match="does not fit"):
        load_imagenet_resnet(resnet50(), src)


def test_efficientnet_flow_stem_replicates_mean_imagenet_kernel():
    from sipec_models.nets.efficientnet_lite import efficientnet_lite0

    ref = efficientnet_lite0(pretrained=True)._conv_stem.weight
    bb = EfficientNetLite0Backbone(20, pretrained=True)
    assert bb.net._conv_stem.weight.shape == (32, 20, 3, 3)
    assert torch.allclose(bb.net._conv_stem.weight, ref.mean(1, keepdim=True).expand(-1, 20, -1, -1))
    assert bb.eval()(torch.randn(1, 20, 32, 32)).shape == (1, 1280)


# --------------------------------------------------------------------------- two-stream model


@pytest.mark.parametrize("arch,backbone,batch", [("resnet18", "resnet", 2), ("resnet50", "resnet", 1),
                                                 ("resnet3d_34", "resnet", 1), ("resnet18", "efficientnet_lite0", 2)])
def test_two_stream_shapes(arch, backbone, batch):
    torch.manual_seed(0)
    model = make_feature_extractor(4, arch, backbone=backbone, pretrained=backbone != "resnet").eval()
    frames = torch.rand(batch, 3, 11, 32, 32) if arch == "resnet3d_34" else torch.rand(batch, 3, 32, 32)
    flows = torch.randn(batch, 20, 32, 32)
    with torch.no_grad():
        out = model.outputs(frames, flows)
        fs, ff = model.features(frames, flows)
    assert out.logits.shape == out.spatial_logits.shape == out.flow_logits.shape == (batch, 4)
    assert fs.shape == ff.shape == out.spatial.shape == out.flow.shape == (batch, 512)
    # Late average fusion before the sigmoid.
    assert torch.allclose(out.logits, (out.spatial_logits + out.flow_logits) / 2)
    assert torch.allclose(model(frames, flows), out.logits)


def test_3d_flow_layout_and_config_errors():
    model = make_feature_extractor(2, "resnet3d_34")
    assert model.n_rgb == 11
    flows = torch.arange(2 * 20 * 2 * 2, dtype=torch.float32).view(2, 20, 2, 2)
    x = model.flow_input(flows)
    assert x.shape == (2, 2, 10, 2, 2)
    assert torch.equal(x[:, 0, 3], flows[:, 6]) and torch.equal(x[:, 1, 3], flows[:, 7])  # dx_4, dy_4
    assert model.spatial_input(torch.rand(2, 3, 8, 8)).shape == (2, 3, 1, 8, 8)
    with pytest.raises(ValueError, match="2D"):
        make_feature_extractor(2, "resnet3d_34", backbone="efficientnet_lite0")
    with pytest.raises(ValueError, match="offline"):
        make_feature_extractor(2, "resnet18", pretrained=True)
    with pytest.raises(ValueError, match="unknown feature extractor arch"):
        make_feature_extractor(2, "resnet34")
    with pytest.raises(ValueError, match=r"\(N, 20, H, W\)"):
        make_feature_extractor(2).flow_input(torch.zeros(1, 18, 8, 8))


def test_config_presets_build_the_right_arch():
    for preset, arch in (("fast", "resnet18"), ("medium", "resnet50"), ("slow", "resnet3d_34")):
        cfg = to_dict(load_model_config("deepethogram", [f"deg_preset={preset}"]).features)
        assert cfg["arch"] == arch
        assert cfg["loss"] == {"gamma": 1.0, "label_smoothing": 0.05, "pos_weight_beta": 0.25,
                               "reduction": "sum_classes"}
        assert cfg["regularization"] == {"alpha": 1e-5, "beta": 1e-3}
        assert cfg["train"]["val_fraction"] == 0.2 and cfg["input_size"] == [256, 256]
    model = build_feature_extractor(to_dict(load_model_config("deepethogram").features), 3,
                                    class_counts=([1, 10, 50], [99, 90, 50]))
    assert model.meta["arch"] == "resnet18" and model.meta["dropout"] == 0.9
    assert np.allclose(torch.sigmoid(model.spatial.fc.bias).detach().numpy(), [0.01, 0.1, 0.5], atol=1e-6)


def test_gradient_step_updates_both_streams():
    torch.manual_seed(0)
    model = make_feature_extractor(3, "resnet18", dropout=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    frames, flows = torch.rand(4, 3, 32, 32), torch.randn(4, 20, 32, 32)
    y = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]], dtype=torch.float32)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    loss = binary_focal_loss(model(frames, flows), y)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.spatial.backbone.conv1.weight.grad.abs().sum() > 0
    assert model.flow.backbone.conv1.weight.grad.abs().sum() > 0
    opt.step()
    for k in ("spatial.backbone.conv1.weight", "flow.backbone.layer4.1.conv2.weight", "flow.fc.weight"):
        assert not torch.equal(before[k], dict(model.named_parameters())[k])


def test_bias_init_reproduces_class_frequency():
    pos, neg = np.array([1, 30, 50, 0]), np.array([99, 70, 50, 10])
    b = bias_from_counts(pos, neg)
    freq = pos / (pos + neg)
    assert np.allclose(1 / (1 + np.exp(-b[:3])), freq[:3], atol=1e-6)
    assert b[3] == 0  # no positive example: 0 (DeepEthogram code), not -inf
    model = make_feature_extractor(4, "resnet18")
    model.init_bias(pos, neg)
    with torch.no_grad():
        for s in (model.spatial, model.flow):
            s.fc.weight.zero_()
        p = torch.sigmoid(model.eval()(torch.rand(2, 3, 32, 32), torch.randn(2, 20, 32, 32)))
    assert np.allclose(p[0, :3].numpy(), freq[:3], atol=1e-6)
    with pytest.raises(ValueError, match="behaviours"):
        model.init_bias([1, 2], [3, 4])


# --------------------------------------------------------------------------- losses


def test_focal_loss_reduces_to_bce_with_logits():
    torch.manual_seed(0)
    x, y = torch.randn(16, 5), (torch.rand(16, 5) < 0.3).float()
    ones = torch.from_numpy(positive_weights([3] * 5, [13] * 5, beta=0.0))
    assert torch.equal(ones, torch.ones(5))
    got = binary_focal_loss(x, y, ones, gamma=0, label_smoothing=0, reduction="mean")
    assert torch.allclose(got, F.binary_cross_entropy_with_logits(x, y), atol=1e-6)
    w = torch.tensor([1.0, 2.0, 3.0, 0.5, 9.0])
    got = binary_focal_loss(x, y, w, gamma=0, label_smoothing=0, reduction="sum_classes")
    want = F.binary_cross_entropy_with_logits(x, y, pos_weight=w, reduction="none").sum(1).mean()
    assert torch.allclose(got, want, atol=1e-5)


def test_focal_term_matches_the_paper_equation():
    x, y = torch.tensor([[2.0, -1.0, 0.3]]), torch.tensor([[1.0, 0.0, 1.0]])
    w = torch.tensor([2.0, 3.0, 0.5])
    p = torch.sigmoid(x)
    want = -(w * (1 - p) * y * torch.log(p) + p * (1 - y) * torch.log(1 - p))  # gamma 1, no smoothing
    got = binary_focal_loss(x, y, w, gamma=1, label_smoothing=0, reduction="none")
    assert torch.allclose(got, want, atol=1e-6)
    # gamma > 0 shrinks the loss of confidently right predictions more than of wrong ones
    easy = binary_focal_loss(torch.tensor([[4.0]]), torch.tensor([[1.0]]), gamma=1, label_smoothing=0)
    hard = binary_focal_loss(torch.tensor([[-4.0]]), torch.tensor([[1.0]]), gamma=1, label_smoothing=0)
    bce_easy, bce_hard = F.softplus(torch.tensor(-4.0)), F.softplus(torch.tensor(4.0))
    assert easy / bce_easy < 0.05 and hard / bce_hard > 0.95


def test_label_smoothing_targets():
    y = torch.tensor([0.0, 1.0, float("nan")])
    s = smooth_targets(y, 0.05)
    assert torch.allclose(s[:2], torch.tensor([0.05, 0.95])) and torch.isnan(s[2])
    # With gamma 0 the loss is minimal where sigmoid(logit) equals the smoothed target.
    for label, target in ((1.0, 0.95), (0.0, 0.05)):
        x = torch.tensor([[math.log(target / (1 - target))]], requires_grad=True)
        binary_focal_loss(x, torch.tensor([[label]]), gamma=0, label_smoothing=0.05).backward()
        assert abs(float(x.grad)) < 1e-6
    with pytest.raises(ValueError, match="label_smoothing"):
        smooth_targets(y, 0.5)


def test_positive_weight_formula():
    # DeepEthogram: 1 % positives and beta 1 -> weight ~100 (= neg / pos); beta 0 -> 1.
    assert np.allclose(positive_weights([1], [99], beta=1.0), [99.0])
    assert np.allclose(positive_weights([1, 20], [99, 80], beta=0.25), [99 ** 0.25, 4 ** 0.25])
    assert np.allclose(positive_weights([0, 5], [10, 0], beta=0.25), [1.0, 1.0])
    y = np.array([[1, 0], [0, np.nan], [0, 1], [0, 1]], np.float32)
    pos, neg = class_counts(y)
    assert pos.tolist() == [1, 2] and neg.tolist() == [3, 1]
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        class_counts(np.array([[0.5]]))


def test_nan_targets_are_ignored():
    torch.manual_seed(1)
    x = torch.randn(6, 3, requires_grad=True)
    y = (torch.rand(6, 3) < 0.5).float()
    y_nan = y.clone()
    y_nan[2] = float("nan")  # a whole unlabelled frame
    y_nan[4, 1] = float("nan")  # one unlabelled behaviour
    loss = binary_focal_loss(x, y_nan, reduction="none")
    assert torch.all(loss[2] == 0) and loss[4, 1] == 0
    keep = ~torch.isnan(y_nan)
    mean = binary_focal_loss(x, y_nan, reduction="mean")
    assert torch.allclose(mean, loss[keep].mean())
    total = binary_focal_loss(x, y_nan)  # sum over behaviours, mean over the 5 labelled frames
    assert torch.allclose(total, loss.sum(1)[[0, 1, 3, 4, 5]].mean())
    total.backward()
    assert torch.all(x.grad[2] == 0) and x.grad[4, 1] == 0 and x.grad[0].abs().sum() > 0
    x2 = torch.randn(2, 3, requires_grad=True)
    none = binary_focal_loss(x2, torch.full((2, 3), float("nan")))
    none.backward()
    assert none.item() == 0
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        binary_focal_loss(x, torch.full((6, 3), 0.5))


def _small_stream(c_in: int, n_classes: int = 3) -> StreamClassifier:
    return StreamClassifier(TinyBackbone(c_in), n_classes, feature_dim=16, dropout=0.1)


def test_l2sp_zero_at_start_and_positive_after_a_step():
    torch.manual_seed(0)
    model = TwoStreamFeatureExtractor(_small_stream(3), _small_stream(20))
    params = decay_parameters(model)
    assert "spatial.fc.weight" in params and "spatial.backbone.net.0.weight" in params
    assert not any(k.endswith("bias") for k in params)
    assert "spatial.backbone.net.1.weight" not in params  # batch-norm weight
    ref = reference_weights(model, [k for k in params if ".backbone." in k])
    reg = L2SP(model, ref, alpha=1.0, beta=0.0)
    assert set(reg.new_keys) == {"spatial.fc.weight", "flow.fc.weight", "spatial.compress.0.weight",
                                 "flow.compress.0.weight"}
    assert reg(model).item() == 0.0
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    y = (torch.rand(4, 3) < 0.5).float()
    binary_focal_loss(model(torch.rand(4, 3, 16, 16), torch.randn(4, 20, 16, 16)), y).backward()
    opt.step()
    assert reg(model).item() > 0
    # beta term: beta/2 ||w_new||^2; with no reference it is plain L2 on every weight.
    reg_b = L2SP(model, ref, alpha=0.0, beta=2e-3)
    want = 0.5 * 2e-3 * sum(dict(model.named_parameters())[k].pow(2).sum() for k in reg_b.new_keys)
    assert torch.allclose(reg_b(model), want)
    assert torch.allclose(L2SP(model, {}, alpha=0.0, beta=1e-2)(model), l2_penalty(model, 1e-2))
    assert torch.allclose(l2_penalty(model, 0.01), 0.005 * sum(p.pow(2).sum() for p in params.values()))


def test_l2sp_on_imagenet_backbone_pulls_pretrained_weights_to_imagenet_and_new_ones_to_zero():
    model = make_feature_extractor(3, "resnet18", backbone="efficientnet_lite0", pretrained=True)
    reg = L2SP(model, reference_weights(model, model.pretrained_parameter_names()))
    assert (reg.alpha, reg.beta) == (1e-5, 1e-3)  # DeepEthogram feature-extractor defaults
    assert "flow.backbone.net._conv_stem.weight" in reg.pretrained_keys
    assert set(reg.new_keys) == {f"{s}.{m}.weight" for s in ("spatial", "flow") for m in ("compress.0", "fc")}
    new = sum(dict(model.named_parameters())[k].pow(2).sum() for k in reg.new_keys)
    assert torch.allclose(reg(model), 0.5 * 1e-3 * new)  # the pretrained part is 0 at the start


# --------------------------------------------------------------------------- augmentation


def test_flow_flips_negate_the_right_component():
    H, W = 4, 5
    yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    flows = torch.stack([xx + 1, yy + 10] * 10)[None]  # dx depends on the column, dy on the row
    h = hflip_flows(flows)
    assert torch.equal(h[0, 0], -(xx + 1).flip(-1)) and torch.equal(h[0, 1], yy + 10)
    assert torch.equal(h[0, 18], h[0, 0]) and torch.equal(h[0, 19], h[0, 1])
    v = vflip_flows(flows)
    assert torch.equal(v[0, 0], xx + 1) and torch.equal(v[0, 1], -(yy + 10).flip(-2))
    # Augment flips frame and flows together.
    frames = torch.rand(1, 3, H, W)
    fr, fl = Augment(0, 0, 0, hflip=1.0, vflip=0.0)(frames, flows)
    assert torch.equal(fr, frames.flip(-1)) and torch.equal(fl, h)
    fr, fl = Augment(0, 0, 0, hflip=0.0, vflip=1.0)(frames, flows)
    assert torch.equal(fr, frames.flip(-2)) and torch.equal(fl, v)


def test_rotated_flow_matches_the_motion_of_rotated_images():
    from kornia.geometry.transform import rotate

    S = 64

    def square(cx, cy):
        x = torch.zeros(1, 1, S, S)
        x[0, 0, cy - 3:cy + 4, cx - 3:cx + 4] = 1
        return x

    def centroid(x):
        yy, xx = torch.meshgrid(torch.arange(S).float(), torch.arange(S).float(), indexing="ij")
        w = x[0, 0]
        return torch.stack([(w * xx).sum(), (w * yy).sum()]) / w.sum()

    angle = torch.tensor([30.0])
    moved = centroid(rotate(square(38, 24), angle)) - centroid(rotate(square(32, 20), angle))
    flows = torch.zeros(1, 20, S, S)
    flows[:, 0::2], flows[:, 1::2] = 6.0, 4.0  # the square moved by (6, 4) px
    r = rotate_flows(flows, angle)
    assert torch.allclose(r[0, :2, 32, 32], moved, atol=0.05)
    assert torch.allclose(r[0, 18:, 32, 32], moved, atol=0.05)


def test_augment_3d_clip_keeps_shape_and_flips_every_frame():
    frames, flows = torch.rand(2, 3, 5, 8, 8), torch.randn(2, 20, 8, 8)
    fr, fl = Augment(0.2, 0.1, 10, hflip=0.5)(frames, flows)
    assert fr.shape == frames.shape and fl.shape == flows.shape and 0 <= fr.min() and fr.max() <= 1
    fr, _ = Augment(0, 0, 0, hflip=1.0)(frames, flows)
    assert torch.equal(fr, frames.flip(-1))


# --------------------------------------------------------------------------- scores, data


def test_macro_f1_non_background():
    names = ["background", "a", "b"]
    y = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 1], [0, 0, np.nan]], np.float32)
    p = np.array([[0.1, 0.9, 0.1], [0.1, 0.8, 0.2], [0.9, 0.2, 0.7], [0.0, 0.0, 0.9]])
    # a: tp 1, fp 1, fn 1 -> 0.5; b: tp 1 (NaN frame ignored) -> 1; background left out.
    assert macro_f1_non_background(p, y, names) == pytest.approx(0.75)
    assert macro_f1_non_background(p, y, names, thresholds=[0.5, 0.15, 0.5]) == pytest.approx((0.8 + 1) / 2)
    assert math.isnan(macro_f1_non_background(p[:, :1], y[:, :1], ["background"]))


def test_check_samples_and_validation_split():
    good = dict(frames=np.zeros((10, 3, 8, 8), np.uint8), flows=np.zeros((10, 20, 8, 8), np.float32),
                targets=np.zeros((10, 2), np.float32))
    s = check_samples([good], 2, 10)
    s[0].targets[0] = np.nan
    train, val = split_frames(s, 0.2)
    assert val[:, 1].tolist() == [8, 9] and 0 not in train[:, 1] and len(train) == 7
    with pytest.raises(ValueError, match=r"float frames must be in \[0, 1\]"):
        check_samples([{**good, "frames": np.full((10, 3, 8, 8), 200.0, np.float32)}])
    with pytest.raises(ValueError, match="differ in length or size"):
        check_samples([{**good, "flows": np.zeros((9, 20, 8, 8), np.float32)}])
    with pytest.raises(ValueError, match="lacks"):
        check_samples([{"frames": good["frames"]}])


# --------------------------------------------------------------------------- training


class TinyBackbone(nn.Module):
    """Two strided convolutions + global pooling: a fast stand-in for the ResNets in the training test."""

    def __init__(self, c_in: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(c_in, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_features = 32

    def forward(self, x):
        return self.net(x)


def synthetic_video(T: int, seed: int, S: int = 24) -> dict:
    """Behaviours: ``square`` (a bright square is visible: spatial) and ``right`` (a patch moves right
    rather than left: flow, dx +2 vs -2 px), independent; background when neither."""
    rng = np.random.default_rng(seed)
    sq, right = rng.random(T) < 0.5, rng.random(T) < 0.5
    frames = rng.integers(20, 60, (T, 3, S, S)).astype(np.uint8)
    flows = rng.normal(0, 0.3, (T, 20, S, S)).astype(np.float32)
    for t in range(T):
        y0, x0 = rng.integers(2, S - 10, 2)
        if sq[t]:
            frames[t, :, y0:y0 + 8, x0:x0 + 8] = 220
        y1, x1 = rng.integers(2, S - 10, 2)
        flows[t, 0::2, y1:y1 + 8, x1:x1 + 8] += 2.0 if right[t] else -2.0
    targets = np.stack([~sq & ~right, sq, right], 1).astype(np.float32)
    targets[rng.random(T) < 0.1] = np.nan  # unlabelled frames
    return dict(frames=frames, flows=flows, targets=targets)


def test_tiny_training_beats_chance_and_features_go_to_a_store(tmp_path):
    from sipec_models.io.store import dimension_names, open_store

    torch.manual_seed(0)
    names = ["background", "square", "right"]
    cfg = to_dict(load_model_config("deepethogram", [
        "features.train.epochs=4", "features.train.batch_size=16", "features.train.lr=3e-3",
        # Every training example is flipped up-down: that keeps "moving right" right only when the flip negates
        # dy, not dx (otherwise the flow stream learns the reverse). Left-right flips would change the label.
        "features.augment.hflip=0", "features.augment.vflip=1.0",
    ]).features)
    assert cfg["train"]["curriculum"] is True
    model = TwoStreamFeatureExtractor(_small_stream(3), _small_stream(20))
    videos = [synthetic_video(100, seed) for seed in range(2)]
    model, history = train_feature_extractor(videos, names, cfg, progress=False, model=model)
    stages = [r["stage"] for r in history["epochs"] if "epoch" in r]
    assert stages[0] == "spatial" and "flow" in stages and stages[-1] == "fused"
    assert history["n_val"] == sum(int(np.isfinite(v["targets"][80:]).any(1).sum()) for v in videos)
    assert len(history["thresholds"]) == 3
    test = synthetic_video(60, seed=7)
    feats = extract_features(model, test["frames"], test["flows"], batch_size=16)
    assert feats["spatial"].shape == feats["flow"].shape == (60, 16) and feats["logits"].shape == (60, 3)
    probs = 1 / (1 + np.exp(-feats["logits"]))
    f1 = macro_f1_non_background(probs, test["targets"], names)
    assert f1 > 0.85, f"held-out macro-F1 {f1:.3f}; chance is about 0.5"
    # The spatial features alone tell the square, the flow features alone tell the direction.
    lab = np.isfinite(test["targets"]).all(1)
    for stream, k in ((model.spatial, 1), (model.flow, 2)):
        f = feats["spatial" if k == 1 else "flow"]
        logit = f @ stream.fc.weight.detach().numpy().T + stream.fc.bias.detach().numpy()
        assert np.mean((logit[lab, k] > 0) == (test["targets"][lab, k] == 1)) > 0.85, names[k]
    store = write_feature_store(tmp_path / "f.zarr", feats, {"behaviours": names})
    g = open_store(store)
    assert dimension_names(g["spatial"]) == ("frame", "feature")
    assert dimension_names(g["logits"]) == ("frame", "behaviour") and g["logits"].attrs["units"] == "logit"
    assert np.array_equal(g["flow"][...], feats["flow"]) and g.attrs["behaviours"] == names
    with pytest.raises(ValueError, match="exactly"):
        write_feature_store(tmp_path / "g.zarr", {"spatial": feats["spatial"]}, {})


def test_checkpoint_round_trip_and_3d_extraction(tmp_path):
    torch.manual_seed(0)
    model = make_feature_extractor(2, "resnet18", dropout=0.5)
    model.set_normalization([0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
    frames = np.random.default_rng(0).integers(0, 255, (5, 3, 32, 32)).astype(np.uint8)
    flows = np.random.default_rng(1).normal(size=(5, 20, 32, 32)).astype(np.float32)
    a = extract_features(model, frames, flows, batch_size=2)
    save_feature_extractor(model, tmp_path / "fe.pt", ["background", "x"], {"arch": "resnet18"}, {"n_train": 1})
    loaded, ckpt = load_feature_extractor(tmp_path / "fe.pt")
    assert ckpt["names"] == ["background", "x"] and torch.allclose(loaded.rgb_std, torch.tensor([0.2, 0.25, 0.3]))
    b = extract_features(loaded, frames, flows, batch_size=5)
    for k in ("spatial", "flow", "logits"):
        assert np.allclose(a[k], b[k], atol=1e-5)
    with pytest.raises(ValueError, match="not a DeepEthogram feature-extractor checkpoint"):
        torch.save({"format": "x"}, tmp_path / "bad.pt")
        load_feature_extractor(tmp_path / "bad.pt")
    slow = make_feature_extractor(2, "resnet3d_34")
    f3 = extract_features(slow, frames[:, :, :16, :16], flows[:, :, :16, :16], batch_size=5)
    assert f3["spatial"].shape == (5, 512) and f3["logits"].shape == (5, 2)


def test_training_from_config_writes_a_loadable_checkpoint(tmp_path):
    cfg = to_dict(load_model_config("deepethogram", [
        "features.train.epochs=1", "features.train.steps_per_epoch=1", "features.train.batch_size=4",
        "features.train.curriculum=false", "features.dropout=0.5"]).features)
    videos = [synthetic_video(10, seed, S=32) for seed in range(2)]
    model, history = train_feature_extractor(videos, ["background", "square", "right"], cfg, progress=False,
                                             checkpoint=tmp_path / "fe.pt")
    assert model.meta["arch"] == "resnet18" and [r["stage"] for r in history["epochs"]][0] == "fused"
    loaded, ckpt = load_feature_extractor(tmp_path / "fe.pt")
    assert ckpt["config"]["train"]["epochs"] == 1 and ckpt["history"]["pos"] == history["pos"]
    pos, neg = np.array(history["pos"]), np.array(history["neg"])
    assert np.allclose(ckpt["history"]["pos_weight"], positive_weights(pos, neg, 0.25))
    frames, flows = videos[0]["frames"], videos[0]["flows"]
    a, b = extract_features(model, frames, flows), extract_features(loaded, frames, flows)
    assert np.allclose(a["logits"], b["logits"], atol=1e-5)

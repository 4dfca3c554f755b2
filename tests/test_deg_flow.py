"""DeepEthogram flow generators: shapes, parameter counts, flow units, the MotionNet loss, training and inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sipec_models.flow_loss import (
    FlowLossConfig, flow_loss, l2sp, l2sp_reference, photometric_error, smoothness, ssim, warp, zero_flow_loss,
)
from sipec_models.nets.flow import (
    FlowUpsample, MotionNet, TinyMotionNet, TinyMotionNet3D, build_flow_generator, count_parameters,
    full_resolution_flows, upsample_flow,
)
from sipec_models.training.config import load_model_config
from sipec_models.training.flow import (
    Clip, WindowSampler, augment_windows, flows_for_frames, load_flow_generator, plan_blocks, run_train_flow,
    split_video, train_flow_generator, window_index,
)

torch.set_num_threads(1)


def texture(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """``(1, 1, h, w)`` smooth random texture in [0, 1] (3x3 box-blurred noise)."""
    g = torch.Generator().manual_seed(seed)
    return F.avg_pool2d(torch.rand(1, 1, h + 2, w + 2, generator=g), 3, 1)


def translation_window(shift: int, n: int = 11, size: int = 64) -> torch.Tensor:
    """``(1, n, 1, size, size)``: a texture moving ``shift`` px to the right per frame."""
    big = texture(size, size + shift * n + 8)
    frames = [big[..., :, shift * (n - k):shift * (n - k) + size] for k in range(n)]
    return torch.stack(frames, 1)


# ----------------------------------------------------------------------------- networks


@pytest.mark.parametrize("cls, n_params", [(TinyMotionNet, 1.9e6), (MotionNet, 45.8e6), (TinyMotionNet3D, 0.4e6)])
def test_shapes_layouts_and_parameter_counts(cls, n_params):
    torch.manual_seed(0)
    model = cls(in_channels=3).eval()
    # DeepEthogram Table 2 parameter counts, within 5 %.
    assert abs(count_parameters(model) - n_params) / n_params < 0.05
    clip = torch.rand(2, 3, 11, 64, 64)
    stacked = clip.transpose(1, 2).reshape(2, 33, 64, 64)
    with torch.no_grad():
        a, b = model(clip), model(stacked)
    assert [tuple(f.shape) for f in a] == [(2, 20, 32, 32), (2, 20, 16, 16), (2, 20, 8, 8)]
    for fa, fb in zip(a, b):
        assert torch.equal(fa, fb)
    full = full_resolution_flows(a, (64, 64))
    assert full.shape == (2, 10, 2, 64, 64) and full.dtype == torch.float32


def test_bad_inputs_are_rejected():
    model = TinyMotionNet(in_channels=1)
    with pytest.raises(ValueError, match="11 frames x 1 channels"):
        model(torch.rand(1, 33, 64, 64))
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.rand(1, 11, 60, 64))
    with pytest.raises(ValueError, match="multiples of 32"):
        MotionNet(in_channels=1)(torch.rand(1, 11, 48, 64))
    with pytest.raises(ValueError, match="flow.arch must be one of"):
        build_flow_generator({"arch": "flownet"}, 3)


def test_presets_pick_the_architecture():
    for preset, arch in (("fast", "tiny_motionnet"), ("medium", "motionnet"), ("slow", "tiny_motionnet3d")):
        assert load_model_config("deepethogram", [f"deg_preset={preset}"]).flow.arch == arch
    cfg = load_model_config("deepethogram", ["deg_preset=slow", "flow.train.epochs=2"])
    assert type(build_flow_generator(cfg.flow, 1)) is TinyMotionNet3D and cfg.flow.train.epochs == 2


def test_training_steps_lower_the_loss_on_a_translation():
    torch.manual_seed(0)
    x = translation_window(1, size=32)
    for cls in (TinyMotionNet, TinyMotionNet3D):
        model = cls(in_channels=1)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses = []
        for _ in range(8):
            loss = flow_loss(x, model(x.transpose(1, 2)))["total"]
            assert torch.isfinite(loss)
            opt.zero_grad()
            loss.backward()
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
            opt.step()
            losses.append(float(loss.detach()))
        assert losses[-1] < 0.8 * losses[0], (cls.__name__, losses)


# ----------------------------------------------------------------------------- flow units and warping


def test_warp_reconstructs_frame_t_from_frame_t_plus_1():
    x = translation_window(2, n=2)
    f0, f1 = x[:, 0], x[:, 1]  # the texture moves +2 px (right) from f0 to f1
    flow = torch.zeros(1, 2, 64, 64)
    flow[:, 0] = 2.0
    recon = warp(f1, flow)
    # Exact away from the right border (sampled beyond the edge there).
    assert torch.allclose(recon[..., :-2], f0[..., :-2], atol=1e-6)
    assert not torch.allclose(warp(f1, -flow)[..., 2:-2], f0[..., 2:-2], atol=1e-3)


def test_photometric_loss_true_shift_beats_zero_and_wrong_sign():
    x = translation_window(2)  # 11 frames, +2 px per frame
    sizes = [(32, 32), (16, 16), (8, 8)]

    def constant(dx_full: float):
        # A flow of dx_full input pixels is dx_full * scale pixels at each output scale.
        return [torch.full((1, 20, h, w), 0.0).index_fill_(1, torch.arange(0, 20, 2), dx_full * h / 64)
                for h, w in sizes]

    true, wrong = flow_loss(x, constant(2.0)), flow_loss(x, constant(-2.0))
    zero = zero_flow_loss(x, sizes)
    for key in ("pixel", "ssim"):
        assert true[key] < 0.5 * zero[key] and zero[key] < wrong[key], key
    full_true = photometric_error(x, constant(2.0)[0])
    assert full_true["pixel"] < photometric_error(x, None)["pixel"]


def test_ssim_identical_images_is_one():
    a = texture(40, 40).repeat(2, 3, 1, 1)
    assert float(ssim(a, a)) == pytest.approx(1.0, abs=1e-6)
    noisy = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
    assert float(ssim(a, noisy)) < 0.9
    with pytest.raises(ValueError):
        ssim(a, a[:, :1])


def test_upsampling_scale_convention():
    # A constant flow of 1.5 px at 1/4 resolution (16 x 16 for a 64 x 64 input) moves 6 input pixels.
    quarter = torch.zeros(1, 20, 16, 16)
    quarter[:, 0::2] = 1.5
    quarter[:, 1::2] = -0.5
    full = upsample_flow(quarter, (64, 64))
    assert torch.allclose(full[:, 0::2], torch.full_like(full[:, 0::2], 6.0))
    assert torch.allclose(full[:, 1::2], torch.full_like(full[:, 1::2], -2.0))
    # Warping with the upsampled flow equals an integer shift of 6 px right, 2 px up.
    img = texture(64, 64)
    out = warp(img, full[:, :2])
    assert torch.allclose(out[..., 2:, :-6], img[..., :-2, 6:], atol=1e-6)
    # The decoder's learnt 2x up-convolution starts as bilinear x 2 (DeepEthogram's modification).
    up = FlowUpsample(20)
    with torch.no_grad():
        doubled = up(quarter)
    assert torch.allclose(doubled[..., 1:-1, 1:-1], upsample_flow(quarter, (32, 32))[..., 1:-1, 1:-1], atol=1e-5)
    assert torch.allclose(doubled[:, 0, 5, 5], torch.tensor(3.0))


# ----------------------------------------------------------------------------- loss terms


def test_loss_weights_follow_the_architecture():
    fast = FlowLossConfig.from_cfg(load_model_config("deepethogram", ["deg_preset=fast"]).flow)
    slow = FlowLossConfig.from_cfg(load_model_config("deepethogram", ["deg_preset=slow"]).flow)
    assert fast.smooth_weights == (0.01, 0.02, 0.04) and fast.sparsity_weight == 0.0
    assert slow.smooth_weights == pytest.approx((0.0025, 0.005, 0.01)) and slow.sparsity_weight == 0.05
    assert (fast.pixel_alpha, fast.pixel_eps, fast.smooth_alpha, fast.l2sp_alpha) == (0.4, 1e-7, 0.3, 1e-5)
    with pytest.raises(ValueError, match="ssim_window"):
        FlowLossConfig.from_cfg({"arch": "tiny_motionnet", "loss": {"ssim_window": 10}})


def test_smoothness_and_sparsity_terms():
    flat = torch.full((1, 4, 16, 16), 3.0)
    ramp = torch.arange(16.0).view(1, 1, 1, 16).expand(1, 4, 16, 16)
    assert float(smoothness(flat)) < 1e-3 < float(smoothness(ramp))
    x = translation_window(1, n=3, size=32)
    flows = [torch.full((1, 4, 16, 16), 0.5), torch.full((1, 4, 8, 8), 0.25)]
    cfg = FlowLossConfig(sparsity_weight=0.05)
    out = flow_loss(x, flows, cfg)
    assert float(out["sparsity"]) == pytest.approx(0.75)
    expect = out["pixel"] + out["ssim"] + out["smooth"] + 0.05 * out["sparsity"]
    assert torch.allclose(out["total"], expect)
    with pytest.raises(ValueError, match="smoothness weights"):
        flow_loss(x, flows * 2, cfg)


def test_l2sp_tethers_weights_to_their_start():
    model = TinyMotionNet(in_channels=1)
    ref = l2sp_reference(model)
    assert all(v.ndim > 1 for v in ref.values()) and not any(k.endswith("bias") for k in ref)
    assert float(l2sp(model, ref, 1e-5).detach()) == 0.0
    with torch.no_grad():
        model.conv1[0].weight.add_(0.1)
        model.conv1[1].bias.add_(5.0)  # batch norm: excluded
    expect = 0.5 * 1e-5 * 0.01 * model.conv1[0].weight.numel()
    assert float(l2sp(model, ref, 1e-5).detach()) == pytest.approx(expect, rel=1e-4)


# ----------------------------------------------------------------------------- data, inference, training


def test_splits_blocks_and_windows():
    assert split_video(100, 0.2) == ((0, 80), (80, 100))
    assert plan_blocks(0, 50, 100, 20) == [(0, 50)]
    blocks = plan_blocks(0, 1000, 300, 100)
    assert len(blocks) == 3 and blocks[0][0] == 0 and blocks[-1][1] == 1000
    clips = [Clip("a", 0, np.zeros((12, 1, 8, 8), np.uint8)), Clip("a", 40, np.zeros((5, 1, 8, 8), np.uint8))]
    idx = window_index(clips, 11)
    assert idx.tolist() == [[0, 0], [0, 1]]  # never across clips; the 5-frame clip has none


def test_motion_sampling_finds_the_moving_animal():
    rng = np.random.default_rng(0)
    static = np.repeat(rng.integers(0, 255, (1, 1, 48, 64), dtype=np.uint8), 30, axis=0)
    moving = np.full((30, 1, 48, 64), 60, np.uint8)
    for t in range(30):
        moving[t, 0, 30:38, 5 + t:13 + t] = 250  # an 8 px square, 1 px per frame to the right, low in the frame
    clips = [Clip("static", 0, static), Clip("moving", 0, moving)]
    sampler = WindowSampler(clips, 11, motion_sampling=1.0, crop_size=(16, 16), seed=0)
    x = sampler.sample(12)
    assert x.shape == (12, 11, 1, 16, 16)
    assert bool(((x[:, 1:] - x[:, :-1]).abs().flatten(1).amax(1) > 0.5).all())  # every crop sees the motion
    uniform = WindowSampler(clips, 11, motion_sampling=0.0, seed=0).sample(40)
    assert uniform.shape == (40, 11, 1, 48, 64)
    moves = (uniform[:, 1:] - uniform[:, :-1]).abs().flatten(1).amax(1) > 0.5
    assert 0 < int(moves.sum()) < 40  # both clips drawn
    with pytest.raises(ValueError, match="crop_size"):
        WindowSampler(clips, 11, crop_size=(64, 64))
    with pytest.raises(ValueError, match="motion_sampling"):
        WindowSampler(clips, 11, motion_sampling=2.0)


def test_bad_training_settings_are_rejected():
    clips = [Clip("a", 0, np.zeros((12, 1, 16, 16), np.uint8))]
    cfg = load_model_config("deepethogram", ["flow.train.lr_schedule=step"])
    with pytest.raises(ValueError, match="lr_schedule"):
        train_flow_generator(clips, [], cfg, progress=False)
    cfg = load_model_config("deepethogram", ["flow.augment.crop_size=[12,12]"])
    with pytest.raises(ValueError, match="multiples of 8"):
        train_flow_generator(clips, [], cfg, progress=False)
    with pytest.raises(ValueError, match="no training window"):
        train_flow_generator([Clip("a", 0, clips[0].frames[:5])], [], progress=False)


def test_augmentation_is_shared_by_the_frames_of_a_window():
    frame = texture(32, 48).expand(3, 5, 1, 32, 48).clone()
    out = augment_windows(frame, {"hflip": 0.5, "vflip": 0.5, "rotation_deg": 10, "brightness": 0.25,
                                  "contrast": 0.1}, torch.Generator().manual_seed(1))
    assert out.shape == frame.shape and out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out[:, 1:], out[:, :1].expand_as(out[:, 1:]))
    assert not torch.allclose(out, frame)


def test_flows_for_frames_centres_windows_and_replicates_edges():
    torch.manual_seed(0)
    model = TinyMotionNet(in_channels=1).eval()
    frames = torch.rand(20, 1, 32, 32)
    full = flows_for_frames(model, frames, batch_size=6)
    assert full.shape == (20, 20, 32, 32) and full.dtype == torch.float32
    # A chunk with 5 frames of context on each side gives the same stacks for its interior.
    chunk = flows_for_frames(model, frames[3:18], start=5, stop=10)
    assert torch.allclose(chunk, full[8:13], atol=1e-5)
    # Frame 0's window repeats frame 0 five times before it.
    idx = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5])
    with torch.no_grad():
        direct = upsample_flow(model(frames[idx][None].transpose(1, 2))[0], (32, 32))
    assert torch.allclose(full[0], direct[0], atol=1e-5)
    with pytest.raises(ValueError, match="frame range"):
        flows_for_frames(model, frames, 5, 30)


@pytest.mark.parametrize("extra", [[], ["flow.train.lr_schedule=cosine", "flow.augment.crop_size=[16,24]",
                                         "flow.train.motion_sampling=0.5"]])
def test_run_train_flow_checkpoint_roundtrip(small_video, tmp_path, extra):
    out = tmp_path / "flow.pt"
    summary = run_train_flow([small_video], out, ["data.input_size=[32,32]", "data.rgb=false",
                                                  "flow.train.epochs=2", "flow.train.steps_per_epoch=2",
                                                  "flow.train.batch_size=2", "flow.train.val_windows=4", *extra],
                             metrics_out=tmp_path / "m.json", progress=False)
    if extra:  # cosine decay reaches min_lr at the last step
        assert summary["epochs"][-1]["lr"] == pytest.approx(5e-7)
    assert out.is_file() and (tmp_path / "m.json").is_file()
    assert summary["n_train_windows"] == 48 - 10 and summary["n_val_windows"] == 2  # 60 frames: 48 train, 12 val
    assert summary["best_epoch"] in (1, 2) and np.isfinite(summary["best_val_loss"])
    assert summary["zero_flow_val_loss"] > 0
    model = load_flow_generator(out)
    assert model.arch == "tiny_motionnet" and model.in_channels == 1 and model.input_size == (32, 32)
    splits = model.meta["splits"]
    train_stop = max(s["stop"] for s in splits if s["split"] == "train")
    assert train_stop <= min(s["start"] for s in splits if s["split"] == "val")
    assert not torch.allclose(model.input_mean, torch.tensor([0.5]))  # set from the data
    stacks = flows_for_frames(model, torch.rand(12, 1, 32, 32))
    assert stacks.shape == (12, 20, 32, 32)
    with pytest.raises(ValueError, match="not a flow-generator checkpoint"):
        torch.save({"format": "other"}, tmp_path / "x.pt")
        load_flow_generator(tmp_path / "x.pt")

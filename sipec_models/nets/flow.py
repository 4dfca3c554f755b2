"""DeepEthogram flow generators in plain PyTorch: TinyMotionNet, MotionNet, TinyMotionNet3D.

DeepEthogram (Bohnslav et al. 2021, Methods "Flow generators") estimates 10
optic-flow fields from 11 consecutive frames with the encoder-decoder
networks of Zhu et al. 2017 ("Hidden two-stream convolutional networks"),
trained without labels (:mod:`sipec_models.flow_loss`).

* :class:`TinyMotionNet` (DeepEthogram-fast, ~1.9M parameters): 4 convolutions
  (64, 128, 256, 128 filters; the last three stride 2), 2 up-convolutions,
  flows predicted at 1/8, 1/4 and 1/2 of the input resolution.
* :class:`MotionNet` (DeepEthogram-medium, ~45.8M): 6 pairs of convolutions
  (64 ... 1024 filters, down to 1/32), flows predicted at 1/32 ... 1/2; as in
  DeepEthogram only the three finest (1/2, 1/4, 1/8) are returned.
* :class:`TinyMotionNet3D` (DeepEthogram-slow, ~0.4M): TinyMotionNet with 3D
  convolutions, 16/32/64 filters, temporal kernel 3 in the encoder and
  decoder and temporal kernel 2 in the last encoder layer and the skip
  ("iconv") layers, which turns 11 frames into 10 frame pairs.

Conventions shared by all three:

* **Input**: frames as float in [0, 1], either stacked along channels
  ``(N, 11 * C, H, W)`` (frame-major: channels ``[f0c0, f0c1, f0c2, f1c0, ...]``)
  or as a clip ``(N, C, 11, H, W)``; each network converts to its own layout.
  The network standardises channel-wise with its buffers ``input_mean`` and
  ``input_std`` (shape ``(C,)``; DeepEthogram z-scores the input channels,
  the trainer sets them from the training frames). ``H`` and ``W`` must be
  multiples of :attr:`FlowGenerator.size_multiple` (8, or 32 for MotionNet).
* **Output**: a tuple of 3 flows, finest first, at 1/2, 1/4 and 1/8 of the
  input size: ``(N, 2 * (T - 1), H / s, W / s)`` with channels
  ``[dx_0, dy_0, dx_1, dy_1, ...]``: pair ``k`` is the flow from frame ``k``
  to frame ``k + 1`` (:func:`flow_pairs` gives ``(N, T - 1, 2, h, w)``).
  **Units: each output is in pixels of its own resolution** (a value of 1 in
  the 1/4-scale output is 4 input pixels), because the loss warps images
  resized to that resolution. ``dx`` is positive to the right, ``dy`` down,
  and frame ``k`` at ``(x, y)`` is reconstructed from frame ``k + 1`` at
  ``(x + dx, y + dy)`` (:func:`sipec_models.flow_loss.warp`).
* **DeepEthogram's modification**: every 2x upsampling of a coarse flow inside
  the decoder is multiplied by 2, so that it is in pixels of the finer
  resolution. Those up-convolutions start as exact per-channel bilinear
  upsampling (ours; Zhu et al. leave them learnable from a random start),
  so at initialisation the decoder's upsampled flow is exactly
  ``upsample_flow(flow, 2x size)``.
* :func:`full_resolution_flows` turns the finest output into float flows in
  input pixels ``(N, T - 1, 2, H, W)`` (bilinear upsampling and scaling by
  the size ratio; no 8-bit compression, DeepEthogram "Modifications").
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Frames into the flow generator (DeepEthogram Table 2: 11 frames -> 10 flows).
N_FRAMES = 11
#: Architectures by config name (``flow.arch``).
ARCHS = ("tiny_motionnet", "motionnet", "tiny_motionnet3d")


# --------------------------------------------------------------------------- flow helpers


def flow_pairs(flow: torch.Tensor) -> torch.Tensor:
    """``(N, 2P, h, w)`` stacked flows -> ``(N, P, 2, h, w)`` (``[..., 0, :, :]`` = dx, ``[..., 1, :, :]`` = dy)."""
    if flow.ndim != 4 or flow.shape[1] % 2:
        raise ValueError(f"flow must be (N, 2P, h, w) with an even channel count, got {tuple(flow.shape)}")
    n, c, h, w = flow.shape
    return flow.reshape(n, c // 2, 2, h, w)


def upsample_flow(flow: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a flow field and rescale its values to pixels of the new size.

    Args:
        flow: ``(N, 2P, h, w)`` with channels ``[dx_0, dy_0, ...]``, in pixels
            of the ``(h, w)`` grid.
        size: target ``(H, W)``.

    Returns:
        ``(N, 2P, H, W)`` in pixels of the ``(H, W)`` grid: bilinear
        resampling (``align_corners=False``), ``dx`` multiplied by ``W / w``
        and ``dy`` by ``H / h`` (x2 per 2x upsampling, DeepEthogram
        "Modifications"). Works for downsampling too (anti-aliased).
    """
    n, c, h, w = flow.shape
    if c % 2:
        raise ValueError(f"flow must have an even number of channels (dx, dy pairs), got {c}")
    H, W = int(size[0]), int(size[1])
    if (H, W) == (h, w):
        return flow
    out = F.interpolate(flow, size=(H, W), mode="bilinear", align_corners=False, antialias=(H < h or W < w))
    scale = torch.tensor([W / w, H / h], dtype=flow.dtype, device=flow.device).repeat(c // 2)
    return out * scale.view(1, c, 1, 1)


def full_resolution_flows(flows: Sequence[torch.Tensor] | torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Float flows in input pixels at the input size, for the flow feature extractor.

    Args:
        flows: a flow generator's output tuple (the finest, first, is used)
            or one ``(N, 2P, h, w)`` flow in pixels of its own resolution.
        size: the input frames' ``(H, W)``.

    Returns:
        ``(N, P, 2, H, W)`` float32: ``[:, k, 0]`` = dx, ``[:, k, 1]`` = dy
        of the flow from frame ``k`` to ``k + 1``, input pixels.
    """
    flow = flows if isinstance(flows, torch.Tensor) else flows[0]
    return flow_pairs(upsample_flow(flow, size)).float()


def _bilinear_kernel(k: int) -> torch.Tensor:
    """``(k, k)`` weights of 2x bilinear upsampling for ``ConvTranspose2d(k=4, stride=2, padding=1)``."""
    f = (k + 1) // 2
    centre = f - 1 if k % 2 == 1 else f - 0.5
    r = torch.arange(k, dtype=torch.float32)
    w1 = 1 - torch.abs(r - centre) / f
    return w1[:, None] * w1[None, :]


class FlowUpsample(nn.Module):
    """2x up-convolution of a flow field, times 2 (DeepEthogram "Modifications").

    ``(N, c, h, w)`` (or ``(N, c, T, h, w)`` with ``three_d``, upsampling ``h``
    and ``w`` only) in pixels of ``(h, w)`` -> ``(N, c, 2h, 2w)`` in pixels of
    ``(2h, 2w)``. The kernel starts as per-channel bilinear interpolation
    (ours) and is learnt.
    """

    def __init__(self, channels: int, three_d: bool = False):
        super().__init__()
        if three_d:
            self.up = nn.ConvTranspose3d(channels, channels, (1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1))
        else:
            self.up = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)
        with torch.no_grad():
            self.up.weight.zero_()
            kernel = _bilinear_kernel(4)
            for c in range(channels):
                self.up.weight[c, c].copy_(kernel.view_as(self.up.weight[c, c]))
            self.up.bias.zero_()

    def forward(self, flow: torch.Tensor) -> torch.Tensor:
        return self.up(flow) * 2.0


# --------------------------------------------------------------------------- building blocks


def _conv2d(c_in: int, c_out: int, k: int = 3, stride: int = 1, batch_norm: bool = True,
            act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride=stride, padding=(k - 1) // 2, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    if act:
        layers.append(nn.LeakyReLU(0.1, inplace=True))
    return nn.Sequential(*layers)


def _deconv2d(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.1, inplace=True))


def _conv3d(c_in: int, c_out: int, k: tuple[int, int, int], stride: tuple[int, int, int] = (1, 1, 1),
            temporal_pad: bool = True, batch_norm: bool = True, act: bool = True) -> nn.Sequential:
    pad = ((k[0] - 1) // 2 if temporal_pad else 0, (k[1] - 1) // 2, (k[2] - 1) // 2)
    layers: list[nn.Module] = [nn.Conv3d(c_in, c_out, k, stride=stride, padding=pad, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm3d(c_out))
    if act:
        layers.append(nn.LeakyReLU(0.1, inplace=True))
    return nn.Sequential(*layers)


def _deconv3d(c_in: int, c_out: int, batch_norm: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.ConvTranspose3d(c_in, c_out, (1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1),
                                                  bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm3d(c_out))
    layers.append(nn.LeakyReLU(0.1, inplace=True))
    return nn.Sequential(*layers)


def _init_predictors(modules: Sequence[nn.Module], std: float) -> None:
    """Flow-prediction convolutions start near zero flow (ours: training starts at the zero-flow baseline)."""
    for m in modules:
        nn.init.normal_(m.weight, 0.0, std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- networks


class FlowGenerator(nn.Module):
    """Common interface of the flow generators (see the module docstring for shapes and units).

    Attributes:
        arch: config name (``tiny_motionnet`` | ``motionnet`` | ``tiny_motionnet3d``).
        in_channels: ``C``, channels per frame (1 grey, 3 RGB).
        n_frames: ``T`` frames per input window (11 in DeepEthogram).
        size_multiple: ``H`` and ``W`` must be multiples of this (px).
        scales: output resolutions relative to the input, finest first.
    """

    arch = ""
    size_multiple = 8
    scales = (0.5, 0.25, 0.125)

    def __init__(self, in_channels: int = 3, n_frames: int = N_FRAMES):
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if n_frames < 2:
            raise ValueError(f"n_frames must be >= 2 (a flow needs two frames), got {n_frames}")
        self.in_channels, self.n_frames = int(in_channels), int(n_frames)
        # DeepEthogram's default normalisation before the dataset's own is computed (augs.yaml: mean 0.5, std 0.5).
        self.register_buffer("input_mean", torch.full((self.in_channels,), 0.5))
        self.register_buffer("input_std", torch.full((self.in_channels,), 0.5))

    @property
    def out_channels(self) -> int:
        """``2 * (T - 1)``: a (dx, dy) pair per consecutive frame pair."""
        return 2 * (self.n_frames - 1)

    def set_input_stats(self, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor) -> None:
        """Channel means and standard deviations ``(C,)`` of the [0, 1] frames, used to standardise the input."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.numel() != self.in_channels or std.numel() != self.in_channels:
            raise ValueError(f"need {self.in_channels} channel means and stds, got {mean.numel()} and {std.numel()}")
        if not torch.all(std > 0):
            raise ValueError(f"input standard deviations must be > 0, got {std.tolist()}")
        self.input_mean.copy_(mean)
        self.input_std.copy_(std)

    def as_clip(self, x: torch.Tensor) -> torch.Tensor:
        """Any accepted input layout -> ``(N, C, T, H, W)``, checked (``C``, ``T``, size multiple)."""
        C, T = self.in_channels, self.n_frames
        if x.ndim == 4:
            if x.shape[1] != C * T:
                raise ValueError(f"{self.arch}: stacked input must have {T} frames x {C} channels = {C * T} "
                                 f"channels, got {tuple(x.shape)}")
            n, _, h, w = x.shape
            x = x.reshape(n, T, C, h, w).transpose(1, 2)
        elif x.ndim == 5:
            if x.shape[1] != C or x.shape[2] != T:
                raise ValueError(f"{self.arch}: clip input must be (N, {C}, {T}, H, W), got {tuple(x.shape)}")
        else:
            raise ValueError(f"{self.arch}: input must be (N, {C * T}, H, W) or (N, {C}, {T}, H, W), "
                             f"got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(f"{self.arch}: frame height and width must be multiples of {m} px, got {h}x{w}")
        return x

    def standardise(self, clip: torch.Tensor) -> torch.Tensor:
        """``(N, C, T, H, W)`` in [0, 1] -> z-scored with ``input_mean`` / ``input_std``."""
        return (clip - self.input_mean.view(1, -1, 1, 1, 1)) / self.input_std.view(1, -1, 1, 1, 1)

    def _stacked(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised ``(N, T * C, H, W)`` frame-major stack for the 2D networks."""
        clip = self.standardise(self.as_clip(x))
        n, c, t, h, w = clip.shape
        return clip.transpose(1, 2).reshape(n, t * c, h, w)


class TinyMotionNet(FlowGenerator):
    """TinyMotionNet (Zhu et al. 2017; DeepEthogram-fast), ~1.9M parameters for 11 RGB frames.

    Encoder: conv1 7x7 64, conv2 5x5/2 128, conv3 3x3/2 256, conv4 3x3/2 128
    (each convolution + batch norm + LeakyReLU 0.1). Decoder: flow4 from conv4
    (1/8); up-convolution 4x4/2 to 128 maps, concatenated with conv3 and the
    upsampled flow4, a 3x3 "xconv" to 128 (batch norm, no activation), flow3
    (1/4); the same again to 64 maps with conv2, flow2 (1/2).

    ``forward(x)``: ``(N, T * C, H, W)`` or ``(N, C, T, H, W)`` in [0, 1] ->
    ``(flow2, flow3, flow4)``, each ``(N, 2(T-1), H/s, W/s)`` for
    s = 2, 4, 8, in pixels of its own resolution.
    """

    arch = "tiny_motionnet"
    size_multiple = 8

    def __init__(self, in_channels: int = 3, n_frames: int = N_FRAMES, batch_norm: bool = True,
                 predict_init_std: float = 1e-3):
        super().__init__(in_channels, n_frames)
        c_in, f = in_channels * n_frames, self.out_channels
        self.conv1 = _conv2d(c_in, 64, 7, 1, batch_norm)
        self.conv2 = _conv2d(64, 128, 5, 2, batch_norm)
        self.conv3 = _conv2d(128, 256, 3, 2, batch_norm)
        self.conv4 = _conv2d(256, 128, 3, 2, batch_norm)
        self.deconv3 = _deconv2d(128, 128)
        self.deconv2 = _deconv2d(128, 64)
        self.xconv3 = _conv2d(256 + 128 + f, 128, 3, 1, batch_norm, act=False)
        self.xconv2 = _conv2d(128 + 64 + f, 64, 3, 1, batch_norm, act=False)
        self.predict_flow4 = nn.Conv2d(128, f, 3, padding=1, bias=False)
        self.predict_flow3 = nn.Conv2d(128, f, 3, padding=1, bias=False)
        self.predict_flow2 = nn.Conv2d(64, f, 3, padding=1, bias=False)
        self.up_flow4 = FlowUpsample(f)
        self.up_flow3 = FlowUpsample(f)
        _init_predictors([self.predict_flow4, self.predict_flow3, self.predict_flow2], predict_init_std)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c1 = self.conv1(self._stacked(x))  # 1
        c2 = self.conv2(c1)  # 1/2
        c3 = self.conv3(c2)  # 1/4
        c4 = self.conv4(c3)  # 1/8
        flow4 = self.predict_flow4(c4)
        x3 = self.xconv3(torch.cat([c3, self.deconv3(c4), self.up_flow4(flow4)], 1))
        flow3 = self.predict_flow3(x3)
        x2 = self.xconv2(torch.cat([c2, self.deconv2(x3), self.up_flow3(flow3)], 1))
        flow2 = self.predict_flow2(x2)
        return flow2, flow3, flow4


class MotionNet(FlowGenerator):
    """MotionNet (Zhu et al. 2017; DeepEthogram-medium), ~45.8M parameters for 11 RGB frames.

    Encoder: six stages of two 3x3 convolutions (64, 128, 256, 512, 512, 1024
    filters; the first of each stage from stage 2 on has stride 2), down to
    1/32. Decoder (FlowNet-style): at each level a 4x4/2 up-convolution of the
    previous concatenation, concatenated with the encoder stage and the
    upsampled coarser flow, an "xconv" 3x3 (batch norm, no activation) and a
    flow prediction. Flows are predicted at 1/32 ... 1/2; as in DeepEthogram
    ("Modifications") only the three finest are returned and trained.

    ``forward(x)``: as :class:`TinyMotionNet`; ``H`` and ``W`` multiples of 32.
    """

    arch = "motionnet"
    size_multiple = 32

    def __init__(self, in_channels: int = 3, n_frames: int = N_FRAMES, batch_norm: bool = True,
                 predict_init_std: float = 1e-3):
        super().__init__(in_channels, n_frames)
        c_in, f = in_channels * n_frames, self.out_channels
        widths = (64, 128, 256, 512, 512, 1024)
        stages, prev = [], c_in
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(_conv2d(prev, w, 3, 1 if i == 0 else 2, batch_norm),
                                        _conv2d(w, w, 3, 1, batch_norm)))
            prev = w
        self.encoder = nn.ModuleList(stages)
        # Decoder levels 5 (1/16) .. 2 (1/2): input of each up-convolution = previous concatenation.
        self.deconv5 = _deconv2d(1024, 512)
        self.deconv4 = _deconv2d(512 + 512 + f, 256)
        self.deconv3 = _deconv2d(256 + 512 + f, 128)
        self.deconv2 = _deconv2d(128 + 256 + f, 64)
        self.xconv5 = _conv2d(512 + 512 + f, 512, 3, 1, batch_norm, act=False)
        self.xconv4 = _conv2d(256 + 512 + f, 256, 3, 1, batch_norm, act=False)
        self.xconv3 = _conv2d(128 + 256 + f, 128, 3, 1, batch_norm, act=False)
        self.xconv2 = _conv2d(64 + 128 + f, 64, 3, 1, batch_norm, act=False)
        self.predict = nn.ModuleList([nn.Conv2d(c, f, 3, padding=1, bias=False) for c in (1024, 512, 256, 128, 64)])
        self.up_flow = nn.ModuleList([FlowUpsample(f) for _ in range(4)])
        _init_predictors(list(self.predict), predict_init_std)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats, h = [], self._stacked(x)
        for stage in self.encoder:
            h = stage(h)
            feats.append(h)  # scales 1, 1/2, 1/4, 1/8, 1/16, 1/32
        flow = self.predict[0](feats[5])  # flow6, 1/32
        concat = feats[5]
        deconvs = (self.deconv5, self.deconv4, self.deconv3, self.deconv2)
        xconvs = (self.xconv5, self.xconv4, self.xconv3, self.xconv2)
        flows = [flow]
        for level in range(4):  # 1/16, 1/8, 1/4, 1/2
            concat = torch.cat([feats[4 - level], deconvs[level](concat), self.up_flow[level](flow)], 1)
            flow = self.predict[level + 1](xconvs[level](concat))
            flows.append(flow)
        return flows[4], flows[3], flows[2]


class TinyMotionNet3D(FlowGenerator):
    """TinyMotionNet3D (DeepEthogram-slow, Methods "TinyMotionNet3D"), ~0.4M parameters for RGB.

    TinyMotionNet with 3D convolutions and 16/32/64 filters, spatial kernels
    as in TinyMotionNet. Encoder (temporal kernel 3, time kept at ``T``):
    conv1 3x7x7 16, conv2 3x5x5/(1,2,2) 32, conv3 3x3x3/(1,2,2) 64, conv4
    3x3x3/(1,2,2) 32; conv5 2x3x3 32 (temporal kernel 2, no temporal padding:
    ``T`` -> ``T - 1`` frame pairs). Skip layers iconv3 (64) and iconv2 (32):
    2x3x3 on conv3 / conv2, also ``T`` -> ``T - 1``. Decoder (temporal kernel 3):
    up-convolutions 1x4x4/(1,2,2), xconv 3x3x3 (batch norm, no activation),
    flow predictions 3x3x3 to 2 channels (dx, dy) per frame pair.

    ``forward(x)``: ``(N, C, T, H, W)`` or ``(N, T * C, H, W)`` in [0, 1] ->
    ``(flow2, flow3, flow4)`` in the same stacked layout as the 2D networks,
    ``(N, 2(T-1), H/s, W/s)``, pixels of each output's own resolution.
    """

    arch = "tiny_motionnet3d"
    size_multiple = 8

    def __init__(self, in_channels: int = 3, n_frames: int = N_FRAMES, batch_norm: bool = True,
                 predict_init_std: float = 1e-3, channels: Sequence[int] = (16, 32, 64)):
        super().__init__(in_channels, n_frames)
        a, b, c = (int(v) for v in channels)
        bn = batch_norm
        self.conv1 = _conv3d(in_channels, a, (3, 7, 7), batch_norm=bn)
        self.conv2 = _conv3d(a, b, (3, 5, 5), (1, 2, 2), batch_norm=bn)
        self.conv3 = _conv3d(b, c, (3, 3, 3), (1, 2, 2), batch_norm=bn)
        self.conv4 = _conv3d(c, b, (3, 3, 3), (1, 2, 2), batch_norm=bn)
        self.conv5 = _conv3d(b, b, (2, 3, 3), temporal_pad=False, batch_norm=bn)
        self.iconv3 = _conv3d(c, c, (2, 3, 3), temporal_pad=False, batch_norm=bn)
        self.iconv2 = _conv3d(b, b, (2, 3, 3), temporal_pad=False, batch_norm=bn)
        self.deconv3 = _deconv3d(b, b, bn)
        self.deconv2 = _deconv3d(b, a, bn)
        self.xconv3 = _conv3d(c + b + 2, b, (3, 3, 3), batch_norm=bn, act=False)
        self.xconv2 = _conv3d(b + a + 2, a, (3, 3, 3), batch_norm=bn, act=False)
        self.predict_flow4 = nn.Conv3d(b, 2, 3, padding=1)
        self.predict_flow3 = nn.Conv3d(b, 2, 3, padding=1)
        self.predict_flow2 = nn.Conv3d(a, 2, 3, padding=1)
        self.up_flow4 = FlowUpsample(2, three_d=True)
        self.up_flow3 = FlowUpsample(2, three_d=True)
        _init_predictors([self.predict_flow4, self.predict_flow3, self.predict_flow2], predict_init_std)

    @staticmethod
    def _stack(flow: torch.Tensor) -> torch.Tensor:
        """``(N, 2, P, h, w)`` -> ``(N, 2P, h, w)`` with channels ``[dx_0, dy_0, dx_1, ...]``."""
        n, _, p, h, w = flow.shape
        return flow.transpose(1, 2).reshape(n, 2 * p, h, w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        clip = self.standardise(self.as_clip(x))
        c1 = self.conv1(clip)  # T, 1
        c2 = self.conv2(c1)  # T, 1/2
        c3 = self.conv3(c2)  # T, 1/4
        c4 = self.conv4(c3)  # T, 1/8
        c5 = self.conv5(c4)  # T-1, 1/8
        flow4 = self.predict_flow4(c5)
        x3 = self.xconv3(torch.cat([self.iconv3(c3), self.deconv3(c5), self.up_flow4(flow4)], 1))
        flow3 = self.predict_flow3(x3)
        x2 = self.xconv2(torch.cat([self.iconv2(c2), self.deconv2(x3), self.up_flow3(flow3)], 1))
        flow2 = self.predict_flow2(x2)
        return self._stack(flow2), self._stack(flow3), self._stack(flow4)


_CLASSES = {"tiny_motionnet": TinyMotionNet, "motionnet": MotionNet, "tiny_motionnet3d": TinyMotionNet3D}


def build_flow_generator(cfg_flow: Mapping[str, Any], in_channels: int) -> FlowGenerator:
    """A flow generator from the ``flow`` section of the DeepEthogram config.

    Args:
        cfg_flow: mapping with ``arch`` (one of :data:`ARCHS`), ``n_frames``
            and ``model.batch_norm`` / ``model.predict_init_std`` (the last
            three optional: defaults 11, True, 1e-3).
        in_channels: channels per frame (1 grey, 3 RGB).

    Raises:
        ValueError: unknown architecture or bad sizes.
    """
    arch = str(cfg_flow.get("arch", ""))
    if arch not in _CLASSES:
        raise ValueError(f"flow.arch must be one of {', '.join(ARCHS)}; got {arch!r}")
    model_cfg = cfg_flow.get("model") or {}
    return _CLASSES[arch](in_channels=int(in_channels), n_frames=int(cfg_flow.get("n_frames", N_FRAMES)),
                          batch_norm=bool(model_cfg.get("batch_norm", True)),
                          predict_init_std=float(model_cfg.get("predict_init_std", 1e-3)))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

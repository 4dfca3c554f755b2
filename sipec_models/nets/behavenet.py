"""SIPEC:BehaveNet in plain PyTorch: an Xception-style frame network and a non-causal temporal convolution network.

SIPEC Methods ("SIPEC:BehaveNet Network Architecture and training"):

* **Frame recognition network** (FRN, :class:`XceptionFRN`), after Xception
  (Chollet 2017): an *entry flow* (convolution + ReLU, then blocks of
  [separable convolution, ReLU, separable convolution, max pooling] with a
  strided 1x1 convolution on the residual path), a *middle flow* (8 blocks
  of 3 x [ReLU, separable convolution]) and an *exit flow* (one more
  entry-like block, then 2 x [separable convolution, ReLU]), global average
  pooling and a softmax classifier. For mice SIPEC "reduced the original
  Xception architecture by the first 17 layers"; here the depth and width
  are parameters (``entry_channels``, ``middle_blocks``, ``exit_channels``,
  ``width_mult``): the defaults in ``config/models/behavenet.yaml`` are a
  shortened network for small crops on a CPU. The frame network is
  pretrained frame by frame, then frozen.
* **Temporal convolution network** (:class:`TemporalConvNet`), non-causal:
  the behaviour at frame ``t`` is classified from the frozen frame
  features of ``[t - n, t + n]`` (SIPEC: ``n = 10``), through blocks of
  [1D convolution, batch norm, ReLU, spatial dropout].

Shapes: frames ``(B, C, S, S)`` float in [0, 1] (``C`` = 1 grey or 3 RGB,
``S`` the crop side, px); frame features ``(B, F)``; windows of features
``(B, 2n + 1, F)``; logits ``(B, K)`` for ``K`` behaviours (softmax for
exclusive behaviours, sigmoid per behaviour for the multi-label variant).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 convolution then pointwise 1x1 convolution, then batch norm (Xception's unit)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False)
        self.pointwise = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pointwise(self.depthwise(x)))


class EntryBlock(nn.Module):
    """[ReLU] SepConv, ReLU, SepConv, MaxPool 3x3 stride 2, plus a strided 1x1 convolution residual."""

    def __init__(self, c_in: int, c_out: int, relu_first: bool = True):
        super().__init__()
        self.body = nn.Sequential(
            *([nn.ReLU()] if relu_first else []),
            SeparableConv2d(c_in, c_out), nn.ReLU(), SeparableConv2d(c_out, c_out),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=2, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


class MiddleBlock(nn.Module):
    """3 x [ReLU, SepConv] with an identity residual (Xception's middle flow)."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(*[m for _ in range(3) for m in (nn.ReLU(), SeparableConv2d(c, c))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


def _ch(c: int, width_mult: float) -> int:
    return max(8, int(round(c * width_mult / 8)) * 8)


class XceptionFRN(nn.Module):
    """Xception-style frame recognition network: ``(B, C, S, S)`` -> logits ``(B, K)``.

    Args:
        num_classes: ``K`` behaviours.
        in_channels: 1 (grey) or 3 (RGB).
        stem_channels: the two stem convolutions (Xception: 32, 64; the first has stride 2).
        entry_channels: output channels of the entry-flow blocks, each halving
            the resolution (Xception: 128, 256, 728).
        middle_blocks: middle-flow blocks (Xception and SIPEC: 8).
        exit_channels: ``(block, sep1, sep2)``: the exit flow's entry-like
            block and its two separable convolutions (Xception: 1024, 1536, 2048).
        width_mult: multiplies every channel count (rounded to multiples of 8).
        dropout: before the classifier.

    Attributes:
        num_features: ``F``, the pooled feature size (:meth:`features`).
    """

    def __init__(self, num_classes: int, in_channels: int = 1, stem_channels: Sequence[int] = (32, 64),
                 entry_channels: Sequence[int] = (128, 256, 728), middle_blocks: int = 8,
                 exit_channels: Sequence[int] = (1024, 1536, 2048), width_mult: float = 1.0, dropout: float = 0.0):
        super().__init__()
        if num_classes < 1 or in_channels not in (1, 3) or len(stem_channels) != 2 or len(exit_channels) != 3:
            raise ValueError("XceptionFRN needs num_classes >= 1, in_channels 1 or 3, two stem and three exit "
                             "channel counts")
        s1, s2 = (_ch(c, width_mult) for c in stem_channels)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, s1, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(s1), nn.ReLU(),
            nn.Conv2d(s1, s2, 3, padding=1, bias=False), nn.BatchNorm2d(s2), nn.ReLU(),
        )
        blocks, c = [], s2
        for i, e in enumerate(entry_channels):
            e = _ch(e, width_mult)
            blocks.append(EntryBlock(c, e, relu_first=i > 0))
            c = e
        self.entry = nn.Sequential(*blocks)
        self.middle = nn.Sequential(*[MiddleBlock(c) for _ in range(middle_blocks)])
        b, x1, x2 = (_ch(v, width_mult) for v in exit_channels)
        self.exit = nn.Sequential(
            EntryBlock(c, b), SeparableConv2d(b, x1), nn.ReLU(), SeparableConv2d(x1, x2), nn.ReLU(),
        )
        self.num_features, self.num_classes, self.in_channels = x2, int(num_classes), int(in_channels)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(x2, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` in [0, 1] -> pooled features ``(B, F)``."""
        x = self.exit(self.middle(self.entry(self.stem(x))))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))


class EfficientNetFRN(nn.Module):
    """Frame recognition network on an ImageNet EfficientNet-Lite0 (an option of ours, not SIPEC's).

    ``(B, C, S, S)`` in [0, 1] (grey is replicated to RGB) -> ImageNet
    normalisation -> EfficientNet-Lite0 up to its 1x1 head convolution
    (1280 channels, ReLU6) -> global average pooling -> dropout -> linear
    classifier. Same interface as :class:`XceptionFRN` (``features``,
    ``classifier``, ``num_features``), so the temporal network and the
    training code are unchanged.

    Args:
        num_classes: ``K`` behaviours.
        in_channels: 1 (grey) or 3 (RGB).
        pretrained: load the offline ImageNet weights
            (:func:`~sipec_models.nets.efficientnet_lite.efficientnet_lite0`);
            False when the weights come from a checkpoint anyway.
        dropout: before the classifier.
        frozen_blocks: the stem and this many leading MBConv blocks (of 16)
            keep their ImageNet weights and batch-norm statistics while the
            rest trains: they run without gradients and stay in eval mode
            (0: the whole network trains; 11: blocks up to stride 16 frozen,
            only the stride-32 blocks, the head and the classifier train).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, pretrained: bool = True, dropout: float = 0.0,
                 frozen_blocks: int = 0):
        super().__init__()
        from sipec_models.nets.efficientnet_lite import efficientnet_lite0

        if num_classes < 1 or in_channels not in (1, 3):
            raise ValueError("EfficientNetFRN needs num_classes >= 1 and in_channels 1 or 3")
        self.encoder = efficientnet_lite0(pretrained=pretrained)
        del self.encoder._fc  # ImageNet classifier, unused
        n_blocks = len(self.encoder._blocks)
        if not 0 <= int(frozen_blocks) <= n_blocks:
            raise ValueError(f"frozen_blocks must be in [0, {n_blocks}], got {frozen_blocks}")
        self.frozen_blocks = int(frozen_blocks)
        for m in self._frozen_modules():
            m.requires_grad_(False)
        self.num_features, self.num_classes, self.in_channels = 1280, int(num_classes), int(in_channels)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.num_features, num_classes)

    def _frozen_modules(self) -> list[nn.Module]:
        e = self.encoder
        if self.frozen_blocks == 0:
            return []
        return [e._conv_stem, e._bn0, *e._blocks[:self.frozen_blocks]]

    def train(self, mode: bool = True) -> "EfficientNetFRN":
        """Train mode for the trainable part only: frozen blocks keep their batch-norm statistics."""
        super().train(mode)
        for m in self._frozen_modules():
            m.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` in [0, 1] -> pooled features ``(B, 1280)``."""
        import torch.nn.functional as F

        e = self.encoder
        x = e.normalize(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.frozen_blocks == 0):
            x = F.relu6(e._bn0(e._conv_stem(x)))
            for block in e._blocks[:self.frozen_blocks]:
                x = block(x)
        for block in e._blocks[self.frozen_blocks:]:
            x = block(x)
        return F.relu6(e._bn1(e._conv_head(x))).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))


class TemporalConvNet(nn.Module):
    """Non-causal TCN: frame features of ``[t - n, t + n]`` ``(B, 2n + 1, F)`` -> logits ``(B, K)`` at ``t``.

    Blocks of [Conv1d (``kernel_size``, "same" padding over time), BatchNorm1d,
    ReLU, spatial dropout (whole feature channels, ``nn.Dropout1d``)]; the
    window's features are then flattened into a linear classifier, so every
    frame of the window, before and after ``t``, can contribute.

    Args:
        num_features: ``F`` frame features.
        num_classes: ``K``.
        half_window: ``n`` (SIPEC: 10).
        channels: output channels of each block (their number = the blocks).
        kernel_size: temporal kernel, frames (odd).
        dropout: spatial dropout probability.
        input_dropout: dropout on the input features.
    """

    def __init__(self, num_features: int, num_classes: int, half_window: int = 10,
                 channels: Sequence[int] = (64, 64), kernel_size: int = 3, dropout: float = 0.25,
                 input_dropout: float = 0.0):
        super().__init__()
        if kernel_size % 2 == 0 or half_window < 0 or not channels:
            raise ValueError("TemporalConvNet needs an odd kernel_size, half_window >= 0 and at least one block")
        layers, c = [nn.Dropout(input_dropout)], num_features
        for out in channels:
            layers += [nn.Conv1d(c, out, kernel_size, padding=kernel_size // 2), nn.BatchNorm1d(out), nn.ReLU(),
                       nn.Dropout1d(dropout)]
            c = out
        self.blocks = nn.Sequential(*layers)
        self.half_window, self.num_features, self.num_classes = int(half_window), int(num_features), int(num_classes)
        self.classifier = nn.Linear(c * (2 * half_window + 1), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = 2 * self.half_window + 1
        if x.ndim != 3 or x.shape[1] != T or x.shape[2] != self.num_features:
            raise ValueError(f"TemporalConvNet expects (B, {T}, {self.num_features}) windows, got {tuple(x.shape)}")
        h = self.blocks(x.transpose(1, 2))  # (B, channels, T)
        return self.classifier(h.flatten(1))

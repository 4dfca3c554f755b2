"""SIPEC:IdNet networks: a DenseNet-BC frame classifier and its recurrent (bidirectional GRU) extension.

SIPEC (Methods, "SIPEC:IdNet Network Architecture and training") uses a
DenseNet backbone pretrained on ImageNet: 4 dense blocks of
batch-norm, ReLU, convolution layers whose outputs are concatenated,
joined by transitions (convolution then pooling), global average pooling,
dropout 0.5 and a softmax layer. The recurrent IdNet feeds the pooled
features of each of ``T`` time steps through batch normalisation, 3
bidirectional GRU layers, leaky ReLU (alpha 0.3), dropout 0.2 and a softmax
layer. Here the frame network is a small DenseNet-BC trained from scratch
on grey crops (no ImageNet weights: torchvision is not used and CPU
training must stay cheap); the logits are returned (softmax in the loss).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class _DenseLayer(nn.Module):
    """BN-ReLU-conv(1x1, ``bn_size * growth``)-BN-ReLU-conv(3x3, ``growth``); output concatenated to the input."""

    def __init__(self, in_ch: int, growth: int, bn_size: int):
        super().__init__()
        mid = bn_size * growth
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True), nn.Conv2d(in_ch, mid, 1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class _Transition(nn.Sequential):
    """BN-ReLU-conv(1x1) compressing the channels, then 2x2 average pooling."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True), nn.Conv2d(in_ch, out_ch, 1, bias=False),
                         nn.AvgPool2d(2))


class DenseNetId(nn.Module):
    """DenseNet-BC frame classifier for identity (SIPEC:IdNet, non-recurrent).

    Stem: 3x3 convolution (``init_features`` channels, stride 2), then 4
    dense blocks (``block_layers`` layers each, growth rate ``growth``)
    separated by 3 transitions (compression ``compression``, 2x2 average
    pooling), a final BN-ReLU, global average pooling, dropout and a linear
    layer. Input ``(B, in_channels, H, W)`` float in [0, 1]; with 4 halvings
    ``H, W`` should be at least 16 (e.g. 64).

    Args:
        n_classes: number of identities ``K``.
        in_channels: 1 for grey crops.
        growth: channels added by each dense layer.
        block_layers: layers per dense block (4 blocks).
        init_features: stem channels.
        bn_size: bottleneck width factor of the 1x1 convolutions.
        compression: channel factor of the transitions (DenseNet-BC: 0.5).
        dropout: dropout rate before the classifier (SIPEC: 0.5).
    """

    def __init__(self, n_classes: int, in_channels: int = 1, growth: int = 12,
                 block_layers: Sequence[int] = (3, 3, 3, 3), init_features: int = 24, bn_size: int = 4,
                 compression: float = 0.5, dropout: float = 0.5):
        super().__init__()
        if len(block_layers) != 4:
            raise ValueError(f"block_layers must list 4 dense blocks, got {list(block_layers)}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, init_features, 3, stride=2, padding=1, bias=False)]
        ch = init_features
        for b, n in enumerate(block_layers):
            for _ in range(n):
                layers.append(_DenseLayer(ch, growth, bn_size))
                ch += growth
            if b < len(block_layers) - 1:
                out = max(1, int(ch * compression))
                layers.append(_Transition(ch, out))
                ch = out
        layers += [nn.BatchNorm2d(ch), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.n_features = ch
        self.n_classes = n_classes
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(ch, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, n_features)`` pooled features (before dropout)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, n_classes)`` logits."""
        return self.classifier(self.dropout(self.features(x)))


class RecurrentIdNet(nn.Module):
    """Recurrent SIPEC:IdNet: frozen frame network features over ``T`` frames -> GRU -> identity of the centre frame.

    Per time step the frame network's pooled features
    (:meth:`DenseNetId.features`, computed without gradients, the frame
    network kept in eval mode) go through BatchNorm1d, then ``gru_layers``
    bidirectional GRU layers; the output at the centre time step passes a
    leaky ReLU (``alpha``), dropout and a linear layer to identity logits.

    Args:
        frame_net: a trained :class:`DenseNetId`; frozen here (``requires_grad=False``).
        n_classes: identities ``K``.
        hidden: GRU hidden size per direction.
        gru_layers: stacked GRU layers (SIPEC: 3).
        bidirectional: SIPEC: True.
        alpha: leaky ReLU negative slope (SIPEC: 0.3).
        dropout: dropout before the classifier (SIPEC: 0.2).
    """

    def __init__(self, frame_net: DenseNetId, n_classes: int, hidden: int = 64, gru_layers: int = 3,
                 bidirectional: bool = True, alpha: float = 0.3, dropout: float = 0.2):
        super().__init__()
        self.frame_net = frame_net
        for p in self.frame_net.parameters():
            p.requires_grad_(False)
        self.frame_net.eval()
        n = frame_net.n_features
        self.norm = nn.BatchNorm1d(n)
        self.gru = nn.GRU(n, hidden, num_layers=gru_layers, batch_first=True, bidirectional=bidirectional)
        self.act = nn.LeakyReLU(alpha)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden * (2 if bidirectional else 1), n_classes)
        self.n_classes = n_classes

    def train(self, mode: bool = True) -> "RecurrentIdNet":
        """Set training mode; the frozen frame network always stays in eval mode (fixed BatchNorm statistics)."""
        super().train(mode)
        self.frame_net.eval()
        return self

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, C, H, W)`` crops -> ``(B, T, n_features)`` frozen frame features."""
        B, T = x.shape[:2]
        with torch.no_grad():
            f = self.frame_net.features(x.reshape(B * T, *x.shape[2:]))
        return f.reshape(B, T, -1)

    def forward_features(self, f: torch.Tensor) -> torch.Tensor:
        """``(B, T, n_features)`` -> ``(B, n_classes)`` logits for the centre time step ``T // 2``."""
        B, T, n = f.shape
        f = self.norm(f.reshape(B * T, n)).reshape(B, T, n)
        out, _ = self.gru(f)
        return self.classifier(self.dropout(self.act(out[:, T // 2])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, C, H, W)`` crops of frames ``t - T//2 .. t + T//2`` -> ``(B, n_classes)`` logits for ``t``."""
        return self.forward_features(self.frame_features(x))

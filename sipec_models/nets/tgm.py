"""Temporal Gaussian Mixture (TGM) layers and DeepEthogram's TGM sequence model, in plain PyTorch.

**TGM layer** (Piergiovanni & Ryoo, ICML 2019, "Temporal Gaussian Mixture
Layer for Videos"). A temporal convolution whose kernels are not free
weights but soft mixtures of a few learned Gaussians, so a long kernel costs
a handful of parameters:

* ``M`` Gaussians of length ``L`` frames, each with a learned centre and
  width. Centre ``mu_m = (L - 1) (tanh(mu_hat_m) + 1) / 2`` lies in
  ``[0, L - 1]``; width ``sigma_m = exp(1.5 - 2 |tanh(sigma_hat_m)|)`` lies in
  ``[e^-0.5, e^1.5] = [0.61, 4.48]`` frames (the range of the released TGM
  code). ``G_m[l] = exp(-(l - mu_m)^2 / (2 sigma_m^2)) / Z_m`` sums to 1 over
  the ``L`` taps. ``kernel="cauchy"`` uses the Cauchy (Lorentzian) bump of
  the released TGM and DeepEthogram code instead, ``1 / (pi sigma (1 + ((l -
  mu) / sigma)^2))``, also normalised to sum 1.
* Soft attention: each of ``C_out x C_in`` temporal kernels is
  ``K_{o,c} = sum_m softmax_m(a_{o,c,:})[m] G_m``, a convex combination of
  the Gaussians (so every kernel sums to 1: a learned temporal smoothing).
* The ``C_in`` input channels of output channel ``o`` are each convolved
  with ``K_{o,c}`` and then combined: by soft attention over ``C_in``
  (``softmax_c(b_{o,:})``, DeepEthogram's default "soft attention, not 1D
  convolution"), or as in the TGM paper by a learned 1x1 convolution
  (weights and bias) followed by a ReLU (``soft_attention=False``).
* The same kernels act on each of the ``D`` feature dimensions
  independently: a TGM layer maps ``(N, C_in, D, T)`` to ``(N, C_out, D,
  T)``. Inside :class:`TGMLayer` the ``D`` dimensions are folded into the
  batch (``(N * D, C, T)``), and since the convolution and the channel
  combination are both linear, the layer is one ``conv1d`` with composed
  weights ``W[o, c, :] = mix[o, c] * K_{o,c}``.
* Zero padding of ``(L - 1) // 2`` frames before and ``L - 1 - (L - 1) // 2``
  after (``'same'`` length, non-causal: kernel tap ``l`` reads frame ``t + l
  - (L - 1) // 2``, so centres below the middle look into the past and
  above it into the future).

**TGMSequenceModel** (DeepEthogram, Bohnslav et al. eLife 2021, Methods
"Sequence models"): a stack of TGM layers (first ``C_in = 1``, then
``C_in = C_out``) over the ``(T, D)`` per-frame features, reduced over the
``C_out`` channels by a max (TGM paper) to ``(T, D)`` learned features; then
DeepEthogram's *late fusion*: the input features and the learned features
each go through their own head, [dropout, 1x1 conv ``D -> 128``, ReLU,
dropout, 1x1 conv ``128 -> K``], and the two ``K``-dim logits are averaged.
The TGM paper instead concatenated both into ``2D`` channels (early fusion)
and used 512 hidden channels; DeepEthogram found the learned features were
ignored in low-data regimes and 512 channels too many parameters. A 1x1
convolution over time is a per-frame linear layer, implemented here with
:class:`torch.nn.Linear` on ``(N, T, D)``. The model has about 265K
parameters for ``D = 1024, K = 5`` (DeepEthogram: "~264,000").

Shapes: input features ``(N, T, D)`` float (``N`` sequences, ``T`` frames,
``D`` features per frame: 1024 = 512 spatial + 512 flow in DeepEthogram);
output logits ``(N, T, K)``, one per behaviour (sigmoid for probabilities).
The receptive field is ``num_layers * (L - 1) + 1`` frames centred on each
frame (:attr:`TGMSequenceModel.receptive_radius` frames each side; 21 for
the defaults).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

KERNELS = ("gaussian", "cauchy")
REDUCTIONS = ("max", "mean")


class TGMLayer(nn.Module):
    """One temporal Gaussian mixture layer: ``(B, C_in, T) -> (B, C_out, T)``, the same kernels for every ``B``.

    ``B`` is batch x feature dimensions (:class:`TGMSequenceModel` folds ``D`` into it).

    Args:
        c_in: input channels (1 for the first layer of a stack).
        c_out: output channels ``C_out`` (DeepEthogram: 8).
        n_gaussians: ``M`` Gaussians per layer (DeepEthogram: "number of filters: 8").
        filter_length: ``L`` taps, frames (DeepEthogram: 15).
        soft_attention: combine the ``C_in`` channels by softmax attention
            (DeepEthogram); False: a 1x1 convolution with bias, then ReLU
            (TGM paper). Irrelevant when ``c_in == 1``.
        kernel: ``"gaussian"`` (TGM paper) or ``"cauchy"`` (released TGM code).
    """

    def __init__(self, c_in: int = 1, c_out: int = 8, n_gaussians: int = 8, filter_length: int = 15,
                 soft_attention: bool = True, kernel: str = "gaussian"):
        super().__init__()
        for name, v in (("c_in", c_in), ("c_out", c_out), ("n_gaussians", n_gaussians),
                        ("filter_length", filter_length)):
            if int(v) != v or v < 1:
                raise ValueError(f"TGMLayer {name} must be a positive integer, got {v}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self.c_in, self.c_out, self.n_gaussians, self.filter_length = int(c_in), int(c_out), int(n_gaussians), \
            int(filter_length)
        self.soft_attention, self.kernel = bool(soft_attention), kernel
        # centres near the middle of the window, widths near the widest (TGM code: N(0, 0.5), N(0, 1e-4))
        self.center = nn.Parameter(torch.randn(self.n_gaussians) * 0.5)
        self.width = nn.Parameter(torch.randn(self.n_gaussians) * 1e-4)
        # soft attention over the M Gaussians of each (output, input) channel pair (logits)
        self.attention = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.c_out * self.c_in, self.n_gaussians))
                                      .view(self.c_out, self.c_in, self.n_gaussians))
        if self.c_in > 1 and self.soft_attention:
            self.channel_attention = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.c_out, self.c_in)))
        elif self.c_in > 1:  # a 1x1 convolution per output channel, PyTorch's default Conv initialisation
            bound = 1.0 / math.sqrt(self.c_in)
            self.mix_weight = nn.Parameter(torch.empty(self.c_out, self.c_in).uniform_(-bound, bound))
            self.mix_bias = nn.Parameter(torch.empty(self.c_out).uniform_(-bound, bound))

    @property
    def padding(self) -> tuple[int, int]:
        """Zero frames added ``(before, after)`` the sequence."""
        before = (self.filter_length - 1) // 2
        return before, self.filter_length - 1 - before

    def centres_and_widths(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(M,)`` centres in ``[0, L - 1]`` and ``(M,)`` widths in ``[0.61, 4.48]``, both in frames (taps)."""
        centres = (self.filter_length - 1) * (torch.tanh(self.center) + 1) / 2
        widths = torch.exp(1.5 - 2.0 * torch.abs(torch.tanh(self.width)))
        return centres, widths

    def gaussians(self) -> torch.Tensor:
        """``(M, L)`` the Gaussian (or Cauchy) bumps, each summing to 1 over its ``L`` taps."""
        centres, widths = self.centres_and_widths()
        taps = torch.arange(self.filter_length, device=centres.device, dtype=centres.dtype)
        z = (taps[None, :] - centres[:, None]) / widths[:, None]
        if self.kernel == "gaussian":
            g = torch.exp(-0.5 * z ** 2)
        else:
            g = 1.0 / (math.pi * widths[:, None] * (1.0 + z ** 2))
        return g / g.sum(dim=1, keepdim=True)

    def temporal_kernels(self) -> torch.Tensor:
        """``(C_out, C_in, L)``: each kernel the soft-attention mixture of the Gaussians (sums to 1)."""
        return torch.einsum("ocm,ml->ocl", torch.softmax(self.attention, dim=2), self.gaussians())

    def channel_mix(self) -> torch.Tensor | None:
        """``(C_out, C_in)`` weights combining the input channels; None when ``C_in = 1``.

        Soft attention: ``softmax`` over ``C_in`` (rows sum to 1); else the 1x1 convolution's weights.
        """
        if self.c_in == 1:
            return None
        if self.soft_attention:
            return torch.softmax(self.channel_attention, dim=1)
        return self.mix_weight

    def weight(self) -> torch.Tensor:
        """``(C_out, C_in, L)`` the composed ``conv1d`` weight of the whole layer."""
        k = self.temporal_kernels()
        mix = self.channel_mix()
        return k if mix is None else k * mix[:, :, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, T)`` -> ``(B, C_out, T)``."""
        if x.ndim != 3 or x.shape[1] != self.c_in:
            raise ValueError(f"TGMLayer expects (B, C_in={self.c_in}, T), got {tuple(x.shape)}")
        y = F.conv1d(F.pad(x, self.padding), self.weight().to(x.dtype))
        if self.c_in > 1 and not self.soft_attention:
            y = F.relu(y + self.mix_bias.to(x.dtype)[None, :, None])
        return y


class _Head(nn.Module):
    """Per-frame classifier of one stream: dropout, Linear ``D -> H``, ReLU, dropout, Linear ``H -> K``.

    ``H = 0``: dropout, then one Linear ``D -> K``.
    """

    def __init__(self, num_features: int, num_classes: int, hidden: int, input_dropout: float, output_dropout: float):
        super().__init__()
        self.input_dropout = nn.Dropout(input_dropout)
        self.hidden = nn.Linear(num_features, hidden) if hidden else None
        self.output_dropout = nn.Dropout(output_dropout)
        self.classify = nn.Linear(hidden or num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, T, D)`` -> ``(N, T, K)`` logits."""
        x = self.input_dropout(x)
        if self.hidden is not None:
            x = self.output_dropout(F.relu(self.hidden(x)))
        return self.classify(x)


class TGMSequenceModel(nn.Module):
    """DeepEthogram's sequence model: a TGM stack with late fusion of input and learned features.

    Args:
        num_features: ``D`` input features per frame (DeepEthogram: 1024).
        num_classes: ``K`` behaviours (with background, if the labels have it).
        num_layers: TGM layers (DeepEthogram: 3).
        n_gaussians: Gaussians ``M`` per layer (DeepEthogram: 8).
        filter_length: ``L`` frames (DeepEthogram: 15).
        c_out: channels ``C_out`` of every TGM layer (DeepEthogram: 8).
        soft_attention: see :class:`TGMLayer` (DeepEthogram: True).
        reduction: ``"max"`` (TGM paper) or ``"mean"`` over the ``C_out`` channels of the last layer.
        kernel: ``"gaussian"`` or ``"cauchy"`` (see :class:`TGMLayer`).
        input_dropout: dropout of the input and learned features before each head (DeepEthogram: 0.5).
        output_dropout: dropout of the hidden features before the classifier (DeepEthogram: 0.5).
        hidden: channels of the penultimate 1x1 convolution of each head
            (DeepEthogram: 128; TGM paper: 512); 0: a linear classifier.

    Input ``(N, T, D)``, output ``(N, T, K)`` logits; non-causal, ``'same'`` length.
    """

    def __init__(self, num_features: int = 1024, num_classes: int = 5, num_layers: int = 3, n_gaussians: int = 8,
                 filter_length: int = 15, c_out: int = 8, soft_attention: bool = True, reduction: str = "max",
                 kernel: str = "gaussian", input_dropout: float = 0.5, output_dropout: float = 0.5,
                 hidden: int = 128):
        super().__init__()
        for name, v, lo in (("num_features", num_features, 1), ("num_classes", num_classes, 1),
                            ("num_layers", num_layers, 1), ("hidden", hidden, 0)):
            if int(v) != v or v < lo:
                raise ValueError(f"TGMSequenceModel {name} must be an integer >= {lo}, got {v}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        for name, p in (("input_dropout", input_dropout), ("output_dropout", output_dropout)):
            if not 0 <= p < 1:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        self.num_features, self.num_classes, self.reduction = int(num_features), int(num_classes), reduction
        self.layers = nn.ModuleList(
            TGMLayer(1 if i == 0 else c_out, c_out, n_gaussians, filter_length, soft_attention, kernel)
            for i in range(int(num_layers)))
        self.input_head = _Head(self.num_features, self.num_classes, int(hidden), input_dropout, output_dropout)
        self.learned_head = _Head(self.num_features, self.num_classes, int(hidden), input_dropout, output_dropout)

    @property
    def receptive_radius(self) -> int:
        """Frames on either side of ``t`` that can change the output at ``t``.

        ``num_layers * ceil((L - 1) / 2)``: 21 for 3 layers of 15 taps.
        """
        return sum(max(layer.padding) for layer in self.layers)

    def init_bias(self, pos, neg) -> None:
        """Set both classifiers' biases from class frequencies (DeepEthogram "Bias initialization").

        ``b_k = log(pos_k / neg_k)`` (:func:`sipec_models.deg_losses.bias_from_counts`; 0 for a
        behaviour without positive or negative frames) on both heads, so their average, the
        model's logit, starts near each behaviour's training log-odds.

        Args:
            pos, neg: ``(K,)`` counts of positive and negative training frames.
        """
        from sipec_models.deg_losses import bias_from_counts

        bias = torch.as_tensor(bias_from_counts(pos, neg))
        if bias.shape != (self.num_classes,):
            raise ValueError(f"need {self.num_classes} class counts, got {tuple(bias.shape)}")
        with torch.no_grad():
            for head in (self.input_head, self.learned_head):
                head.classify.bias.copy_(bias.to(head.classify.bias))

    def learned_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, T, D)`` features -> ``(N, T, D)`` TGM features (stack, then max/mean over ``C_out``)."""
        n, t, d = x.shape
        h = x.transpose(1, 2).reshape(n * d, 1, t)  # every feature dimension is its own 1-channel sequence
        for layer in self.layers:
            h = layer(h)
        h = h.amax(dim=1) if self.reduction == "max" else h.mean(dim=1)  # (N * D, T)
        return h.view(n, d, t).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, T, D)`` features -> ``(N, T, K)`` logits (the average of the two heads)."""
        if x.ndim != 3 or x.shape[2] != self.num_features:
            raise ValueError(f"TGMSequenceModel expects (N, T, D={self.num_features}) features, got {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError("TGMSequenceModel needs at least one frame (T >= 1)")
        return (self.input_head(x) + self.learned_head(self.learned_features(x))) / 2

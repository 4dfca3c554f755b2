"""The pose-based behaviour classifier of Sturman et al. (2020): an MLP on stacked pose features.

Sturman et al. (Neuropsychopharmacology 45, 1942) feed the pose features of
the frames ``t - 15 .. t + 15`` to a fully connected network with two hidden
layers of 256 and 128 units, ReLU and dropout; SIPEC and DeepEthogram
compare against it. Here:

* input ``(B, n_in)`` float features, standardised inside the network with
  the mean and standard deviation of the training data, stored as buffers
  (``mean``, ``std``) so a checkpoint needs nothing else;
* ``Linear -> [BatchNorm] -> ReLU -> Dropout`` per hidden layer;
* output ``(B, n_classes)`` logits (softmax or sigmoid in the loss and at
  prediction time).

With ``n_members > 1`` the module holds several such MLPs (an ensemble,
ours: it evens out the run-to-run variation of a small network trained on
few bouts); each is trained on its own loss (:meth:`PoseMLP.member_logits`)
and the output is the mean of their logits.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn


class PoseMLP(nn.Module):
    """MLP ``n_in -> hidden[0] -> hidden[1] -> ... -> n_classes`` with input standardisation.

    Args:
        n_in: input features (stacked window of per-frame features).
        n_classes: outputs (behaviours).
        hidden: units per hidden layer (Sturman et al.: 256, 128).
        dropout: dropout probability after each hidden layer.
        batch_norm: batch normalisation before each hidden ReLU.
        input_dropout: dropout probability on the standardised input (0: none).
        n_members: number of independently initialised MLPs whose logits are averaged.
    """

    def __init__(self, n_in: int, n_classes: int, hidden: Sequence[int] = (256, 128), dropout: float = 0.5,
                 batch_norm: bool = False, input_dropout: float = 0.0, n_members: int = 1):
        super().__init__()
        if n_in < 1 or n_classes < 1:
            raise ValueError(f"PoseMLP needs n_in >= 1 and n_classes >= 1, got {n_in} and {n_classes}")
        if not 0 <= dropout < 1 or not 0 <= input_dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout} and input_dropout {input_dropout}")
        if n_members < 1:
            raise ValueError(f"n_members must be >= 1, got {n_members}")
        self.n_in, self.n_classes, self.n_members = int(n_in), int(n_classes), int(n_members)
        self.hidden = [int(h) for h in hidden]
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("std", torch.ones(n_in))

        def mlp() -> nn.Sequential:
            layers: list[nn.Module] = [nn.Dropout(input_dropout)] if input_dropout > 0 else []
            width = n_in
            for h in self.hidden:
                layers.append(nn.Linear(width, h))
                if batch_norm:
                    layers.append(nn.BatchNorm1d(h))
                layers += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
                width = h
            layers.append(nn.Linear(width, n_classes))
            return nn.Sequential(*layers)

        self.members = nn.ModuleList([mlp() for _ in range(self.n_members)])

    @torch.no_grad()
    def set_standardisation(self, x: np.ndarray | torch.Tensor, min_std: float = 1e-6) -> None:
        """Store the per-column mean and standard deviation of training inputs ``(N, n_in)``.

        Columns with a standard deviation below ``min_std`` (constant
        features) are divided by 1 instead.
        """
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float64)
        if x.ndim != 2 or x.shape[1] != self.n_in or len(x) == 0:
            raise ValueError(f"standardisation needs (N, {self.n_in}) inputs with N >= 1, got {tuple(x.shape)}")
        mean, std = x.mean(0), x.std(0, unbiased=False)
        std = torch.where(std < min_std, torch.ones_like(std), std)
        self.mean.copy_(mean.float())
        self.std.copy_(std.float())

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, n_in)`` features -> ``(M, B, n_classes)`` logits of each of the ``M`` members."""
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise ValueError(f"PoseMLP expects (B, {self.n_in}) inputs, got {tuple(x.shape)}")
        z = (x - self.mean) / self.std
        return torch.stack([m(z) for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, n_in)`` features -> ``(B, n_classes)`` logits (the members' mean)."""
        return self.member_logits(x).mean(0)

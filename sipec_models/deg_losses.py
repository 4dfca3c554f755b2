"""DeepEthogram's losses: weighted binary focal loss with label smoothing, L2-SP and L2 regularisers.

Data term (DeepEthogram Methods, "Loss functions"), per frame ``t`` and
behaviour ``k`` with ``p = sigmoid(logit)``::

    l = -[ w_k (1 - p)^gamma y log p + p^gamma (1 - y) log(1 - p) ]

* ``gamma = 1`` for the feature extractors and sequence models;
* label smoothing (Mueller et al. 2019): targets 0.05 / 0.95 instead of 0 / 1;
* ``w_k = (neg_k / pos_k) ** beta`` (``beta = 0.25``) weights the positive
  term only: it is ``pos_weight`` of :class:`torch.nn.BCEWithLogitsLoss`.
  The paper prints the ratio as positives over negatives, but its own
  example (1 % positives, ``beta = 1``: weight 100), its remark that the
  weight is ``pos_weight`` and the DeepEthogram code all give negatives over
  positives, as here.

As in the DeepEthogram code (``BinaryFocalLoss``), the focal factor uses the
hard label (``(1 - p)^gamma`` for a positive, ``p^gamma`` for a negative)
and multiplies the binary cross-entropy with the smoothed target and
``pos_weight``; with ``gamma = 0`` and no smoothing this is exactly
``BCEWithLogitsLoss(pos_weight=w)``.

Regularisation ("Regularization"; Li et al. 2018): L2-SP
``alpha/2 ||w_s - w_s0||^2 + beta/2 ||w_new||^2`` over the weights that are
neither biases nor normalisation parameters (feature extractors: ``alpha =
1e-5``, ``beta = 1e-3``), and plain L2 ``alpha/2 ||w||^2`` with ``alpha =
0.01`` for the sequence model, which is not pretrained.

Unlabelled elements (NaN targets) are ignored everywhere.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: DeepEthogram: focal loss gamma of the feature extractors and sequence models.
FOCAL_GAMMA = 1.0
#: DeepEthogram: label smoothing, targets 0.05 / 0.95.
LABEL_SMOOTHING = 0.05
#: DeepEthogram: exponent of the positive-example weight.
POS_WEIGHT_BETA = 0.25
#: DeepEthogram: L2-SP coefficients of the feature extractors (towards pretrained, towards zero).
L2SP_ALPHA, L2SP_BETA = 1e-5, 1e-3
#: DeepEthogram: L2 coefficient of the sequence model.
L2_ALPHA = 0.01

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


# --------------------------------------------------------------------------- class statistics


def class_counts(targets) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative counts per behaviour, ignoring unlabelled (NaN) elements.

    Args:
        targets: ``(N, K)`` (or ``(..., K)``) 0/1 labels, NaN where unlabelled;
            numpy array or tensor.

    Returns:
        ``pos (K,)`` and ``neg (K,)`` int64 counts.

    Raises:
        ValueError: labels other than 0, 1 or NaN.
    """
    y = targets.detach().cpu().numpy() if torch.is_tensor(targets) else np.asarray(targets, np.float64)
    if y.ndim < 1:
        raise ValueError(f"targets must be (..., K), got shape {y.shape}")
    y = y.reshape(-1, y.shape[-1]).astype(np.float64)
    ok = np.isfinite(y)
    if not np.isin(y[ok], (0, 1)).all():
        raise ValueError("targets must be 0, 1 or NaN (unlabelled)")
    pos = ((y == 1) & ok).sum(0).astype(np.int64)
    neg = ((y == 0) & ok).sum(0).astype(np.int64)
    return pos, neg


def positive_weights(pos, neg, beta: float = POS_WEIGHT_BETA) -> np.ndarray:
    """DeepEthogram's positive weights ``w_k = (neg_k / pos_k) ** beta`` (``pos_weight`` of BCEWithLogitsLoss).

    ``beta = 1`` weights positives fully by their rarity (1 % positives:
    weight 99), ``beta = 0`` weights all examples equally. A behaviour
    without positive or without negative examples gets weight 1.

    Args:
        pos, neg: ``(K,)`` counts of positive and negative training examples.
        beta: exponent >= 0 (DeepEthogram: 0.25).

    Returns:
        ``(K,)`` float32 weights.
    """
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if pos.shape != neg.shape or pos.ndim != 1:
        raise ValueError(f"pos and neg must both be (K,), got {pos.shape} and {neg.shape}")
    if beta < 0 or (pos < 0).any() or (neg < 0).any():
        raise ValueError(f"positive_weights needs beta >= 0 and non-negative counts, got beta={beta}")
    defined = (pos > 0) & (neg > 0)
    ratio = np.where(defined, neg / np.where(defined, pos, 1.0), 1.0)
    return (ratio ** beta).astype(np.float32)


def bias_from_counts(pos, neg) -> np.ndarray:
    """Initial output bias ``b_k = log(pos_k / neg_k)``, so that ``sigmoid(b_k) = pos_k / (pos_k + neg_k)``.

    DeepEthogram "Bias initialization". As in the DeepEthogram code, a
    behaviour without positive (or without negative) examples gets 0 instead
    of an infinite bias.

    Returns:
        ``(K,)`` float32 biases.
    """
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if pos.shape != neg.shape or pos.ndim != 1:
        raise ValueError(f"pos and neg must both be (K,), got {pos.shape} and {neg.shape}")
    if (pos < 0).any() or (neg < 0).any():
        raise ValueError("counts must be non-negative")
    defined = (pos > 0) & (neg > 0)
    return np.where(defined, np.log(np.where(defined, pos, 1.0) / np.where(defined, neg, 1.0)), 0.0).astype(
        np.float32)


# --------------------------------------------------------------------------- data term


def smooth_targets(targets: torch.Tensor, label_smoothing: float = LABEL_SMOOTHING) -> torch.Tensor:
    """``y * (1 - 2 eps) + eps``: 0 -> ``eps``, 1 -> ``1 - eps`` (DeepEthogram: 0.05 / 0.95); NaN stays NaN."""
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    return targets * (1 - 2 * label_smoothing) + label_smoothing


def binary_focal_loss(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None,
                      gamma: float = FOCAL_GAMMA, label_smoothing: float = LABEL_SMOOTHING,
                      reduction: str = "sum_classes") -> torch.Tensor:
    """DeepEthogram's weighted binary focal loss with label smoothing.

    Per labelled element (``y`` the 0/1 label, ``y'`` the smoothed target,
    ``w`` the behaviour's positive weight, ``p = sigmoid(logit)``)::

        l = f * -[ w y' log p + (1 - y') log(1 - p) ],   f = (1 - p)^gamma if y = 1 else p^gamma

    Args:
        logits: ``(..., K)`` one logit per behaviour (e.g. ``(N, K)`` frames,
            ``(N, T, K)`` sequences).
        targets: same shape, 0/1 labels; NaN marks an unlabelled element (ignored).
        pos_weight: optional ``(K,)`` positive weights (:func:`positive_weights`).
        gamma: focal exponent >= 0 (DeepEthogram: 1; 0 gives weighted BCE).
        label_smoothing: ``eps`` in ``[0, 0.5)`` (DeepEthogram: 0.05).
        reduction: ``"sum_classes"`` (DeepEthogram code): sum over the
            behaviours, mean over the positions (all leading dimensions) that
            have at least one labelled element; ``"mean"``: mean over the
            labelled elements (as BCEWithLogitsLoss); ``"none"``: ``(..., K)``
            per-element losses, 0 where unlabelled.

    Returns:
        Scalar tensor (``"none"``: per-element tensor). With no labelled
        element: 0, still attached to the graph.

    Raises:
        ValueError: shapes do not fit, labels not 0/1/NaN, bad parameters.
    """
    if logits.ndim < 1 or targets.shape != logits.shape:
        raise ValueError(f"logits and targets must have the same shape (..., K), got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if reduction not in ("sum_classes", "mean", "none"):
        raise ValueError(f"reduction must be 'sum_classes', 'mean' or 'none', got {reduction!r}")
    x = logits.float()
    y = targets.to(device=x.device, dtype=torch.float32)
    keep = ~torch.isnan(y)
    if not ((y[keep] == 0) | (y[keep] == 1)).all():
        raise ValueError("targets must be 0, 1 or NaN (unlabelled)")
    K = x.shape[-1]
    if pos_weight is not None:
        pos_weight = torch.as_tensor(pos_weight, dtype=torch.float32, device=x.device)
        if pos_weight.shape != (K,) or (pos_weight < 0).any():
            raise ValueError(f"pos_weight must be ({K},) non-negative, got shape {tuple(pos_weight.shape)}")
    y = torch.where(keep, y, torch.zeros_like(y))
    bce = F.binary_cross_entropy_with_logits(x, smooth_targets(y, label_smoothing), pos_weight=pos_weight,
                                             reduction="none")
    if gamma:
        p = torch.sigmoid(x)
        focal = torch.where(y == 1, (1 - p).pow(gamma), p.pow(gamma))
        bce = bce * focal
    loss = torch.where(keep, bce, torch.zeros_like(bce))
    if reduction == "none":
        return loss
    if not keep.any():
        return x.sum() * 0.0
    if reduction == "mean":
        return loss.sum() / keep.sum()
    rows = keep.reshape(-1, K).any(1)
    return loss.reshape(-1, K).sum(1)[rows].mean()


# --------------------------------------------------------------------------- regularisation


def decay_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable parameters weight decay applies to: neither biases nor normalisation parameters.

    Excluded: parameters of batch/group/layer norm modules, parameters
    named ``bias``, and any 1-D parameter (DeepEthogram's
    ``should_decay_parameter``), and frozen parameters.
    """
    skip = set()
    for mname, module in model.named_modules():
        if isinstance(module, _NORM_TYPES):
            skip.update(f"{mname}.{p}" if mname else p for p, _ in module.named_parameters(recurse=False))
    return {n: p for n, p in model.named_parameters()
            if p.requires_grad and n not in skip and not n.endswith("bias") and p.ndim > 1}


class L2SP(nn.Module):
    """L2-SP regulariser (Li et al. 2018; DeepEthogram): ``alpha/2 ||w_s - w_s0||^2 + beta/2 ||w_new||^2``.

    ``w_s`` are the decayed weights (:func:`decay_parameters`) that have a
    starting point ``w_s0`` of the same shape in ``reference`` (the weights
    from transfer learning); the others (``w_new``, e.g. the final linear
    layers) are decayed towards zero. With an empty ``reference`` this is
    plain L2 with coefficient ``beta`` on all weights, which is what the
    DeepEthogram code falls back to without pretrained weights.

    Args:
        model: the network whose parameter names are used.
        reference: parameter name -> starting value (copied, detached). Use
            :func:`reference_weights` to take them from a model.
        alpha: decay towards the starting point (feature extractors: 1e-5).
        beta: decay of the new weights towards zero (feature extractors: 1e-3).
    """

    def __init__(self, model: nn.Module, reference: Mapping[str, torch.Tensor], alpha: float = L2SP_ALPHA,
                 beta: float = L2SP_BETA):
        super().__init__()
        if alpha < 0 or beta < 0:
            raise ValueError(f"L2-SP needs alpha, beta >= 0, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta = float(alpha), float(beta)
        params = decay_parameters(model)
        self.pretrained_keys = sorted(k for k, p in params.items()
                                      if k in reference and tuple(reference[k].shape) == tuple(p.shape))
        self.new_keys = sorted(set(params) - set(self.pretrained_keys))
        self._ref = {k: reference[k].detach().clone().float() for k in self.pretrained_keys}

    def _apply(self, fn, *args, **kwargs):  # move the reference weights with .to()/.cuda()
        self._ref = {k: fn(v) for k, v in self._ref.items()}
        return super()._apply(fn, *args, **kwargs)

    def forward(self, model: nn.Module) -> torch.Tensor:
        """Scalar penalty of ``model``'s current weights (only trainable ones count)."""
        named = dict(model.named_parameters())
        dev = next(iter(named.values())).device if named else torch.device("cpu")
        sp = torch.zeros((), device=dev)
        for k in self.pretrained_keys:
            p = named[k]
            if p.requires_grad:
                sp = sp + (p.float() - self._ref[k].to(p.device)).pow(2).sum()
        new = torch.zeros((), device=dev)
        for k in self.new_keys:
            p = named[k]
            if p.requires_grad:
                new = new + p.float().pow(2).sum()
        return 0.5 * self.alpha * sp + 0.5 * self.beta * new


def reference_weights(model: nn.Module, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Detached copies of ``model``'s parameters (only ``keys`` when given), as L2-SP starting points."""
    named = dict(model.named_parameters())
    keys = named.keys() if keys is None else keys
    return {k: named[k].detach().clone() for k in keys}


def l2_penalty(model: nn.Module, alpha: float = L2_ALPHA) -> torch.Tensor:
    """Plain L2 ``alpha/2 * sum ||w||^2`` over :func:`decay_parameters` (DeepEthogram sequence model: 0.01)."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    params = list(decay_parameters(model).values())
    if not params:
        return torch.zeros(())
    return 0.5 * alpha * sum(p.float().pow(2).sum() for p in params)

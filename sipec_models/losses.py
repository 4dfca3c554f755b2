"""Focal losses of the behaviour classifiers (SIPEC:BehaveNet and the pose-based baseline).

SIPEC trains its behaviour networks with the multi-class focal loss of Lin
et al. (2017, "Focal loss for dense object detection") with ``gamma = 3``
and ``alpha = 0.5`` (SIPEC Methods): per sample

    ``loss = -alpha * (1 - p_t) ** gamma * log p_t``

with ``p_t`` the softmax probability of the true class, averaged over the
samples (:func:`focal_loss`). Frames may carry several overlapping
behaviours (DeepEthogram's multi-label ethograms); :func:`binary_focal_loss`
is the per-behaviour sigmoid version of Lin et al. (``alpha`` weighting the
positive terms, ``1 - alpha`` the negative ones), with optional label
smoothing and per-behaviour positive weights.

Unlabelled frames are ignored: target ``-1`` in the multi-class loss, NaN in
the multi-label loss. Both return a scalar tensor (0, still attached to the
graph, when no target is labelled).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Multi-class target value of an unlabelled sample.
IGNORE = -1


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 3.0, alpha: float = 0.5,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-class focal loss (Lin et al. 2017; SIPEC: ``gamma = 3``, ``alpha = 0.5``).

    Per labelled sample ``i``: ``l_i = -alpha * w[y_i] * (1 - p_i) ** gamma *
    log p_i`` with ``p_i = softmax(logits_i)[y_i]`` and ``w`` the class
    weights (1 without ``weight``). The result is ``sum_i l_i / sum_i
    w[y_i]`` over the labelled samples: the plain mean without weights, the
    weighted mean of :func:`torch.nn.functional.cross_entropy` with them, so
    ``gamma = 0, alpha = 1`` is exactly ``cross_entropy(logits, target,
    weight)``.

    Args:
        logits: ``(N, C)`` unnormalised class scores.
        target: ``(N,)`` int class indices in ``[0, C)``, or ``-1`` for an
            unlabelled sample (ignored).
        gamma: focusing exponent, >= 0 (0: alpha-scaled cross-entropy).
        alpha: overall scale, > 0.
        weight: optional ``(C,)`` non-negative class weights.

    Returns:
        Scalar tensor.

    Raises:
        ValueError: shapes do not fit, targets out of range, bad ``gamma``/``alpha``/``weight``.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    if target.shape != logits.shape[:1]:
        raise ValueError(f"target must be (N,) = ({logits.shape[0]},) class indices, got shape {tuple(target.shape)}")
    if gamma < 0 or alpha <= 0:
        raise ValueError(f"focal loss needs gamma >= 0 and alpha > 0, got gamma={gamma}, alpha={alpha}")
    C = logits.shape[1]
    target = target.long()
    if ((target < IGNORE) | (target >= C)).any():
        raise ValueError(f"targets must be class indices in [0, {C}) or {IGNORE} (unlabelled)")
    keep = target != IGNORE
    if not keep.any():
        return logits.sum() * 0.0
    logits, target = logits[keep], target[keep]
    logp = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None])[:, 0]
    loss = -alpha * (1.0 - logp.exp()).clamp(min=0.0).pow(gamma) * logp
    if weight is None:
        return loss.mean()
    weight = torch.as_tensor(weight, dtype=loss.dtype, device=loss.device)
    if weight.shape != (C,) or (weight < 0).any():
        raise ValueError(f"weight must be ({C},) non-negative class weights, got shape {tuple(weight.shape)}")
    w = weight[target]
    return (loss * w).sum() / w.sum().clamp(min=torch.finfo(loss.dtype).tiny)


def binary_focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 3.0, alpha: float = 0.5,
                      pos_weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Multi-label (per-behaviour sigmoid) focal loss (Lin et al. 2017).

    Per labelled element, with ``p = sigmoid(logit)``, ``y`` the (smoothed)
    target and ``w`` the behaviour's positive weight (1 without ``pos_weight``)::

        l = -[ y * alpha * w * (1 - p) ** gamma * log p
               + (1 - y) * (1 - alpha) * p ** gamma * log(1 - p) ]

    averaged over the labelled elements. ``gamma = 0, alpha = 0.5`` is half of
    :func:`torch.nn.functional.binary_cross_entropy_with_logits` (with the
    same ``pos_weight``).

    Args:
        logits: ``(N, C)`` one logit per behaviour.
        target: ``(N, C)`` float 0/1 labels; NaN marks an unlabelled element (ignored).
        gamma: focusing exponent, >= 0.
        alpha: weight of the positive terms in ``(0, 1)``; negatives get ``1 - alpha``.
        pos_weight: optional ``(C,)`` non-negative multipliers of each behaviour's positive terms.
        label_smoothing: ``eps`` in ``[0, 0.5)``: targets 1 become ``1 - eps``, targets 0 become ``eps``.

    Returns:
        Scalar tensor.

    Raises:
        ValueError: shapes do not fit, labels not 0/1/NaN, bad parameters.
    """
    if logits.ndim != 2 or target.shape != logits.shape:
        raise ValueError(f"logits and target must both be (N, C), got {tuple(logits.shape)} and {tuple(target.shape)}")
    if gamma < 0 or not 0 < alpha < 1:
        raise ValueError(f"binary focal loss needs gamma >= 0 and 0 < alpha < 1, got gamma={gamma}, alpha={alpha}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    target = target.to(logits.dtype if logits.is_floating_point() else torch.float32)
    keep = ~torch.isnan(target)
    if not ((target[keep] == 0) | (target[keep] == 1)).all():
        raise ValueError("multi-label targets must be 0, 1 or NaN (unlabelled)")
    if not keep.any():
        return logits.sum() * 0.0
    x = logits.float()
    y = torch.where(keep, target, torch.zeros_like(target)).float()
    y = y * (1 - 2 * label_smoothing) + label_smoothing
    logp, log1mp = F.logsigmoid(x), F.logsigmoid(-x)
    p = logp.exp()
    pos = alpha * (1 - p).pow(gamma) * logp
    if pos_weight is not None:
        pos_weight = torch.as_tensor(pos_weight, dtype=x.dtype, device=x.device)
        if pos_weight.shape != (x.shape[1],) or (pos_weight < 0).any():
            raise ValueError(f"pos_weight must be ({x.shape[1]},) non-negative, got shape {tuple(pos_weight.shape)}")
        pos = pos * pos_weight
    neg = (1 - alpha) * p.pow(gamma) * log1mp
    loss = -(y * pos + (1 - y) * neg)
    return loss[keep].mean()

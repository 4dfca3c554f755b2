"""Unsupervised losses of DeepEthogram's flow generators (MotionNet loss, Zhu et al. 2017).

DeepEthogram Methods, "Loss functions" / "MotionNet loss" / "Regularization":

* **Reconstruction**: frame ``t`` is rebuilt from frame ``t + 1`` and the flow,
  ``I0_hat(x, y) = I1(x + Vx(x, y), y + Vy(x, y))`` (:func:`warp`, bilinear
  ``torch.nn.functional.grid_sample``, border padding). ``x`` is the column
  (positive right), ``y`` the row (positive down), ``V`` in pixels: a texture
  that moves +2 px to the right between ``t`` and ``t + 1`` has ``Vx = +2``.
* ``L_pixel = mean rho(I0 - I0_hat)``, generalised Charbonnier
  ``rho(x) = (x^2 + eps^2)^alpha``, alpha 0.4, eps 1e-7.
* ``L_SSIM = mean (1 - SSIM(I0, I0_hat))`` (Wang et al. 2004; Gaussian window
  11 px, sigma 1.5, as DeepEthogram's code).
* ``L_smooth``: Charbonnier (alpha 0.3) of the flows' x and y forward differences,
  ``mean rho(dV/dx) + mean rho(dV/dy)`` with each mean over both flow
  components and all valid differences (DeepEthogram's code; the paper's
  per-pixel sum of the four terms dVx/dx, dVx/dy, dVy/dx, dVy/dy is twice this).
* ``L_sparsity = mean |V|`` (TinyMotionNet3D only).
* ``L_regularization = alpha / 2 * ||w - w0||^2`` (L2-SP, Li et al. 2018) over
  weights, biases and batch-norm parameters excluded, alpha 1e-5. DeepEthogram's
  ``w0`` are Kinetics-700 pretrained weights; none exist offline here, so
  ``w0`` is the random initialisation and the term only tethers the
  weights to where they started (a weak weight decay); set
  ``loss.l2sp_alpha`` to 0 to drop it.
* ``L = lambda0 L_pixel + lambda1 L_SSIM + lambda2 L_smooth + lambda3 L_sparsity + L_reg``
  with lambda0 = lambda1 = 1, lambda2 = 0.01, 0.02, 0.04 from the largest to the smallest
  output scale; for TinyMotionNet3D lambda3 = 0.05 and lambda2 x 0.25. The pixel, SSIM
  and sparsity terms are summed over the scales (as DeepEthogram's code).

Images are float in [0, 1] (SSIM's constants assume that range); each scale's
frames are the input frames resized (bilinear, anti-aliased) to that flow's
size, and each flow is in pixels of its own resolution
(:mod:`sipec_models.nets.flow`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class FlowLossConfig:
    """Weights and constants of the flow loss (defaults: DeepEthogram, after Zhu et al. 2017)."""

    pixel_weight: float = 1.0  # lambda0, DeepEthogram / Zhu et al.
    ssim_weight: float = 1.0  # lambda1, DeepEthogram / Zhu et al.
    smooth_weights: tuple[float, ...] = (0.01, 0.02, 0.04)  # lambda2 per scale, finest first, DeepEthogram
    sparsity_weight: float = 0.0  # lambda3; DeepEthogram: 0.05 for TinyMotionNet3D only
    pixel_alpha: float = 0.4  # Charbonnier exponent of L_pixel, DeepEthogram / Zhu et al.
    pixel_eps: float = 1e-7  # DeepEthogram
    smooth_alpha: float = 0.3  # Charbonnier exponent of L_smooth, DeepEthogram
    smooth_eps: float = 1e-7  # DeepEthogram code (charbonnier_smoothness)
    ssim_window: int = 11  # px, Wang et al. 2004 / DeepEthogram code
    ssim_sigma: float = 1.5  # px, Wang et al. 2004 / DeepEthogram code
    l2sp_alpha: float = 1e-5  # DeepEthogram, flow generators

    @classmethod
    def from_cfg(cls, cfg_flow: Mapping[str, Any]) -> "FlowLossConfig":
        """Resolve ``flow.loss`` of the DeepEthogram config for ``flow.arch``.

        ``loss.sparsity_weight`` and ``loss.smooth_multiplier`` may be ``null``:
        then lambda3 = 0.05 and lambda2 x 0.25 for ``tiny_motionnet3d``, 0 and x 1 otherwise
        (DeepEthogram "Loss functions").
        """
        loss = dict(cfg_flow.get("loss") or {})
        three_d = str(cfg_flow.get("arch", "")) == "tiny_motionnet3d"
        sparsity = loss.get("sparsity_weight")
        sparsity = (0.05 if three_d else 0.0) if sparsity is None else float(sparsity)
        mult = loss.get("smooth_multiplier")
        mult = (0.25 if three_d else 1.0) if mult is None else float(mult)
        smooth = tuple(float(w) * mult for w in loss.get("smooth_weights", cls.smooth_weights))
        kw = {k: loss[k] for k in ("pixel_weight", "ssim_weight", "pixel_alpha", "pixel_eps", "smooth_alpha",
                                   "smooth_eps", "ssim_window", "ssim_sigma", "l2sp_alpha") if k in loss}
        out = cls(smooth_weights=smooth, sparsity_weight=sparsity, **kw)
        if out.ssim_window < 1 or out.ssim_window % 2 == 0:
            raise ValueError(f"flow.loss.ssim_window must be a positive odd number of pixels, got {out.ssim_window}")
        if min(out.smooth_weights, default=0) < 0 or out.sparsity_weight < 0 or out.l2sp_alpha < 0:
            raise ValueError("flow.loss weights must be >= 0")
        return out


# ----------------------------------------------------------------------------- primitives


def charbonnier(x: torch.Tensor, alpha: float, eps: float) -> torch.Tensor:
    """Generalised Charbonnier penalty ``(x^2 + eps^2)^alpha``, elementwise."""
    return (x * x + eps * eps) ** alpha


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` at each pixel displaced by ``flow``: ``out(x, y) = image(x + dx, y + dy)``.

    Args:
        image: ``(B, C, h, w)``.
        flow: ``(B, 2, h, w)``, ``[:, 0]`` = dx (columns, +right), ``[:, 1]`` = dy
            (rows, +down), pixels of the ``(h, w)`` grid.

    Returns:
        ``(B, C, h, w)``: bilinear samples; points outside the image take the
        nearest border value. With ``image`` = frame ``t + 1`` and ``flow`` the
        flow from ``t`` to ``t + 1`` this reconstructs frame ``t``.
    """
    if image.ndim != 4 or flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"warp needs image (B, C, h, w) and flow (B, 2, h, w); got {tuple(image.shape)} "
                         f"and {tuple(flow.shape)}")
    if image.shape[0] != flow.shape[0] or image.shape[-2:] != flow.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and flow {tuple(flow.shape)} differ in batch or size")
    _, _, h, w = flow.shape
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype).view(1, 1, w)
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype).view(1, h, 1)
    # align_corners=False: pixel centre x sits at normalised (2x + 1) / w - 1.
    gx = (2.0 * (xs + flow[:, 0]) + 1.0) / w - 1.0
    gy = (2.0 * (ys + flow[:, 1]) + 1.0) / h - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    r = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5, reduce: bool = True) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) of images in [0, 1].

    Args:
        a, b: ``(B, C, h, w)``, float in [0, 1] (``C1 = 0.01^2``, ``C2 = 0.03^2``).
        window: Gaussian window side, px (odd); sigma: its standard deviation, px.
            Edges are replicate-padded, so the map has the input's size.
        reduce: return the mean (a scalar) instead of the ``(B, C, h, w)`` map.

    Returns:
        SSIM in [-1, 1]; 1 for identical images.
    """
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim needs two (B, C, h, w) tensors of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    c = a.shape[1]
    g = _gaussian_window(window, sigma, a.device, a.dtype)
    pad = window // 2

    def blur(x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, window), groups=c)
        return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, window, 1), groups=c)

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean() if reduce else s


def smoothness(flow: torch.Tensor, alpha: float = 0.3, eps: float = 1e-7) -> torch.Tensor:
    """``mean rho(dV/dx) + mean rho(dV/dy)`` over all flow channels (forward differences), a scalar.

    ``flow``: ``(B, 2P, h, w)`` in pixels; rho: Charbonnier with ``alpha``, ``eps``.
    """
    gx = flow[..., :, 1:] - flow[..., :, :-1]
    gy = flow[..., 1:, :] - flow[..., :-1, :]
    total = flow.new_zeros(())
    if gx.numel():
        total = total + charbonnier(gx, alpha, eps).mean()
    if gy.numel():
        total = total + charbonnier(gy, alpha, eps).mean()
    # The means run over the dx and dy channels together, as DeepEthogram's code (charbonnier_smoothness,
    # then a mean over channels): this is half the paper's per-pixel sum of the four terms.
    return total


def resize_images(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, C, *size)``: bilinear, anti-aliased when shrinking."""
    size = (int(size[0]), int(size[1]))
    if tuple(images.shape[-2:]) == size:
        return images
    shrink = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def frame_pairs(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, T, C, H, W)`` -> ``(t0, t1)``, each ``(N * (T - 1), C, H, W)``: frames ``k`` and ``k + 1``."""
    if frames.ndim != 5 or frames.shape[1] < 2:
        raise ValueError(f"frames must be (N, T, C, H, W) with T >= 2, got {tuple(frames.shape)}")
    n, t, c, h, w = frames.shape
    t0 = frames[:, :-1].reshape(n * (t - 1), c, h, w)
    t1 = frames[:, 1:].reshape(n * (t - 1), c, h, w)
    return t0, t1


def reconstruct(frames: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rebuild every frame ``k`` of a window from frame ``k + 1`` at the flow's resolution.

    Args:
        frames: ``(N, T, C, H, W)`` in [0, 1].
        flow: ``(N, 2(T - 1), h, w)``, pixels of ``(h, w)``.

    Returns:
        ``(target, reconstruction)``, each ``(N * (T - 1), C, h, w)``: frame ``k``
        resized to ``(h, w)``, and frame ``k + 1`` resized and warped by the flow.
    """
    n, t = frames.shape[:2]
    if flow.ndim != 4 or flow.shape[0] != n or flow.shape[1] != 2 * (t - 1):
        raise ValueError(f"flow must be (N, 2(T-1), h, w) = ({n}, {2 * (t - 1)}, h, w) for frames "
                         f"{tuple(frames.shape)}, got {tuple(flow.shape)}")
    t0, t1 = frame_pairs(frames)
    size = flow.shape[-2:]
    t0, t1 = resize_images(t0, size), resize_images(t1, size)
    return t0, warp(t1, flow.reshape(n * (t - 1), 2, *size))


# ----------------------------------------------------------------------------- the loss


def flow_loss(frames: torch.Tensor, flows: Sequence[torch.Tensor],
              cfg: FlowLossConfig | None = None) -> dict[str, torch.Tensor]:
    """DeepEthogram's multi-scale MotionNet loss (without the L2-SP term, see :func:`l2sp`).

    Args:
        frames: ``(N, T, C, H, W)`` float in [0, 1] (not standardised).
        flows: the generator's outputs, finest first, each ``(N, 2(T-1), h, w)``
            in pixels of its own resolution; as many as ``cfg.smooth_weights``
            (fewer are allowed: the first weights are used).
        cfg: weights and constants (default :class:`FlowLossConfig`).

    Returns:
        Scalars: ``pixel``, ``ssim`` (1 - SSIM), ``sparsity`` (mean |V|) summed
        over scales, ``smooth`` = sum_s lambda2_s * smoothness_s, per-scale unweighted
        ``pixel/<s>``, ``ssim/<s>``, ``smooth/<s>`` (``s`` = 0 finest), and
        ``total`` = lambda0 pixel + lambda1 ssim + smooth + lambda3 sparsity.
    """
    cfg = cfg or FlowLossConfig()
    if not len(flows):
        raise ValueError("flow_loss needs at least one flow scale")
    if len(flows) > len(cfg.smooth_weights):
        raise ValueError(f"{len(flows)} flow scales but {len(cfg.smooth_weights)} smoothness weights")
    out: dict[str, torch.Tensor] = {}
    zero = frames.new_zeros(())
    pixel, ssim_loss, smooth, sparsity = zero, zero, zero, zero
    for s, flow in enumerate(flows):
        target, recon = reconstruct(frames, flow)
        p = charbonnier(target - recon, cfg.pixel_alpha, cfg.pixel_eps).mean()
        q = 1.0 - ssim(target, recon, cfg.ssim_window, cfg.ssim_sigma)
        m = smoothness(flow, cfg.smooth_alpha, cfg.smooth_eps)
        out[f"pixel/{s}"], out[f"ssim/{s}"], out[f"smooth/{s}"] = p, q, m
        pixel, ssim_loss = pixel + p, ssim_loss + q
        smooth = smooth + cfg.smooth_weights[s] * m
        sparsity = sparsity + flow.abs().mean()
    out.update(pixel=pixel, ssim=ssim_loss, smooth=smooth, sparsity=sparsity)
    out["total"] = cfg.pixel_weight * pixel + cfg.ssim_weight * ssim_loss + smooth + cfg.sparsity_weight * sparsity
    return out


def output_sizes(size: Sequence[int], scales: Sequence[float] = (0.5, 0.25, 0.125)) -> list[tuple[int, int]]:
    """``(h, w)`` of each flow scale for input ``size`` = ``(H, W)`` (floor, >= 1)."""
    return [(max(1, int(math.floor(size[0] * s))), max(1, int(math.floor(size[1] * s)))) for s in scales]


def zero_flow_loss(frames: torch.Tensor, sizes: Sequence[Sequence[int]] | None = None,
                   cfg: FlowLossConfig | None = None) -> dict[str, torch.Tensor]:
    """The baseline: :func:`flow_loss` with every flow zero (frame ``t`` "reconstructed" as frame ``t + 1``).

    Args:
        frames: ``(N, T, C, H, W)`` in [0, 1].
        sizes: ``(h, w)`` of each scale (default: 1/2, 1/4, 1/8 of the frames).
    """
    n, t = frames.shape[:2]
    sizes = sizes if sizes is not None else output_sizes(frames.shape[-2:])
    flows = [frames.new_zeros((n, 2 * (t - 1), int(h), int(w))) for h, w in sizes]
    return flow_loss(frames, flows, cfg)


def photometric_error(frames: torch.Tensor, flow: torch.Tensor | None, cfg: FlowLossConfig | None = None,
                      motion_threshold: float | None = None) -> dict[str, torch.Tensor]:
    """Reconstruction error at one resolution (the evaluation metric; ``flow=None``: zero flow).

    Args:
        frames: ``(N, T, C, H, W)`` in [0, 1].
        flow: ``(N, 2(T-1), h, w)`` in pixels of ``(h, w)`` (e.g. a generator's
            output upsampled to the input size with
            :func:`sipec_models.nets.flow.upsample_flow`), or None.
        motion_threshold: when given, also the errors over "moving" pixels:
            those where ``|frame_t - frame_{t+1}|`` (channel mean) exceeds it.

    Returns:
        Scalars ``pixel`` (mean Charbonnier), ``l1`` (mean absolute error),
        ``ssim`` (mean SSIM, higher is better), and with ``motion_threshold``
        ``pixel_moving``, ``l1_moving``, ``moving_fraction``.
    """
    cfg = cfg or FlowLossConfig()
    n, t, c, H, W = frames.shape
    if flow is None:
        flow = frames.new_zeros((n, 2 * (t - 1), H, W))
    target, recon = reconstruct(frames, flow)
    err = target - recon
    rho = charbonnier(err, cfg.pixel_alpha, cfg.pixel_eps)
    out = {"pixel": rho.mean(), "l1": err.abs().mean(), "ssim": ssim(target, recon, cfg.ssim_window, cfg.ssim_sigma)}
    if motion_threshold is not None:
        t0, t1 = frame_pairs(frames)
        t0, t1 = resize_images(t0, flow.shape[-2:]), resize_images(t1, flow.shape[-2:])
        moving = ((t0 - t1).abs().mean(1, keepdim=True) > motion_threshold).expand_as(err)
        k = moving.sum().clamp(min=1)
        out["pixel_moving"] = (rho * moving).sum() / k
        out["l1_moving"] = (err.abs() * moving).sum() / k
        out["moving_fraction"] = moving.float().mean()
    return out


# ----------------------------------------------------------------------------- L2-SP


def l2sp_reference(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the weights L2-SP pulls toward: parameters with ``ndim > 1``
    (convolution kernels; biases and batch-norm parameters are 1-D and excluded)."""
    return {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad and p.ndim > 1}


def l2sp(model: nn.Module, reference: Mapping[str, torch.Tensor], alpha: float) -> torch.Tensor:
    """``alpha / 2 * sum ||w - w0||^2`` over the weights named in ``reference`` (Li et al. 2018).

    Raises:
        ValueError: ``reference`` names a weight the model lacks or of another shape.
    """
    params = dict(model.named_parameters())
    total = next(model.parameters()).new_zeros(())
    if alpha == 0:
        return total
    for name, w0 in reference.items():
        w = params.get(name)
        if w is None or w.shape != w0.shape:
            raise ValueError(f"L2-SP reference weight {name!r} {tuple(w0.shape)} does not match the model")
        total = total + (w - w0.to(w.device)).pow(2).sum()
    return 0.5 * alpha * total


__all__ = [
    "FlowLossConfig", "charbonnier", "warp", "ssim", "smoothness", "resize_images", "frame_pairs", "reconstruct",
    "flow_loss", "output_sizes", "zero_flow_loss", "photometric_error", "l2sp_reference", "l2sp",
]

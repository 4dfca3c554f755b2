"""SegNet: class-agnostic bottom-up instance segmentation of animals (centre heatmap + offset votes).

Architecture (Panoptic-DeepLab style, Cheng et al. 2020, with one
class-agnostic "animal" category):

* **Encoder**: EfficientNet-Lite0 (:mod:`sipec_models.nets.efficientnet_lite`)
  with ImageNet weights; features at strides 4, 8, 16, 32.
* **Decoder**: a light feature pyramid (FPN, Lin et al. 2017): 1x1 lateral
  convolutions to ``width`` channels, top-down nearest upsampling and sum,
  then a depthwise-separable 3x3 convolution at stride 4.
* **Heads** (at stride 4 of the network input, each a 3x3 conv + ReLU + 1x1):
  ``fg``: foreground logit; ``center``: logit of a heatmap with a Gaussian
  at each animal's centre of mass; ``offset``: 2 channels ``(dx, dy)`` from
  each pixel to the centre of mass of the animal it belongs to, in output
  cells (1 cell = ``STRIDE`` px of the network input).
* **Decoding** (:func:`decode`): centre peaks = local maxima of the centre
  probability (3x3 max-pool NMS) above ``center_threshold``, at most
  ``max_instances``; every foreground pixel (probability >
  ``fg_threshold``) votes at ``pixel + offset`` and joins the nearest peak.
  Touching animals are separated because their pixels vote for different
  centres, even where no background lies between them.

How this differs from SIPEC's SegNet: SIPEC used Mask R-CNN (He et al.
2017) with a ResNet101-FPN backbone and COCO transfer: a region proposal
network, ROIAlign, and per-ROI box regression, classification and
28x28 mask heads, trained with SGD. Ours is one-stage and has no RPN,
anchors or ROIAlign: instances are grouped by centre votes on a dense
stride-4 map, the backbone is the much smaller EfficientNet-Lite0 with
ImageNet transfer (about 3.5 M parameters against about 60 M), so it trains
from tens of labelled frames on a CPU and runs on full frames in one pass.
Masks come from the full-resolution foreground map instead of a fixed
28x28 grid per box.

Units: network input images are ``(B, 1, H, W)`` grey in [0, 1] with ``H``
and ``W`` multiples of 32 (pad with :func:`pad_to_multiple`); output maps
are ``(B, C, H / 4, W / 4)``. Coordinates are ``x`` (column), ``y`` (row)
in pixels; pixel ``(x, y)`` covers ``[x - 0.5, x + 0.5)``; output cell
``(j, i)`` is centred on input pixel ``(4 j + 1.5, 4 i + 1.5)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sipec_models.nets.efficientnet_lite import FEATURE_CHANNELS, efficientnet_lite0

#: Output stride of the heads, px of the network input.
STRIDE = 4
#: Input sides must be multiples of this (the encoder's deepest stride).
MULTIPLE = 32


def cell_centres(h: int, w: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, w)`` x and y of the output cells' centres in network-input px."""
    ys = torch.arange(h, device=device, dtype=torch.float32) * STRIDE + (STRIDE - 1) / 2
    xs = torch.arange(w, device=device, dtype=torch.float32) * STRIDE + (STRIDE - 1) / 2
    return xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)


def pad_to_multiple(x: torch.Tensor, multiple: int = MULTIPLE) -> torch.Tensor:
    """Pad ``(..., H, W)`` with zeros on the bottom and right to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


class _SepConv(nn.Sequential):
    """Depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False), nn.BatchNorm2d(c_in), nn.ReLU(inplace=True),
            nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        )


class _Head(nn.Sequential):
    def __init__(self, c_in: int, c_mid: int, c_out: int, bias: float = 0.0):
        super().__init__(nn.Conv2d(c_in, c_mid, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c_mid, c_out, 1))
        nn.init.constant_(self[-1].bias, bias)


class SegNet(nn.Module):
    """EfficientNet-Lite0 encoder, FPN decoder to stride 4, foreground / centre / offset heads.

    Args:
        width: decoder channels.
        head_width: hidden channels of each head.
        pretrained: load the ImageNet encoder weights.
    """

    def __init__(self, width: int = 64, head_width: int = 32, pretrained: bool = True):
        super().__init__()
        self.encoder = efficientnet_lite0(pretrained=pretrained)
        # The classifier is not used; drop it (its weights only checked the file).
        del self.encoder._conv_head, self.encoder._bn1, self.encoder._fc
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in FEATURE_CHANNELS)
        self.smooth = nn.ModuleList(_SepConv(width, width) for _ in FEATURE_CHANNELS[:-1])
        self.fuse = _SepConv(width, width)
        # Priors: few pixels are foreground, fewer still are centres (focal-loss initialisation).
        self.fg = _Head(width, head_width, 1, bias=-2.0)
        self.center = _Head(width, head_width, 1, bias=-4.0)
        self.offset = _Head(width, head_width, 2)
        # Fine-tuning runs only hundreds of steps: let the batch-norm statistics follow
        # the new images faster than the encoder's TensorFlow momentum (0.01) would.
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, 1, H, W)`` grey in [0, 1] (``H``, ``W`` multiples of 32) -> output maps at stride 4.

        Returns:
            ``fg`` ``(B, 1, H/4, W/4)`` foreground logits, ``center``
            ``(B, 1, H/4, W/4)`` centre-heatmap logits, ``offset``
            ``(B, 2, H/4, W/4)`` ``(dx, dy)`` from each cell's centre to its
            animal's centre of mass, in cells (``STRIDE`` px of the input).
        """
        if x.shape[-2] % MULTIPLE or x.shape[-1] % MULTIPLE:
            raise ValueError(f"SegNet input sides must be multiples of {MULTIPLE}, got {tuple(x.shape[-2:])}")
        feats = self.encoder.features(self.encoder.normalize(x))
        y = self.lateral[-1](feats[-1])
        for k in range(len(feats) - 2, -1, -1):
            y = F.interpolate(y, size=feats[k].shape[-2:], mode="nearest") + self.lateral[k](feats[k])
            y = self.smooth[k](y)
        y = self.fuse(y)
        return {"fg": self.fg(y), "center": self.center(y), "offset": self.offset(y)}


@dataclass(frozen=True)
class DecodeConfig:
    """Decoding thresholds.

    Attributes:
        fg_threshold: foreground probability above which a pixel belongs to an animal.
        center_threshold: centre probability a peak must exceed to be an animal.
        nms_kernel: side (cells) of the max-pool window for peak finding (odd).
        max_instances: most peaks kept per frame (highest first).
        min_area: px² in the output frame; smaller instances are dropped.
        largest_component: keep only each instance's largest 8-connected
            piece. Every foreground pixel joins its nearest centre, so
            scattered false-positive pixels far from an animal would otherwise
            stretch its box across the frame.
    """

    fg_threshold: float = 0.5
    center_threshold: float = 0.3
    nms_kernel: int = 3
    max_instances: int = 20
    min_area: int = 0
    largest_component: bool = True


def find_centres(center_prob: torch.Tensor, threshold: float, kernel: int, top_k: int) -> list[torch.Tensor]:
    """Peaks of ``(B, 1, h, w)`` centre probabilities.

    Returns:
        Per image, ``(K, 3)`` float ``(x, y, score)``: cell column and row
        of each peak and its probability, highest first.
    """
    pooled = F.max_pool2d(center_prob, kernel, stride=1, padding=kernel // 2)
    peaks = (center_prob == pooled) & (center_prob > threshold)
    out = []
    for b in range(center_prob.shape[0]):
        iy, ix = torch.nonzero(peaks[b, 0], as_tuple=True)
        score = center_prob[b, 0, iy, ix]
        order = torch.argsort(score, descending=True)[:top_k]
        out.append(torch.stack([ix[order].float(), iy[order].float(), score[order]], dim=1))
    return out


def decode(out: dict[str, torch.Tensor], frame_size: tuple[int, int], input_size: tuple[int, int],
           cfg: DecodeConfig = DecodeConfig()) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Group foreground pixels into instances by centre votes.

    Args:
        out: :meth:`SegNet.forward` output for a batch; maps ``(B, C, h, w)``
            of a padded input whose top-left ``input_size`` px hold the frame.
        frame_size: ``(H, W)`` of the original frames (px); the input was the
            frame resized to ``input_size`` ``(Hn, Wn)``.
        input_size: ``(Hn, Wn)`` network-input px before padding.
        cfg: thresholds.

    Returns:
        Per image ``(labels, fg_prob, peaks)``: ``(H, W)`` int32 label map
        (0 background, ``k`` = ``k``-th peak), ``(H, W)`` float32 foreground
        probability, and ``(K, 4)`` float ``(x, y, score, -)`` peaks in frame
        px with their centre probability.
    """
    H, W = frame_size
    Hn, Wn = input_size
    fg_logit, center_logit, offset = out["fg"], out["center"], out["offset"]
    B, _, h, w = fg_logit.shape
    peaks = find_centres(torch.sigmoid(center_logit), cfg.center_threshold, cfg.nms_kernel, cfg.max_instances)
    cx, cy = cell_centres(h, w, fg_logit.device)
    # Vote positions in network-input px; they are smooth fields, so they upsample linearly.
    vote = torch.stack([cx + STRIDE * offset[:, 0], cy + STRIDE * offset[:, 1]], dim=1)
    maps = torch.cat([fg_logit, vote], dim=1)
    maps = F.interpolate(maps, scale_factor=STRIDE, mode="bilinear", align_corners=False)[..., :Hn, :Wn]
    if (Hn, Wn) != (H, W):
        maps = F.interpolate(maps, size=(H, W), mode="bilinear", align_corners=False)
    sx, sy = W / Wn, H / Hn
    results = []
    for b in range(B):
        fg = torch.sigmoid(maps[b, 0])
        labels = torch.zeros((H, W), dtype=torch.int32, device=fg.device)
        p = peaks[b]
        frame_peaks = torch.zeros((len(p), 4), device=fg.device)
        if len(p):
            # Peak cell centre -> network px -> frame px.
            frame_peaks[:, 0] = (p[:, 0] * STRIDE + (STRIDE - 1) / 2 + 0.5) * sx - 0.5
            frame_peaks[:, 1] = (p[:, 1] * STRIDE + (STRIDE - 1) / 2 + 0.5) * sy - 0.5
            frame_peaks[:, 2] = p[:, 2]
            iy, ix = torch.nonzero(fg > cfg.fg_threshold, as_tuple=True)
            if len(iy):
                vx = (maps[b, 1, iy, ix] + 0.5) * sx - 0.5
                vy = (maps[b, 2, iy, ix] + 0.5) * sy - 0.5
                d = (vx[:, None] - frame_peaks[None, :, 0]) ** 2 + (vy[:, None] - frame_peaks[None, :, 1]) ** 2
                labels[iy, ix] = d.argmin(dim=1).int() + 1
        results.append((labels.cpu().numpy(), fg.float().cpu().numpy(), frame_peaks.cpu().numpy()))
    return results


def instances_from_labels(labels: np.ndarray, fg_prob: np.ndarray, peaks: np.ndarray, min_area: int = 0,
                          largest_component: bool = True) -> list:
    """:class:`~sipec_models.segmentation.classical.Instance` objects from a :func:`decode` label map.

    Score = peak centre probability x mean foreground probability of the
    mask. Instances are sorted by descending score; ``flags`` 0,
    ``appearance`` None. With ``largest_component`` only the largest
    8-connected piece of each label is kept. Empty instances and those
    under ``min_area`` px² are dropped.
    """
    from scipy import ndimage as ndi

    from sipec_models.segmentation.classical import Instance

    out = []
    if not len(peaks):
        return out
    slices = ndi.find_objects(labels, max_label=len(peaks))
    for k, sl in enumerate(slices):
        if sl is None:
            continue
        mask = labels[sl] == k + 1
        if largest_component:
            pieces, n = ndi.label(mask, structure=np.ones((3, 3), bool))
            if n > 1:
                sizes = np.bincount(pieces.ravel())[1:]
                mask = pieces == int(np.argmax(sizes)) + 1
                rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
                sl = (slice(sl[0].start + rows[0], sl[0].start + rows[-1] + 1),
                      slice(sl[1].start + cols[0], sl[1].start + cols[-1] + 1))
                mask = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        area = int(mask.sum())
        if area == 0 or area < min_area:
            continue
        ys, xs = np.nonzero(mask)
        y0, x0 = sl[0].start, sl[1].start
        score = float(peaks[k, 2]) * float(fg_prob[sl][mask].mean())
        out.append(Instance(box=(int(x0), int(y0), int(sl[1].stop), int(sl[0].stop)), mask=mask,
                            com=(float(x0 + xs.mean()), float(y0 + ys.mean())), area=area,
                            score=float(np.clip(score, 0, 1)), flags=0, appearance=None))
    out.sort(key=lambda i: -i.score)
    return out

"""LEAP: the small fully convolutional pose network of Pereira et al. (2019), in plain PyTorch.

The LEAP paper (Nature Methods 16, 117) describes "a set of convolutions,
max pooling and transposed convolutions" that turns an image into confidence
maps "of the same height and width as the input image", trained with a mean
squared error loss against Gaussian maps of the labels, and built for speed
(no skip connections, no residual blocks, three resolution levels). The
layer counts and filters follow the authors' reference code
(``leap/models.py``, ``leap_cnn``):

* block 1: 3 x [Conv 3x3, ``f`` filters, ReLU], MaxPool 2x2 stride 2
* block 2: 3 x [Conv 3x3, ``2f``, ReLU], MaxPool 2x2 stride 2
* block 3: 3 x [Conv 3x3, ``4f``, ReLU]
* up 1: ConvTranspose 3x3 stride 2 (``2f``, ReLU, Glorot-normal init), 2 x [Conv 3x3, ``2f``, ReLU]
* out: ConvTranspose 3x3 stride 2 to ``K`` maps, linear (Glorot-normal init)

with ``f = round(filters * width_mult)``: ``filters`` = 64 in LEAP (so
64/128/256 per block); ``width_mult`` is ours, to trade accuracy for
speed on a CPU. All convolutions use "same" padding; Keras' "same"
transposed convolution with kernel 3 and stride 2 is PyTorch's
``padding=1, output_padding=1`` (exactly doubles the size).

Units: input ``(B, 1 or 3, S, S)`` float in [0, 1], ``S`` a multiple of 4
(rectangular inputs work too). Output ``(B, K, S, S)`` confidence-map
**values** (linear, regressed onto Gaussians of peak 1; not logits), at
stride 1: output pixel ``(j, i)`` is input pixel ``(j, i)``.
"""

from __future__ import annotations

import torch
from torch import nn

#: Heatmap stride (LEAP's maps have the input's resolution).
STRIDE = 1
#: Input sides must be multiples of this (two 2x2 poolings).
MULTIPLE = 4


def _convs(c_in: int, c_out: int, n: int) -> list[nn.Module]:
    layers = []
    for i in range(n):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1), nn.ReLU(inplace=True)]
    return layers


class LeapCNN(nn.Module):
    """LEAP's encoder-decoder: ``(B, C, S, S)`` -> ``(B, K, S, S)`` confidence maps.

    Args:
        num_keypoints: ``K`` output maps.
        in_channels: 1 (grey) or 3 (RGB).
        filters: base filters (LEAP: 64).
        width_mult: multiplies ``filters`` (ours; 1.0 = LEAP).
    """

    def __init__(self, num_keypoints: int, in_channels: int = 1, filters: int = 64, width_mult: float = 1.0):
        super().__init__()
        if num_keypoints < 1 or in_channels not in (1, 3):
            raise ValueError("LeapCNN needs num_keypoints >= 1 and in_channels 1 or 3")
        f = max(1, int(round(filters * width_mult)))
        self.num_keypoints, self.in_channels, self.stride = int(num_keypoints), int(in_channels), STRIDE
        self.down = nn.Sequential(
            *_convs(in_channels, f, 3), nn.MaxPool2d(2, 2),
            *_convs(f, 2 * f, 3), nn.MaxPool2d(2, 2),
            *_convs(2 * f, 4 * f, 3),
        )
        up1 = nn.ConvTranspose2d(4 * f, 2 * f, 3, stride=2, padding=1, output_padding=1)
        out = nn.ConvTranspose2d(2 * f, num_keypoints, 3, stride=2, padding=1, output_padding=1)
        for m in (up1, out):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
        # Keras' Conv2D default initialisation (Glorot uniform, zero bias).
        for m in self.down.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.up = nn.Sequential(up1, nn.ReLU(inplace=True), *_convs(2 * f, 2 * f, 2))
        for m in self.up.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.out = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` in [0, 1] -> ``(B, K, S, S)`` confidence-map values."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"LeapCNN input must be (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % MULTIPLE or x.shape[-1] % MULTIPLE:
            raise ValueError(f"LeapCNN input sides must be multiples of {MULTIPLE}, got {tuple(x.shape[-2:])}")
        return self.out(self.up(self.down(x)))

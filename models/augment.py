"""Training-time augmentation built from ``torchvision.transforms.v2``.

Applied per sample in DataLoader workers to uint8 ``(1, 28, 28)`` tensors. The affine range
covers what registration leaves behind (small rotation, shear, scale, offset); stroke-width
jitter covers pens and scanner thresholds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2


class StrokeJitter(nn.Module):
    """Randomly thicken (dilate) or thin (erode) the ink by one pixel."""

    def __init__(self, p: float = 0.3) -> None:
        super().__init__()
        self.p = p

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Apply to a ``(C, H, W)`` or ``(N, C, H, W)`` uint8 tensor."""
        if torch.rand(()) >= self.p:
            return img
        single = img.dim() == 3
        x = img.float().unsqueeze(0) if single else img.float()
        if torch.rand(()) < 0.5:
            x = F.max_pool2d(x, 3, 1, 1)  # dilate: bolder pen
        else:
            x = -F.max_pool2d(-x, 2, 1, 0)  # erode with a 2x2 kernel: finer pen
            x = F.pad(x, (0, 1, 0, 1))
        x = x.clamp(0, 255).to(torch.uint8)
        return x.squeeze(0) if single else x


def train_transform(strength: float = 1.0) -> v2.Compose:
    """The augmentation pipeline; ``strength`` scales the geometric ranges (0 = none)."""
    s = strength
    return v2.Compose(
        [
            v2.RandomAffine(
                degrees=12 * s,
                translate=(0.08 * s, 0.08 * s),
                scale=(1 - 0.15 * s, 1 + 0.1 * s),
                shear=(-10 * s, 10 * s, -5 * s, 5 * s),
            ),
            StrokeJitter(p=0.3 * min(s, 1.0)),
        ]
    )

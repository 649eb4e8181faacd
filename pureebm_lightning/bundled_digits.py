"""scikit-learn's bundled digits (1,797 real 8x8 grey images): the data of the demo, the tests and the reproduction."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch.nn import functional as F


def digits_images(image_size: int = 16, rgb: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as (N, C, S, S) images in [-1, 1] on the 8-bit grid, and their labels."""
    x, y = load_digits(return_X_y=True)
    images = torch.as_tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = images.clamp(0, 1).mul(255).round().div(255)  # stored as 8-bit, like every real image set
    if rgb:
        images = images.expand(-1, 3, -1, -1).contiguous()
    return images * 2 - 1, torch.as_tensor(y, dtype=torch.long)

"""The JPEG baseline defense, with the EBM purifier's interface: every image JPEG-compressed and decoded."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pureebm_lightning.defense import Defense, require_uint8
from pureebm_lightning.defenses import register_defense
from pureebm_lightning.images import hwc_to_pil


@register_defense()
class JPEGPurifier(Defense):
    """The JPEG baseline: each uint8 image replaced by its JPEG round trip at ``quality``.

    Deterministic: ``first_index`` and ``epoch`` are accepted for the interface and ignored.

    Args:
        quality: JPEG quality, 1..95 (the paper's baseline: 75).
    """

    name = "jpeg"

    def __init__(self, quality: int = 75) -> None:
        if not 1 <= quality <= 95:
            raise ValueError(f"JPEG quality must be in 1..95, got {quality}")
        self.quality = quality

    def describe(self) -> str:
        return f"JPEG at quality {self.quality}"

    def settings(self) -> dict[str, Any]:
        """The quality (PIL's encoder, 4:2:0 chroma subsampling for RGB, as PIL's default)."""
        return {"defense": self.name, "jpeg_quality": self.quality, "quantised_bits": 8}

    def __call__(self, images: Tensor, first_index: int = 0, epoch: int = 0) -> Tensor:
        out = []
        for image in require_uint8(images).cpu().permute(0, 2, 3, 1).numpy():
            grey = image.shape[2] == 1
            buffer = io.BytesIO()
            hwc_to_pil(image).save(buffer, "JPEG", quality=self.quality)
            decoded = np.array(Image.open(buffer))
            out.append(decoded[:, :, None] if grey else decoded)
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous().to(images.device)

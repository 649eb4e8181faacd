"""The JPEG baseline defense, with the EBM purifier's interface: every image JPEG-compressed and decoded."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pureebm_lightning.purification.sources import hwc_to_pil


class JPEGPurifier:
    """Replaces each uint8 image by its JPEG round trip at ``quality`` (the paper's JPEG baseline).

    Deterministic: ``first_index`` and ``epoch`` are accepted for the interface and ignored.
    """

    def __init__(self, quality: int = 75) -> None:
        if not 1 <= quality <= 95:
            raise ValueError(f"JPEG quality must be in 1..95, got {quality}")
        self.quality = quality

    def describe(self) -> str:
        return f"JPEG at quality {self.quality}"

    def settings(self) -> dict[str, Any]:
        """What identifies this purification (the manifest's run keys)."""
        return {"defense": "jpeg", "jpeg_quality": self.quality, "checkpoint": None, "checkpoint_sha256": None,
                "steps": None, "step_size": None, "temperature": None, "seed": None, "quantised_bits": 8}

    def check_input(self, shape: tuple[int, int, int], where: Any) -> None:
        """JPEG takes any grey or RGB image."""

    def __call__(self, images: Tensor, first_index: int = 0, epoch: int = 0) -> Tensor:
        out = []
        for image in images.cpu().permute(0, 2, 3, 1).numpy():
            grey = image.shape[2] == 1
            buffer = io.BytesIO()
            hwc_to_pil(image).save(buffer, "JPEG", quality=self.quality)
            decoded = np.array(Image.open(buffer))
            out.append(decoded[:, :, None] if grey else decoded)
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous().to(images.device)

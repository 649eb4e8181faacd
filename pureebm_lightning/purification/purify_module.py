"""The LightningModule that runs purification in Trainer.predict (one device or many, each its own shard)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule

from pureebm_lightning.purification.purifier import Purifier


class PurifyModule(LightningModule):
    """predict_step purifies a batch of (uint8 images, source indices); needs ``Trainer(inference_mode=False)``.

    With ``diagnostic_points`` it also sums energies and L2 distances from the start image at those steps;
    after the loop ``diagnostics`` holds their means over every image of every rank.
    """

    def __init__(self, purifier: Purifier, diagnostic_points: list[int] | None = None) -> None:
        super().__init__()
        self.purifier = purifier
        self.energy_net = purifier.energy_net  # registered, so Lightning moves it to the device
        self.points = diagnostic_points
        self.diagnostics: dict[str, list[float]] | None = None
        self._sums: torch.Tensor | None = None

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        images, indices = batch
        first = int(indices[0])
        if not self.points:
            return {"indices": indices.tolist(), "images": self.purifier(images, first)}
        purified, energy, dist = self.purifier.trace(images, first, self.points)
        sums = torch.stack([energy, dist, torch.full_like(energy, len(images))])
        self._sums = sums if self._sums is None else self._sums + sums
        return {"indices": indices.tolist(), "images": purified}

    def on_predict_epoch_end(self) -> None:
        if not self.points:
            return
        sums = self._sums if self._sums is not None else torch.zeros(3, len(self.points), device=self.device)
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")  # every rank reaches this once
        count = sums[2].clamp(min=1)
        self.diagnostics = {
            "step": list(self.points),
            "mean_energy": (sums[0] / count).tolist(),
            "mean_l2_from_start": (sums[1] / count).tolist(),
            "images": int(sums[2, 0].item()),
        }

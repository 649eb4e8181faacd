"""The LightningModule that runs purification in Trainer.predict (one device or many, each its own blocks)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from pureebm_lightning.purification.purified_store import PurifiedStore, run_on_rank_zero
from pureebm_lightning.purification.jpeg_purifier import JPEGPurifier
from pureebm_lightning.purification.purifier import Purifier
from pureebm_lightning.purification.sources import BlockBatches, SourceImages


class PurifyModule(LightningModule):
    """Purifies the blocks of ``store``'s source that are not done yet; needs ``Trainer(inference_mode=False,
    use_distributed_sampler=False)``: rank r takes every world_size-th missing block.

    In ``setup`` (process group up, before any image is read) global rank 0 takes the output folder's lock
    (held until the process ends or ``store.lock.release()``) and prepares the folder (``--overwrite``
    deletion, stale partial files, manifest); every rank then waits for it. With
    ``diagnostic_points`` it also sums energies and L2 distances from the start image at those steps; after
    the loop ``diagnostics`` holds their means over the images of every rank.
    """

    def __init__(self, purifier: Purifier | JPEGPurifier, store: PurifiedStore, batch_size: int, overwrite: bool = False,
                 num_workers: int = 0, diagnostic_points: list[int] | None = None) -> None:
        super().__init__()
        self.purifier, self.store = purifier, store
        self.energy_net = getattr(purifier, "energy_net", None)  # registered, so Lightning moves it to the device
        self.batch_size, self.overwrite, self.num_workers = batch_size, overwrite, num_workers
        self.points = diagnostic_points
        self.diagnostics: dict[str, Any] | None = None
        self._sums: torch.Tensor | None = None

    def setup(self, stage: str) -> None:
        # one writer per folder: rank 0 takes the lock and checks again under it; a failure stops every rank
        run_on_rank_zero(self.trainer.strategy, lambda: self.store.claim(self.overwrite))
        self.trainer.strategy.barrier("purify-prepared")

    def predict_dataloader(self) -> DataLoader:
        missing = self.store.todo()
        todo = self.store.todo_blocks(self.batch_size, missing)
        rank_zero_info(
            f"Purifying {len(missing)} of {len(self.store.source)} images of {self.store.source.root} "
            f"({len(self.store.source) - len(missing)} already done) with {self.purifier.describe()} into {self.store.out}"
        )
        mine = todo[self.trainer.global_rank :: self.trainer.world_size]
        # BlockBatches returns every index it is given; Lightning cannot know that and would warn
        warnings.filterwarnings("ignore", message=".*custom batch sampler `BlockBatches`.*")
        return DataLoader(SourceImages(self.store.source), batch_sampler=BlockBatches(mine), num_workers=self.num_workers)

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
